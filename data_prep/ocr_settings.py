"""How Tesseract reads a page: page segmentation, inverted-text retries and the resolution it sees.

One frozen record, so data prep, the OCR quality benchmark (benchmarks/ocr_quality.py) and the manifest name the
same configuration; `as_record()` is what the manifest and the chunk digests hold (a corpus built with other
settings is refused on resume and by merge_manifests).

Defaults, chosen by measuring word F1 against ground truth (benchmarks/ocr_quality.py, BENCHMARKS.md "OCR quality"):
every page read at 150 dpi, psm 3, no inverted-text retries. On FUNSD's ~91 dpi scans, F1 0.614 instead of
Tesseract's plain 0.479 at 1.5x its time (the most accurate within that budget); on 300 dpi Group 4 TIFFs, F1 0.935
instead of 0.892 at 0.71x the time (the most accurate, and so the fastest within 1 point of it). The 300 dpi pages
measured are synthetic renders enlarged to 300 dpi, which favour reading them smaller: on real scans of small print,
`--ocr-max-dpi 200` is the cautious choice (1.1-1.3 points lower there, 0.84-0.88 s a page).

Resolution: a page's dpi is the one its file records, or, when the
file records none (or an implausible one), estimated from its size as if its longer side were 11 inches (a
US-letter scan; FUNSD's forms come out at about 100). A page below `min_dpi` is upscaled to it before OCR, one
above `max_dpi` downscaled to it (0: no bound); never past the pixel cap of every page (page_sources.MAX_PAGE_PIXELS:
a 20000 x 4000 page of 100 dpi is read at 106, not 300, rather than as 720 M pixels). The words' boxes are mapped
back to the page's own pixels, so shards are in the pixels of the stored page whatever Tesseract saw. Resampling is
deterministic (PIL, fixed filter), so a configuration still gives the same bytes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from PIL import Image

from layoutlmv3 import page_sources

from .words import Word

LETTER_LONG_SIDE_INCHES = 11.0
MIN_RECORDED_DPI = 50  # below this a recorded resolution is taken as absent (files that say 1 or 72 by default)
MAX_TOLD_DPI = 2**31 - 1  # Tesseract's int (it takes a value over 2400 as no resolution itself)
PAGE_SEGMENTATION_MODES = (3, 4, 6, 11, 12)  # Tesseract's --psm values that read a whole page


@dataclasses.dataclass(frozen=True)
class OcrSettings:
    """Tesseract's configuration for `--ocr tesseract` (the other sources read words given to them)."""

    psm: int = 3  # Tesseract's page segmentation mode: 3 automatic, 4 one column, 6 one block, 11/12 sparse text
    invert: bool = False  # retry lines of low confidence inverted (white on black): no gain on documents, 5% time
    min_dpi: int = 150  # upscale pages below this resolution to it before OCR (0: never)
    max_dpi: int = 150  # downscale pages above this resolution to it before OCR (0: never)

    def __post_init__(self) -> None:
        if self.psm not in PAGE_SEGMENTATION_MODES:
            raise ValueError(f"psm must be one of {PAGE_SEGMENTATION_MODES} (modes that read a page), got {self.psm}")
        for name in ("min_dpi", "max_dpi"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not (value == 0 or 50 <= value <= 1200):
                raise ValueError(f"{name} must be 0 (off) or between 50 and 1200 dpi, got {value!r}")
        if self.min_dpi and self.max_dpi and self.min_dpi > self.max_dpi:
            raise ValueError(
                f"min_dpi ({self.min_dpi}) is above max_dpi ({self.max_dpi}): raise max_dpi too (0: no upper bound)"
            )

    def as_record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def tesseract_variables(self) -> dict[str, str]:
        """Variables set on the engine (`-c NAME=VALUE` for the command, SetVariable in-process)."""
        return {} if self.invert else {"tessedit_do_invert": "0"}


def page_dpi(image: Image.Image) -> float:
    """The page's resolution: recorded in the file, else estimated from its size (module docstring)."""
    recorded = image.info.get("dpi")
    if recorded:
        try:
            value = float(recorded[0])
        except (TypeError, ValueError, IndexError):
            value = 0.0
        if MIN_RECORDED_DPI <= value <= 2400:
            return value
    return max(image.size) / LETTER_LONG_SIDE_INCHES


def tesseract_dpi(image: Image.Image) -> int | None:
    """The resolution Tesseract is told (`--dpi`, SetSourceResolution): the one the file records, rounded, when it is
    a number Tesseract can take (50 dpi or more, finite, an int); None lets Tesseract estimate it. A TIFF whose
    resolution is 1/0 records NaN, which rounding refuses."""
    recorded = image.info.get("dpi")
    try:
        value = round(float(recorded[0]))  # type: ignore[index]
    except (TypeError, ValueError, IndexError, KeyError, OverflowError):
        return None
    return value if MIN_RECORDED_DPI <= value <= MAX_TOLD_DPI else None


def scale_for(image: Image.Image, settings: OcrSettings) -> float:
    """The factor the page is resampled by before OCR (1.0: read as it is)."""
    if not image.width or not image.height:
        return 1.0
    dpi = page_dpi(image)
    if settings.min_dpi and dpi < settings.min_dpi:  # to no more pixels than a page may have (page_sources' cap)
        allowed = math.sqrt(page_sources.MAX_PAGE_PIXELS / (image.width * image.height))
        return max(1.0, min(settings.min_dpi / dpi, allowed))
    if settings.max_dpi and dpi > settings.max_dpi:
        return settings.max_dpi / dpi
    return 1.0


def prepare_page(image: Image.Image, settings: OcrSettings) -> Image.Image:
    """The image Tesseract reads: the page itself, or resampled to the bounds. A resampled page carries its new
    resolution (so Tesseract is told it); bilevel pages are resampled as grey, which keeps thin strokes."""
    scale = scale_for(image, settings)
    if scale == 1.0:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if size[0] * size[1] > page_sources.MAX_PAGE_PIXELS:  # rounded up past the cap: round down instead
        size = (math.floor(image.width * scale), math.floor(image.height * scale))
    source = image.convert("L") if image.mode not in ("L", "RGB") else image
    resized = source.resize(size, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC)
    dpi = round(page_dpi(image) * scale)
    resized.info["dpi"] = (dpi, dpi)
    return resized


def boxes_to_page(words: list[Word], read_size: tuple[int, int], page_size: tuple[int, int]) -> list[Word]:
    """Words read on an image of `read_size`, with boxes in the pixels of the page of `page_size` (clamped)."""
    if read_size == page_size:
        return words
    (read_width, read_height), (width, height) = read_size, page_size

    def x(value: int) -> int:
        return min(max(round(value * width / read_width), 0), width)

    def y(value: int) -> int:
        return min(max(round(value * height / read_height), 0), height)

    return [
        dataclasses.replace(word, box=(x(word.box[0]), y(word.box[1]), x(word.box[2]), y(word.box[3])))
        for word in words
    ]
