"""Which shards make up a dataset, how many samples each holds (the loader needs counts to size epochs), and what
each shard file is (its size and sha256, checked as it is read).

A manifest is data, not code: its shard names are joined to the manifest's directory, URL or `pipe:` command, so
each must be a plain relative file name (`check_shard_name`): no path that leaves the manifest's directory, no
character a shell would read. A manifest that breaks this, or whose entries have the wrong shape, is refused
whole with a `ManifestError` naming it and the entry.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import braceexpand

from layoutlmv3.data.remote import DEFAULT_RETRY, RetryPolicy, is_remote, read_json
from layoutlmv3.data.sample_format import (
    IMAGE_SIZE,
    MANIFEST_FILE,
    MANIFEST_FORMAT_VERSION,
    TOKENIZER_IMAGE_SIZE,
)
from layoutlmv3.json_files import read_json_file

MAX_SHARD_NAME = 1024
MAX_COUNT = 2**53
TAR_BLOCK = 512  # a sample is at least one tar member, a member at least one header block
_NAME_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")  # no leading dot ('..', hidden) or dash (an option)
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ManifestError(ValueError):
    """A manifest (or a task manifest, a progress record) whose content is not what a reader can trust: the
    message names the file or URL and the entry."""


@dataclass(frozen=True)
class Shard:
    """One tar file; `samples` (and `bytes`, `sha256`) are None when not recorded (a shard from a pattern, a
    manifest written before sizes or checksums were)."""

    url: str
    samples: int | None = None
    bytes: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class ShardEntry:
    """One manifest entry, checked: a plain relative name, a sample count, and the size and sha256 if recorded."""

    name: str
    samples: int
    bytes: int | None = None
    sha256: str | None = None


def check_shard_name(name: object) -> str | None:
    """Why `name` cannot be a shard's name in a manifest, or None when it can: a relative path of parts made of
    letters, digits, `.`, `_` and `-` (none starting with `.` or `-`), ending in `.tar`. Such a name stays inside
    the manifest's directory and means nothing to a shell."""
    if not isinstance(name, str):
        return f"a name must be a string, got {type(name).__name__}"
    if len(name) > MAX_SHARD_NAME:
        return f"a name of {len(name)} characters (at most {MAX_SHARD_NAME})"
    if not name.endswith(".tar"):
        return "a shard name must end in .tar"
    if not all(_NAME_PART.fullmatch(part) for part in name.split("/")):
        return (
            "not a plain relative file name (allowed: letters, digits, '.', '_', '-' and '/' between parts; no "
            "absolute path, no '..', no part starting with '.' or '-', no space or shell character)"
        )
    return None


def parse_shard_entry(entry: object, where: str, index: int) -> ShardEntry:
    """Entry `index` of the shard list at `where` (a manifest, a progress record), checked: ManifestError naming
    both otherwise."""
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: shard entry {index} is not an object: {_short(entry)}")
    name = entry.get("name")
    if (problem := check_shard_name(name)) is not None:
        raise ManifestError(f"{where}: shard entry {index} has name {_short(name)}: {problem}; refused whole")
    samples, size, sha256 = entry.get("samples"), entry.get("bytes"), entry.get("sha256")
    if not _count(samples):
        raise ManifestError(
            f"{where}: shard {name}: samples must be an integer >= 0, got {_short(samples)} (at most 2**53)"
        )
    if size is not None and not _count(size):
        raise ManifestError(f"{where}: shard {name}: bytes must be an integer >= 0, got {_short(size)} (at most 2**53)")
    if size is not None and samples * TAR_BLOCK > size:
        raise ManifestError(
            f"{where}: shard {name}: {samples} samples cannot fit in {size} bytes (each takes a {TAR_BLOCK}-byte "
            "tar header at least): the entry is wrong"
        )
    if sha256 is not None and not (isinstance(sha256, str) and _SHA256.fullmatch(sha256)):
        raise ManifestError(f"{where}: shard {name}: sha256 must be 64 lowercase hex digits, got {_short(sha256)}")
    return ShardEntry(name, samples, size, sha256)


def manifest_entries(manifest: object, where: str, at_least_one: bool = True) -> list[ShardEntry]:
    """The checked shard entries of a parsed manifest (or progress record): its "shards" list."""
    shards = manifest.get("shards") if isinstance(manifest, dict) else None
    if not isinstance(shards, list):
        raise ManifestError(f"{where}: 'shards' must be a list of shard entries, got {_short(shards)}")
    if not shards and at_least_one:
        raise ManifestError(f"{where}: the manifest lists no shards")
    entries = [parse_shard_entry(entry, where, index) for index, entry in enumerate(shards)]
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:  # read twice per epoch: its pages would silently weigh double
            raise ManifestError(f"{where}: shard {entry.name} is listed twice; refused whole")
        seen.add(entry.name)
    return entries


def _count(value: object) -> bool:
    """A count a manifest may record: an int (not a bool, not a float) in 0..2**53 (exact in any JSON reader; a
    sum over a million shards stays far inside int64)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


ShardSource = str | Path | Sequence[str | Path | Shard]


@dataclass(frozen=True)
class WeightedShards:
    """One corpus of a training mixture: its shards (anything `list_shards` takes) and its share of the samples
    (weights are relative: 0.8 and 0.2, or 4 and 1)."""

    shards: ShardSource
    weight: float


def read_manifest(path: str | Path, retry: RetryPolicy = DEFAULT_RETRY) -> dict[str, Any]:
    """Load a `manifest.json` (or the one inside a directory; or at an http(s)/pipe: URL, read with `retry`: the
    run's attempts and deadline), refusing formats this reader does not understand."""
    if isinstance(path, str) and is_remote(path):
        manifest = read_json(path, retry)
    else:
        path = Path(path)
        if path.is_dir():
            path = path / MANIFEST_FILE
        manifest = read_json_file(path)  # refuses a FIFO or device by kind, a file over 256 MiB by size, unread
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path}: not a manifest (a JSON object expected, got {type(manifest).__name__})")
    expected = {
        "format_version": MANIFEST_FORMAT_VERSION,
        "image_size": IMAGE_SIZE,
        "tokenizer_image_size": TOKENIZER_IMAGE_SIZE,
    }
    for field, value in expected.items():
        if manifest.get(field) != value:
            raise ManifestError(f"{path}: {field} is {_short(manifest.get(field))}, this reader needs {value!r}")
    if not isinstance(manifest.get("tokenizer"), str):
        raise ManifestError(
            f"{path}: tokenizer must be the tokenizer's fingerprint, got {_short(manifest.get('tokenizer'))}"
        )
    return manifest


def list_shards(source: ShardSource, retry: RetryPolicy = DEFAULT_RETRY) -> list[Shard]:
    """Expand a dataset directory / manifest path, a brace pattern or a list of paths into shards.

    A directory or `manifest.json` gives sample counts (and sizes, checksums); a pattern or plain paths give none
    (`samples` is None). A remote manifest is read with `retry` (the run's data.remote_* settings).
    """
    if isinstance(source, str) and is_remote(source) and source.endswith(f"/{MANIFEST_FILE}"):
        base = source[: -len(MANIFEST_FILE)]
        quote = shlex.quote if source.startswith("pipe:") else str  # checked names need none: a second guard
        return _listed_shards(source, read_manifest(source, retry), lambda name: base + quote(name))
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
    # Checked names are plain relative paths: this string join gives what str(root / name) does, 20x faster.
    prefix = "" if str(root) == "." else str(root).rstrip("/") + "/"
    return _listed_shards(str(root / MANIFEST_FILE), read_manifest(path), lambda name: prefix + name)


def _listed_shards(where: str, manifest: dict[str, Any], locate: Callable[[str], str]) -> list[Shard]:
    """The manifest's shards, each located from its (checked) name."""
    return [
        Shard(locate(entry.name), entry.samples, entry.bytes, entry.sha256)
        for entry in manifest_entries(manifest, where)
    ]
