"""Per-chunk progress records: what makes a killed run resumable without losing or duplicating anything.

A chunk's record (``progress/{prefix}-{chunk:06d}.json``) is rewritten atomically right after each of its
shards is renamed into place. It lists the chunk's finished shards, the rejects met up to the end of the last
one, and the cursor (file index within the chunk, page) where the next shard starts; ``done`` is set once the
whole chunk is written. A rerun trusts only what a record lists: shard files of the chunk that it does not
list (renamed just before a kill) and temporary files are removed, and work restarts at the cursor, so the
resumed chunk is byte-identical to an uninterrupted one.

The record also holds a digest of the settings and input files that determine the chunk's bytes, and the settings
themselves (tokenizer fingerprint, OCR configuration, shard limits, seed: build_shards._settings); resuming with
different ones is refused, naming each setting recorded and requested, instead of mixing two builds in one output
directory. Records written before the settings were kept name the digests only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from layoutlmv3.atomic_files import write_bytes
from layoutlmv3.data.shards import ManifestError
from layoutlmv3.json_files import JsonFileError, read_json_file

from .rejects import Reject
from .shard_writer import ShardRecord

PROGRESS_DIR = "progress"


class ProgressMismatch(RuntimeError):
    """The output directory holds a chunk built from other settings or inputs, or a progress record that cannot be
    read (the message names it)."""


@dataclass
class ChunkProgress:
    """How far a chunk got: its finished shards, rejects so far, where to go on, and whether it is complete."""

    digest: str
    shards: list[ShardRecord] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    cursor: tuple[int, int] = (0, 0)  # (file index within the chunk, first page of that file still to do)
    done: bool = False
    settings: dict[str, object] | None = None  # what the digest covers besides the files; None in older records

    def to_json(self) -> dict[str, object]:
        return {
            "digest": self.digest,
            "settings": self.settings,
            "shards": [shard.to_json() for shard in self.shards],
            "rejects": [reject.to_json() for reject in self.rejects],
            "cursor": list(self.cursor),
            "done": self.done,
        }

    @classmethod
    def from_json(cls, data: dict, where: str = "a progress record") -> ChunkProgress:
        """Raises ManifestError, KeyError, TypeError or ValueError for a record of the wrong shape."""
        file_index, page = data["cursor"]
        if not isinstance(data["digest"], str):
            raise TypeError(f"digest is {type(data['digest']).__name__}, not a string")
        settings = data.get("settings")
        if settings is not None and not isinstance(settings, dict):
            raise TypeError(f"settings is {type(settings).__name__}, not an object")
        return cls(
            digest=data["digest"],
            shards=ShardRecord.list_from_json(data, where),
            rejects=[Reject.from_json(reject) for reject in data["rejects"]],
            cursor=(int(file_index), int(page)),
            done=bool(data["done"]),
            settings=settings,
        )


def load_progress(path: Path, digest: str, settings: dict[str, object] | None = None) -> ChunkProgress:
    """The saved progress at ``path``, or a fresh one recording `settings`; raises ProgressMismatch if it was made
    by another build, naming what differs."""
    if not path.is_file():
        return ChunkProgress(digest, settings=settings)
    try:
        progress = ChunkProgress.from_json(read_json_file(path), str(path))
    except (ManifestError, JsonFileError) as error:  # these name the file
        raise ProgressMismatch(f"{error}; {_REBUILD}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ProgressMismatch(
            f"{path} is not a progress record ({type(error).__name__}: {error}); {_REBUILD}"
        ) from None
    if progress.digest != digest:
        raise ProgressMismatch(f"{path} {_difference(progress, digest, settings)}; {_SAME_SETTINGS}")
    return progress


_SAME_SETTINGS = "use the settings and input of the first run, or a fresh --out directory"


def _difference(recorded: ChunkProgress, digest: str, settings: dict[str, object] | None) -> str:
    """What differs between the build that wrote a record and this one: each setting by name, else the files."""
    if recorded.settings is None or settings is None:
        return f"was written with other settings or input files (digest {recorded.digest} != {digest})"
    names = sorted(set(recorded.settings) | set(settings))
    changed = [name for name in names if recorded.settings.get(name) != settings.get(name)]
    if not changed:
        return "was written for other input files (the chunk's files differ: the input tree or file list changed)"
    return "was built with other settings: " + "; ".join(
        f"{name} recorded {_shown(recorded.settings.get(name))}, requested {_shown(settings.get(name))}"
        for name in changed
    )


def _shown(value: object) -> str:
    return "(none)" if value is None else json.dumps(value, sort_keys=True)


_REBUILD = "delete it to rebuild that chunk (its shards are rewritten), or use a fresh --out directory"


def save_progress(path: Path, progress: ChunkProgress) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, json.dumps(progress.to_json(), ensure_ascii=False, indent=1).encode("utf-8"))
