"""Fuzzing the readers of OCR files an engine wrote (hOCR, ALTO): any file gives valid words or a named reject.

A named reject is `PageRejected` with reason ocr_invalid / ocr_missing from the reader (the page lands in
rejects.jsonl with the file named), `ValueError` from the parse functions. Never another exception, a hang, a
non-finite coordinate, or the content of a file the document points at (XXE). Hypothesis runs derandomized so a
failure reproduces on every run.
"""

from __future__ import annotations

import html
import math
import os
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from data_prep.ocr_files import AltoOcr, HocrOcr, ParsedPage, parse_alto, parse_hocr
from data_prep.rejects import OCR_INVALID, OCR_MISSING, PageRejected
from layoutlmv3.page_layout import BadBox, Word, normalize_box
from layoutlmv3.tokenizer import MAX_COORD

FUZZ = settings(
    max_examples=120,
    deadline=2000,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
PARSE_SECONDS = 3.0  # CPU seconds (process_time: not inflated by a loaded machine); a linear parser needs well under 1

# numbers as an OCR file may spell them: plausible, negative, fractional, huge, non-finite, not numbers at all
NUMBERS = st.one_of(
    st.integers(-50, 3000).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "9" * 400, "0", "-0", "1_000", " 7 ", "", "x", "٣", "1e-400"]),
)
TEXTS = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["Total", " ", "\u200b", "a\u0301", "\U0001f600", "&amp;", "&#0;", "&#x110000;", "<", "]]>"]),
)


def assert_valid_pages(pages: list[ParsedPage]) -> None:
    """What a parse may return: pages of words with non-blank text, 4 finite numbers and an int line id."""
    assert isinstance(pages, list) and pages
    for page in pages:
        assert page.size is None or (
            len(page.size) == 2 and all(isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in page.size)
        )
        for word in page.words:
            assert_valid_word(word)


def assert_valid_word(word: Word) -> None:
    assert isinstance(word.text, str) and word.text.strip() == word.text and word.text
    assert isinstance(word.line, int) and not isinstance(word.line, bool)
    assert len(word.box) == 4
    assert all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in word.box)


def assert_boxes_normalise_or_refuse(words: list[Word], image: Image.Image) -> None:
    """The next step of the pipeline: each box becomes 0..MAX_COORD ints, or BadBox (rejected as absurd_box)."""
    for word in words:
        try:
            box = normalize_box(word.box, image.width, image.height)
        except BadBox:
            continue
        assert all(isinstance(v, int) and 0 <= v <= MAX_COORD for v in box) and box[0] <= box[2] and box[1] <= box[3]


def parse_or_reject(parse, document) -> list[ParsedPage] | None:
    start = time.process_time()
    try:
        pages = parse(document)
    except ValueError:
        pages = None
    assert time.process_time() - start < PARSE_SECONDS
    if pages is not None:
        assert_valid_pages(pages)
    return pages


# ---- hOCR ----------------------------------------------------------------------------------------------------------


@st.composite
def hocr_titles(draw) -> str:
    numbers = draw(st.lists(NUMBERS, min_size=0, max_size=5))
    prefix = draw(st.sampled_from(["bbox ", "bbox\t", "image x; bbox ", "x_wconf 9; bbox ", "bbox -", ""]))
    return prefix + " ".join(numbers) + draw(st.sampled_from(["", "; x_wconf 91", ";", "'", '"']))


HOCR_CLASSES = ["ocr_page", "ocr_line", "ocrx_line", "ocr_header", "ocrx_word", "ocr_carea", "ocr_par", "x", ""]
HOCR_TAGS = ["div", "span", "p", "strong", "em", "br", "img", "meta", "script", "style", "DIV", "Span", "a"]
HOCR_GARBAGE = ["<!--", "-->", "<![", "<![CDATA[", "]]>", "<?", "<!DOCTYPE html>", "</", "<", ">", "&", "&#", "&#x",
                "'", '"', "<a", "</span", "</div>", "<span/>", "\x00", "\ud800"]  # fmt: skip


SOUP = [*"<>/!-?[]&#;='\" \nabcdlpsvx0123456789", "ocr_page", "ocrx_word", "ocr_line", "bbox 1 2 3 4", "class=",
        "title=", "span", "div", "CDATA", "script", "<span class='ocrx_word' title='bbox 5 5 9 9'>"]  # fmt: skip


@st.composite
def hocr_nodes(draw, depth: int = 0) -> str:
    kind = draw(st.sampled_from(["element", "element", "text", "garbage"] if depth < 4 else ["text", "garbage"]))
    if kind == "text":
        return draw(TEXTS)
    if kind == "garbage":
        return draw(st.sampled_from(HOCR_GARBAGE))
    tag = draw(st.sampled_from(HOCR_TAGS))
    classes = " ".join(draw(st.lists(st.sampled_from(HOCR_CLASSES), max_size=3)))
    quote = draw(st.sampled_from(["'", '"', ""]))
    attrs = f" class={quote}{classes}{quote} title={quote}{draw(hocr_titles())}{quote}"
    children = "".join(draw(st.lists(hocr_nodes(depth + 1), max_size=4)))
    close = draw(st.sampled_from([f"</{tag}>", f"</{tag}>", "", "</span>", "</div>"]))
    return f"<{tag}{attrs}>{children}{close}"


@st.composite
def hocr_documents(draw) -> str:
    body = "".join(draw(st.lists(hocr_nodes(), min_size=1, max_size=5)))
    page = draw(st.sampled_from(["", "<div class='ocr_page' title='bbox 0 0 200 100'>", "<div class='ocr_page'>"]))
    head = draw(st.sampled_from(["", "<?xml version='1.0'?>\n<!DOCTYPE html>\n<html><head><meta charset='utf-8'/>"]))
    return head + page + body


@FUZZ
@given(hocr_documents())
def test_fuzz_hocr_structured_documents_parse_or_are_refused(document: str) -> None:
    parse_or_reject(parse_hocr, document)


@FUZZ
@given(st.lists(st.sampled_from(SOUP), max_size=120).map("".join))
def test_fuzz_hocr_markup_soup_parses_or_is_refused(document: str) -> None:
    parse_or_reject(parse_hocr, document)


@pytest.mark.parametrize(
    "document",
    [
        "<!--" * 250_000,
        "<a" * 500_000,
        "</" * 500_000,
        "<![" * 300_000,
        "<?" * 500_000,
        "&#" * 500_000,
        "<div class='ocr_page' title='bbox 0 0 9 9'><a " + "b='" * 300_000,
        "<div class='ocr_page' title='bbox 0 0 9 9'>"
        + "<span>" * 50_000
        + "<span class='ocrx_word' title='bbox 1 1 2 2'>w</span>" * 20_000,
        "<div class='ocr_page' title='bbox 0 0 9 9'>" + "<span class='ocrx_word' title='" + "bbox 1 " * 150_000,
    ],
    ids=["comments", "open-tags", "end-tags", "marked-sections", "pis", "charrefs", "quotes", "deep-words", "titles"],
)
def test_pathological_hocr_is_parsed_or_refused_in_bounded_time(document: str) -> None:
    """Python 3.11's html.parser is quadratic on some of these (and raises AssertionError on '<!['): ~1 MB files
    an attacker or a broken engine can write must not stall a data-prep worker for minutes."""
    parse_or_reject(parse_hocr, document)


def test_hocr_does_not_inline_external_entities(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    document = (
        f'<?xml version="1.0"?><!DOCTYPE html [<!ENTITY x SYSTEM "file://{secret}">]>'
        "<div class='ocr_page' title='bbox 0 0 10 10'><span class='ocrx_word' title='bbox 1 1 2 2'>&x;</span></div>"
    )
    pages = parse_or_reject(parse_hocr, document)
    assert pages is None or all("TOPSECRET" not in word.text for page in pages for word in page.words)


def test_hocr_keeps_a_word_still_open_at_the_end_of_the_file() -> None:
    (page,) = parse_hocr("<div class='ocr_page'><span class='ocrx_word' title='bbox 1 2 3 4'>cut")
    assert page.words == [Word("cut", (1, 2, 3, 4), -1)]


@pytest.mark.parametrize("title", ["bbox 0 0 " + "9" * 400 + " 10", "bbox 0 0 10 " + "1" * 320])
def test_a_page_size_that_is_not_finite_is_refused(title: str) -> None:
    """Scaling by an infinite page size would put every word at 0,0 and train on it: refused instead."""
    with pytest.raises(ValueError, match="finite"):
        parse_hocr(f"<div class='ocr_page' title='{title}'><span class='ocrx_word' title='bbox 1 1 2 2'>a</span>")
    with pytest.raises(ValueError, match="finite"):
        parse_alto(b'<alto><Page WIDTH="1e999" HEIGHT="9"><TextLine><String CONTENT="a" HPOS="1" VPOS="1" '
                   b'WIDTH="1" HEIGHT="1"/></TextLine></Page></alto>')  # fmt: skip


@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity", "1e400"])
def test_a_word_coordinate_that_is_not_finite_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="finite"):
        parse_alto(f'<alto><Page><TextLine><String CONTENT="a" HPOS="{value}" VPOS="1" WIDTH="1" HEIGHT="1"/>'
                   "</TextLine></Page></alto>".encode())  # fmt: skip
    with pytest.raises(ValueError, match="finite"):
        parse_hocr(f"<div class='ocr_page'><span class='ocrx_word' title='bbox 1 1 2 {'9' * 400}'>a</span></div>")


# ---- ALTO ----------------------------------------------------------------------------------------------------------


def _attribute(name: str, value: str) -> str:
    escaped = value.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    return f' {name}="{escaped}"'


@st.composite
def alto_strings(draw) -> str:
    attrs = ""
    for name in ("CONTENT", "HPOS", "VPOS", "WIDTH", "HEIGHT"):
        if draw(st.integers(0, 9)) > 0:
            attrs += _attribute(name, draw(TEXTS if name == "CONTENT" else NUMBERS))
    return f"<String{attrs}/>"


@st.composite
def alto_documents(draw) -> bytes:
    pages = []
    for _ in range(draw(st.integers(0, 3))):
        lines = []
        for _ in range(draw(st.integers(0, 3))):
            strings = "".join(draw(st.lists(alto_strings(), max_size=4)))
            lines.append(f"<TextLine>{strings}<SP/></TextLine>")
        attrs = ""
        for name in ("WIDTH", "HEIGHT", "PHYSICAL_IMG_NR"):
            if draw(st.booleans()):
                attrs += _attribute(name, draw(st.one_of(NUMBERS, st.sampled_from(["²", "1" * 5000, "01"]))))
        pages.append(f"<Page{attrs}><PrintSpace><TextBlock>{''.join(lines)}</TextBlock></PrintSpace></Page>")
    unit = draw(st.sampled_from(["", "<Description><MeasurementUnit>mm10</MeasurementUnit></Description>",
                                 "<Description><MeasurementUnit>pixel</MeasurementUnit></Description>"]))  # fmt: skip
    namespace = draw(st.sampled_from(["", ' xmlns="http://www.loc.gov/standards/alto/ns-v4#"']))
    root = draw(st.sampled_from(["alto", "alto", "html"]))
    return f'<?xml version="1.0"?><{root}{namespace}>{unit}<Layout>{"".join(pages)}</Layout></{root}>'.encode()


@FUZZ
@given(alto_documents())
def test_fuzz_alto_structured_documents_parse_or_are_refused(document: bytes) -> None:
    parse_or_reject(parse_alto, document)


@FUZZ
@given(st.one_of(st.binary(max_size=300), alto_documents().flatmap(lambda doc: _mutations(doc))))
def test_fuzz_alto_damaged_bytes_parse_or_are_refused(document: bytes) -> None:
    parse_or_reject(parse_alto, document)


def _mutations(document: bytes) -> st.SearchStrategy[bytes]:
    """The document cut short, or with a byte range replaced by random bytes."""
    size = len(document)
    return st.one_of(
        st.integers(0, size).map(lambda cut: document[:cut]),
        st.tuples(st.integers(0, size), st.integers(0, 16), st.binary(max_size=16)).map(
            lambda m: document[: m[0]] + m[2] + document[m[0] + m[1] :]
        ),
    )


def _billion_laughs(levels: int = 10) -> bytes:
    entities = '<!ENTITY l0 "lol">' + "".join(
        f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, levels)
    )  # fmt: skip
    return (
        f'<?xml version="1.0"?><!DOCTYPE alto [{entities}]><alto><Page><TextLine>'
        f'<String CONTENT="&l{levels - 1};" HPOS="1" VPOS="1" WIDTH="1" HEIGHT="1"/></TextLine></Page></alto>'
    ).encode()


@pytest.mark.parametrize(
    "document",
    [
        _billion_laughs(),
        _billion_laughs(3),  # small enough for expat's own amplification limit to let it through
        b'<?xml version="1.0"?><!DOCTYPE alto [<!ENTITY big "'
        + b"x" * 100_000
        + b'">]><alto><Page><TextLine>'
        + b'<String CONTENT="&big;" HPOS="1" VPOS="1" WIDTH="1" HEIGHT="1"/>' * 2000
        + b"</TextLine></Page></alto>",
    ],
    ids=["billion-laughs", "small-expansion", "quadratic-blowup"],
)
def test_alto_with_entity_declarations_is_refused_quickly(document: bytes) -> None:
    """ALTO never needs a DTD's entities; a file declaring them is refused before any expansion."""
    start = time.process_time()
    with pytest.raises(ValueError, match="ENTITY"):
        parse_alto(document)
    assert time.process_time() - start < PARSE_SECONDS


def test_alto_never_reads_an_external_entity(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    for document in (
        f'<?xml version="1.0"?><!DOCTYPE alto [<!ENTITY x SYSTEM "file://{secret}">]><alto><Page><TextLine>'
        '<String CONTENT="a" HPOS="1" VPOS="1" WIDTH="1" HEIGHT="1"/>&x;</TextLine></Page></alto>',
        f'<?xml version="1.0"?><!DOCTYPE alto SYSTEM "file://{secret}"><alto><Page><TextLine>'
        '<String CONTENT="&x;" HPOS="1" VPOS="1" WIDTH="1" HEIGHT="1"/></TextLine></Page></alto>',
        f'<?xml version="1.0"?><!DOCTYPE alto [<!ENTITY % p SYSTEM "file://{secret}"> %p;]><alto><Page/></alto>',
    ):
        pages = parse_or_reject(parse_alto, document.encode())
        assert pages is None or all("TOPSECRET" not in word.text for page in pages for word in page.words)


def test_deeply_nested_alto_is_parsed_in_bounded_time() -> None:
    depth = 200_000
    document = b"<alto><Page><TextLine>" + b"<x>" * depth + b"</x>" * depth + b"</TextLine></Page></alto>"
    parse_or_reject(parse_alto, document)


# ---- the readers, on files: the reject names the file ------------------------------------------------------------


@pytest.fixture
def page_image(tmp_path: Path) -> tuple[Path, Image.Image]:
    image = Image.new("L", (200, 100), 255)
    path = tmp_path / "scan.png"
    image.save(path)
    return path, image


def read_or_reject(reader, image_path: Path, image: Image.Image, ocr_name: str) -> None:
    start = time.process_time()
    try:
        words = reader.read(image_path, 0, image)
    except PageRejected as rejected:
        assert rejected.reason in (OCR_INVALID, OCR_MISSING)
        assert rejected.reason == OCR_MISSING or ocr_name in rejected.detail
        return
    finally:
        assert time.process_time() - start < PARSE_SECONDS
    assert isinstance(words, list)
    for word in words:
        assert_valid_word(word)
    assert_boxes_normalise_or_refuse(words, image)


@FUZZ
@given(st.one_of(hocr_documents().map(lambda doc: doc.encode("utf-8", "surrogatepass")), st.binary(max_size=200)))
def test_fuzz_hocr_files_give_words_or_a_named_reject(page_image, document: bytes) -> None:
    image_path, image = page_image
    image_path.with_suffix(".hocr").write_bytes(document)
    read_or_reject(HocrOcr(), image_path, image, "scan.hocr")


@FUZZ
@given(st.one_of(alto_documents(), st.binary(max_size=200)))
def test_fuzz_alto_files_give_words_or_a_named_reject(page_image, document: bytes) -> None:
    image_path, image = page_image
    image_path.with_suffix(".xml").write_bytes(document)
    read_or_reject(AltoOcr(), image_path, image, "scan.xml")


# ---- well-formed files round-trip: the fuzzing above is not passing by refusing everything ------------------------

WORD_TEXTS = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1, max_size=8)
LINES = st.lists(st.lists(st.tuples(WORD_TEXTS, st.tuples(*[st.integers(0, 5000)] * 4)), min_size=1, max_size=4),
                 max_size=4)  # fmt: skip


@FUZZ
@given(LINES)
def test_fuzz_well_formed_hocr_and_alto_give_back_every_word(lines: list[list[tuple[str, tuple[int, ...]]]]) -> None:
    expected = [Word(text, box, line) for line, words in enumerate(lines) for text, box in words]
    hocr = "<html><body><div class='ocr_page' title='image \"x.png\"; bbox 0 0 5000 5000'>"
    alto = '<alto xmlns="http://www.loc.gov/standards/alto/ns-v4#"><Layout><Page WIDTH="5000" HEIGHT="5000">'
    for words in lines:
        hocr += "<span class='ocr_line' title='bbox 0 0 1 1'>"
        alto += "<TextLine>"
        for text, (x0, y0, x1, y1) in words:
            hocr += f"<span class='ocrx_word' title='bbox {x0} {y0} {x1} {y1}; x_wconf 90'>{html.escape(text)}</span> "
            alto += (
                f"<String{_attribute('CONTENT', text)} HPOS='{x0}' VPOS='{y0}' WIDTH='{x1 - x0}' HEIGHT='{y1 - y0}'/>"
            )
        hocr += "</span>"
        alto += "</TextLine>"
    (hocr_page,) = parse_hocr(hocr + "</div></body></html>")
    (alto_page,) = parse_alto((alto + "</Page></Layout></alto>").encode())
    assert hocr_page.words == expected
    assert alto_page.words == expected


@pytest.mark.parametrize(("reader", "name"), [(HocrOcr, "scan.hocr"), (AltoOcr, "scan.xml")])
def test_an_ocr_file_that_is_a_fifo_is_refused_unopened(page_image, reader, name: str) -> None:
    """Opening a FIFO for reading waits for a writer for ever: a worker would hang on one planted file."""
    image_path, image = page_image
    fifo = image_path.with_name(name)
    os.mkfifo(fifo)
    outcome: list[BaseException | object] = []

    def read() -> None:
        try:
            outcome.append(reader().read(image_path, 0, image))
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            outcome.append(error)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(5)
    if thread.is_alive():  # release the blocked open so the thread ends, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"reading {name}, a FIFO, blocked")
    (rejected,) = outcome
    assert isinstance(rejected, PageRejected) and rejected.reason == OCR_INVALID and "FIFO" in rejected.detail
