"""Chunks: the fixed unit of work, naming and resumption, independent of how many array tasks share the job.

The input files are sorted, shuffled with ``--seed`` (so a shard mixes documents from across the corpus
rather than one scanning batch), and cut into chunks of ``--files-per-chunk`` consecutive files. Task ``i`` of
``n`` takes the ``i``-th of ``n`` contiguous, nearly equal runs of chunks, so concatenating the tasks' outputs in
task order gives exactly the one-task output, in the same order.

A chunk's pages are written, in order, to shards ``{prefix}-{chunk:06d}-{part:06d}.tar`` (sample_format's
``{prefix}-{index:06d}.tar`` with the chunk number in the prefix), a new part starting whenever the next
sample would exceed ``--max-samples-per-shard`` or ``--max-shard-bytes``. What a chunk produces depends only
on its files and the settings, so its shards are byte-identical whichever task, run or resume writes them, and
names of different chunks can never collide.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from layoutlmv3.atomic_files import temporaries_of
from layoutlmv3.data.sample_format import SHARD_PATTERN, sample_key

from .progress import PROGRESS_DIR, ChunkProgress, load_progress, save_progress
from .rejects import SAMPLE_TOO_LARGE, Reject
from .samples import Sample
from .shard_writer import ShardWriter, encode_members, finished_size


@dataclass(frozen=True)
class Chunk:
    """Consecutive input files (paths relative to the input root) written as one run of shards."""

    index: int
    sources: tuple[str, ...]


@dataclass(frozen=True)
class ShardLimits:
    """A shard closes before it would hold more than ``max_samples`` samples or ``max_bytes`` bytes."""

    max_samples: int
    max_bytes: int


def plan_chunks(sources: Sequence[str], files_per_chunk: int, seed: int) -> list[Chunk]:
    """Sorted, seed-shuffled input files cut into chunks: the same list for every task of a job."""
    order = sorted(sources)
    random.Random(seed).shuffle(order)
    return [
        Chunk(number, tuple(order[start : start + files_per_chunk]))
        for number, start in enumerate(range(0, len(order), files_per_chunk))
    ]


def key_collisions(sources: Sequence[str]) -> dict[str, str]:
    """Sources whose sample keys would repeat another's (keys flatten "." and "/"), mapped to the first one.

    Such a file is rejected as a whole rather than written with keys a reader would merge with another page's.
    """
    first: dict[str, str] = {}
    collisions = {}
    for source in sorted(sources):
        earlier = first.setdefault(sample_key(source, 0), source)
        if earlier != source:
            collisions[source] = earlier
    return collisions


def task_chunks(chunks: Sequence[Chunk], task_index: int, num_tasks: int) -> list[Chunk]:
    """Task ``task_index``'s contiguous share of the chunks (sizes differ by at most one chunk)."""
    if not 0 <= task_index < num_tasks:
        raise ValueError(f"task index {task_index} is not in 0..{num_tasks - 1}")
    start, stop = (len(chunks) * task_index) // num_tasks, (len(chunks) * (task_index + 1)) // num_tasks
    return list(chunks[start:stop])


def chunk_digest(settings: dict[str, object], chunk: Chunk) -> str:
    """Hash of everything that determines a chunk's bytes: the build settings and the chunk's files."""
    canonical = json.dumps({"settings": settings, "chunk": chunk.index, "files": chunk.sources}, sort_keys=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def chunk_prefix(prefix: str, chunk: int) -> str:
    return f"{prefix}-{chunk:06d}"


def progress_path(out: Path, prefix: str, chunk: int) -> Path:
    return out / PROGRESS_DIR / f"{chunk_prefix(prefix, chunk)}.json"


def lock_path(out: Path, prefix: str, chunk: int) -> Path:
    """The chunk's lock file (chunk_lock.py), beside its progress record."""
    return progress_path(out, prefix, chunk).with_suffix(".lock")


class ChunkBuilder:
    """Writes one chunk's page outcomes, in order, into size-bounded shards, saving progress after each shard."""

    def __init__(self, out: Path, prefix: str, chunk: Chunk, limits: ShardLimits, settings: dict[str, object]) -> None:
        self.out = out
        self.chunk = chunk
        self.limits = limits
        self.name = chunk_prefix(prefix, chunk.index)
        self.progress_path = progress_path(out, prefix, chunk.index)  # its killed writes: build() removes them
        digest = chunk_digest(settings, chunk)
        self.progress = load_progress(self.progress_path, digest, settings)
        if self.progress.done and not self._shards_intact():  # a listed shard vanished or changed: rebuild the chunk
            self.progress = ChunkProgress(digest, settings=settings)
        if not self.progress.done:
            self._remove_unlisted_files()
        self._shard: ShardWriter | None = None

    @property
    def done(self) -> bool:
        return self.progress.done

    def pending(self) -> list[tuple[int, int]]:
        """(file index within the chunk, first page to process) for every file that still has pages to do."""
        first, page = self.progress.cursor
        return [(index, page if index == first else 0) for index in range(first, len(self.chunk.sources))]

    def add_file(self, file_index: int, outcomes: Sequence[Sample | Reject]) -> None:
        """Take the outcomes of one file's pages (from the file's first pending page to its end), in page order."""
        for position, outcome in enumerate(outcomes):
            if isinstance(outcome, Reject):
                self.progress.rejects.append(outcome)
            else:
                after = (file_index, outcome.page + 1) if position + 1 < len(outcomes) else (file_index + 1, 0)
                self._add_sample(file_index, outcome, after)
        self.progress.cursor = (file_index + 1, 0)

    def finish(self) -> None:
        """Commit the last, partly filled shard and mark the chunk complete."""
        if self._shard is not None:
            self._commit(self.progress.cursor)
        self.progress.done = True
        save_progress(self.progress_path, self.progress)

    def _add_sample(self, file_index: int, sample: Sample, after: tuple[int, int]) -> None:
        members = encode_members(sample.key, sample.files)
        if finished_size(len(members)) > self.limits.max_bytes:
            detail = f"{finished_size(len(members))} bytes > --max-shard-bytes {self.limits.max_bytes}"
            self.progress.rejects.append(Reject(self.chunk.sources[file_index], sample.page, SAMPLE_TOO_LARGE, detail))
            return
        if self._shard is not None and self._shard.size_with(members) > self.limits.max_bytes:
            self._commit((file_index, sample.page))
        if self._shard is None:
            self._shard = ShardWriter(self._part_path(len(self.progress.shards)))
        self._shard.add(members)
        if self._shard.samples == self.limits.max_samples:
            self._commit(after)

    def _commit(self, cursor: tuple[int, int]) -> None:
        """Rename the open shard into place, then record it with the rejects so far and where to resume."""
        assert self._shard is not None
        self.progress.shards.append(self._shard.commit())
        self.progress.cursor = cursor
        save_progress(self.progress_path, self.progress)
        self._shard = None

    def _shards_intact(self) -> bool:
        return all(
            (path := self.out / shard.name).is_file() and path.stat().st_size == shard.bytes
            for shard in self.progress.shards
        )

    def _remove_unlisted_files(self) -> None:
        """Delete shards of this chunk past the saved record (renamed just before a kill) and temporaries.

        Parts are written one after another, so the leftovers are the parts from the first unlisted one on.
        """
        part = len(self.progress.shards)
        while (path := self._part_path(part)).exists() or temporaries_of(path):
            path.unlink(missing_ok=True)
            for temporary in temporaries_of(path):
                temporary.unlink(missing_ok=True)
            part += 1

    def _part_path(self, part: int) -> Path:
        return self.out / SHARD_PATTERN.format(prefix=self.name, index=part)

    def discard_open_shard(self) -> None:
        """Drop the temporary of a shard that will not be finished (e.g. the run is being interrupted)."""
        if self._shard is not None:
            self._shard.discard()
            self._shard = None
