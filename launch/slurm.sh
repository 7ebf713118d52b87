#!/usr/bin/env bash
# SLURM: one `accelerate launch` per node, which starts one process per GPU there.
#   sbatch --nodes 4 launch/slurm.sh pretrain/mae.py --data 'shards/train-{000000..001023}.tar' --out runs/mae-l
# The rendezvous: the first node of the allocation is the main process (MAIN_ADDR:MAIN_PORT);
# every node passes its own --machine_rank (SLURM_NODEID) and the same totals.
#SBATCH --job-name=sslvit
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=48:00:00
set -euo pipefail
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
# sed reads the whole list: `head -n 1` would leave while scontrol still writes, and pipefail would
# end the job on scontrol's SIGPIPE (exit 141)
MAIN_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)
MAIN_PORT=${MAIN_PORT:-29500}
NUM_PROCESSES=$((SLURM_NNODES * GPUS_PER_NODE))
CONFIG=${CONFIG:-launch/multi_node.yaml}  # or launch/fsdp_vit_large.yaml for ViT-L and larger
# Each argument quoted for the node's shell, which would otherwise expand a shard spec's {000000..001023}
# into 1024 words and split a path at its spaces.
ARGS=$(printf '%q ' "$@")

srun --kill-on-bad-exit=1 bash -c "accelerate launch --config_file $CONFIG \
    --num_machines $SLURM_NNODES --num_processes $NUM_PROCESSES \
    --machine_rank \$SLURM_NODEID --main_process_ip $MAIN_ADDR --main_process_port $MAIN_PORT \
    --rdzv_backend c10d $ARGS"
