"""Files and folders that appear whole or not at all, for every writer whose output a reader or a resume trusts
(weights and tokenizer files, checkpoint records, shards and manifests, conversions, the kept best model, the image
tokenizer's output, synthetic pages).

A file is written under a hidden temporary beside it, ``.NAME.HOST.PID-TOKEN.tmp`` (no ``*.json``/``*.tar`` glob or
manifest names it; unique to the host, the process and the call, so two writers of one name, threads included, never
share one), flushed to disk, renamed over NAME, and the folder synced so that a crash cannot bring the temporary
name back. A write that fails (a full disk, an exception) removes its temporary; only a kill leaves one, which the
name's writer removes on its next run: `remove_temporaries_of` under a lock, `remove_dead_temporaries_of` (this
host's writers that are gone) without one.

A folder is filled under such a temporary name, synced, and swapped in: the old folder is renamed aside, the new
one renamed in, the old one deleted. A reader finds the old folder or the new one, never a mix; a kill between the
two renames leaves NAME absent (both folders are then temporaries, removed by the next swap).

No project imports: the model package and data_prep use it alike.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

TEMPORARY_SUFFIX = ".tmp"
NAME_MAX = 255  # bytes in one file name (ext4, xfs, NFS)


def temporary_path(path: Path) -> Path:
    """A fresh hidden name beside `path` to write it under: ``.NAME.HOST.PID-TOKEN.tmp``."""
    stem = _temporary_stem(path.name)
    return path.with_name(f".{stem}.{socket.gethostname()}.{os.getpid()}-{secrets.token_hex(4)}{TEMPORARY_SUFFIX}")


def _temporary_stem(name: str) -> str:
    """`name` as its temporaries spell it: whole, or, where the temporary's name would pass NAME_MAX (a page named
    at length), cut and followed by a digest of the whole, so a name the file system takes can always be written."""
    room = NAME_MAX - len(f"..{socket.gethostname()}.{'9' * 10}-{'f' * 8}{TEMPORARY_SUFFIX}".encode())
    if len(name.encode()) <= room:
        return name
    digest = "~" + hashlib.sha256(name.encode()).hexdigest()[:16]
    cut = name
    while len((cut + digest).encode()) > room:
        cut = cut[:-1]
    return cut + digest


def target_of_temporary(path: Path) -> Path | None:
    """The file a temporary of this host's was to become (to name it in an error), None for any other name."""
    host = re.escape(socket.gethostname())
    match = re.fullmatch(rf"\.(.+)\.{host}\.\d+(?:-[0-9a-f]+)?{re.escape(TEMPORARY_SUFFIX)}", path.name)
    return path.with_name(match.group(1)) if match else None


def write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data` at once: a reader sees the old file or the new one, never half."""
    with file_in_place(path) as temporary, open(temporary, "wb") as file:
        file.write(data)


def write_text(path: Path, text: str) -> None:
    """`write_bytes` of `text` in UTF-8."""
    write_bytes(path, text.encode("utf-8"))


@contextmanager
def file_in_place(path: Path) -> Iterator[Path]:
    """Yields a temporary name beside `path` for the caller to write (safetensors, PIL, torch.save take a name);
    once the block ends the file is synced and renamed to `path`. A block that raises takes the temporary with it
    and leaves `path` as it was."""
    temporary = temporary_path(path)
    try:
        yield temporary
        _sync(temporary)
        rename_into_place(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        _raise_naming(error, temporary, path)


def rename_into_place(temporary: Path, path: Path) -> None:
    """Give a complete, synced temporary (a `temporary_path` a writer kept open, like a shard) its name, durably."""
    os.replace(temporary, path)
    _sync(path.parent)


@contextmanager
def directory_in_place(path: Path) -> Iterator[Path]:
    """Yields an empty temporary folder beside `path` for the caller to fill; once the block ends its files are
    synced and it replaces `path` (an earlier folder there is kept until the new one is in place, then deleted).
    A block that raises takes the temporary folder with it and leaves `path` as it was. Folders this host's
    killed writers left beside `path` are removed first (another host's may be a swap in progress). A link to a
    folder stays a link: the folder it names is replaced. A file at `path` is refused, not replaced by a folder."""
    path = path.resolve() if path.is_symlink() else path
    with suppress(FileNotFoundError):  # one look: a swap of another writer may take the folder aside meanwhile
        if not stat.S_ISDIR(os.stat(path).st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "not a folder: a file is not replaced by one", str(path))
    remove_dead_temporaries_of([path])
    staged = temporary_path(path)
    try:
        staged.mkdir()
        yield staged
        _sync_tree(staged)
        _swap_in(staged, path)
    except BaseException as error:
        _remove(staged)
        _raise_naming(error, staged, path)


def _raise_naming(error: BaseException, temporary: Path, path: Path) -> None:
    """Re-raise `error`; a disk's error on the hidden temporary or on no file (a full disk) names `path` instead,
    the name the user gave (its kind kept: OSError picks the subclass of the errno)."""
    where = getattr(error, "filename", None)
    if not isinstance(error, OSError) or error.errno is None:
        raise error
    if where is not None and temporary != Path(where) and temporary not in Path(where).parents:
        raise error
    raise OSError(error.errno, error.strerror, str(path)) from error


def _swap_in(staged: Path, path: Path) -> None:
    """Rename `staged` to `path`, the folder there first set aside and deleted only once the new one is in."""
    aside = temporary_path(path) if os.path.lexists(path) else None
    if aside is not None:
        os.rename(path, aside)
    try:
        os.rename(staged, path)
    except BaseException:
        if aside is not None:
            os.rename(aside, path)  # the old folder back under its name
        raise
    _sync(path.parent)
    if aside is not None:
        _remove(aside)


def _sync(path: Path) -> None:
    """Put a file's data, or a folder's entries (a rename into it), on disk: after a crash the name holds what was
    written, and a renamed temporary does not come back."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_tree(root: Path) -> None:
    """Every file and folder under `root` on disk (a folder before its parent), `root` last."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            _sync(Path(folder, name))
        _sync(Path(folder))


def temporaries_of(path: Path) -> list[Path]:
    """Temporaries of `path` left by any process (e.g. one that was killed)."""
    return _temporaries_in(path.parent, {path.name})


def remove_temporaries_of(paths: Iterable[Path]) -> list[Path]:
    """Delete the temporaries any process left of these files (killed runs), listing each folder once however many
    files it holds; returns what was deleted. Only for the files' one writer (under their locks): a live writer's
    temporary looks the same."""
    names = _names_by_folder(paths)
    stale = sorted(temporary for folder, wanted in names.items() for temporary in _temporaries_in(folder, wanted))
    for path in stale:
        _remove(path)
    return stale


def remove_dead_temporaries_of(paths: Iterable[Path]) -> list[Path]:
    """Delete the temporaries of these files that processes of this host left and that no longer run (a killed
    run's); returns what was deleted. For writers with no lock that spans hosts (words files beside the user's
    pages, swapped folders): another host's temporary, or a live process's, may be a write in progress, and is
    left alone."""
    host = socket.gethostname()
    stale = []
    for folder, wanted in _names_by_folder(paths).items():
        for temporary in _temporaries_in(folder, wanted):
            writers = [writer for name in wanted if (writer := _writer(temporary.name, name)) is not None]
            if any(writer_host == host and not _running(pid) for writer_host, pid in writers):
                _remove(temporary)
                stale.append(temporary)
    return sorted(stale)


def _writer(entry: str, name: str) -> tuple[str, int] | None:
    """(host, PID) of a `temporary_path` of `name` (``.NAME.HOST.PID-TOKEN.tmp``, or ``.NAME.HOST.PID.tmp`` as
    written before tokens were), None for any other entry: a user's ``.NAME.backup.tmp`` is not a temporary."""
    head = f".{_temporary_stem(name)}."
    if not (entry.startswith(head) and entry.endswith(TEMPORARY_SUFFIX)):
        return None
    match = re.fullmatch(r"(.+)\.(\d+)(?:-[0-9a-f]+)?", entry[len(head) : -len(TEMPORARY_SUFFIX)])
    return (match.group(1), int(match.group(2))) if match else None


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
    except OverflowError:  # no PID this host can hold: not a writer of ours to judge, so kept
        return True
    except PermissionError:  # another user's process
        return True
    return True


def _temporaries_in(folder: Path, names: set[str]) -> list[Path]:
    """`temporary_path`'s entries of any of `names` in `folder`: ``.{name}.{host}.{pid}[-{token}].tmp`` (a host may
    hold dots)."""
    if not folder.is_dir():
        return []
    return sorted(folder / entry.name for entry in os.scandir(folder) if any(_writer(entry.name, n) for n in names))


def _remove(path: Path) -> None:
    """Delete a file, a link (never what it points to) or a folder with its contents."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
