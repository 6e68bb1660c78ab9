#!/bin/sh
# The README's methods table (21 cases on SmolLM2-135M; about an hour and three quarters on a 2-core CPU,
# most of it HASSLE-free and NeuroAL's search), then its tables. Run from the repository root.
set -e
out=results/methods_smollm2
sparsebench -m +experiment=methods_smollm2 results_dir=$out metric=none,magnitude,wanda,sparsegpt,ria,swiftprune,hassle_free,multiflow sparsity.ratio=0.7 "$@"
sparsebench -m +experiment=methods_smollm2 results_dir=$out metric=magnitude,wanda,sparsegpt,ria,swiftprune,hassle_free,multiflow sparsity=2of4 "$@"
sparsebench -m +experiment=methods_smollm2 results_dir=$out metric=wanda allocator=owl,neuroal,trim,alpha,dsnot sparsity.ratio=0.7 "$@"
sparsebench -m +experiment=methods_smollm2 results_dir=$out metric=wanda allocator=trim allocator.layerwise=alpha sparsity.ratio=0.7 "$@"
sparsebench-tables --results $out --experiment methods_smollm2 --out docs/data/methods_smollm2 --also prune_time
