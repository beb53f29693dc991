"""DeepSpeed checkpoints that are resumed from only once every rank has finished writing them.

Layout of `checkpoint.dir`:

    step00001000/                  one DeepSpeed tag: model and optimizer shards, written by DeepSpeed
        rank_state/rank00000.pt    what DeepSpeed keeps only for rank 0: each rank's loader position, RNG states
        complete                   JSON written last, by rank 0, after a barrier: {"step", "world_size", "files"
                                   (every file's size, checked before resuming), "model_config",
                                   "tokenizer_fingerprint", "model_class" (which job: pretraining, image tokenizer)}
        universal/                 DeepSpeed universal checkpoint, made on demand to resume on another world size
    latest                         the newest complete tag, in DeepSpeed's format (zero_to_fp32 reads it)

Saving: every rank writes its DeepSpeed shards and rank state -> barrier -> rank 0 writes `complete`, replaces
`latest` atomically (temp file + os.replace) and deletes checkpoints beyond the newest `keep` -> barrier. A crash
before `complete` leaves a tag that resuming ignores, and `latest` never names a tag without `complete`.
DeepSpeed's own `latest` update is switched off (save_latest=False): it would move before the other ranks are done.
A save that fails on any rank (disk full, quota, I/O error) is agreed on by all ranks, its partial tag deleted,
and `CheckpointNotSaved` raised: the previous complete checkpoint stays the one to resume from.

Resuming verifies before loading (rank 0, the verdict broadcast): every file recorded in `complete` is present
at its saved size (a truncated copy or a lost file is named), and every `.pt` file's pickle references only
tensors and a short allow-list of types (`SAFE_GLOBALS`): DeepSpeed loads with `weights_only=False`, which would
run code planted in a checkpoint directory. `--resume auto` falls back to the newest checkpoint that verifies
(a damaged one is renamed `TAG.damaged` so a later save cannot mix with its files); an unsafe file is refused.

The global client state (step, samples, the resolved run config, the tokenizer fingerprint) travels inside
DeepSpeed's checkpoint (`client_state`); per-rank state goes to rank_state/ because ZeRO-1/2 write the client
state from rank 0 only.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
    """A complete checkpoint: its tag directory, the step it holds and the world size that wrote it, plus what
    `complete` records (None in checkpoints written before it did)."""

    path: Path
    step: int
    world_size: int
    files: dict[str, int] | None = field(default=None, compare=False)  # relative path -> size in bytes
    model_config: dict[str, Any] | None = field(default=None, compare=False)
    tokenizer_fingerprint: str | None = field(default=None, compare=False)
    model_class: str | None = field(default=None, compare=False)  # the trained module's class: which job wrote it

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
    return Checkpoint(
        path,
        int(meta["step"]),
        int(meta["world_size"]),
        meta.get("files"),
        meta.get("model_config"),
        meta.get("tokenizer_fingerprint"),
        meta.get("model_class"),
    )


def complete_checkpoints(directory: str | Path) -> list[Checkpoint]:
    """Complete checkpoints under `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    tags = [p for p in directory.iterdir() if TAG_PATTERN.fullmatch(p.name) and (p / COMPLETE_FILE).is_file()]
    checkpoints = []
    for path in tags:
        try:
            checkpoints.append(read_checkpoint(path))
        except (ValueError, KeyError, TypeError) as error:  # a marker cut short or edited: not a complete save
            logger.warning("ignoring %s: its %s marker is unreadable (%s)", path, COMPLETE_FILE, error)
    return sorted(checkpoints, key=lambda c: c.step)


def find_resume_checkpoint(directory: str | Path) -> Checkpoint | None:
    """The newest complete checkpoint; incomplete tags (a crash during a save) are ignored."""
    checkpoints = complete_checkpoints(directory)
    return checkpoints[-1] if checkpoints else None


def resolve_resume(resume: str, directory: str | Path, allowed_globals: tuple[str, ...] = ()) -> Checkpoint | None:
    """`auto`: the newest complete checkpoint that verifies, if any; `none`: start afresh; else a tag directory's
    path (which must verify). Damaged checkpoints met by `auto` are logged, renamed and skipped; a checkpoint
    holding unsafe pickles is refused (UnsafeCheckpoint) rather than skipped: someone planted or replaced it."""
    if resume == "auto":
        return _newest_verified(Path(directory), allowed_globals)
    if resume == "none":
        existing = find_resume_checkpoint(directory)
        if existing is not None:
            raise ValueError(
                f"{directory} already holds checkpoints (newest: {existing.tag}); a fresh run would mix with "
                "them and prune them: pass --resume auto, or set checkpoint.dir to a new directory"
            )
        return None
    checkpoint = read_checkpoint(resume)
    verify_checkpoint(checkpoint, allowed_globals)
    newest = find_resume_checkpoint(directory)
    if newest is not None and newest.step > checkpoint.step:
        raise ValueError(
            f"{directory} holds checkpoints newer than {resume} (newest: {newest.tag}): this run's saves would be "
            "older than them and pruned as soon as written; pass --resume auto to go on from the newest, move the "
            "newer ones away to roll back, or set checkpoint.dir to a new directory to branch off"
        )
    return checkpoint


def _newest_verified(directory: Path, allowed_globals: tuple[str, ...]) -> Checkpoint | None:
    checkpoints = complete_checkpoints(directory)
    damaged = []
    for checkpoint in reversed(checkpoints):
        try:
            verify_checkpoint(checkpoint, allowed_globals)
        except DamagedCheckpoint as error:
            damaged.append(str(error))
            aside = checkpoint.path.with_name(f"{checkpoint.tag}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
            checkpoint.path.rename(aside)  # kept as evidence (a rename: instant, whatever its size)
            logger.error("checkpoint %s is damaged, moved to %s and skipped: %s", checkpoint.tag, aside, error)
            continue
        if damaged:
            logger.warning("resuming from %s, the newest checkpoint that verifies", checkpoint.path)
        return checkpoint
    if damaged:
        raise DamagedCheckpoint(f"no checkpoint in {directory} verifies: " + "; ".join(damaged))
    set_aside = sorted(path.name for path in directory.glob("step*.damaged*")) if directory.is_dir() else []
    if set_aside:
        raise DamagedCheckpoint(
            f"{directory} holds only damaged checkpoints ({', '.join(set_aside)}): a fresh start would lose the run; "
            "repair or move them away, or pass --resume PATH"
        )
    return None


TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.ESTALE, errno.EACCES, errno.EPERM, errno.EAGAIN, errno.ETIMEDOUT})


class DamagedCheckpoint(ValueError):
    """A checkpoint's files are missing, truncated or unreadable."""


class UnsafeCheckpoint(ValueError):
    """A checkpoint file's pickle would call something other than tensor rebuilding and allow-listed types."""


# Types DeepSpeed ZeRO and our rank state pickle besides tensors (found with
# torch.serialization.get_unsafe_globals_in_checkpoint); all are plain data whose reconstruction runs no code.
SAFE_GLOBALS = frozenset(
    {
        "deepspeed.runtime.zero.config.ZeroStageEnum",
        "deepspeed.runtime.fp16.loss_scaler.LossScaler",
        "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
        "deepspeed.utils.tensor_fragment.fragment_address",
        "numpy._core.multiarray._reconstruct",
        "numpy.core.multiarray._reconstruct",
        "numpy.ndarray",
        "numpy.dtype",
        "numpy.dtypes.UInt32DType",
    }
)


def verify_checkpoint(checkpoint: Checkpoint, allowed_globals: tuple[str, ...] = ()) -> None:
    """Raise DamagedCheckpoint for a missing or resized file, UnsafeCheckpoint for a pickle that would run code.

    The pickle scan (first, so a planted file is refused rather than skipped as damaged) reads only each file's
    pickle, not its tensor data; sizes then catch truncation and lost files. `allowed_globals` extends
    SAFE_GLOBALS (checkpoint.allowed_globals, for types of a newer DeepSpeed).
    """
    allowed = SAFE_GLOBALS | set(allowed_globals)
    for path in sorted(checkpoint.path.rglob("*.pt")):
        if f"{UNIVERSAL_DIR}.partial" in path.relative_to(checkpoint.path).parts:
            continue  # an interrupted conversion: deleted and redone before use
        try:
            found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except OSError as error:
            if error.errno in TRANSIENT_ERRNOS:  # the storage, not the file: do not set a good checkpoint aside
                raise ValueError(f"cannot read {path} now ({error.strerror}); retry when the storage is back") from None
            raise DamagedCheckpoint(f"{path} is not a readable torch checkpoint: {_one_line(error)}") from None
        except Exception as error:
            raise DamagedCheckpoint(f"{path} is not a readable torch checkpoint: {_one_line(error)}") from None
        unsafe = sorted(set(found) - allowed)
        if unsafe:
            raise UnsafeCheckpoint(
                f"refusing to load {path}: its pickle would call {', '.join(unsafe)}, which a checkpoint of this "
                "trainer never holds (was the file replaced?). If these are plain-data types of a newer DeepSpeed, "
                "list them in checkpoint.allowed_globals"
            )
    for name, size in (checkpoint.files or {}).items():
        path = checkpoint.path / name
        if not path.is_file():
            raise DamagedCheckpoint(f"{path} is missing (saved with {size} bytes)")
        actual = path.stat().st_size
        if actual != size:
            raise DamagedCheckpoint(f"{path} is {actual} bytes, {size} when saved (truncated or replaced)")


def check_compatible(
    checkpoint: Checkpoint, model_config: dict[str, Any], tokenizer_fingerprint: str, model_class: str | None = None
) -> None:
    """Refuse, before anything is loaded, a checkpoint of another job, model shape or vocabulary, naming what
    differs (instead of DeepSpeed's hundred lines of size mismatches). Execution settings (dropout, attention
    implementation, recomputation, initialisation) may change on resume."""
    if model_class and checkpoint.model_class and checkpoint.model_class != model_class:
        raise ValueError(
            f"{checkpoint.path} is a checkpoint of a {checkpoint.model_class} (another job), this run trains a "
            f"{model_class}: resume from a checkpoint of this job, or start a new checkpoint.dir"
        )
    saved = checkpoint.tokenizer_fingerprint
    if saved is not None and saved != tokenizer_fingerprint:
        raise ValueError(
            f"{checkpoint.path} was trained with tokenizer {saved}, data.tokenizer is {tokenizer_fingerprint}: "
            "token ids would change meaning; point data.tokenizer at the original vocabulary"
        )
    if checkpoint.model_config is None:
        return
    differences = [
        f"{name}={checkpoint.model_config.get(name)!r} (this run: {value!r})"
        for name, value in json.loads(json.dumps(model_config)).items()
        if name not in RESUMABLE_MODEL_CHANGES
        and name in checkpoint.model_config
        and checkpoint.model_config[name] != value
    ]
    if differences:
        raise ValueError(
            f"cannot resume {checkpoint.path}: its model has {'; '.join(differences)}. Use the run's original "
            "model.flavor / model.overrides / model.init_from, or start a new checkpoint.dir"
        )


# Model config fields that do not change the saved tensors: they may differ between a checkpoint and its resume.
RESUMABLE_MODEL_CHANGES = frozenset(
    {
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "classifier_dropout",
        "initializer_range",
        "attn_implementation",
        "gradient_checkpointing",
    }
)


class CheckpointNotSaved(RuntimeError):
    """A save failed on some rank; the partial tag is gone and the previous complete checkpoint is intact."""


def save_checkpoint(
    engine: deepspeed.DeepSpeedEngine,
    directory: str | Path,
    step: int,
    client_state: dict[str, Any],
    rank_state: dict[str, Any],
    keep: int,
    record: dict[str, Any] | None = None,
) -> Path:
    """Collective: every rank calls it. Returns the tag directory once the checkpoint is complete.

    `record`: more facts for `complete` (model_config, tokenizer_fingerprint). Raises CheckpointNotSaved on every
    rank when any rank failed to write (DeepSpeed's save ends in a barrier: a rank whose write raised joins it,
    so the others are not left waiting for the collective timeout). Under ZeRO-3 DeepSpeed all-gathers after the
    writes, which a failed rank skips: the others then wait for the collective timeout and the attempt ends as a
    crash (requeued up to MAX_CRASHES) instead of exit 4.
    """
    directory = Path(directory)
    tag = tag_for(step)
    path = directory / tag
    if engine.global_rank == 0 and path.exists():  # leftovers of a crashed save of this step: never mix two saves
        stale = path.with_name(f".{tag}.stale-{time.time_ns()}")
        path.rename(stale)  # a rename cannot half-fail like a removal on NFS (.nfsXXXX files)
        shutil.rmtree(stale, ignore_errors=True)
    failure = ""
    try:
        engine.save_checkpoint(str(directory), tag=tag, client_state=client_state, save_latest=False)
    except Exception as error:  # torch.save reports a full disk as RuntimeError, open() as OSError
        failure = _describe_write_failure(error, path)
        dist.barrier()  # the barrier that ends DeepSpeed's save, which the healthy ranks are waiting in
    if not failure:
        try:
            (path / RANK_STATE_DIR).mkdir(parents=True, exist_ok=True)
            torch.save(rank_state, _rank_state_file(path, engine.global_rank))
        except Exception as error:
            failure = _describe_write_failure(error, path)
    failed = torch.tensor([float(bool(failure))], device=engine.device)  # NCCL takes device tensors only
    dist.all_reduce(failed)  # every rank's files are written, or some rank failed
    if failed.item():
        if failure:
            logger.error("rank %d: %s", engine.global_rank, failure)
        if engine.global_rank == 0:
            shutil.rmtree(path, ignore_errors=True)
        dist.barrier()
        previous = find_resume_checkpoint(directory)
        raise CheckpointNotSaved(
            f"checkpoint {step} not saved: {failure or 'another rank could not write it'}; the previous complete "
            f"checkpoint ({previous.path if previous else 'none'}) is kept"
        )
    if engine.global_rank == 0:
        meta = {"step": step, "world_size": dist.get_world_size(), "files": _file_sizes(path), **(record or {})}
        write_text_atomically(path / COMPLETE_FILE, json.dumps(meta))
        write_text_atomically(directory / LATEST_FILE, tag)
        _prune(directory, keep)
        logger.info("checkpoint %s complete", path)
    dist.barrier()  # nobody leaves (or exits) before the checkpoint is marked complete
    return path


def on_rank_zero(write: Callable[[], None], what: str) -> None:
    """Collective: rank 0 writes (a model export, results), every rank learns whether it worked. A failed write
    raises CheckpointNotSaved on all ranks (exit 4, as a failed checkpoint) instead of leaving the others waiting
    in the next collective until the timeout."""
    problem = [""]
    if dist.get_rank() == 0:
        try:
            write()
        except OSError as error:
            problem[0] = f"{what}: {_one_line(error)}"
    dist.broadcast_object_list(problem, src=0)
    if problem[0]:
        raise CheckpointNotSaved(problem[0])


def check_writable(directory: str | Path, rank: int, setting: str = "checkpoint.dir") -> None:
    """Create `directory` and write a probe file in it: an unwritable checkpoint (or logging) directory is found
    before the first step, not at the first save (ValueError naming `setting`)."""
    directory = Path(directory)
    probe = directory / f".write_probe.rank{rank:05d}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"probe")
        probe.unlink()
    except OSError as error:
        raise ValueError(f"{setting} {directory} is not writable: {error.strerror or error}") from None


def warn_if_short_of_space(directory: str | Path, parameters: int, keep: int) -> None:
    """Warn when the free space at `directory` is below what `keep` + 1 checkpoints need (about 16 bytes per
    parameter: weights, fp32 master copy and Adam's two moments)."""
    needed = (keep + 1) * parameters * CHECKPOINT_BYTES_PER_PARAMETER
    free = shutil.disk_usage(directory).free
    if free < needed:
        logger.warning(
            "checkpoint.dir %s has %.2f GB free; %d checkpoints of %.1fM parameters need about %.2f GB "
            "(checkpoint.keep=%d plus the one being written): saves may fail with a full disk",
            directory,
            free / 1e9,
            keep + 1,
            parameters / 1e6,
            needed / 1e9,
            keep,
        )


CHECKPOINT_BYTES_PER_PARAMETER = 16


def _describe_write_failure(error: Exception, path: Path) -> str:
    text = _one_line(error)
    full = getattr(error, "errno", None) == errno.ENOSPC or "No space left" in text
    with contextlib.suppress(OSError):
        full = full or shutil.disk_usage(path.parent).free < 1 << 20
    reason = "disk full" if full else f"{type(error).__name__}: {text}"
    return f"{reason} at {path}"


def _file_sizes(path: Path) -> dict[str, int]:
    """Every file of a tag directory (but `complete`) with its size, by path relative to the tag."""
    return {
        file.relative_to(path).as_posix(): file.stat().st_size
        for file in sorted(path.rglob("*"))
        if file.is_file() and file.name != COMPLETE_FILE
    }


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())[:400]


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
    """A rank's loader position and RNG states as saved (verified by `verify_checkpoint`: NumPy's RNG state
    needs weights_only=False)."""
    return torch.load(_rank_state_file(checkpoint.path, rank), map_location="cpu", weights_only=False)


def has_partitioned_optimizer(checkpoint: Checkpoint) -> bool:
    """Whether the optimizer state is split over the ranks (ZeRO 1-3: *_optim_states.pt files), so another world
    size needs the universal form; a ZeRO-0 checkpoint holds it whole and loads on any number of ranks."""
    return any(checkpoint.path.glob("*optim_states.pt"))


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
            raise ValueError(message)
        (checkpoint.path / "latest_universal").unlink(missing_ok=True)  # names the partial folder; unused
        partial.rename(target)
    while not target.is_dir():
        if failed.exists():
            raise ValueError(f"rank 0 could not convert {checkpoint.path}: see {failed}")
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


def write_text_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` at once (fsync'd): a reader sees the old file or the new one, never half."""
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
