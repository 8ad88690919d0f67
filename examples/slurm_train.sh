#!/bin/bash
# Multi-node MUG-DiT training with torchrun under SLURM: one torchrun per node, 8 GPUs each.
#
#   sbatch --nodes=64 examples/slurm_train.sh 10b-512gpu          # TP 4 x PP 4 x FSDP 32
#   sbatch --nodes=8  examples/slurm_train.sh 10b-64gpu-cp8       # FSDP x context parallel 8
#
# Any config override can follow the profile: ... 10b-512gpu --train.steps=1000
# Check the layout first without GPUs: mugv train --config 10b-512gpu --dry-run --world-size 512
#SBATCH --job-name=mugv-train
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --exclusive
#SBATCH --output=logs/%x-%j.out

set -euo pipefail
PROFILE=${1:?usage: sbatch --nodes=N examples/slurm_train.sh PROFILE [overrides...]}
shift
GPUS_PER_NODE=${GPUS_PER_NODE:-8}

# The first node hosts the rendezvous.
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-29500}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1

mkdir -p logs
srun --kill-on-bad-exit=1 torchrun \
    --nnodes="$SLURM_NNODES" \
    --nproc_per_node="$GPUS_PER_NODE" \
    --rdzv_id="$SLURM_JOB_ID" \
    --rdzv_backend=c10d \
    --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" \
    -m mugv train --config "$PROFILE" --run_dir="runs/$PROFILE" "$@"
