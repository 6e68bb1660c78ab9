#!/bin/sh
# The README's methods table (16 cases on SmolLM2-135M; about an hour and a half on a 2-core CPU,
# most of it HASSLE-free and NeuroAL's search), then its tables. Run from the repository root.
set -e
out=results/methods_smollm2
sparsebench -m +experiment=methods_smollm2 results_dir=$out metric=none,magnitude,wanda,sparsegpt,ria,swiftprune,hassle_free sparsity.ratio=0.7 "$@"
sparsebench -m +experiment=methods_smollm2 results_dir=$out metric=magnitude,wanda,sparsegpt,ria,swiftprune,hassle_free sparsity=2of4 "$@"
sparsebench -m +experiment=methods_smollm2 results_dir=$out metric=wanda allocator=owl,neuroal,trim sparsity.ratio=0.7 "$@"
sparsebench-tables --results $out --experiment methods_smollm2 --out docs/methods_smollm2 --also prune_time
