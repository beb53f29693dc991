"""Process-group set-up details that DeepSpeed leaves to the caller."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch.distributed as dist

logger = logging.getLogger(__name__)

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
