"""DeepSpeed checkpoints that are resumed from only once every rank has finished writing them.

Layout of `checkpoint.dir`:

    step00001000/                  one DeepSpeed tag: model and optimizer shards, written by DeepSpeed
        rank_state/rank00000.pt    what DeepSpeed keeps only for rank 0: each rank's loader position, RNG states
        complete                   JSON {"step", "world_size"}: written last, by rank 0, after a barrier
        universal/                 DeepSpeed universal checkpoint, made on demand to resume on another world size
    latest                         the newest complete tag, in DeepSpeed's format (zero_to_fp32 reads it)

Saving: every rank writes its DeepSpeed shards and rank state -> barrier -> rank 0 writes `complete`, replaces
`latest` atomically (temp file + os.replace) and deletes checkpoints beyond the newest `keep` -> barrier. A crash
before `complete` leaves a tag that resuming ignores, and `latest` never names a tag without `complete`.
DeepSpeed's own `latest` update is switched off (save_latest=False): it would move before the other ranks are done.

The global client state (step, samples, the resolved run config, the tokenizer fingerprint) travels inside
DeepSpeed's checkpoint (`client_state`); per-rank state goes to rank_state/ because ZeRO-1/2 write the client
state from rank 0 only.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import deepspeed
import numpy as np
import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

TAG_PATTERN = re.compile(r"step(\d{8})")
COMPLETE_FILE = "complete"
UNIVERSAL_POLL_S = 1.0  # how often the other ranks look for rank 0's finished universal conversion
LATEST_FILE = "latest"
RANK_STATE_DIR = "rank_state"
UNIVERSAL_DIR = "universal"


def tag_for(step: int) -> str:
    return f"step{step:08d}"


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint: its tag directory, the step it holds and the world size that wrote it."""

    path: Path
    step: int
    world_size: int

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def tag(self) -> str:
        return self.path.name


def read_checkpoint(path: str | Path) -> Checkpoint:
    """The checkpoint in tag directory `path`; refuses one whose `complete` marker is missing."""
    path = Path(path)
    marker = path / COMPLETE_FILE
    if not marker.is_file():
        raise ValueError(f"{path} is not a complete checkpoint (no {COMPLETE_FILE} marker: a save was interrupted)")
    meta = json.loads(marker.read_text())
    return Checkpoint(path, int(meta["step"]), int(meta["world_size"]))


def complete_checkpoints(directory: str | Path) -> list[Checkpoint]:
    """Complete checkpoints under `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    tags = [p for p in directory.iterdir() if TAG_PATTERN.fullmatch(p.name) and (p / COMPLETE_FILE).is_file()]
    return sorted((read_checkpoint(p) for p in tags), key=lambda c: c.step)


def find_resume_checkpoint(directory: str | Path) -> Checkpoint | None:
    """The newest complete checkpoint; incomplete tags (a crash during a save) are ignored."""
    checkpoints = complete_checkpoints(directory)
    return checkpoints[-1] if checkpoints else None


def resolve_resume(resume: str, directory: str | Path) -> Checkpoint | None:
    """`auto`: the newest complete checkpoint, if any; `none`: start afresh; else a tag directory's path."""
    if resume == "auto":
        return find_resume_checkpoint(directory)
    if resume == "none":
        existing = find_resume_checkpoint(directory)
        if existing is not None:
            raise ValueError(
                f"{directory} already holds checkpoints (newest: {existing.tag}); a fresh run would mix with "
                "them and prune them: pass --resume auto, or set checkpoint.dir to a new directory"
            )
        return None
    return read_checkpoint(resume)


def save_checkpoint(
    engine: deepspeed.DeepSpeedEngine,
    directory: str | Path,
    step: int,
    client_state: dict[str, Any],
    rank_state: dict[str, Any],
    keep: int,
) -> Path:
    """Collective: every rank calls it. Returns the tag directory once the checkpoint is complete."""
    directory = Path(directory)
    tag = tag_for(step)
    path = directory / tag
    engine.save_checkpoint(str(directory), tag=tag, client_state=client_state, save_latest=False)
    (path / RANK_STATE_DIR).mkdir(parents=True, exist_ok=True)
    torch.save(rank_state, _rank_state_file(path, engine.global_rank))
    dist.barrier()  # every rank's files are written
    if engine.global_rank == 0:
        _write_atomically(path / COMPLETE_FILE, json.dumps({"step": step, "world_size": dist.get_world_size()}))
        _write_atomically(directory / LATEST_FILE, tag)
        _prune(directory, keep)
        logger.info("checkpoint %s complete", path)
    dist.barrier()  # nobody leaves (or exits) before the checkpoint is marked complete
    return path


def load_checkpoint(engine: deepspeed.DeepSpeedEngine, checkpoint: Checkpoint, universal: bool) -> dict[str, Any]:
    """Load weights and optimizer state into the engine; returns the client state saved with them.

    `universal`: from the universal form made by `prepare_universal` (the engine must have been initialised
    with checkpoint.load_universal).
    """
    if universal:
        load_path, client_state = engine.load_checkpoint(str(checkpoint.path), tag=UNIVERSAL_DIR)
    else:
        load_path, client_state = engine.load_checkpoint(str(checkpoint.root), tag=checkpoint.tag)
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load {checkpoint.path}")
    return client_state


def load_rank_state(checkpoint: Checkpoint, rank: int) -> dict[str, Any]:
    """A rank's loader position and RNG states as saved (our own file, hence weights_only=False)."""
    return torch.load(_rank_state_file(checkpoint.path, rank), map_location="cpu", weights_only=False)


def prepare_universal(checkpoint: Checkpoint, rank: int) -> None:
    """Collective: convert `checkpoint` to DeepSpeed's universal form (once, by rank 0; the others wait).

    Runs `python -m deepspeed.checkpoint.ds_to_universal` in a subprocess (it forks worker pools, which must not
    inherit this process's communicators) into a temporary folder renamed when done, so an interrupted
    conversion is redone rather than loaded. The other ranks wait by watching the shared checkpoint directory,
    not in a barrier: converting a large model can outlast the collective timeout. A failed conversion leaves
    `universal.failed` (with the error) so they stop too.
    """
    target = checkpoint.path / UNIVERSAL_DIR
    failed = checkpoint.path / f"{UNIVERSAL_DIR}.failed"
    if rank == 0:
        failed.unlink(missing_ok=True)  # an earlier attempt's verdict
    dist.barrier()  # ... is gone before anyone looks for one
    if rank == 0 and not target.is_dir():
        partial = checkpoint.path / f"{UNIVERSAL_DIR}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        logger.info("converting %s to a universal checkpoint (world size %d)", checkpoint.path, checkpoint.world_size)
        command = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal"]
        command += ["--input_folder", str(checkpoint.path), "--output_folder", str(partial)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            message = f"ds_to_universal failed on {checkpoint.path}:\n{result.stdout}\n{result.stderr}"
            failed.write_text(message)
            raise RuntimeError(message)
        (checkpoint.path / "latest_universal").unlink(missing_ok=True)  # names the partial folder; unused
        partial.rename(target)
    while not target.is_dir():
        if failed.exists():
            raise RuntimeError(f"rank 0 could not convert {checkpoint.path}: see {failed}")
        time.sleep(UNIVERSAL_POLL_S)
    dist.barrier()


def rng_state() -> dict[str, Any]:
    """This process's Python, NumPy, torch (and CUDA) generator states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rank_state_file(path: Path, rank: int) -> Path:
    return path / RANK_STATE_DIR / f"rank{rank:05d}.pt"


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _prune(directory: Path, keep: int) -> None:
    """Delete complete checkpoints beyond the newest `keep`, and incomplete ones older than the newest complete
    (left by crashes; a newer incomplete one cannot exist while this process is the writer)."""
    complete = complete_checkpoints(directory)
    for checkpoint in complete[:-keep]:
        shutil.rmtree(checkpoint.path)
        logger.info("deleted old checkpoint %s", checkpoint.path)
    newest = complete[-1].step
    for path in directory.iterdir():
        match = TAG_PATTERN.fullmatch(path.name)
        if match and int(match.group(1)) < newest and not (path / COMPLETE_FILE).exists():
            shutil.rmtree(path)
            logger.info("deleted incomplete checkpoint %s", path)
