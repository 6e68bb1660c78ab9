#!/bin/sh
# OWL's LLaMA grid. On one machine with 4 GPUs:   sh sweeps/owl_grid.sh hydra/launcher=gpu_pool 'hydra.launcher.slots=[0,1,2,3]'
# On SLURM:  sh sweeps/owl_grid.sh hydra/launcher=slurm hydra.launcher.partition=gpu
# Re-running the same command skips the finished cases and redoes the failed ones.
set -e
sparsebench -m +experiment=owl_grid device=cuda results_dir=results/owl_grid "$@"
sparsebench -m +experiment=owl_grid device=cuda results_dir=results/owl_grid metric=none allocator=uniform "$@"
sparsebench-tables --results results/owl_grid --experiment owl_grid --out tables/owl_grid --figures
