#!/bin/sh
# Any grid mirrored to W&B without network; upload later with `wandb sync wandb/offline-run-*`.
set -e
WANDB_MODE=offline sparsebench -m +experiment=smoke tracker=wandb tracker.wandb.project=sparsebench "$@"
