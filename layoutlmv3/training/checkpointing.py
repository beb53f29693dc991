"""DeepSpeed checkpoints that are resumed from only once every rank has finished writing them.

Layout of `checkpoint.dir`:

    step00001000/                  one DeepSpeed tag: model and optimizer shards, written by DeepSpeed
        rank_state/rank00000.pt    what DeepSpeed keeps only for rank 0: each rank's loader position, RNG states
        complete                   JSON written last, by rank 0, after a barrier: {"step", "world_size", "files"
                                   (every file's size), "sha256" (every file's checksum), "model_config",
                                   "tokenizer_fingerprint", "model_class" (which job: pretraining, image tokenizer,
                                   fine-tuning)}
        universal/                 DeepSpeed universal checkpoint, made on demand to resume on another world size
    latest                         the newest complete tag, in DeepSpeed's format (zero_to_fp32 reads it)

Saving: every rank writes its DeepSpeed shards and rank state -> barrier -> rank 0 writes `complete`, replaces
`latest` atomically (layoutlmv3.atomic_files) and deletes checkpoints beyond the newest `keep` -> barrier. A crash
before `complete` leaves a tag that resuming ignores, and `latest` never names a tag without `complete`.
DeepSpeed's own `latest` update is switched off (save_latest=False): it would move before the other ranks are done.
A save that fails on any rank (disk full, quota, I/O error) is agreed on by all ranks, its partial tag deleted,
and `CheckpointNotSaved` raised: the previous complete checkpoint stays the one to resume from.

Every reader opens a checkpoint through `open_checkpoint` (resume, launch/convert.py, the probe), which verifies
before anything is unpickled: the `complete` record parses and has the right shape (fields, types, file names
inside the tag), every `.pt` file's pickle references only tensors and a short allow-list of types
(`SAFE_GLOBALS`: DeepSpeed loads with `weights_only=False`, which would run code planted in a checkpoint
directory), no `.pt` file is there that the save did not write, and every recorded file is present at its saved
size and checksum (a truncated copy, a lost file, a byte flipped in place are named). Rank 0 of a save hashes
the files with the other ranks (each a share), so a save costs one read of the checkpoint; resuming reads it once
on rank 0 (SHA-256 at about 1.5 GB/s a core). Records written before checksums were (sizes only), or before
sizes were, still verify as far as they go. `--resume auto` falls back to the newest checkpoint that verifies (a
damaged one, an unreadable record included, is renamed `TAG.damaged-YYYYmmddTHHMMSS` (`.1`, `.2`... when set aside
twice in a second) so a later save cannot mix with its files; never a fresh start from step 0); an unsafe file is
refused. Pruning after a save sets aside the same way an older tag whose record is damaged, once.

A checkpoint may come from elsewhere: nothing of it is read through a link (a link in a tag, or a tag that is a
link, is damage; links in paths a user gives are the user's), a tag read from `latest` or --tag must be a tag name,
the record is read at most MAX_RECORD_BYTES, and the allowed pickled types come from the user (run config or
command line), never from the checkpoint. Nothing in a tag but its pickles is loaded, and nothing is executed
(DeepSpeed's zero_to_fp32.py copy in checkpoint.dir is never run: its module is imported from DeepSpeed itself).

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
from pathlib import Path, PurePosixPath
from typing import Any

import deepspeed
import numpy as np
import torch
import torch.distributed as dist

from layoutlmv3.atomic_files import write_text
from layoutlmv3.checksums import ALGORITHM, file_digest
from layoutlmv3.json_files import JsonFileError, read_json_file

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
    `complete` records (None in checkpoints written before it did). Read with `read_checkpoint`, which checks
    the record's shape; `verify_checkpoint` checks the files against it."""

    path: Path
    step: int
    world_size: int
    files: dict[str, int] | None = field(default=None, compare=False)  # relative path -> size in bytes
    digests: dict[str, str] | None = field(default=None, compare=False)  # relative path -> hex SHA-256
    model_config: dict[str, Any] | None = field(default=None, compare=False)
    tokenizer_fingerprint: str | None = field(default=None, compare=False)
    model_class: str | None = field(default=None, compare=False)  # the trained module's class: which job wrote it

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def tag(self) -> str:
        return self.path.name


def tag_step(path: str | Path) -> int:
    """The step in a tag directory's name (step00001000 -> 1000)."""
    return int(TAG_PATTERN.fullmatch(Path(path).name).group(1))


MAX_RECORD_BYTES = 16 << 20  # a record lists a file per rank and kind: a few hundred kB at thousands of ranks


def read_checkpoint(path: str | Path) -> Checkpoint:
    """The checkpoint in tag directory `path`, from its `complete` record. A missing record is ValueError (a save
    was interrupted); a record that does not parse or has the wrong shape is DamagedCheckpoint, naming it, and so
    is a tag or record that is not its own (a link) or not a regular file. A record over MAX_RECORD_BYTES is
    damaged, refused from its size (one growing is never read past the cap)."""
    path = Path(path)
    marker = path / COMPLETE_FILE
    _refuse_link(path)  # resuming or pruning it would read or delete another directory's files
    try:
        marker.lstat()
    except (FileNotFoundError, NotADirectoryError):
        raise ValueError(
            f"{path} is not a complete checkpoint (no {COMPLETE_FILE} marker: a save was interrupted)"
        ) from None
    except OSError as error:
        raise _read_failure(marker, error) from None
    _refuse_link(marker)
    try:  # the one reader of JSON from data: a folder, FIFO or device refused by kind, a huge file by size, unread
        meta = read_json_file(marker, MAX_RECORD_BYTES)
    except JsonFileError as error:
        raise DamagedCheckpoint(f"{error} (the checkpoint's record is damaged)") from None
    except OSError as error:
        raise _read_failure(marker, error) from None
    return _checkpoint_from_record(path, marker, meta)


def _checkpoint_from_record(path: Path, marker: Path, meta: Any) -> Checkpoint:
    """`meta` checked field by field: a record edited, cut or overwritten by something else is damaged."""

    def wrong(what: str) -> DamagedCheckpoint:
        return DamagedCheckpoint(f"{marker} is not a valid checkpoint record: {what}")

    def whole(name: str, least: int) -> int:
        value = meta.get(name)
        if type(value) is not int or value < least:
            raise wrong(f"{name!r} must be a whole number >= {least}, got {_short(value)}")
        return value

    def optional(name: str, kind: type) -> Any:
        value = meta.get(name)
        if value is not None and not isinstance(value, kind):
            raise wrong(f"{name!r} must be {'an object' if kind is dict else 'a string'}, got {_short(value)}")
        return value

    if not isinstance(meta, dict):
        raise wrong(f"expected a JSON object, got {_short(meta)}")
    step, world_size = whole("step", 0), whole("world_size", 1)
    if TAG_PATTERN.fullmatch(path.name) and tag_step(path) != step:
        raise wrong(f"it records step {step}, its directory is {path.name}")
    files = optional("files", dict)
    for name, size in (files or {}).items():
        if not _inside_tag(name):
            raise wrong(f"file name {_short(name)} is not a path inside the checkpoint")
        if type(size) is not int or size < 0:
            raise wrong(f"the size of {name} must be a whole number >= 0, got {_short(size)}")
    digests = optional(ALGORITHM, dict)
    for name, digest in (digests or {}).items():
        if name not in (files or {}):
            raise wrong(f"{_short(name)} has a checksum but no recorded size")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise wrong(f"the {ALGORITHM} of {name} must be 64 hex digits, got {_short(digest)}")
    return Checkpoint(
        path,
        step,
        world_size,
        files,
        digests,
        optional("model_config", dict),
        optional("tokenizer_fingerprint", str),
        optional("model_class", str),
    )


def _inside_tag(name: Any) -> bool:
    """Whether a recorded file name is a plain relative path (no way out of the tag directory)."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        return False
    parts = PurePosixPath(name).parts
    return not PurePosixPath(name).is_absolute() and all(part not in ("", ".", "..") for part in parts)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def checkpoint_tags(directory: str | Path) -> list[Path]:
    """Tag directories under `directory` that hold a `complete` record, readable or not, oldest first (by the
    step in their names): what resuming and the probe consider, a damaged record included."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    tags = [p for p in directory.iterdir() if TAG_PATTERN.fullmatch(p.name) and _has_record(p)]
    return sorted(tags, key=tag_step)


def _has_record(path: Path) -> bool:
    """Whether tag directory `path` has a `complete` entry of any kind (a link or folder is a damaged record,
    named, not an incomplete save left unseen)."""
    return os.path.lexists(path / COMPLETE_FILE)


def complete_checkpoints(directory: str | Path) -> list[Checkpoint]:
    """Complete checkpoints under `directory` whose records are readable, oldest first (listing and pruning; an
    unreadable record is left alone here, and set aside as damaged by `--resume auto`)."""
    checkpoints = []
    for path in checkpoint_tags(directory):
        try:
            checkpoints.append(read_checkpoint(path))
        except ValueError as error:
            logger.warning("ignoring %s: %s", path, error)
    return checkpoints


def find_resume_checkpoint(directory: str | Path) -> Checkpoint | None:
    """The newest complete checkpoint; incomplete tags (a crash during a save) are ignored."""
    checkpoints = complete_checkpoints(directory)
    return checkpoints[-1] if checkpoints else None


def open_checkpoint(path: str | Path, allowed_globals: tuple[str, ...] = ()) -> Checkpoint:
    """The one way in: tag directory `path`'s record read and its files verified (`verify_checkpoint`) before
    anything of it is unpickled. DamagedCheckpoint, UnsafeCheckpoint or ValueError (no record) otherwise."""
    checkpoint = read_checkpoint(path)
    verify_checkpoint(checkpoint, allowed_globals)
    return checkpoint


def resolve_resume(resume: str, directory: str | Path, allowed_globals: tuple[str, ...] = ()) -> Checkpoint | None:
    """`auto`: the newest complete checkpoint that verifies, if any; `none`: start afresh; else a tag directory's
    path (which must verify). Damaged checkpoints met by `auto` are logged, renamed and skipped; a checkpoint
    holding unsafe pickles is refused (UnsafeCheckpoint) rather than skipped: someone planted or replaced it."""
    if resume == "auto":
        return _newest_verified(Path(directory), allowed_globals)
    tags = checkpoint_tags(directory)
    if resume == "none":
        if tags:
            raise ValueError(
                f"{directory} already holds checkpoints (newest: {tags[-1].name}); a fresh run would mix with "
                "them and prune them: pass --resume auto, or set checkpoint.dir to a new directory"
            )
        return None
    checkpoint = open_checkpoint(Path(resume).resolve(), allowed_globals)  # the user's path: its links are theirs
    if tags and tag_step(tags[-1]) > checkpoint.step:
        raise ValueError(
            f"{directory} holds checkpoints newer than {resume} (newest: {tags[-1].name}): this run's saves would "
            "be older than them and pruned as soon as written; pass --resume auto to go on from the newest, move "
            "the newer ones away to roll back, or set checkpoint.dir to a new directory to branch off"
        )
    return checkpoint


def _newest_verified(directory: Path, allowed_globals: tuple[str, ...]) -> Checkpoint | None:
    damaged = []
    for path in reversed(checkpoint_tags(directory)):
        try:
            checkpoint = open_checkpoint(path, allowed_globals)
        except DamagedCheckpoint as error:
            damaged.append(str(error))
            aside = _set_aside(path)
            logger.error("checkpoint %s is damaged, moved to %s and skipped: %s", path.name, aside, error)
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


def _set_aside(path: Path) -> Path:
    """Rename a damaged tag to TAG.damaged-TIME (kept as evidence; a rename is instant whatever its size, and a
    later save of the same step cannot mix with its files)."""
    stem = f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}"
    aside, count = path.with_name(stem), 1
    while aside.exists():  # set aside twice within a second (a copy of it put back, a quick requeue)
        aside, count = path.with_name(f"{stem}.{count}"), count + 1
    path.rename(aside)
    return aside


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
    """Raise UnsafeCheckpoint for a pickle that would run code, DamagedCheckpoint for a file missing, added,
    resized or changed since the save (ValueError when the storage, not the file, fails: retry later).

    First the tag's tree (`_own_files`): only folders and regular files, no links (nothing outside the tag is
    read or loaded through it) and no FIFOs or devices (a scan would block on them). Then the pickle scan (before
    the record's checks, so a planted file is refused rather than skipped as damaged) reads only each file's
    pickle, not its tensor data; then no `.pt` file may be there that the save did not record (DeepSpeed globs
    `*optim_states.pt`), and every recorded file must have its size and, when recorded, its checksum.
    `allowed_globals` extends SAFE_GLOBALS (checkpoint.allowed_globals, or --allow-global of convert.py and the
    probe, for types of a newer DeepSpeed); a checkpoint cannot widen it itself.
    """
    allowed = SAFE_GLOBALS | set(allowed_globals)
    files = _own_files(checkpoint.path)
    pickles = [name for name in files if name.endswith(".pt")]
    for name in pickles:
        path = checkpoint.path / name
        try:
            found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except OSError as error:
            raise _read_failure(path, error) from None
        except Exception as error:  # not a zip of torch.save, or opcodes the static scan does not read: never loaded
            raise DamagedCheckpoint(f"{path} is not a readable torch checkpoint: {_one_line(error)}") from None
        unsafe = sorted(set(found) - allowed)
        if unsafe:
            raise UnsafeCheckpoint(
                f"refusing to load {path}: its pickle would call {', '.join(unsafe)}, which a checkpoint of this "
                "trainer never holds (was the file replaced?). If these are plain-data types of a newer DeepSpeed, "
                f"allow them by name: {ALLOW_GLOBALS_HOW}"
            )
    if checkpoint.files is None:
        return  # written before `complete` recorded its files
    for name in pickles:
        if PurePosixPath(name).parts[0] not in _MADE_AFTER_THE_SAVE and name not in checkpoint.files:
            raise DamagedCheckpoint(
                f"{checkpoint.path / name} was not written by the save (not in {COMPLETE_FILE}): added since"
            )
    for name, size in checkpoint.files.items():
        path = checkpoint.path / name
        if name not in files:
            found = "is not a regular file" if os.path.lexists(path) else "is missing"
            raise DamagedCheckpoint(f"{path} {found} (saved as a file of {size} bytes)")
        actual = path.stat().st_size
        if actual != size:
            raise DamagedCheckpoint(f"{path} is {actual} bytes, {size} when saved (truncated or replaced)")
    for name, digest in (checkpoint.digests or {}).items():
        path = checkpoint.path / name
        try:
            actual = file_digest(path)
        except OSError as error:
            raise _read_failure(path, error) from None
        if actual != digest:
            raise DamagedCheckpoint(
                f"{path} differs from the file saved ({ALGORITHM} {actual[:12]}..., {digest[:12]}... when saved): "
                "corrupted or overwritten in place"
            )


# Where a user allows more pickled types (one sentence for every refusal: resume, convert.py, the probe).
ALLOW_GLOBALS_HOW = (
    "checkpoint.allowed_globals in the run config (resuming), --allow-global NAME (launch/convert.py, "
    "launch/probe_checkpoints.py); never from the checkpoint itself"
)


def _own_files(tag: Path) -> set[str]:
    """Every regular file under tag directory `tag` (relative POSIX paths), walked without following links.
    DamagedCheckpoint for the tag or anything in it that is a link (to /etc/passwd, to a pickle planted
    elsewhere, to a folder the scan would not enter but DeepSpeed would load from) or not a folder or regular
    file (a FIFO or device would block the scan for ever), and for a folder named like a pickle. An interrupted
    universal conversion is left out (deleted and redone before use)."""
    _refuse_link(tag)
    files: set[str] = set()
    pending = [(tag, "")]
    while pending:
        folder, prefix = pending.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as error:
            raise _read_failure(folder, error) from None
        for entry in entries:
            name = f"{prefix}{entry.name}"
            _refuse_link(Path(entry.path))
            if entry.is_dir(follow_symlinks=False) and not entry.name.endswith(".pt"):
                if name != f"{UNIVERSAL_DIR}.partial":
                    pending.append((Path(entry.path), f"{name}/"))
            elif entry.is_file(follow_symlinks=False):
                files.add(name)
            else:
                raise DamagedCheckpoint(f"{entry.path} is not a regular file (a FIFO, device, socket or folder)")
    return files


def _refuse_link(path: Path) -> None:
    """DamagedCheckpoint when `path` is a symbolic link: nothing of a checkpoint is read (or deleted) through one."""
    if path.is_symlink():
        target = os.readlink(path).replace("\n", "\\n")
        raise DamagedCheckpoint(
            f"{path} is a symbolic link (to {target[:200]}): a checkpoint's folder and files are its own, never read "
            "through links"
        )


def _remove_tag(path: Path) -> None:
    """Delete a tag directory; a link is removed, never what it points to (shutil.rmtree refuses links)."""
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path)


# Folders a tag gets after its save (the universal form made on demand to resume on another world size).
_MADE_AFTER_THE_SAVE = frozenset({UNIVERSAL_DIR, f"{UNIVERSAL_DIR}.partial"})


def _read_failure(path: Path, error: OSError) -> ValueError:
    """A file that cannot be read: the storage (EIO, a stale handle: do not set a good checkpoint aside, retry)
    or the file (damaged)."""
    if error.errno in TRANSIENT_ERRNOS:
        return ValueError(f"cannot read {path} now ({error.strerror}); retry when the storage is back")
    return DamagedCheckpoint(f"{path} is not readable: {_one_line(error)}")


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
        with contextlib.suppress(OSError):
            _remove_tag(stale)
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
    if not failed.item():
        files, failure = _file_records(path, engine.global_rank, dist.get_world_size())
    if failed.item() or failure:
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
        sizes = {name: size for name, (size, _) in files.items()}
        digests = {name: digest for name, (_, digest) in files.items()}
        meta = {"step": step, "world_size": dist.get_world_size(), "files": sizes, ALGORITHM: digests}
        write_text(path / COMPLETE_FILE, json.dumps({**meta, **(record or {})}))
        write_text(directory / LATEST_FILE, tag)
        _prune(directory, keep)
        logger.info("checkpoint %s complete", path)
    dist.barrier()  # nobody leaves (or exits) before the checkpoint is marked complete
    return path


def _file_records(path: Path, rank: int, world_size: int) -> tuple[dict[str, tuple[int, str]], str]:
    """Collective: every file of the saved tag (but `complete`) with its size and checksum, each rank reading a
    share (rank 0 lists them); returns them and "" on every rank, or a failure some rank met reading one back."""
    listing: list[list[str] | None] = [_saved_files(path) if rank == 0 else None]
    dist.broadcast_object_list(listing, src=0)
    share: dict[str, tuple[int, str]] = {}
    problem = ""
    for name in (listing[0] or [])[rank::world_size]:
        try:
            share[name] = ((path / name).stat().st_size, file_digest(path / name))
        except OSError as error:
            problem = f"cannot read back {path / name}: {_one_line(error)}"
            break
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, (share, problem))
    problems = [text for _, text in gathered if text]
    files = {name: record for records, _ in gathered for name, record in records.items()}
    return dict(sorted(files.items())), problems[0] if problems else ""


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


def _saved_files(path: Path) -> list[str]:
    """Every file of a tag directory (but `complete`), by path relative to the tag."""
    return [
        file.relative_to(path).as_posix()
        for file in sorted(path.rglob("*"))
        if file.is_file() and file.name != COMPLETE_FILE
    ]


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
        command = [sys.executable, "-P", "-m", "deepspeed.checkpoint.ds_to_universal"]  # -P: never import from the cwd
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


def _prune(directory: Path, keep: int) -> None:
    """Delete complete checkpoints beyond the newest `keep`, and incomplete ones older than the newest complete
    (left by crashes; a newer incomplete one cannot exist while this process is the writer). A damaged one (a
    record that cannot be read, a link) is set aside once as TAG.damaged-TIME, as resuming would, instead of being
    warned about at every save; one that cannot be read now (the storage) is left for the next prune."""
    complete = []
    for path in checkpoint_tags(directory):
        try:
            complete.append(read_checkpoint(path))
        except DamagedCheckpoint as error:
            try:
                logger.error("checkpoint %s is damaged, moved to %s: %s", path.name, _set_aside(path), error)
            except OSError as failure:  # renaming is not deleting: a failure costs a warning at the next save
                logger.warning("checkpoint %s is damaged (%s) and cannot be moved aside: %s", path, error, failure)
        except ValueError as error:
            logger.warning("leaving %s for now: %s", path, error)
    for checkpoint in complete[:-keep]:
        _remove_tag(checkpoint.path)
        logger.info("deleted old checkpoint %s", checkpoint.path)
    newest = complete[-1].step
    for path in directory.iterdir():
        match = TAG_PATTERN.fullmatch(path.name)
        if match and int(match.group(1)) < newest and not _has_record(path):
            _remove_tag(path)
            logger.info("deleted incomplete checkpoint %s", path)
