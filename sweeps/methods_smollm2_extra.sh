#!/bin/sh
# The checks behind the notes under the README's methods table (same protocol as methods_smollm2.sh;
# about 45 minutes on a 2-core CPU, most of it HASSLE-free). Run from the repository root.
set -e
# OWL against uniform on two more calibration draws (seed 0 is in methods_smollm2)
sparsebench -m +experiment=methods_smollm2 results_dir=results/owl_seeds metric=wanda allocator=uniform,owl sparsity.ratio=0.7 calibration.seed=1,2 "$@"
out=results/methods_extra
# RIA with the reference's --per_outneuron comparison
sparsebench -m +experiment=methods_smollm2 results_dir=$out metric=ria metric.comparison=row sparsity.ratio=0.7 "$@"
sparsebench -m +experiment=methods_smollm2 results_dir=$out metric=ria metric.comparison=row sparsity=2of4 "$@"
# 50 %: what HASSLE-free at 70 % + rank 64 stores
sparsebench -m +experiment=methods_smollm2 results_dir=$out metric=sparsegpt,wanda sparsity.ratio=0.5 "$@"
# HASSLE-free at rank 8 (2.3 % extra parameters)
sparsebench -m +experiment=methods_smollm2 results_dir=$out metric=hassle_free decomposition.rank=8 sparsity=2of4 "$@"
sparsebench -m +experiment=methods_smollm2 results_dir=$out metric=hassle_free decomposition.rank=8 sparsity.ratio=0.7 "$@"
