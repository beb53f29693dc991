"""What counts as a page file, and how large a page may be: one list of suffixes and one pixel cap for every page
source (images through Pillow, each frame of a TIFF, PDF pages before they are rendered).

A 300-byte PDF whose page measures 14400 pt renders at 200 dpi as 40000 x 40000 pixels (1.6 G pixels, ~5 GB as
RGB); a PNG header can promise as much. Pillow refuses only images over twice its own warning limit, and only
the first frame of a file; a PDF page has no limit at all. Every reader of pages checks the size here first --
before decoding or rendering -- and refuses what is over the cap with `PageTooLarge`, naming the size and the cap.

`resize_page` is the one way a page image is squashed to the model's square, for the shard writer (which imports
no torch) and the processor alike.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from layoutlmv3.data_roots import check_regular_file

# Pillow's own decompression-bomb warning limit (1024**3 // 4 // 3 pixels): a 600-dpi A3 page is 70 M pixels.
MAX_PAGE_PIXELS = 89_478_485

# Pages read from one file: a 120 kB PDF can list one page object 20000 times, a 2 MB TIFF hold 20000 frames, and
# every page becomes a sample (and an OCR run). Real documents stay far below; pages past it are one reject.
MAX_PAGES_PER_FILE = 10_000

PDF_SUFFIX = ".pdf"
# Page files read through Pillow (fine-tuning reads these); the prediction tools and data prep also render PDFs.
IMAGE_SUFFIXES = frozenset({".tif", ".tiff", ".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp"})
PAGE_SUFFIXES = IMAGE_SUFFIXES | {PDF_SUFFIX}
# The Pillow decoders a page may reach, whatever its name says: Pillow picks a decoder by content among ~40,
# EPS among them, which runs Ghostscript on the file (a long line of code-execution bugs), and many rarely used
# ones. A "page.png" that is anything else is unreadable. (JPEG's decoder also opens MPO, several JPEG pictures.)
PAGE_FORMATS = ("TIFF", "PNG", "JPEG", "GIF", "BMP", "WEBP")


class PageTooLarge(ValueError):
    """A page with more pixels than MAX_PAGE_PIXELS (a decompression bomb, or a PDF page of absurd size)."""


class PageWithoutArea(ValueError):
    """A page whose size is zero (a PDF CropBox wholly outside its MediaBox, a zero-width box): nothing to read."""


def check_page_pixels(width: int, height: int, where: str, cap: int | None = None) -> None:
    """Refuse a `width` x `height` page over `cap` pixels (default MAX_PAGE_PIXELS) with PageTooLarge, and one
    of no area with PageWithoutArea (not "too large": a damaged page, not a bomb), naming `where`."""
    cap = MAX_PAGE_PIXELS if cap is None else cap
    if width <= 0 or height <= 0:
        raise PageWithoutArea(f"{where}: a {width}x{height} page has no area (nothing is shown)")
    if width * height > cap:
        raise PageTooLarge(
            f"{where}: a {width}x{height} page ({width * height / 1e6:.1f} M pixels) is over the cap of "
            f"{cap / 1e6:.1f} M pixels (refused unread: a decompression bomb or a page of absurd size)"
        )


def pages_past_cap(first: int, where: str, count: int | None = None) -> str:
    """The message for the pages of a file from `first` = MAX_PAGES_PER_FILE on (`count` of them in all, if known)."""
    total = f" (it has {count})" if count is not None else ""
    return (
        f"{where}: pages from {first} on are not read: over the cap of {MAX_PAGES_PER_FILE} pages per file{total}; "
        "split the file if it really is one document"
    )


def pdf_page_pixels(width_pt: float, height_pt: float, dpi: float) -> tuple[int, int]:
    """The size in pixels that a `width_pt` x `height_pt` PDF page renders at `dpi` (as PDFium rounds: up)."""
    scale = dpi / 72.0
    return math.ceil(width_pt * scale), math.ceil(height_pt * scale)


def open_image(path: str | Path | BinaryIO, check: bool = True) -> Image.Image:
    """A page image opened (header only, nothing decoded yet) and its first frame checked against the cap:
    PageTooLarge naming `path` for a page over it, NotARegularFile for a FIFO/device/folder (refused before it is
    opened: opening a FIFO blocks), Pillow's own errors for a file it cannot read or that is not one of
    PAGE_FORMATS (UnidentifiedImageError). Use as
    ``with open_image(p) as im``; a caller that seeks to frames checks each with `check_frame` (and may pass
    ``check=False``, so a huge first frame does not cost the file's other pages)."""
    where = str(path) if isinstance(path, str | Path) else "an image in memory"
    if isinstance(path, str | Path):
        check_regular_file(path)
    try:
        image = Image.open(path, formats=PAGE_FORMATS)  # never EPS (Ghostscript) or another exotic decoder
    except Image.DecompressionBombError as error:  # over twice Pillow's limit: refused by Pillow itself
        raise PageTooLarge(f"{where}: over the cap of {MAX_PAGE_PIXELS / 1e6:.1f} M pixels ({error})") from None
    if not check:
        return image
    try:
        check_frame(image, where)
    except (PageTooLarge, PageWithoutArea):
        image.close()
        raise
    return image


def check_frame(image: Image.Image, where: str) -> None:
    """The current frame of an opened image against the cap (Pillow checks only the first frame of a file)."""
    check_page_pixels(*image.size, where)


RESAMPLE = Image.Resampling.BILINEAR  # LayoutLMv3ImageProcessor's; Pillow antialiases when shrinking


def resize_page(image: Image.Image, size: int) -> Image.Image:
    """The page squashed to size x size (its mode kept), as every stored or fed page image is made: by the shard
    writer (no torch there) and by the processor."""
    return image if image.size == (size, size) else image.resize((size, size), RESAMPLE)
