"""Per-chunk progress records: what makes a killed run resumable without losing or duplicating anything.

A chunk's record (``progress/{prefix}-{chunk:06d}.json``) is rewritten atomically right after each of its
shards is renamed into place. It lists the chunk's finished shards, the rejects met up to the end of the last
one, and the cursor (file index within the chunk, page) where the next shard starts; ``done`` is set once the
whole chunk is written. A rerun trusts only what a record lists: shard files of the chunk that it does not
list (renamed just before a kill) and temporary files are removed, and work restarts at the cursor, so the
resumed chunk is byte-identical to an uninterrupted one.

The record also holds a digest of the settings and input files that determine the chunk's bytes; resuming
with different ones is refused instead of mixing two builds in one output directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .rejects import Reject
from .shard_writer import ShardRecord, write_file_atomically

PROGRESS_DIR = "progress"


class ProgressMismatch(RuntimeError):
    """The output directory holds a chunk built from other settings or inputs."""


@dataclass
class ChunkProgress:
    """How far a chunk got: its finished shards, rejects so far, where to go on, and whether it is complete."""

    digest: str
    shards: list[ShardRecord] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    cursor: tuple[int, int] = (0, 0)  # (file index within the chunk, first page of that file still to do)
    done: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "digest": self.digest,
            "shards": [shard.to_json() for shard in self.shards],
            "rejects": [reject.to_json() for reject in self.rejects],
            "cursor": list(self.cursor),
            "done": self.done,
        }

    @classmethod
    def from_json(cls, data: dict) -> ChunkProgress:
        file_index, page = data["cursor"]
        return cls(
            digest=data["digest"],
            shards=[ShardRecord.from_json(shard) for shard in data["shards"]],
            rejects=[Reject.from_json(reject) for reject in data["rejects"]],
            cursor=(int(file_index), int(page)),
            done=bool(data["done"]),
        )


def load_progress(path: Path, digest: str) -> ChunkProgress:
    """The saved progress at ``path``, or a fresh one; raises ProgressMismatch if it was made by another build."""
    if not path.is_file():
        return ChunkProgress(digest)
    progress = ChunkProgress.from_json(json.loads(path.read_text(encoding="utf-8")))
    if progress.digest != digest:
        raise ProgressMismatch(
            f"{path} was written with other settings or input files (digest {progress.digest} != {digest}); "
            "use the settings of the first run, or a fresh --out directory"
        )
    return progress


def save_progress(path: Path, progress: ChunkProgress) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomically(path, json.dumps(progress.to_json(), ensure_ascii=False, indent=1).encode("utf-8"))
