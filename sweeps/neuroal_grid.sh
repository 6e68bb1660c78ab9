#!/bin/sh
# NeuroAL grid. On one machine with 4 GPUs:   sh sweeps/neuroal_grid.sh hydra/launcher=gpu_pool 'hydra.launcher.slots=[0,1,2,3]'
# On SLURM:  sh sweeps/neuroal_grid.sh hydra/launcher=slurm hydra.launcher.partition=gpu
# Re-running the same command skips the finished cases and redoes the failed ones.
set -e
sparsebench -m +experiment=neuroal_grid device=cuda results_dir=results/neuroal_grid "$@"
sparsebench -m +experiment=neuroal_grid device=cuda results_dir=results/neuroal_grid metric=none allocator=uniform "$@"
sparsebench-tables --results results/neuroal_grid --experiment neuroal_grid --out tables/neuroal_grid --also zeroshot prune_time --figures
