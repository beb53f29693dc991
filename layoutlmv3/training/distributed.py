"""Process-group set-up: the rendezvous under any launcher, the collective timeout, where each rank runs.

The collective timeout bounds how long a rank waits in a collective (all-reduce, barrier, the rendezvous) for a
peer that never comes: a node that died, a rank stuck in I/O. When it expires, the rank raises and exits
non-zero, so the job ends and is requeued instead of idling the whole allocation. torch's default is 30 minutes
(DeepSpeed's 10); ours, `train.collective_timeout_s`, defaults to 300 s. The trade-off: every healthy wait must fit
in it too -- a checkpoint save on slow storage (the other ranks wait at the barrier that ends it), the first
step's compilation when ranks compile at different speeds, validation. Raise it for large models on slow
shared filesystems; lower it to detect failures sooner. NCCL honours it through asynchronous error handling,
which recent torch enables by default (TORCH_NCCL_ASYNC_ERROR_HANDLING); gloo (CPU) honours it on every op.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from datetime import timedelta
from pathlib import Path

import deepspeed
import torch.distributed as dist

from .slurm_env import rendezvous_from_slurm

logger = logging.getLogger(__name__)
placement_logger = logging.getLogger(f"{__name__}.placement")  # logged on every rank, not only rank 0

SHM_DIR = Path("/dev/shm")


def release_cpu_allreduce_buffer_names() -> None:
    """Unlink this rank's DeepSpeed CPU all-reduce buffer name once every rank has mapped it.

    On CPU, DeepSpeed's shared-memory all-reduce (ops/csrc/cpu/comm/shm.cpp) creates
    /dev/shm/deepspeed_allreduce_buffer_{uid}_{MASTER_ADDR}_{MASTER_PORT}_{rank} (69 MB) per rank and never
    unlinks it, so every run leaves its buffers in RAM-backed /dev/shm: gigabytes after a few dozen runs. Each
    rank maps all its peers' buffers inside `deepspeed.init_distributed()`; after a barrier the names are no
    longer needed (the mappings stay valid until the processes exit), so each rank removes its own.
    """
    if not dist.is_initialized():
        return
    name = f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR')}_{os.environ.get('MASTER_PORT')}"
    dist.barrier()  # every rank has finished shm initialisation, i.e. opened its peers' buffers (all ranks call it)
    path = SHM_DIR / f"{name}_{dist.get_rank()}"
    if path.exists():  # absent on GPU runs and without DeepSpeed's shm op
        path.unlink(missing_ok=True)
        logger.debug("unlinked %s", path)


def init_distributed(collective_timeout_s: float) -> dict[str, str]:
    """Join the process group (env://) with the given collective timeout; returns the variables taken from Slurm.

    Under a bare `srun` or `deepspeed --launcher slurm` the rank variables come from Slurm's
    (`slurm_env.rendezvous_from_slurm`); under torchrun or DeepSpeed's local launcher they are already set.
    """
    from_slurm = rendezvous_from_slurm()
    if not from_slurm:
        run_alone_without_launcher()
    timeout = timedelta(seconds=collective_timeout_s)
    set_default_group_timeout(timeout)
    with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed prints its op builds: stdout carries results only
        deepspeed.init_distributed(timeout=timeout)
    release_cpu_allreduce_buffer_names()
    return from_slurm


MPI_RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")


def run_alone_without_launcher(environ: dict[str, str] | None = None) -> bool:
    """`python launch/pretrain.py` with no launcher: one process on a free loopback port, rather than
    DeepSpeed's MPI discovery failing on a missing mpi4py. Returns whether it set anything."""
    env = os.environ if environ is None else environ
    if "RANK" in env or any(name in env for name in MPI_RANK_VARIABLES):
        return False
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    values = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    env.update({**values, "MASTER_PORT": env.get("MASTER_PORT", str(port))})
    logger.info("no launcher (RANK unset, not an srun task): running as a single process")
    return True


def set_default_group_timeout(timeout: timedelta) -> None:
    """Make `timeout` the default of every process group created from now on, not only the world group's.

    DeepSpeed reduces gradients on groups of its own (`dist.new_group(ranks)` without a timeout), which torch
    gives its 30-minute default: a rank waiting there for a dead node would hang for half an hour whatever
    `init_process_group` was told (seen on the multi-host test cluster: survivors stuck in ZeRO's gradient
    all-reduce). torch reads the default from these module globals each time it makes a group.
    """
    from torch.distributed import distributed_c10d

    distributed_c10d.default_pg_timeout = timeout
    distributed_c10d.default_pg_nccl_timeout = timeout


def describe_placement() -> str:
    """One line on where this rank runs: host, the address and interface it reaches the master through.

    The address is the one the kernel routes to MASTER_ADDR from here (a UDP connect sends no packet), i.e. the
    interface rendezvous traffic leaves by; collectives use GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME when set.
    """
    master, port = os.environ.get("MASTER_ADDR", "?"), os.environ.get("MASTER_PORT", "?")
    address = interface = "?"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((master, int(port)))
            address = probe.getsockname()[0]
        import psutil  # a DeepSpeed dependency

        interface = next(
            (name for name, addrs in psutil.net_if_addrs().items() for a in addrs if a.address == address), "?"
        )
    except (OSError, ValueError):
        pass
    chosen = os.environ.get("GLOO_SOCKET_IFNAME") or os.environ.get("NCCL_SOCKET_IFNAME") or "by host name"
    return (
        f"rank {dist.get_rank()}/{dist.get_world_size()} (local {os.environ.get('LOCAL_RANK', '?')}) on host "
        f"{socket.gethostname()} address {address} ({interface}); master {master}:{port}; collective interface "
        f"{chosen}"
    )
