"""PDF input: pages rendered at a set resolution, and the words of the PDF's own text layer with their boxes.

Born-digital PDFs (and scans an OCR engine already made searchable) carry their words: taking them from the
text layer is exact and far faster than OCR. Scanned PDFs without text get OCR like any image (``--ocr
tesseract``; see :class:`TextLayerFirst`). Rendering and text extraction use PDFium (pypdfium2, a wheel with
the library inside: no system tools). An encrypted or broken PDF becomes an ``unreadable_image`` reject with
the reason, never a crash. A page is measured before it is rendered: one over the pixel cap at ``dpi``
(`layoutlmv3.page_sources`) is a ``page_too_large`` reject and is never rendered.

Text-layer boxes are in PDF page space; the rendered image shows the page's CropBox (whose origin need not be
0,0), turned by its ``/Rotate``. `_PageToPixels` maps one onto the other, so words land on their ink.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from layoutlmv3 import page_sources
from layoutlmv3.data_roots import check_regular_file
from layoutlmv3.page_sources import (
    PDF_SUFFIX,
    PageTooLarge,
    check_page_pixels,
    pages_past_cap,
    pdf_page_pixels,
)

from .rejects import PAGE_TOO_LARGE, RENDER_TIMEOUT, TOO_MANY_PAGES, UNREADABLE_IMAGE, UNREADABLE_PAGE, PageRejected
from .words import Ocr, Word

__all__ = ["DEFAULT_PDF_DPI", "PDF_SUFFIX", "TextLayerFirst", "read_pdf_pages", "text_layer_words"]
DEFAULT_PDF_DPI = 200  # pages are squashed to 224 px anyway; 200 dpi keeps small print legible for OCR
POINTS_PER_INCH = 72.0
RENDER_SECONDS = 60.0  # a dense page renders in well under a second at 200 dpi; past this it is a render_timeout
LINE_BREAKS = frozenset("\r\n")


def _open(path: Path):
    import pypdfium2 as pdfium

    try:
        check_regular_file(path)  # PDFium would block for ever opening a FIFO
    except (OSError, ValueError) as error:
        raise PageRejected(UNREADABLE_IMAGE, f"PDF: {error}") from None
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
        count = len(document)
        for number in range(start_page, min(count, page_sources.MAX_PAGES_PER_FILE)):
            try:
                page = document[number]
                width_pt, height_pt = page.get_size()
                where = f"PDF page {number} ({width_pt:g}x{height_pt:g} pt) at {dpi} dpi"
                check_page_pixels(*pdf_page_pixels(width_pt, height_pt, dpi), where)
            except PageTooLarge as error:
                yield number, PageRejected(PAGE_TOO_LARGE, error)
                continue
            except Exception as error:
                yield number, PageRejected(UNREADABLE_PAGE, f"PDF page: {type(error).__name__}: {error}")
                continue
            try:
                image = render_within(page, dpi / POINTS_PER_INCH, RENDER_SECONDS, f"PDF page {number}")
                image = image.convert("RGB") if image.mode != "L" else image
                image.info["dpi"] = (dpi, dpi)
                yield number, image
            except RenderTooSlow as error:
                yield number, PageRejected(RENDER_TIMEOUT, error)
            except Exception as error:  # PDFium raises on damaged page content
                yield number, PageRejected(UNREADABLE_PAGE, f"PDF page: {type(error).__name__}: {error}")
        if count > max(page_sources.MAX_PAGES_PER_FILE, start_page):
            first = max(page_sources.MAX_PAGES_PER_FILE, start_page)
            yield first, PageRejected(TOO_MANY_PAGES, pages_past_cap(first, "PDF", count))
    finally:
        document.close()


class RenderTooSlow(RuntimeError):
    """A PDF page whose drawing takes longer than the render deadline (a few kB of compressed drawing operators
    can take PDFium minutes to paint)."""


def render_within(page, scale: float, seconds: float, where: str) -> Image.Image:
    """`page` rendered at `scale` (as ``PdfPage.render``: white, annotations drawn), abandoned with RenderTooSlow
    after `seconds`. PDFium's progressive renderer asks every hundred or so drawing objects whether to pause; past
    the deadline the answer is yes and the render is closed (a 49 kB PDF of 1 M strokes took 97 s to render)."""
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    width, height = math.ceil(page.get_width() * scale), math.ceil(page.get_height() * scale)
    bitmap = pdfium.PdfBitmap.new_native(width, height, format=pdfium_c.FPDFBitmap_BGR, rev_byteorder=False)
    bitmap.fill_rect((255, 255, 255, 255), 0, 0, width, height)
    deadline = time.monotonic() + seconds
    pause = pdfium_c.IFSDK_PAUSE(version=1)
    pause.NeedToPauseNow = type(pause.NeedToPauseNow)(lambda _: time.monotonic() > deadline)
    status = pdfium_c.FPDF_RenderPageBitmap_Start(bitmap, page, 0, 0, width, height, 0, pdfium_c.FPDF_ANNOT, pause)
    try:
        while status == pdfium_c.FPDF_RENDER_TOBECONTINUED:
            if time.monotonic() > deadline:
                raise RenderTooSlow(
                    f"{where}: drawing it took over {seconds:g} s (refused: hundreds of thousands of drawing "
                    "operations, or a damaged page)"
                )
            status = pdfium_c.FPDF_RenderPage_Continue(page, pause)
    finally:
        pdfium_c.FPDF_RenderPage_Close(page)
    if status != pdfium_c.FPDF_RENDER_DONE:
        raise RuntimeError(f"PDFium could not render the page (status {status})")
    return bitmap.to_pil()


def text_layer_words(path: Path, page: int, image_size: tuple[int, int]) -> list[Word]:
    """The page's text-layer words, boxes in pixels of the rendered image (its CropBox turned by /Rotate); words of
    one text line share a line id (PDFium marks line ends with generated line breaks). Words wholly outside the
    CropBox are not on the image and are left out; the others are clipped to it. Empty for a page without text."""
    document = _open(path)
    try:
        pdf_page = document[page]
        to_pixels = _PageToPixels(pdf_page, image_size)
        text_page = pdf_page.get_textpage()
        words: list[Word] = []
        chars: list[str] = []
        box: list[float] | None = None
        line, line_ended = 0, False

        def finish() -> None:
            nonlocal chars, box
            if chars and box is not None:
                pixel_box = to_pixels.box(*box)
                if pixel_box is not None:
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


class _PageToPixels:
    """PDF page space -> pixels of the page as rendered: PDFium shows the CropBox clipped to the MediaBox (its
    corner need not be 0,0), turned clockwise by the page's /Rotate, scaled to the image."""

    def __init__(self, page, image_size: tuple[int, int]) -> None:
        self.left, self.bottom, self.right, self.top = page.get_bbox()  # the CropBox within the MediaBox
        self.rotation = page.get_rotation() % 360
        width_pt, height_pt = self.right - self.left, self.top - self.bottom
        shown = (height_pt, width_pt) if self.rotation in (90, 270) else (width_pt, height_pt)
        self.size = image_size
        self.sx, self.sy = image_size[0] / shown[0], image_size[1] / shown[1]

    def point(self, x: float, y: float) -> tuple[float, float]:
        u, v = x - self.left, self.top - y  # points from the crop box's top-left corner, before the turn
        width_pt, height_pt = self.right - self.left, self.top - self.bottom
        if self.rotation == 90:
            u, v = height_pt - v, u
        elif self.rotation == 180:
            u, v = width_pt - u, height_pt - v
        elif self.rotation == 270:
            u, v = v, width_pt - u
        return u * self.sx, v * self.sy

    def box(self, left: float, bottom: float, right: float, top: float) -> tuple[float, ...] | None:
        """A page-space box in pixels, clipped to the image; None when none of it is on the image."""
        (x0, y0), (x1, y1) = self.point(left, bottom), self.point(right, top)
        width, height = self.size
        x0, x1 = max(min(x0, x1), 0.0), min(max(x0, x1), float(width))
        y0, y1 = max(min(y0, y1), 0.0), min(max(y0, y1), float(height))
        return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


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
