"""Fuzzing the readers of annotations and words files: OCR JSON and FUNSD as data-prep OCR, words files, FUNSD, CORD,
DocVQA questions and classification index files. Any input gives valid words (text strings, 0..1000 integer boxes,
labels in range, pages inside the data root) or a named reject: data prep's `PageRejected` with a reason and the
file named, fine-tuning's ValueError / FileNotFoundError naming the file. Never another exception or a hang.
Hypothesis runs derandomized so a failure reproduces every run.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from data_prep.ocr import FunsdOcr, JsonOcr
from data_prep.rejects import ABSURD_BOX, OCR_INVALID, OCR_MISSING, PageRejected
from data_prep.samples import normalize_box as prep_normalize_box
from layoutlmv3.finetune import classes, cord, funsd, qa
from layoutlmv3.page_layout import BadBox, model_words, read_words
from layoutlmv3.tokenizer import MAX_COORD

FUZZ = settings(
    max_examples=80,
    deadline=3000,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
WIDTH, HEIGHT = 120, 90

JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 200),
    st.integers(-(2**70), 2**70),
    st.sampled_from([10**400, -(10**400)]),  # JSON integers Python reads exactly and float() cannot
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.sampled_from(["", " ", "\u200b", "1e400", "nan", "../x.png", "12"]),
)
HOSTILE = st.sampled_from([10**400, float("inf"), float("nan"), -1, 2.7, "7", None, True, [], {}, "", [1, 2, 3, 4]])
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=10,
)


@st.composite
def mutated(draw, document: object) -> object:
    """`document` with a few of its values replaced by anything JSON holds, keys dropped or added."""
    document = copy.deepcopy(document)
    for _ in range(draw(st.integers(0, 3))):
        parent, key = _pick(draw, document)
        if parent is None:
            return draw(JSON_VALUES)
        action = draw(st.sampled_from(["replace", "replace", "drop", "add"]))
        if action == "drop" and isinstance(parent, dict):
            parent.pop(key)
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=4))] = draw(JSON_VALUES)
        else:
            parent[key] = copy.deepcopy(draw(st.one_of(HOSTILE, JSON_VALUES)))  # never a shared object
    return document


def _pick(draw, document: object) -> tuple[object, object]:
    """A (container, key) drawn from every position in the document, leaves included; (None, None) is the root."""
    positions: list[tuple[object, object]] = [(None, None)]
    stack = [document]
    while stack:
        node = stack.pop()
        keys = list(node) if isinstance(node, dict) else range(len(node)) if isinstance(node, list) else []
        for key in keys:
            positions.append((node, key))
            stack.append(node[key])
    return draw(st.sampled_from(positions))


def documents(base: object) -> st.SearchStrategy[bytes]:
    """The base document mutated, any JSON, or bytes that are not JSON (or not UTF-8)."""
    return st.one_of(
        mutated(base).map(lambda doc: json.dumps(doc).encode()),
        mutated(base).map(lambda doc: json.dumps(doc).encode()),
        JSON_VALUES.map(lambda doc: json.dumps(doc).encode()),
        st.sampled_from([b"", b"{", b"\xff\xfe{}", b"[" * 50_000, b"<html>error</html>", b"NaN"]),
    )


def timed(call):
    start = time.process_time()
    try:
        return call()
    finally:
        assert time.process_time() - start < 3


def _image(path: Path) -> Image.Image:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("L", (WIDTH, HEIGHT), 255)
    image.save(path)
    return image


def assert_page_boxes(words: list[str], boxes: list[list[int]]) -> None:
    assert len(words) == len(boxes)
    assert all(isinstance(word, str) and word.strip() for word in words)
    for box in boxes:
        assert len(box) == 4 and all(type(v) is int and 0 <= v <= MAX_COORD for v in box)


# ---- data prep: --ocr json and --ocr funsd ---------------------------------------------------------------------

OCR_JSON = {"pages": [{"page": 0, "words": [{"text": "Total", "box": [5, 6, 40, 20], "line": 0},
                                            {"text": "12", "box": [50, 6, 70, 20], "line": 0}]}]}  # fmt: skip
FUNSD = {"form": [{"id": 0, "label": "question", "box": [5, 6, 70, 20], "linking": [],
                   "words": [{"text": "Date", "box": [5, 6, 40, 20]}, {"text": ":", "box": [41, 6, 44, 20]}]},
                  {"id": 1, "label": "answer", "box": [50, 30, 90, 40], "words": [{"text": "1998", "box": [50, 30, 90, 40]}]}]}  # fmt: skip


def prep_read(reader, image_path: Path, image: Image.Image, ocr_name: str) -> None:
    """Data prep's contract: words that become 0..1000 boxes or reject the page, or a named ocr reject."""
    try:
        words = timed(lambda: reader.read(image_path, 0, image))
    except PageRejected as rejected:
        assert rejected.reason in (OCR_INVALID, OCR_MISSING) and ocr_name in rejected.detail
        return
    for word in words:
        assert isinstance(word.text, str)
        assert type(word.line) is int
        try:
            box = prep_normalize_box(word.box, WIDTH, HEIGHT)
        except PageRejected as rejected:
            assert rejected.reason == ABSURD_BOX
            continue
        assert all(type(v) is int and 0 <= v <= MAX_COORD for v in box)


@FUZZ
@given(documents(OCR_JSON))
def test_fuzz_ocr_json_gives_words_or_a_named_reject(tmp_path: Path, document: bytes) -> None:
    image_path = tmp_path / "scan.png"
    image = _image(image_path)
    (tmp_path / "scan.json").write_bytes(document)
    prep_read(JsonOcr(), image_path, image, "scan.json")


@FUZZ
@given(documents(FUNSD))
def test_fuzz_funsd_as_ocr_gives_words_or_a_named_reject(tmp_path: Path, document: bytes) -> None:
    image_path = tmp_path / "images" / "form.png"
    image = _image(image_path)
    (tmp_path / "annotations").mkdir(exist_ok=True)
    (tmp_path / "annotations" / "form.json").write_bytes(document)
    prep_read(FunsdOcr(), image_path, image, "form.json")


# ---- words files (prediction, classification, question answering) -----------------------------------------------

WORDS = {"words": [{"text": "Date:", "box": [5, 6, 40, 20], "line": 3}, {"text": 7, "box": [50, 6, 70, 20]}]}


@FUZZ
@given(documents(WORDS), st.sampled_from(["word", "segment"]))
def test_fuzz_words_files_give_words_or_a_named_error(tmp_path: Path, document: bytes, boxes: str) -> None:
    path = tmp_path / "page.json"
    path.write_bytes(document)
    try:
        words = timed(lambda: read_words(path))
        texts, normalized = model_words(words, WIDTH, HEIGHT, boxes)
    except BadBox:
        return  # named by its readers (page_words: "{source}: {error}")
    except ValueError as error:
        assert str(path) in str(error)
        return
    assert_page_boxes(texts, normalized)


# ---- fine-tuning annotations: FUNSD and CORD ---------------------------------------------------------------------

CORD = {"valid_line": [{"category": "menu.nm", "words": [{"text": "Tea", "quad": {"x1": 5, "y1": 6, "x2": 40, "y2": 6,
        "x3": 40, "y3": 20, "x4": 5, "y4": 20}}]}, {"category": "total.total_price", "words": [{"text": "3.50",
        "quad": {"x1": 50, "y1": 30, "x2": 90, "y2": 30, "x3": 90, "y3": 40, "x4": 50, "y4": 40}}]}]}  # fmt: skip
CORD_LABELS = funsd.bio_labels(["MENU.NM", "TOTAL.TOTAL_PRICE"])


def assert_page_or_named(read, annotation: Path, labels) -> None:
    try:
        page = timed(read)
    except ValueError as error:
        assert str(annotation) in str(error)
        return
    assert_page_boxes(page.words, page.boxes)
    assert len(page.labels) == len(page.words) and all(0 <= label < len(labels) for label in page.labels)


@FUZZ
@given(documents(FUNSD), st.sampled_from(["word", "segment"]))
def test_fuzz_funsd_annotations_give_a_page_or_a_named_error(tmp_path: Path, document: bytes, boxes: str) -> None:
    image = tmp_path / "form.png"
    _image(image)
    annotation = tmp_path / "form.json"
    annotation.write_bytes(document)
    assert_page_or_named(lambda: funsd.read_page(annotation, image, boxes), annotation, funsd.LABELS)


@FUZZ
@given(documents(CORD), st.sampled_from(["word", "segment"]))
def test_fuzz_cord_annotations_give_a_page_or_a_named_error(tmp_path: Path, document: bytes, boxes: str) -> None:
    image = tmp_path / "receipt.png"
    _image(image)
    annotation = tmp_path / "receipt.json"
    annotation.write_bytes(document)
    read = lambda: cord.read_cord_page(annotation, image, boxes, CORD_LABELS)  # noqa: E731
    assert_page_or_named(read, annotation, CORD_LABELS)


# ---- paths from data files: DocVQA questions and classification index files ------------------------------------

PATHS = st.one_of(
    st.sampled_from(
        [
            "a.png",
            "sub/b.png",
            "./a.png",
            "sub/../a.png",
            "../outside/c.png",
            "sub/../../outside/c.png",
            "/etc/passwd",
            "link.png",
            "sublink/c.png",
            "",
            " ",
            "a.png/",
            "a\x00.png",
            "\ud800.png",
            "x" * 5000,
            "~/a.png",
            "C:\\a.png",
            "missing.png",
        ]
    ),  # fmt: skip
    st.text(max_size=8),
)


@pytest.fixture
def data_root(tmp_path: Path) -> tuple[Path, Path]:
    """root/split with pages a.png, sub/b.png (each with its words file); root/outside/c.png beside the split, and
    links inside the split to it (link.png) and to its folder (sublink)."""
    root = tmp_path / "root"
    split = root / "split"
    outside = root / "outside"
    for image in (split / "a.png", split / "sub" / "b.png", outside / "c.png"):
        _image(image)
        image.with_suffix(".json").write_text(json.dumps(WORDS))
    (split / "link.png").symlink_to(outside / "c.png")
    (split / "sublink").symlink_to(outside)
    return root, split


def assert_inside(path: Path, split: Path) -> None:
    assert path.resolve().is_relative_to(split.resolve()) and path.with_suffix(".json").resolve().is_relative_to(
        split.resolve()
    )


DOCVQA = {"data": [{"questionId": 1, "question": "What is the date?", "image": "a.png", "answers": ["Date:"]},
                   {"questionId": 2, "question": "Total?", "image": "sub/b.png", "answers": ["7"]}]}  # fmt: skip


@st.composite
def docvqa_documents(draw) -> bytes:
    document = copy.deepcopy(DOCVQA)
    for entry in document["data"]:
        if draw(st.booleans()):
            entry["image"] = draw(PATHS)
    return draw(st.one_of(st.just(json.dumps(document).encode()), documents(document)))


@FUZZ
@given(docvqa_documents())
def test_fuzz_docvqa_questions_stay_inside_the_split_or_are_named(data_root, document: bytes) -> None:
    _, split = data_root
    source = split / "split.json"
    source.write_bytes(document)
    try:
        questions = timed(lambda: qa.read_questions(split, "segment"))
    except (ValueError, FileNotFoundError) as error:
        assert str(split) in str(error)
        return
    for question in questions:
        assert_inside(question.image_path, split)
        assert_page_boxes(question.words, question.boxes)
        assert isinstance(question.question, str) and all(isinstance(answer, str) for answer in question.answers)


@FUZZ
@given(st.lists(st.tuples(PATHS, st.sampled_from(["0", "1", "invoice", "", " x"])), max_size=4),
       st.sampled_from(["\n", "\r\n", "\t"]), st.binary(max_size=4))  # fmt: skip
def test_fuzz_classification_index_stays_inside_the_root_or_is_named(
    data_root, lines, newline: str, tail: bytes
) -> None:
    root, split = data_root
    index = root / "split.txt"
    text = newline.join(f"{path} {label}" for path, label in lines) + newline
    index.write_bytes(text.encode("utf-8", "surrogatepass") + tail)
    try:
        pages = timed(lambda: classes.listed_pages(split))
        read = [classes.page_words(image, "segment") for image, _ in pages]
    except (ValueError, FileNotFoundError) as error:
        assert str(index) in str(error) or str(root) in str(error)
        return
    for (image, label), (words, boxes) in zip(pages, read, strict=True):
        assert image.resolve().is_relative_to(root.resolve()) and isinstance(label, str)
        assert_page_boxes(words, boxes)


# ---- the minimal cases the fuzzing found ----------------------------------------------------------------------


def test_a_box_integer_beyond_float_range_is_a_bad_box(tmp_path: Path) -> None:
    """JSON integers are exact in Python: 10**400 parses, and float() of it raises OverflowError, not BadBox."""
    path = tmp_path / "page.json"
    path.write_text(json.dumps({"words": [{"text": "a", "box": [10**400, 2, 3, 4]}]}))
    with pytest.raises(BadBox):
        model_words(read_words(path), WIDTH, HEIGHT, "word")


def test_a_page_name_too_long_for_the_file_system_is_named(data_root) -> None:
    _, split = data_root
    entry = {"question": "q?", "image": "x" * 5000, "answers": []}
    (split / "split.json").write_text(json.dumps({"data": [entry]}))
    with pytest.raises(ValueError, match="split.json"):
        qa.read_questions(split, "segment")
