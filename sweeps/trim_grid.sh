#!/bin/sh
# TRIM grid. On one machine with 4 GPUs:   sh sweeps/trim_grid.sh hydra/launcher=gpu_pool 'hydra.launcher.slots=[0,1,2,3]'
# On SLURM:  sh sweeps/trim_grid.sh hydra/launcher=slurm hydra.launcher.partition=gpu
# Re-running the same command skips the finished cases and redoes the failed ones.
set -e
sparsebench -m +experiment=trim_grid device=cuda results_dir=results/trim_grid "$@"
sparsebench -m +experiment=trim_grid device=cuda results_dir=results/trim_grid allocator=trim allocator.layerwise=owl,alpha "$@"
sparsebench -m +experiment=trim_grid device=cuda results_dir=results/trim_grid metric=none allocator=uniform "$@"
sparsebench-tables --results results/trim_grid --experiment trim_grid --out tables/trim_grid --figures
