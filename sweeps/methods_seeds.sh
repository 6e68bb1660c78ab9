#!/bin/sh
# The methods table with calibration-seed spread on both real models (docs/methods_seeds.md), then its
# tables. Run from the repository root. Arguments are passed to every sweep, e.g. on one GPU with six
# cases at a time:
#   sh sweeps/methods_seeds.sh device=cuda hydra/launcher=gpu_pool 'hydra.launcher.slots=[0,0,0,0,0,0]'
# SEEDS (default 0,1,2), MODELS (default both) and OUT (default results/methods_seeds) change the grid.
set -e
out=${OUT:-results/methods_seeds}
seeds=${SEEDS:-0,1,2}
models=${MODELS:-smollm2-135m-q4,gemma3-270m-q4}
grid="+experiment=methods_seeds results_dir=$out model=$models"
# the dense row needs no calibration: once per model
sparsebench -m $grid metric=none sparsity.ratio=0.7 "$@"
metrics=metric=magnitude,wanda,sparsegpt,ria,hassle_free,multiflow
sparsebench -m $grid calibration.seed=$seeds $metrics sparsity.ratio=0.7 "$@"
sparsebench -m $grid calibration.seed=$seeds $metrics sparsity=2of4 "$@"
sparsebench -m $grid calibration.seed=$seeds metric=swiftprune metric.score=contribution,obs_rank1 sparsity.ratio=0.7 "$@"
sparsebench -m $grid calibration.seed=$seeds metric=swiftprune metric.score=contribution,obs_rank1 sparsity=2of4 "$@"
sparsebench -m $grid calibration.seed=$seeds metric=wanda allocator=owl,neuroal,trim,alpha,dsnot sparsity.ratio=0.7 "$@"
sparsebench -m $grid calibration.seed=$seeds metric=wanda allocator=trim allocator.layerwise=alpha sparsity.ratio=0.7 "$@"
sparsebench-tables --results $out --experiment methods_seeds --baseline "wanda + uniform" --out docs/data/methods_seeds --also prune_time
python sweeps/methods_seeds_summary.py docs/data/methods_seeds/tables.csv   # the README table: both models side by side
