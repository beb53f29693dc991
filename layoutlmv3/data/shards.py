"""Which shards make up a dataset, and how many samples each holds (the loader needs counts to size epochs)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import braceexpand

from layoutlmv3.data.remote import is_remote, read_json
from layoutlmv3.data.sample_format import (
    IMAGE_SIZE,
    MANIFEST_FILE,
    MANIFEST_FORMAT_VERSION,
    TOKENIZER_IMAGE_SIZE,
)


@dataclass(frozen=True)
class Shard:
    """One tar file; `samples` is None when the shard did not come from a manifest."""

    url: str
    samples: int | None = None


ShardSource = str | Path | Sequence[str | Path | Shard]


@dataclass(frozen=True)
class WeightedShards:
    """One corpus of a training mixture: its shards (anything `list_shards` takes) and its share of the samples
    (weights are relative: 0.8 and 0.2, or 4 and 1)."""

    shards: ShardSource
    weight: float


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Load a `manifest.json` (or the one inside a directory; or at an http(s)/pipe: URL), refusing formats this
    reader does not understand."""
    if isinstance(path, str) and is_remote(path):
        manifest = read_json(path)
    else:
        path = Path(path)
        if path.is_dir():
            path = path / MANIFEST_FILE
        manifest = json.loads(path.read_text())
    expected = {
        "format_version": MANIFEST_FORMAT_VERSION,
        "image_size": IMAGE_SIZE,
        "tokenizer_image_size": TOKENIZER_IMAGE_SIZE,
    }
    for field, value in expected.items():
        if manifest.get(field) != value:
            raise ValueError(f"{path}: {field} is {manifest.get(field)!r}, this reader needs {value!r}")
    return manifest


def list_shards(source: ShardSource) -> list[Shard]:
    """Expand a dataset directory / manifest path, a brace pattern or a list of paths into shards.

    A directory or `manifest.json` gives sample counts; a pattern or plain paths give none (`samples` is None).
    """
    if isinstance(source, str) and is_remote(source) and source.endswith(f"/{MANIFEST_FILE}"):
        base = source[: -len(MANIFEST_FILE)]
        return _listed_shards(source, read_manifest(source), lambda name: base + name)
    if isinstance(source, str | Path):
        path = Path(source)
        if path.is_dir() or path.name == MANIFEST_FILE:
            return _manifest_shards(path)
        shards = [Shard(url) for url in braceexpand.braceexpand(str(source))]
        _check_local_files_exist(str(source), shards)
        return shards
    return [item if isinstance(item, Shard) else Shard(str(item)) for item in source]


def _check_local_files_exist(source: str, shards: Sequence[Shard]) -> None:
    """A pattern of local paths must name existing files (a typo would otherwise surface as an empty epoch);
    URLs and `pipe:` commands are checked when read."""
    local = [shard.url for shard in shards if not is_remote(shard.url)]
    missing = [url for url in local if not Path(url).is_file()]
    if missing and len(missing) == len(shards):
        raise FileNotFoundError(
            f"shards {source!r}: no such file or directory (expected a dataset directory with {MANIFEST_FILE}, "
            "its manifest, or a brace pattern of .tar files)"
        )
    if missing:
        raise FileNotFoundError(f"shards {source!r}: {len(missing)} of {len(shards)} files missing, e.g. {missing[0]}")


def total_samples(shards: Sequence[Shard]) -> int | None:
    """Sum of the shards' sample counts; None when any count is unknown."""
    counts = [shard.samples for shard in shards]
    return None if None in counts else sum(counts)


def _manifest_shards(path: Path) -> list[Shard]:
    root = path if path.is_dir() else path.parent
    return _listed_shards(str(path), read_manifest(path), lambda name: str(root / name))


def _listed_shards(where: str, manifest: dict[str, Any], locate: Any) -> list[Shard]:
    shards = [Shard(locate(entry["name"]), int(entry["samples"])) for entry in manifest["shards"]]
    if not shards:
        raise ValueError(f"{where}: the manifest lists no shards")
    return shards
