#!/bin/sh
# docs/efficiency.md: dense, Wanda 50 %, Wanda 2:4 and SparseGPT 2:4 on SmolLM2-135M (this CPU): perplexity,
# compressed-tensors export size and CPU throughput (experiment efficiency_smollm2), then the same
# cases pruned again and exported as plain Hugging Face folders (experiment efficiency_smollm2_hf; no
# evaluation: only their size is new), then the tables. One torch thread (OMP_NUM_THREADS=1), so that
# the timings on a shared CPU are less disturbed by the other jobs competing for its cores.
# Run from the repository root.
set -e
export OMP_NUM_THREADS=1
out=results/efficiency_smollm2
sparsebench -m +experiment=efficiency_smollm2 results_dir=$out metric=none,wanda sparsity.ratio=0.5 "$@"
sparsebench -m +experiment=efficiency_smollm2 results_dir=$out metric=wanda,sparsegpt sparsity=2of4 "$@"
sparsebench -m +experiment=efficiency_smollm2 results_dir=$out experiment_name=efficiency_smollm2_hf export=hf export.dtype=float16 eval.efficiency.enabled=false eval.ppl.datasets=[] metric=none,wanda sparsity.ratio=0.5 "$@"
sparsebench -m +experiment=efficiency_smollm2 results_dir=$out experiment_name=efficiency_smollm2_hf export=hf export.dtype=float16 eval.efficiency.enabled=false eval.ppl.datasets=[] metric=wanda,sparsegpt sparsity=2of4 "$@"
sparsebench-tables --results $out --experiment efficiency_smollm2 --out docs/data/efficiency_smollm2 --also efficiency
sparsebench-tables --results $out --experiment efficiency_smollm2_hf --out docs/data/efficiency_smollm2/hf --also efficiency
