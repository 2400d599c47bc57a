#!/bin/bash
# Run an lrtransfer sweep on a Slurm cluster: one worker per array task, all claiming cells of
# one optuna study on PostgreSQL. Enqueue first (once, from a login node):
#
#   export LRTRANSFER_STORAGE=postgresql://user:pass@dbhost/lrtransfer
#   lrtransfer sweep experiments/mlp_width_cifar10.toml --jobs 0 --results /shared/results/mlp_width
#   sbatch --export=ALL experiments/slurm_workers.sh mlp_width_cifar10
#
# Preempted or killed tasks are safe: their cells are declared lost after --grace seconds
# without a heartbeat and run again by the next worker (or by re-submitting this script).
#SBATCH --job-name=lrtransfer
#SBATCH --array=0-15
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --requeue
set -euo pipefail
study="${1:?usage: sbatch slurm_workers.sh STUDY_NAME}"
: "${LRTRANSFER_STORAGE:?export LRTRANSFER_STORAGE=postgresql://... before sbatch}"
exec lrtransfer worker --study "$study" --device cuda --grace 300
