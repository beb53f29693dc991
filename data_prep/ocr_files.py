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

import html
import math
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from xml.parsers import expat

from PIL import Image

from layoutlmv3.data_roots import NotARegularFile
from layoutlmv3.json_files import MAX_JSON_BYTES, JsonFileError, read_bounded

from .rejects import OCR_INVALID, OCR_MISSING, PageRejected
from .words import Word

HOCR_SUFFIXES = (".hocr", ".html")
HOCR_LINE_CLASSES = {"ocr_line", "ocrx_line", "ocr_header", "ocr_caption", "ocr_textfloat"}
ALTO_POSITION = ("HPOS", "VPOS", "WIDTH", "HEIGHT")
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
        path = next((candidate for candidate in candidates if candidate.exists()), candidates[0])
        data = _read_ocr_file(path)
        if isinstance(data, PageRejected):
            return data
        try:
            return parse_hocr(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            return PageRejected(OCR_INVALID, f"{path.name}: {error}")


class AltoOcr(_FileOcr):
    """ALTO XML files beside the images (module docstring)."""

    def _load(self, image_path: Path) -> list[ParsedPage] | PageRejected:
        path = image_path.with_suffix(".xml")
        data = _read_ocr_file(path)
        if isinstance(data, PageRejected):
            return data
        try:
            return parse_alto(data)
        except ValueError as error:
            return PageRejected(OCR_INVALID, f"{path.name}: {error}")


def _read_ocr_file(path: Path) -> bytes | PageRejected:
    """The bytes of an OCR file, or the reject: missing; not a regular file (a FIFO named NAME.xml blocked the
    worker for ever), refused unopened; over the cap of every file from data (MAX_JSON_BYTES), refused unread."""
    try:
        return read_bounded(path)  # refuses anything but a regular file unopened, and a file over the cap
    except FileNotFoundError:
        return PageRejected(OCR_MISSING, f"no OCR file {path.name}")
    except NotARegularFile as error:
        return PageRejected(OCR_INVALID, str(error))
    except JsonFileError:  # read_bounded's other refusal: the size cap
        return PageRejected(OCR_INVALID, f"{path.name} is over {MAX_JSON_BYTES} bytes: not the OCR of one image")
    except OSError as error:
        return PageRejected(OCR_INVALID, f"{path.name}: {error}")


def parse_hocr(text: str) -> list[ParsedPage]:
    """The pages of an hOCR document; ValueError when it has none, a word has no bbox or a number is not finite."""
    parser = _HocrParser()
    for event in _html_events(text):
        parser.handle(*event)
    parser.close()
    if not parser.pages:
        raise ValueError("no ocr_page element: not hOCR")
    return parser.pages


# One tag: name, then attributes whose quoted values may hold anything but their quote; each step atomic, so a
# failed match costs the distance to the next "<" or closing quote, never a rescan of the rest of the file.
_TAG = re.compile(r"""<(/?)([A-Za-z][^\t\n\f\r /<>]*+)((?>[^<>"']+|"[^"]*"|'[^']*')*+)>""")
_ATTRIBUTE = re.compile(r"""([^\s"'<>/=]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+)))?""")
_RAW_TEXT_END = {name: re.compile(rf"</{name}\s*>", re.IGNORECASE) for name in ("script", "style")}


def _html_events(text: str):
    """("start", tag, attrs, self_closing) / ("end", tag) / ("data", text) events of an HTML or XHTML document.

    A single linear pass instead of html.parser: Python 3.11's HTMLParser takes quadratic time on some malformed
    input (minutes for a 1 MB file of "<a<a<a...") and raises AssertionError on others ("<!["). Comments,
    declarations (a DOCTYPE's entities included: HTML has none to expand) and processing instructions are skipped;
    character references are decoded; a "<" that starts no tag is text, as browsers read it."""
    position, end = 0, len(text)
    while position < end:
        opening = text.find("<", position)
        if opening < 0:
            opening = end
        if opening > position:
            yield ("data", html.unescape(text[position:opening]))
        if opening == end:
            return
        if text.startswith("<!--", opening):
            close = text.find("-->", opening + 4)
            position = end if close < 0 else close + 3
            continue
        if text.startswith("<![CDATA[", opening):
            close = text.find("]]>", opening + 9)
            yield ("data", text[opening + 9 : end if close < 0 else close])
            position = end if close < 0 else close + 3
            continue
        if text.startswith(("<!", "<?"), opening):
            close = text.find(">", opening + 2)
            position = end if close < 0 else close + 1
            continue
        match = _TAG.match(text, opening)
        if match is None:
            yield ("data", "<")
            position = opening + 1
            continue
        position = match.end()
        closing, tag, attributes = match.group(1), match.group(2).lower(), match.group(3)
        if closing:
            yield ("end", tag)
            continue
        values = {
            name.lower(): html.unescape(next((v for v in value if v), ""))
            for name, *value in _ATTRIBUTE.findall(attributes)
        }
        self_closing = attributes.rstrip().endswith("/")
        yield ("start", tag, values, self_closing)
        if tag in _RAW_TEXT_END and not self_closing:  # script/style text is not markup
            raw_end = _RAW_TEXT_END[tag].search(text, position)
            position = end if raw_end is None else raw_end.end()
            yield ("end", tag)


class _HocrParser:
    """Tracks the open elements (each with the line id in effect inside it, so a word finds its line in O(1));
    collects ocrx_word text with the bbox of its title. Not an XML parser: hOCR from some engines is HTML that is
    not well-formed XML. An end tag with no open element of its name is ignored; one closes the elements opened
    after its match (tolerates unclosed inline elements)."""

    VOID = {"meta", "br", "img", "link", "hr", "input"}

    def __init__(self) -> None:
        self.pages: list[ParsedPage] = []
        self.stack: list[tuple[str, int | None]] = []  # tag, line id in effect inside it
        self.open_tags: dict[str, int] = {}
        self.lines = 0
        self.word: tuple[tuple[float, ...], int | None, list[str]] | None = None  # box, line, text parts
        self.word_depth = 0

    def handle(self, kind: str, *event) -> None:
        if kind == "start":
            self.start(*event)
        elif kind == "end":
            self.end(*event)
        elif self.word is not None:
            self.word[2].append(event[0])

    def start(self, tag: str, values: dict[str, str], self_closing: bool) -> None:
        if tag in self.VOID:
            return
        classes = set(values.get("class", "").split())
        title = values.get("title", "")
        line = self.stack[-1][1] if self.stack else None
        if "ocr_page" in classes:
            match = BBOX.search(title)
            size = (_number(match.group(3), "page width"), _number(match.group(4), "page height")) if match else None
            self.pages.append(ParsedPage(size if size and size[0] > 0 and size[1] > 0 else None))
        if "ocrx_word" in classes:
            match = BBOX.search(title)
            if match is None:
                raise ValueError(f"word without a bbox (title {title[:100]!r})")
            if self.word is not None:  # a word inside a word: the outer one ends here
                self._finish_word()
            self.word = (tuple(_number(value, "word bbox") for value in match.groups()), line, [])
            self.word_depth = len(self.stack) + 1
        if classes & HOCR_LINE_CLASSES:
            line = self.lines
            self.lines += 1
        self.stack.append((tag, line))
        self.open_tags[tag] = self.open_tags.get(tag, 0) + 1
        if self_closing:
            self.end(tag)

    def end(self, tag: str) -> None:
        if not self.open_tags.get(tag):
            return
        while self.stack:
            open_tag, _ = self.stack.pop()
            self.open_tags[open_tag] -= 1
            if self.word is not None and len(self.stack) < self.word_depth:
                self._finish_word()
            if open_tag == tag:
                break

    def close(self) -> None:
        """The end of the file closes what is still open (a word cut off by it keeps the text it has)."""
        if self.word is not None:
            self._finish_word()

    def _finish_word(self) -> None:
        box, line, parts = self.word
        self.word = None
        text = " ".join("".join(parts).split())
        if not text:
            return
        if not self.pages:
            raise ValueError("a word outside any ocr_page")
        self.pages[-1].words.append(Word(text, box, line if line is not None else -1 - len(self.pages[-1].words)))


def parse_alto(data: bytes) -> list[ParsedPage]:
    """The pages of an ALTO document (any version: namespaces are ignored); ValueError when it is not ALTO."""
    root = _parse_xml(data)
    if _local(root.tag) != "alto":
        raise ValueError(f"root element is <{_local(root.tag)[:100]}>, not <alto>")
    unit = next(((el.text or "").strip() for el in root.iter() if _local(el.tag) == "MeasurementUnit"), "") or "pixel"
    pages_found = [el for el in root.iter() if _local(el.tag) == "Page"]
    if not pages_found:
        raise ValueError("no Page element")
    numbers = [_page_number(page) for page in pages_found]
    if None not in numbers:
        pages_found = [page for _, page in sorted(zip(numbers, pages_found), key=lambda pair: pair[0])]
    pages = []
    lines = 0
    for page in pages_found:
        size = _page_size(page)
        if unit != "pixel" and size is None:
            raise ValueError(f"MeasurementUnit {unit[:100]} and no Page WIDTH/HEIGHT: cannot convert to pixels")
        parsed = ParsedPage(size)
        for text_line in (el for el in page.iter() if _local(el.tag) == "TextLine"):
            for string in (el for el in text_line if _local(el.tag) == "String"):
                content = " ".join((string.get("CONTENT") or "").split())
                if not content:
                    continue
                try:
                    x, y, width, height = (_number(string.get(name), name) for name in ALTO_POSITION)
                except ValueError as error:
                    raise ValueError(
                        f"String {content[:100]!r} without numeric {'/'.join(ALTO_POSITION)}: {error}"
                    ) from None
                box = (x, y, x + width, y + height)
                if not all(math.isfinite(value) for value in box):  # 1e308 + 1e308
                    raise ValueError(f"String {content[:100]!r}: its box {box} is not finite")
                parsed.words.append(Word(content, box, lines))
            lines += 1
        pages.append(parsed)
    return pages


def _parse_xml(data: bytes) -> ElementTree.Element:
    """`data` as an element tree; ValueError for anything that is not well-formed XML or declares entities.

    ALTO needs no DTD entities, and expanding them is how a small file becomes gigabytes (billion laughs) or
    reads a local file (an external entity): any <!ENTITY> declaration is refused before it is used, parameter
    entities and external DTDs are never loaded."""
    builder = ElementTree.TreeBuilder()
    parser = expat.ParserCreate(namespace_separator="}")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    parser.EntityDeclHandler = _refuse_entities
    parser.UnparsedEntityDeclHandler = _refuse_entities
    parser.ExternalEntityRefHandler = _refuse_entities
    try:
        parser.Parse(data, True)
    except expat.ExpatError as error:
        raise ValueError(f"not well-formed XML: {error}") from None
    return builder.close()


def _refuse_entities(*_: object) -> None:
    raise ValueError("the file declares or references DTD entities (<!ENTITY ...>), which ALTO does not use: refused")


def _page_number(page: ElementTree.Element) -> int | None:
    value = (page.get("PHYSICAL_IMG_NR") or "").strip()
    return int(value) if value.isdecimal() and len(value) <= 9 else None


def _page_size(page: ElementTree.Element) -> tuple[float, float] | None:
    if page.get("WIDTH") is None or page.get("HEIGHT") is None:
        return None
    try:
        width, height = _number(page.get("WIDTH"), "Page WIDTH"), _number(page.get("HEIGHT"), "Page HEIGHT")
    except ValueError as error:
        if "finite" in str(error):
            raise
        return None
    return (width, height) if width > 0 and height > 0 else None


def _number(text: str | None, what: str) -> int | float:
    """A finite number: an int when integral (pixel coordinates stay ints, as Tesseract's TSV gives them), else
    a float. ValueError names `what` for garbage and for nan/inf (a page size of 1e999 would scale every word to
    0,0)."""
    if text is None:
        raise ValueError(f"no {what}")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what}: {text[:50]!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{what}: {text[:50]!r} is not a finite number")
    return int(value) if value.is_integer() else value


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]
