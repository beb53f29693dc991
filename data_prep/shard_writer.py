"""Write one webdataset shard (a plain tar) atomically and reproducibly, knowing its exact size before each add.

Members are written as ``{key}.{file}`` with constant metadata (mtime 0, uid/gid 0, no user/group names, mode
0444; PAX headers only where a name needs them), so equal samples give byte-identical shards. The tar is built
in a hidden temporary file beside the shard (`layoutlmv3.atomic_files`: no ``*.tar`` glob or manifest names it) and
renamed into place only once complete and synced, so a killed run never leaves a partial shard under a
shard's name. Every member's size is known before it is written, which lets the caller keep a shard under a
byte limit exactly.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from layoutlmv3.atomic_files import rename_into_place, temporary_path
from layoutlmv3.checksums import StreamDigest
from layoutlmv3.data.shards import ManifestError, ShardEntry, manifest_entries, parse_shard_entry

BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # tar files are padded to a multiple of this, like GNU tar and Python's tarfile
END_OF_ARCHIVE = 2 * BLOCK
TAR_FORMAT = tarfile.PAX_FORMAT
TAR_ENCODING = "utf-8"


@dataclass(frozen=True)
class ShardRecord:
    """A finished shard, as listed in the manifest: its size and sha256 let a reader tell it from another file
    under its name (`sha256` is None only in records written before checksums were)."""

    name: str
    samples: int
    bytes: int
    sha256: str | None = None

    def to_json(self) -> dict[str, object]:
        record: dict[str, object] = {"name": self.name, "samples": self.samples, "bytes": self.bytes}
        if self.sha256 is not None:
            record["sha256"] = self.sha256
        return record

    @classmethod
    def from_json(cls, data: object, where: str = "a shard record", index: int = 0) -> ShardRecord:
        """A record read back (a task manifest, a progress record), checked like a manifest's entries by the
        loader; ManifestError naming `where` otherwise."""
        return cls._of(parse_shard_entry(data, where, index), where)

    @classmethod
    def list_from_json(cls, data: object, where: str) -> list[ShardRecord]:
        """The "shards" list of a task manifest or progress record (possibly empty), checked."""
        return [cls._of(entry, where) for entry in manifest_entries(data, where, at_least_one=False)]

    @classmethod
    def _of(cls, entry: ShardEntry, where: str) -> ShardRecord:
        if entry.bytes is None:
            raise ManifestError(f"{where}: shard {entry.name} has no size ('bytes')")
        return cls(entry.name, entry.samples, entry.bytes, entry.sha256)


class ShardSizeMismatch(RuntimeError):
    """A shard's file is not the size its record says: it is never renamed into place or listed."""


def encode_members(key: str, files: dict[str, bytes]) -> bytes:
    """The tar members of one sample (headers, data, block padding), files in sorted order as webdataset does."""
    parts = []
    for suffix in sorted(files):
        data = files[suffix]
        info = tarfile.TarInfo(f"{key}.{suffix}")
        info.size, info.mtime, info.mode = len(data), 0, 0o444
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        parts += [info.tobuf(TAR_FORMAT, TAR_ENCODING, "surrogateescape"), data, bytes(-len(data) % BLOCK)]
    return b"".join(parts)


def finished_size(member_bytes: int) -> int:
    """Size of a tar holding ``member_bytes`` of members, once closed (end-of-archive blocks + record padding)."""
    return -(-(member_bytes + END_OF_ARCHIVE) // RECORD) * RECORD


class ShardWriter:
    """One shard being filled: ``add`` samples, then ``commit`` (rename into place) or ``discard``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.samples = 0
        self._member_bytes = 0
        self._digest = StreamDigest()  # of the bytes as written: the record's checksum without a second read
        self._temporary = temporary_path(path)
        self._file = open(self._temporary, "wb")  # noqa: SIM115 (closed by commit/discard)

    @property
    def size(self) -> int:
        """Size of the shard if it were committed now."""
        return finished_size(self._member_bytes)

    def size_with(self, members: bytes) -> int:
        """Size of the shard if it were committed after adding ``members`` (see encode_members)."""
        return finished_size(self._member_bytes + len(members))

    def add(self, members: bytes) -> None:
        self._file.write(members)
        self._digest.update(members)
        self._member_bytes += len(members)
        self.samples += 1

    def commit(self) -> ShardRecord:
        """Finish the tar, make it durable, and give it its final name (atomically)."""
        size = self.size
        end = bytes(size - self._member_bytes)
        self._file.write(end)
        self._digest.update(end)
        self._file.flush()
        os.fsync(self._file.fileno())
        written = os.fstat(self._file.fileno()).st_size
        self._file.close()
        if written != size:
            self._temporary.unlink(missing_ok=True)
            raise ShardSizeMismatch(f"{self.path}: wrote {written} bytes, expected {size}; not published")
        rename_into_place(self._temporary, self.path)
        return ShardRecord(self.path.name, self.samples, size, self._digest.hexdigest())

    def discard(self) -> None:
        self._file.close()
        self._temporary.unlink(missing_ok=True)
