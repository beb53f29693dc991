#!/usr/bin/env bash
# Runs as each task of `srun` in slurm/pretrain.sbatch: turns Slurm's task numbering into the env:// rendezvous
# variables that torch.distributed (through deepspeed.init_distributed) reads, then becomes the command.
#
#   srun slurm/task_env.sh python launch/pretrain.py --config ...
#
# Why not `deepspeed --launcher slurm`: it does not set RANK/LOCAL_RANK, so deepspeed.init_distributed falls
# back to mpi4py discovery; and the pdsh/ssh launchers need passwordless ssh between nodes. With srun starting
# one task per GPU and these variables set, init_distributed takes the env:// path: no MPI, no ssh. It also
# means the training processes are srun's tasks, so Slurm's signals (USR1 before the time limit, TERM on
# preemption) reach them directly instead of a launcher that would die on USR1.
set -euo pipefail

: "${SLURM_PROCID:?not started by srun}"
export RANK=$SLURM_PROCID
export LOCAL_RANK=$SLURM_LOCALID
export WORLD_SIZE=$SLURM_NTASKS
# MASTER_ADDR/MASTER_PORT normally come from pretrain.sbatch (one scontrol call per job, not one per task).
if [ -z "${MASTER_ADDR:-}" ]; then
    MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    export MASTER_ADDR
fi
export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
# DeepSpeed's own launcher sets these too; some of its code (and NCCL tuning) reads them.
export LOCAL_SIZE=${SLURM_NTASKS_PER_NODE:-${SLURM_TASKS_PER_NODE%%(*}}
export CROSS_RANK=${SLURM_NODEID:-0}
export CROSS_SIZE=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
exec "$@"
