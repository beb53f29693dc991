"""Write one webdataset shard (a plain tar) atomically and reproducibly, knowing its exact size before each add.

Members are written as ``{key}.{file}`` with constant metadata (mtime 0, uid/gid 0, no user/group names, mode
0444; PAX headers only where a name needs them), so equal samples give byte-identical shards. The tar is built
in a hidden temporary file beside the shard (``.NAME.tar.HOST.PID.tmp``, which no ``*.tar`` glob or manifest names) and
renamed into place only once complete and synced, so a killed run never leaves a partial shard under a
shard's name. Every member's size is known before it is written, which lets the caller keep a shard under a
byte limit exactly.
"""

from __future__ import annotations

import os
import socket
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

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


def temporary_path(path: Path) -> Path:
    """Where ``path`` is written before it is complete: hidden, and unique to this host and process, so two
    writers of one name (which the chunk locks prevent, and which would be a bug) can never share a temporary."""
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")


def temporaries_of(path: Path) -> list[Path]:
    """Temporary files of ``path`` left by any process (e.g. one that was killed)."""
    return _temporaries_in(path.parent, {path.name})


def remove_temporaries_of(paths: Iterable[Path]) -> list[Path]:
    """Delete the temporaries any process left of these files (killed runs), listing each folder once however many
    files it holds; returns what was deleted. Only for the files' one writer (under their locks): a live writer's
    temporary looks the same."""
    names = _names_by_folder(paths)
    stale = sorted(temporary for folder, wanted in names.items() for temporary in _temporaries_in(folder, wanted))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def remove_dead_temporaries_of(paths: Iterable[Path]) -> list[Path]:
    """Delete the temporaries of these files that processes of this host left and that no longer run (a killed
    run's); returns what was deleted. For writers with no lock that spans hosts (words files beside the user's
    pages): another host's temporary, or a live process's, may be a write in progress, and is left alone."""
    names = _names_by_folder(paths)
    host = socket.gethostname()
    stale = []
    for folder, wanted in names.items():
        for temporary in _temporaries_in(folder, wanted):
            writer, _, pid = temporary.name[: -len(".tmp")].rpartition(".")
            if writer.endswith(f".{host}") and pid.isdigit() and not _running(int(pid)):
                temporary.unlink(missing_ok=True)
                stale.append(temporary)
    return sorted(stale)


def _names_by_folder(paths: Iterable[Path]) -> dict[Path, set[str]]:
    """The files' names grouped by folder: each folder is listed once, however many files it holds."""
    names: dict[Path, set[str]] = {}
    for path in paths:
        names.setdefault(path.parent, set()).add(path.name)
    return names


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _temporaries_in(folder: Path, names: set[str]) -> list[Path]:
    """`temporary_path`'s files of any of `names` in `folder`: ``.{name}.{host}.{pid}.tmp`` (a host may hold dots)."""
    if not folder.is_dir():
        return []
    found = []
    for entry in os.scandir(folder):
        stem = entry.name[1:-4] if entry.name.startswith(".") and entry.name.endswith(".tmp") else ""
        if any(stem[:cut] in names for cut, char in enumerate(stem) if char == "."):
            found.append(folder / entry.name)
    return sorted(found)


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
        self._file = open(temporary_path(path), "wb")  # noqa: SIM115 (closed by commit/discard)

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
            temporary_path(self.path).unlink(missing_ok=True)
            raise ShardSizeMismatch(f"{self.path}: wrote {written} bytes, expected {size}; not published")
        os.replace(temporary_path(self.path), self.path)
        _sync_directory(self.path.parent)
        return ShardRecord(self.path.name, self.samples, size, self._digest.hexdigest())

    def discard(self) -> None:
        self._file.close()
        temporary_path(self.path).unlink(missing_ok=True)


def _sync_directory(directory: Path) -> None:
    """Persist a rename, so a crash right after it cannot resurrect the temporary name."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` all at once (progress records, manifests): readers never see half a file.
    A write that fails (disk full, a signal raised as an exception) takes its temporary with it; only a kill
    leaves one, for `remove_temporaries_of` on the next run."""
    temporary = temporary_path(path)
    try:
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
