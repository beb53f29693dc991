"""What every OCR source produces: words with pixel boxes and line ids, and the interface of a source."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image


@dataclass(frozen=True)
class Word:
    """One OCR word: its text, its box [x0, y0, x1, y1] in pixels of the page, and its line id."""

    text: str
    box: tuple[Any, Any, Any, Any]  # as given; samples.normalize_box validates and normalises it
    line: int


class Ocr(Protocol):
    """An OCR source: which input files it covers and the words of one of their pages."""

    def inputs(self, pages: list[str]) -> list[str]:
        """Which of the page files found under the input root (pages.scan_inputs) this source covers."""
        ...

    def read(self, path: Path, page: int, image: Image.Image) -> list[Word]: ...
