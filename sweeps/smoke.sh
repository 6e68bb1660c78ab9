#!/bin/sh
# 9 cases on SmolLM2-135M (CPU, minutes), then its tables and figures. Run from the repository root.
set -e
sparsebench -m +experiment=smoke results_dir=results/smoke "$@"
sparsebench-tables --results results/smoke --experiment smoke --out docs/data/smoke --figures --also prune_time
