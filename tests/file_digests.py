"""Files compared byte for byte by digest: a failed comparison names the files that differ (and their sizes)
instead of printing megabytes of tar padding."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path


def digests(paths: Iterable[Path], root: Path) -> dict[str, str]:
    """`relative name -> "size sha256"` for each file."""
    return {
        str(path.relative_to(root)): f"{path.stat().st_size} {hashlib.sha256(path.read_bytes()).hexdigest()}"
        for path in sorted(paths)
    }
