"""OCR that an OCR engine already wrote, in its standard formats: hOCR and ALTO XML (``--ocr hocr`` / ``alto``).

``hocr`` -- ``NAME.hocr`` (or ``NAME.html``) beside each image, as Tesseract (``tesseract img NAME hocr``),
    OCRopus or kraken write it: one ``ocr_page`` element per page of the image, in order; words are
    ``ocrx_word`` elements whose ``title`` holds ``bbox x0 y0 x1 y1``; a word's line id is its nearest
    enclosing line (``ocr_line``, ``ocrx_line``, ``ocr_header``, ``ocr_caption``, ``ocr_textfloat``).
``alto`` -- ``NAME.xml`` beside each image, ALTO v2-v4 as ABBYY, Transkribus, national-library scans or
    ``tesseract img NAME alto`` write it: one ``Page`` per page of the image (``PHYSICAL_IMG_NR`` order, else
    document order); words are ``String`` elements (``CONTENT``, ``HPOS``, ``VPOS``, ``WIDTH``, ``HEIGHT``);
    a word's line id is its ``TextLine``.

Both formats may measure in another unit or resolution than the stored image (ALTO's ``mm10`` or ``inch1200``,
an hOCR made from a rescaled scan): when the page element gives its size (hOCR ``ocr_page`` bbox, ALTO ``Page``
WIDTH/HEIGHT), boxes are scaled to the image's pixels; an ALTO file in another unit without a page size is
rejected. Malformed files, missing pages and words without a usable box are rejected with the reason in
rejects.jsonl, never dropped silently.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from html.parser import HTMLParser
from pathlib import Path

from PIL import Image

from .rejects import OCR_INVALID, OCR_MISSING, PageRejected
from .words import Word

HOCR_SUFFIXES = (".hocr", ".html")
HOCR_LINE_CLASSES = {"ocr_line", "ocrx_line", "ocr_header", "ocr_caption", "ocr_textfloat"}
BBOX = re.compile(r"bbox\s+(-?\d+(?:\.\d+)?)\s+(-?\d+(?:\.\d+)?)\s+(-?\d+(?:\.\d+)?)\s+(-?\d+(?:\.\d+)?)")


class ParsedPage:
    """The words of one page in the file's coordinates, and the page size those coordinates refer to."""

    def __init__(self, size: tuple[float, float] | None) -> None:
        self.size = size
        self.words: list[Word] = []

    def in_pixels_of(self, image: Image.Image) -> list[Word]:
        """The words with boxes scaled to `image` when the file's page size differs from it."""
        if self.size is None or self.size == (image.width, image.height):
            return self.words
        sx, sy = image.width / self.size[0], image.height / self.size[1]
        return [Word(w.text, (w.box[0] * sx, w.box[1] * sy, w.box[2] * sx, w.box[3] * sy), w.line) for w in self.words]


class _FileOcr:
    """OCR files beside the images, parsed once per file (the cache holds the current file only)."""

    def __init__(self) -> None:
        self._cached: tuple[Path, list[ParsedPage] | PageRejected] | None = None

    def inputs(self, pages: list[str]) -> list[str]:
        return pages

    def read(self, path: Path, page: int, image: Image.Image) -> list[Word]:
        if self._cached is None or self._cached[0] != path:
            self._cached = (path, self._load(path))
        pages = self._cached[1]
        if isinstance(pages, PageRejected):
            raise pages
        if page >= len(pages):
            raise PageRejected(OCR_MISSING, f"the OCR file of {path.name} has {len(pages)} page(s), not page {page}")
        return pages[page].in_pixels_of(image)

    def _load(self, image_path: Path) -> list[ParsedPage] | PageRejected:
        raise NotImplementedError


class HocrOcr(_FileOcr):
    """hOCR files beside the images (module docstring)."""

    def _load(self, image_path: Path) -> list[ParsedPage] | PageRejected:
        candidates = [image_path.with_suffix(suffix) for suffix in HOCR_SUFFIXES]
        path = next((candidate for candidate in candidates if candidate.is_file()), None)
        if path is None:
            return PageRejected(OCR_MISSING, f"no OCR file {candidates[0].name}")
        try:
            return parse_hocr(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as error:
            return PageRejected(OCR_INVALID, f"{path.name}: {error}")


class AltoOcr(_FileOcr):
    """ALTO XML files beside the images (module docstring)."""

    def _load(self, image_path: Path) -> list[ParsedPage] | PageRejected:
        path = image_path.with_suffix(".xml")
        try:
            return parse_alto(path.read_bytes())
        except FileNotFoundError:
            return PageRejected(OCR_MISSING, f"no OCR file {path.name}")
        except (OSError, ValueError, ElementTree.ParseError) as error:
            return PageRejected(OCR_INVALID, f"{path.name}: {error}")


def parse_hocr(text: str) -> list[ParsedPage]:
    """The pages of an hOCR document; ValueError when it has none or a word has no bbox."""
    parser = _HocrParser()
    parser.feed(text)
    parser.close()
    if parser.error:
        raise ValueError(parser.error)
    if not parser.pages:
        raise ValueError("no ocr_page element: not hOCR")
    return parser.pages


class _HocrParser(HTMLParser):
    """Tracks the open elements' classes; collects ocrx_word text with the bbox of its title. HTMLParser, not an
    XML parser: hOCR from some engines is HTML that is not well-formed XML."""

    VOID = {"meta", "br", "img", "link", "hr", "input"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pages: list[ParsedPage] = []
        self.stack: list[tuple[str, set[str], int | None]] = []  # tag, classes, line id opened here
        self.lines = 0
        self.word: tuple[tuple[float, ...], list[str]] | None = None
        self.word_depth = 0
        self.error = ""

    def _line(self) -> int | None:
        return next((line for _, _, line in reversed(self.stack) if line is not None), None)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.VOID:
            return
        values = dict(attrs)
        classes = set((values.get("class") or "").split())
        title = values.get("title") or ""
        line = None
        if "ocr_page" in classes:
            match = BBOX.search(title)
            size = (float(match.group(3)), float(match.group(4))) if match else None
            self.pages.append(ParsedPage(size if size and size[0] > 0 and size[1] > 0 else None))
        if classes & HOCR_LINE_CLASSES:
            line = self.lines
            self.lines += 1
        self.stack.append((tag, classes, line))
        if "ocrx_word" in classes:
            match = BBOX.search(title)
            if match is None:
                self.error = self.error or f"word without a bbox (title {title!r})"
                return
            self.word = (tuple(_number(v) for v in match.groups()), [])
            self.word_depth = len(self.stack)

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        while self.stack:  # close up to the matching tag (tolerates unclosed inline elements)
            open_tag, classes, _ = self.stack.pop()
            if self.word is not None and len(self.stack) < self.word_depth:
                self._finish_word()
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if self.word is not None:
            self.word[1].append(data)

    def _finish_word(self) -> None:
        box, parts = self.word
        self.word = None
        text = " ".join("".join(parts).split())
        if not text:
            return
        if not self.pages:
            self.error = self.error or "a word outside any ocr_page"
            return
        line = self._line()
        self.pages[-1].words.append(Word(text, box, line if line is not None else -1 - len(self.pages[-1].words)))


def parse_alto(data: bytes) -> list[ParsedPage]:
    """The pages of an ALTO document (any version: namespaces are ignored); ValueError when it is not ALTO."""
    root = ElementTree.fromstring(data)
    if _local(root.tag) != "alto":
        raise ValueError(f"root element is <{_local(root.tag)}>, not <alto>")
    unit = next(((el.text or "").strip() for el in root.iter() if _local(el.tag) == "MeasurementUnit"), "") or "pixel"
    pages_found = [el for el in root.iter() if _local(el.tag) == "Page"]
    if not pages_found:
        raise ValueError("no Page element")
    numbered = all(page.get("PHYSICAL_IMG_NR", "").strip().isdigit() for page in pages_found)
    if numbered:
        pages_found.sort(key=lambda page: int(page.get("PHYSICAL_IMG_NR")))
    pages = []
    lines = 0
    for page in pages_found:
        size = _page_size(page)
        if unit != "pixel" and size is None:
            raise ValueError(f"MeasurementUnit {unit} and no Page WIDTH/HEIGHT: cannot convert to pixels")
        parsed = ParsedPage(size)
        for text_line in (el for el in page.iter() if _local(el.tag) == "TextLine"):
            for string in (el for el in text_line if _local(el.tag) == "String"):
                content = " ".join((string.get("CONTENT") or "").split())
                if not content:
                    continue
                try:
                    x, y = _number(string.get("HPOS")), _number(string.get("VPOS"))
                    width, height = _number(string.get("WIDTH")), _number(string.get("HEIGHT"))
                except (TypeError, ValueError):
                    raise ValueError(f"String {content!r} without numeric HPOS/VPOS/WIDTH/HEIGHT") from None
                parsed.words.append(Word(content, (x, y, x + width, y + height), lines))
            lines += 1
        pages.append(parsed)
    return pages


def _page_size(page: ElementTree.Element) -> tuple[float, float] | None:
    try:
        width, height = float(page.get("WIDTH")), float(page.get("HEIGHT"))
    except (TypeError, ValueError):
        return None
    return (width, height) if width > 0 and height > 0 else None


def _number(text: str | None) -> int | float:
    """An int when integral (pixel coordinates stay ints, as Tesseract's TSV gives them), else a float."""
    value = float(text)  # TypeError for None, ValueError for garbage
    return int(value) if value.is_integer() else value


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]
