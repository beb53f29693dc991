"""What every OCR source produces: words with pixel boxes and line ids, and the interface of a source."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from PIL import Image

from layoutlmv3.page_layout import Word  # the one definition, shared with prediction


class Ocr(Protocol):
    """An OCR source: which input files it covers and the words of one of their pages."""

    def inputs(self, pages: list[str]) -> list[str]:
        """Which of the page files found under the input root (pages.scan_inputs) this source covers."""
        ...

    def read(self, path: Path, page: int, image: Image.Image) -> list[Word]: ...
