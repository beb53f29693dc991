"""Find scanned page images under an input root and read them page by page, never crashing on bad files.

Reads TIFF (multi-page included, and CCITT Group 4 bilevel as IIT-CDIP ships it), PNG and JPEG: whatever
Pillow decodes; and PDF, each page rendered at ``pdf_dpi`` (pdf.py). Pages come out in mode "L" (bilevel and grayscale scans) or "RGB" (colour), the two modes of
a sample image. A file or page that Pillow cannot decode becomes a :class:`PageRejected` in the stream instead
of an exception, so one corrupt scan never stops a run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from .pdf import DEFAULT_PDF_DPI, PDF_SUFFIX, read_pdf_pages
from .rejects import UNREADABLE_IMAGE, UNREADABLE_PAGE, PageRejected

IMAGE_SUFFIXES = frozenset({".tif", ".tiff", ".png", ".jpg", ".jpeg", PDF_SUFFIX})
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


def find_images(root: Path) -> list[str]:
    """Image files under ``root`` as sorted POSIX paths relative to it (hidden files, e.g. temporaries, skipped)."""
    found = (
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()
    )
    return sorted(found)


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
        count = getattr(image, "n_frames", 1)
    except Exception as error:
        yield start_page, PageRejected(UNREADABLE_IMAGE, f"{type(error).__name__}: {error}")
        return
    with image:
        for page in range(start_page, count):
            yield page, _load_page(image, page)


def _load_page(image: Image.Image, page: int) -> Image.Image | PageRejected:
    try:
        image.seek(page)
        image.load()
        return to_sample_mode(image)
    except Exception as error:
        return PageRejected(UNREADABLE_PAGE, f"{type(error).__name__}: {error}")


def to_sample_mode(image: Image.Image) -> Image.Image:
    """A decoded copy in "L" (bilevel/grayscale sources) or "RGB" (everything else), keeping ``info`` (dpi)."""
    converted = image.convert("L" if image.mode in GRAY_MODES else "RGB")
    converted.info = dict(image.info)
    return converted
