"""Paths named inside data files stay inside their data root.

A classification index line, a DocVQA question's ``"image"``, any file that names another file is data, and data
may be hostile: ``../elsewhere/page.png``, ``/abs/path`` or a link planted in the root would have a page read,
OCR'd and a words file written beside it outside the root the user gave. Every reader that takes a path out of a
data file joins it to its root here, and only here.
"""

from __future__ import annotations

from pathlib import Path


class OutsideDataRoot(ValueError):
    """A path named in a data file that leads outside its data root; the message names the file and line or entry."""


def inside_root(root: str | Path, relative: object, where: str) -> Path:
    """``root / relative``, refused (OutsideDataRoot naming `where`, e.g. ``index.txt:3``) unless it is a relative
    path that resolves, links followed, inside ``root`` -- the file and the folder it sits in, where its words file
    is written. The joined (unresolved) path is returned, so names stay as the user laid them out."""
    root = Path(root)
    if not isinstance(relative, str) or not relative.strip():
        raise OutsideDataRoot(f"{where}: expected a path relative to {root}, got {relative!r}")
    if "\x00" in relative:
        raise OutsideDataRoot(f"{where}: the path {relative!r} holds a NUL character")
    if Path(relative).is_absolute():
        raise OutsideDataRoot(f"{where}: {relative!r} is an absolute path; paths in data files are relative to {root}")
    base = root.resolve()
    joined = root / relative
    try:
        reached_paths = (joined.resolve(), joined.parent.resolve())
    except (OSError, RuntimeError) as error:  # a link loop
        raise OutsideDataRoot(f"{where}: {relative!r} cannot be resolved: {error}") from None
    for reached in reached_paths:
        if not reached.is_relative_to(base):
            raise OutsideDataRoot(
                f"{where}: {relative!r} leads outside the data root {root} (to {reached}); "
                "paths in data files must stay inside it (links included)"
            )
    return joined
