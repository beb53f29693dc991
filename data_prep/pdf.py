"""PDF input: pages rendered at a set resolution, and the words of the PDF's own text layer with their boxes.

Born-digital PDFs (and scans an OCR engine already made searchable) carry their words: taking them from the
text layer is exact and far faster than OCR. Scanned PDFs without text get OCR like any image (``--ocr
tesseract``; see :class:`TextLayerFirst`). Rendering and text extraction use PDFium (pypdfium2, a wheel with
the library inside: no system tools). An encrypted or broken PDF becomes an ``unreadable_image`` reject with
the reason, never a crash.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from .rejects import UNREADABLE_IMAGE, UNREADABLE_PAGE, PageRejected
from .words import Ocr, Word

PDF_SUFFIX = ".pdf"
DEFAULT_PDF_DPI = 200  # pages are squashed to 224 px anyway; 200 dpi keeps small print legible for OCR
POINTS_PER_INCH = 72.0
LINE_BREAKS = frozenset("\r\n")


def _open(path: Path):
    import pypdfium2 as pdfium

    try:
        return pdfium.PdfDocument(path)
    except pdfium.PdfiumError as error:
        detail = str(error)
        if "password" in detail.lower():
            detail = f"encrypted (needs a password): {detail}"
        raise PageRejected(UNREADABLE_IMAGE, f"PDF: {detail}") from None


def read_pdf_pages(path: Path, start_page: int, dpi: int) -> Iterator[tuple[int, Image.Image | PageRejected]]:
    """Yield ``(page, image or PageRejected)`` for pages ``start_page..``, rendered at ``dpi`` (info["dpi"] set)."""
    try:
        document = _open(path)
    except PageRejected as rejected:
        yield start_page, rejected
        return
    try:
        for number in range(start_page, len(document)):
            try:
                image = document[number].render(scale=dpi / POINTS_PER_INCH).to_pil()
                image = image.convert("RGB") if image.mode != "L" else image
                image.info["dpi"] = (dpi, dpi)
                yield number, image
            except Exception as error:  # PDFium raises on damaged page content
                yield number, PageRejected(UNREADABLE_PAGE, f"PDF page: {type(error).__name__}: {error}")
    finally:
        document.close()


def text_layer_words(path: Path, page: int, image_size: tuple[int, int]) -> list[Word]:
    """The page's text-layer words, boxes in pixels of the rendered image; words of one text line share a line
    id (PDFium marks line ends with generated line breaks). Empty for a page without text (a scan)."""
    document = _open(path)
    try:
        pdf_page = document[page]
        width_pt, height_pt = pdf_page.get_size()
        sx, sy = image_size[0] / width_pt, image_size[1] / height_pt
        text_page = pdf_page.get_textpage()
        words: list[Word] = []
        chars: list[str] = []
        box: list[float] | None = None
        line, line_ended = 0, False

        def finish() -> None:
            nonlocal chars, box
            if chars and box is not None:
                left, bottom, right, top = box
                pixel_box = (left * sx, (height_pt - top) * sy, right * sx, (height_pt - bottom) * sy)
                words.append(Word("".join(chars), tuple(round(v, 2) for v in pixel_box), line))
            chars, box = [], None

        for index in range(text_page.count_chars()):
            char = text_page.get_text_range(index, 1)
            if not char or char.isspace():
                finish()
                line_ended = line_ended or char in LINE_BREAKS
                continue
            if line_ended and words:
                line += 1
            line_ended = False
            left, bottom, right, top = text_page.get_charbox(index)
            chars.append(char)
            box = [left, bottom, right, top] if box is None else [
                min(box[0], left), min(box[1], bottom), max(box[2], right), max(box[3], top)
            ]  # fmt: skip
        finish()
        return words
    finally:
        document.close()


class TextLayerFirst:
    """An OCR source that reads a PDF page's text layer when it has one and asks `inner` otherwise (and for
    images)."""

    def __init__(self, inner: Ocr) -> None:
        self.inner = inner

    def prepare(self) -> None:
        if hasattr(self.inner, "prepare"):
            self.inner.prepare()

    def inputs(self, pages: list[str]) -> list[str]:
        return self.inner.inputs(pages)

    def read(self, path: Path, page: int, image: Image.Image) -> list[Word]:
        if path.suffix.lower() == PDF_SUFFIX:
            words = text_layer_words(path, page, image.size)
            if words:
                return words
        return self.inner.read(path, page, image)
