"""Find scanned page images under an input root and read them page by page, never crashing on bad files.

Reads TIFF (multi-page included, and CCITT Group 4 bilevel as IIT-CDIP ships it), PNG and JPEG: whatever
Pillow decodes; and PDF, each page rendered at ``pdf_dpi`` (pdf.py). Pages come out in mode "L" (bilevel and grayscale scans) or "RGB" (colour), the two modes of
a sample image. A file or page that Pillow cannot decode becomes a :class:`PageRejected` in the stream instead
of an exception, so one corrupt scan never stops a run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from layoutlmv3.page_layout import to_sample_mode

from .pdf import DEFAULT_PDF_DPI, PDF_SUFFIX, read_pdf_pages
from .rejects import UNREADABLE_IMAGE, UNREADABLE_PAGE, PageRejected

IMAGE_SUFFIXES = frozenset({".tif", ".tiff", ".png", ".jpg", ".jpeg", PDF_SUFFIX})


# Files that sit beside page images as their OCR or annotations: not reported as skipped.
SIDE_FILE_SUFFIXES = frozenset({".json", ".hocr", ".html", ".htm", ".xml"})


def scan_inputs(root: Path) -> tuple[list[str], Counter[str]]:
    """(page files under ``root`` as sorted POSIX paths relative to it, other files counted by suffix).

    Hidden files (temporaries) and OCR side files are neither; the counter is what a build says it skipped.
    One walk of the tree, which on a corpus of millions of files on a shared filesystem is minutes.
    """
    images, skipped = [], Counter()
    for path in root.rglob("*"):
        if path.name.startswith(".") or not path.is_file():
            continue
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            images.append(path.relative_to(root).as_posix())
        elif suffix not in SIDE_FILE_SUFFIXES:
            skipped[suffix or "(no suffix)"] += 1
    return sorted(images), skipped


def find_images(root: Path) -> list[str]:
    """Page files under ``root`` as sorted POSIX paths relative to it (hidden files, e.g. temporaries, skipped)."""
    return scan_inputs(root)[0]


def read_pages(
    path: Path, start_page: int = 0, pdf_dpi: int = DEFAULT_PDF_DPI
) -> Iterator[tuple[int, Image.Image | PageRejected]]:
    """Yield ``(page_number, image or PageRejected)`` for pages ``start_page..`` of the file, in order.

    A file that cannot be opened yields a single UNREADABLE_IMAGE for ``start_page`` (its page count is
    unknown); a page that fails to decode yields UNREADABLE_PAGE and reading goes on with the next page.
    Pillow raises many exception types on corrupt data (OSError, SyntaxError, ValueError, struct.error, ...),
    hence the broad catches.
    """
    if path.suffix.lower() == PDF_SUFFIX:
        yield from read_pdf_pages(path, start_page, pdf_dpi)
        return
    try:
        image = Image.open(path)
    except Exception as error:
        yield start_page, PageRejected(UNREADABLE_IMAGE, f"{type(error).__name__}: {error}")
        return
    with image:
        try:
            count = getattr(image, "n_frames", 1)
        except Exception:  # a broken page directory further on: Pillow cannot count, but the pages before it read
            count = None
        if count is not None:
            for page in range(start_page, count):
                yield page, _load_page(image, page)
            return
    yield from _pages_until_broken(path, start_page)


def _pages_until_broken(path: Path, start_page: int) -> Iterator[tuple[int, Image.Image | PageRejected]]:
    """Pages of a multi-page file whose page count Pillow cannot read: each readable page in turn, then the page
    whose directory is broken as UNREADABLE_PAGE (the ones after it cannot be located)."""
    with Image.open(path) as image:
        page = start_page
        while True:
            try:
                image.seek(page)
            except EOFError:
                return
            except Exception as error:
                detail = (
                    f"{type(error).__name__}: {error} (its page directory is broken: later pages cannot be located)"
                )
                yield page, PageRejected(UNREADABLE_PAGE, detail)
                return
            yield page, _load_page(image, page)
            page += 1


def _load_page(image: Image.Image, page: int) -> Image.Image | PageRejected:
    try:
        image.seek(page)
        image.load()
        return to_sample_mode(image)
    except Exception as error:
        return PageRejected(UNREADABLE_PAGE, f"{type(error).__name__}: {error}")
