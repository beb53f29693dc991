"""Paths named inside data files stay inside their data root.

A classification index line, a DocVQA question's ``"image"``, any file that names another file is data, and data
may be hostile: ``../elsewhere/page.png``, ``/abs/path`` or a link planted in the root would have a page read,
OCR'd and a words file written beside it outside the root the user gave. Every reader that takes a path out of a
data file joins it to its root here, and only here.

What such a path names must also be a regular file: a FIFO called ``page.png`` blocks whoever opens it for ever
(until some writer appears), a device never ends. `check_regular_file` refuses those by their kind before they
are opened (a file swapped for a FIFO between the check and the open is not caught: the data root is the user's).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

NAME_MAX, PATH_MAX = 255, 4096  # Linux's limits on one file name and a whole path, in bytes


class OutsideDataRoot(ValueError):
    """A path named in a data file that leads outside its data root; the message names the file and line or entry."""


class NotARegularFile(ValueError):
    """A data file or page that is a FIFO, socket, device or folder: reading it would block or never end."""


FILE_KINDS = ((stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISSOCK, "socket"),
              (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))  # fmt: skip


def check_regular_file(path: str | Path) -> os.stat_result:
    """Refuse (NotARegularFile naming `path` and its kind) anything but a regular file, links followed, without
    opening it; a missing file or broken link is FileNotFoundError as for open(). Returns the file's status (its
    size, for a caller's cap)."""
    status = os.stat(path)
    if not stat.S_ISREG(status.st_mode):
        kind = next((name for test, name in FILE_KINDS if test(status.st_mode)), "special file")
        raise NotARegularFile(f"{path} is a {kind}, not a regular file: refused unread")
    return status


def inside_root(root: str | Path, relative: object, where: str, beside: Callable[[Path], Path] | None = None) -> Path:
    """``root / relative``, refused (OutsideDataRoot naming `where`, e.g. ``index.txt:3``) unless it is a relative
    path that resolves, links followed, inside ``root`` -- the file and the folder it sits in, where its words file
    is written, and ``beside(path)`` when given (the words file read with it: a link planted there would feed a
    file from outside the root to the reader). The joined (unresolved) path is returned, so names stay as the
    user laid them out."""
    root = Path(root)
    if not isinstance(relative, str) or not relative.strip():
        raise OutsideDataRoot(f"{where}: expected a path relative to {root}, got {relative!r}")
    if "\x00" in relative:
        raise OutsideDataRoot(f"{where}: the path {relative!r} holds a NUL character")
    try:
        encoded = os.fsencode(relative)
    except UnicodeError:  # a lone surrogate from JSON ("\ud800"): no file on this system can have that name
        raise OutsideDataRoot(f"{where}: the path {relative!r} cannot be a file name here (not encodable)") from None
    if len(encoded) >= PATH_MAX or any(len(part) > NAME_MAX for part in encoded.split(b"/")):
        raise OutsideDataRoot(
            f"{where}: the path {relative[:60]!r}... is too long for a file name ({len(encoded)} bytes; at most "
            f"{NAME_MAX} a part, {PATH_MAX - 1} in all)"
        )
    if Path(relative).is_absolute():
        raise OutsideDataRoot(f"{where}: {relative!r} is an absolute path; paths in data files are relative to {root}")
    base = root.resolve()
    joined = root / relative
    try:
        reached_paths = [(repr(relative), joined.resolve()), (repr(relative), joined.parent.resolve())]
        if beside is not None:
            companion = beside(joined)
            reached_paths.append((f"{companion.name!r} beside {relative!r}", companion.resolve()))
    except (OSError, RuntimeError, ValueError) as error:  # a link loop; a name `beside` cannot derive from
        raise OutsideDataRoot(f"{where}: {relative!r} cannot be resolved: {error}") from None
    if reached_paths[0][1] == base:  # ".", "a/..": the root itself, whose folder is outside it
        raise OutsideDataRoot(f"{where}: {relative!r} names the data root {root} itself, not a file in it")
    for what, reached in reached_paths:
        if not reached.is_relative_to(base):
            raise OutsideDataRoot(
                f"{where}: {what} leads outside the data root {root} (to {reached}); "
                "paths in data files must stay inside it (links included)"
            )
    return joined
