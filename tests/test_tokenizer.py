"""Tokenizer: equality with transformers' LayoutLMv3Tokenizer on FUNSD, windows, validation, BPE training, CLI."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from data_prep.train_tokenizer import main as train_tokenizer_main
from layoutlmv3.tokenizer import (
    IGNORE_LABEL,
    MIN_VOCAB_SIZE,
    TRAINED_MASK_ID,
    Encoding,
    LayoutLMv3Tokenizer,
    train_bpe,
)

FUNSD_LABELS = ["O", "B-HEADER", "I-HEADER", "B-QUESTION", "I-QUESTION", "B-ANSWER", "I-ANSWER"]
EDGE_WORDS = ["hello", "", " ", "world wide", "<mask>", "a<s>b", "\t", "é", "日本語", "don't", "(1995)", "", "x" * 40]


# ---------------------------------------------------------------- helpers and fixtures


def load_funsd_page(path: Path) -> tuple[list[str], list[list[int]], list[int]]:
    """Words, boxes normalised to 0..1000 by the image size (as a caller must), and BIO label ids of one page."""
    from PIL import Image

    with Image.open(path.parent.parent / "images" / f"{path.stem}.png") as image:
        width, height = image.size
    words, boxes, labels = [], [], []
    for entity in json.loads(path.read_text(encoding="utf-8"))["form"]:
        tag = entity["label"].upper()
        for position, word in enumerate(entity["words"]):
            x0, y0, x1, y1 = word["box"]
            words.append(word["text"])
            boxes.append([_scale(x0, width), _scale(y0, height), _scale(x1, width), _scale(y1, height)])
            labels.append(0 if tag == "OTHER" else FUNSD_LABELS.index(f"{'B' if position == 0 else 'I'}-{tag}"))
    return words, boxes, labels


def _scale(value: int, size: int) -> int:
    return min(max(int(1000 * value / size), 0), 1000)


@pytest.fixture(scope="module")
def ours(roberta_vocab_dir: Path) -> LayoutLMv3Tokenizer:
    return LayoutLMv3Tokenizer.from_pretrained(roberta_vocab_dir)


@pytest.fixture(scope="module")
def hf(roberta_vocab_dir: Path):
    transformers = pytest.importorskip("transformers")
    # In transformers 5 the fast (tokenizers-backed) class is LayoutLMv3Tokenizer; LayoutLMv3TokenizerFast aliases it.
    return transformers.LayoutLMv3Tokenizer.from_pretrained(roberta_vocab_dir)


@pytest.fixture(scope="module")
def funsd_pages(funsd_dir: Path, ours: LayoutLMv3Tokenizer) -> list[tuple[list[str], list[list[int]], list[int]]]:
    """The three training pages longest in tokens (the longest is over 512) and the first three by name."""
    paths = sorted((funsd_dir / "training_data" / "annotations").glob("*.json"))
    by_tokens = sorted(paths, key=lambda path: _token_count(ours, path))
    assert _token_count(ours, by_tokens[-1]) > 512, "no FUNSD page long enough to test truncation"
    return [load_funsd_page(path) for path in by_tokens[-3:] + paths[:3]]


def _token_count(tokenizer: LayoutLMv3Tokenizer, path: Path) -> int:
    words = [word["text"] for entity in json.loads(path.read_text())["form"] for word in entity["words"]]
    return len(tokenizer.encode(words, [[0, 0, 0, 0]] * len(words), max_length=None).input_ids)


@pytest.fixture(scope="module")
def trained() -> LayoutLMv3Tokenizer:
    return train_bpe(corpus(), vocab_size=400)


def corpus(seed: int = 0) -> list[str]:
    """A fixed synthetic corpus of form-like words, so training tests never depend on shared data."""
    rng = random.Random(seed)
    stems = ["date", "name", "total", "invoice", "tobacco", "brand", "report", "account", "number", "signature"]
    words = [rng.choice(stems) + rng.choice(["", "s", ":", "ing", "ed"]) for _ in range(3000)]
    return words + [str(rng.randint(0, 10_000)) for _ in range(500)]


def assert_same_as_hf(encoding: Encoding, hf_ids, hf_bbox, hf_mask, hf_labels, hf_word_ids) -> None:
    assert encoding.input_ids == hf_ids
    assert encoding.bbox == hf_bbox
    assert encoding.attention_mask == hf_mask
    assert encoding.labels == hf_labels
    assert encoding.word_ids == hf_word_ids


# ---------------------------------------------------------------- compatibility with transformers


def test_funsd_pages_match_transformers_truncated_and_padded(ours, hf, funsd_pages) -> None:
    for words, boxes, labels in funsd_pages:
        expected = hf(words, boxes=boxes, word_labels=labels, max_length=512, truncation=True, padding="max_length")
        got = ours.encode(words, boxes, labels, max_length=512, pad_to=512)
        assert len(got.input_ids) == 512
        hf_word_ids = expected.word_ids()
        assert_same_as_hf(
            got, expected["input_ids"], expected["bbox"], expected["attention_mask"], expected["labels"], hf_word_ids
        )


def test_funsd_pages_without_labels_or_padding_match_transformers(ours, hf, funsd_pages) -> None:
    for words, boxes, _ in funsd_pages:
        expected = hf(words, boxes=boxes, max_length=512, truncation=True)
        got = ours.encode(words, boxes)
        assert got.labels is None
        assert (got.input_ids, got.bbox) == (expected["input_ids"], expected["bbox"])


def test_edge_words_match_transformers(ours, hf) -> None:
    """Empty words vanish, whitespace words give tokens, special-token strings become specials -- as in transformers."""
    boxes = [[i, i, i + 10, i + 20] for i in range(len(EDGE_WORDS))]
    labels = list(range(len(EDGE_WORDS)))
    expected = hf(EDGE_WORDS, boxes=boxes, word_labels=labels)
    got = ours.encode(EDGE_WORDS, boxes, labels)
    assert_same_as_hf(
        got, expected["input_ids"], expected["bbox"], [1] * len(got.input_ids), expected["labels"], expected.word_ids()
    )
    assert 1 not in got.word_ids and ours.mask_token_id in got.input_ids
    assert ours.decode(got.input_ids) == hf.decode(expected["input_ids"], skip_special_tokens=True)


def test_windows_match_transformers_overflow_except_mid_word_labels(ours, hf, funsd_pages) -> None:
    """Same ids/boxes/word ids as return_overflowing_tokens; labels differ only where a window starts mid-word."""
    max_length, stride = 128, 32
    mid_word_starts = 0
    for words, boxes, labels in funsd_pages:
        expected = hf(
            words,
            boxes=boxes,
            word_labels=labels,
            max_length=max_length,
            stride=stride,
            truncation=True,
            padding="max_length",
            return_overflowing_tokens=True,
        )
        windows = ours.encode_windows(words, boxes, labels, max_length=max_length, stride=stride, pad_to=max_length)
        assert len(windows) == len(expected["input_ids"]) > 1
        page_word_ids = ours.encode(words, boxes, max_length=None).word_ids[1:-1]
        for k, window in enumerate(windows):
            hf_labels = list(expected["labels"][k])
            start = k * (max_length - 2 - stride)  # page token that opens window k
            if k and page_word_ids[start] == page_word_ids[start - 1]:
                assert hf_labels[1] != IGNORE_LABEL and window.labels[1] == IGNORE_LABEL
                mid_word_starts += 1
                hf_labels[1] = IGNORE_LABEL  # transformers labels the continuation sub-token opening a window
            assert_same_as_hf(
                window,
                expected["input_ids"][k],
                expected["bbox"][k],
                expected["attention_mask"][k],
                hf_labels,
                expected.encodings[k].word_ids,
            )
    assert mid_word_starts > 0  # the difference was exercised


# ---------------------------------------------------------------- windows


@pytest.mark.parametrize(("max_length", "stride"), [(512, 128), (64, 0), (40, 37), (3, 0)])
def test_windows_cover_the_page_with_the_requested_overlap(trained, max_length, stride) -> None:
    words = [f"word{i} {'long' * (i % 5)}" for i in range(150)]
    boxes = [[i, i, i + 1, i + 1] for i in range(150)]
    full = trained.encode(words, boxes, max_length=None)
    content = full.input_ids[1:-1]
    windows = trained.encode_windows(words, boxes, max_length=max_length, stride=stride)
    rebuilt: list[int] = []
    for k, window in enumerate(windows):
        assert len(window.input_ids) <= max_length
        assert window.input_ids[0] == trained.cls_token_id and window.input_ids[-1] == trained.sep_token_id
        body = window.input_ids[1:-1]
        if k:
            assert body[:stride] == rebuilt[len(rebuilt) - stride :]
            body = body[stride:]
        if k < len(windows) - 1:
            assert len(window.input_ids) == max_length
        rebuilt.extend(body)
    assert rebuilt == content
    for window in windows:  # word ids are page word indices, so boxes can be looked up on the page
        assert all(window.bbox[i] == boxes[w] for i, w in enumerate(window.word_ids) if w is not None)


def test_short_and_empty_pages_give_one_window(trained) -> None:
    assert len(trained.encode_windows(["a", "b"], [[0, 0, 1, 1]] * 2)) == 1
    (empty,) = trained.encode_windows([], [], [], pad_to=4)
    assert empty.input_ids == [trained.cls_token_id, trained.sep_token_id, trained.pad_token_id, trained.pad_token_id]
    assert empty.labels == [IGNORE_LABEL] * 4


def test_windows_label_each_word_first_sub_token_once_per_window(trained) -> None:
    words = ["internationalization"] * 40
    labels = list(range(40))
    windows = trained.encode_windows(words, [[0, 0, 1, 1]] * 40, labels, max_length=12, stride=3)
    labelled = set()
    for window in windows:
        firsts = [i for i, w in enumerate(window.word_ids) if w is not None and window.labels[i] != IGNORE_LABEL]
        for i in firsts:
            assert window.labels[i] == window.word_ids[i]
            assert i == 1 or window.word_ids[i - 1] != window.word_ids[i]
        labelled |= {window.word_ids[i] for i in firsts}
    assert labelled == set(range(40))


@pytest.mark.parametrize(("max_length", "stride"), [(2, 0), (10, 8), (10, -1)])
def test_bad_window_geometry_raises(trained, max_length, stride) -> None:
    with pytest.raises(ValueError, match="stride"):
        trained.encode_windows(["a"], [[0, 0, 1, 1]], max_length=max_length, stride=stride)


# ---------------------------------------------------------------- specials, padding, labels


def test_special_token_ids_are_robertas(ours) -> None:
    assert ours.vocab_size == 50265
    assert (ours.cls_token_id, ours.pad_token_id, ours.sep_token_id, ours.unk_token_id) == (0, 1, 2, 3)
    assert ours.mask_token_id == 50264
    assert ours.special_token_ids == {0, 1, 2, 3, 50264}


def test_specials_and_padding(trained) -> None:
    encoding = trained.encode(["Date:", "1995"], [[10, 20, 30, 40], [50, 60, 70, 80]], [3, 5], pad_to=10)
    n = sum(w is not None for w in encoding.word_ids) + 2  # real tokens: content plus <s> and </s>
    assert encoding.input_ids[0] == trained.cls_token_id and encoding.input_ids[n - 1] == trained.sep_token_id
    assert encoding.input_ids[n:] == [trained.pad_token_id] * (10 - n)
    assert encoding.attention_mask == [1] * n + [0] * (10 - n)
    assert encoding.word_ids[0] is None and encoding.word_ids[n - 1 :] == [None] * (10 - n + 1)
    assert encoding.labels[0] == IGNORE_LABEL and encoding.labels[n - 1 :] == [IGNORE_LABEL] * (10 - n + 1)
    specials = [0, *range(n - 1, 10)]
    assert all(encoding.bbox[i] == [0, 0, 0, 0] for i in specials)
    assert all(len(field) == 10 for field in vars(encoding).values())


def test_truncation_keeps_the_first_tokens(trained) -> None:
    words = [f"w{i}" for i in range(100)]
    boxes = [[0, 0, 1, 1]] * 100
    full = trained.encode(words, boxes, max_length=None)
    cut = trained.encode(words, boxes, max_length=20)
    assert len(cut.input_ids) == 20
    assert cut.input_ids[:-1] == full.input_ids[:19] and cut.input_ids[-1] == trained.sep_token_id
    with pytest.raises(ValueError, match="pad"):
        trained.encode(words, boxes, max_length=20, pad_to=10)


def test_labels_only_on_first_sub_token(trained) -> None:
    words = ["internationalization", "is", "extraordinarily", "hard"]
    encoding = trained.encode(words, [[0, 0, 1, 1]] * 4, [7, 8, 9, 10])
    assert len(encoding.input_ids) > len(words) + 2  # some words do split
    for i, word in enumerate(encoding.word_ids):
        first = word is not None and encoding.word_ids[i - 1] != word
        assert encoding.labels[i] == ([7, 8, 9, 10][word] if first else IGNORE_LABEL)
    assert all(encoding.bbox[i] == [0, 0, 1, 1] for i, w in enumerate(encoding.word_ids) if w is not None)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("words", "boxes", "labels", "match"),
    [
        (["a", "b"], [[0, 0, 1, 1]], None, "2 words but 1 boxes"),
        (["a"], [[0, 0, 1, 1]], [1, 2], "1 words but 2 labels"),
        (["a", "b"], [[0, 0, 1, 1], [0, 0, 1001, 5]], None, r"word 1 \('b'\).*0\.\.1000"),
        (["a"], [[-1, 0, 1, 1]], None, "0..1000"),
        (["a", "b"], [[0, 0, 1, 1], [9, 0, 8, 5]], None, r"word 1 .*x0 <= x1"),
        (["a"], [[0, 9, 1, 8]], None, "y0 <= y1"),
        (["a"], [[0, 0, 1]], None, "4 coordinates"),
        (["a"], [[0.5, 0, 1, 1]], None, "integers"),
        (["a"], [[0, 0, 1, 1]], [1.0], "label of word 0"),
        ([None], [[0, 0, 1, 1]], None, "not str"),
    ],
)
def test_bad_input_raises(words, boxes, labels, match) -> None:
    tokenizer = train_bpe(["a", "b"], vocab_size=MIN_VOCAB_SIZE)
    with pytest.raises(ValueError, match=match):
        tokenizer.encode(words, boxes, labels)


def test_numpy_integers_are_accepted() -> None:
    np = pytest.importorskip("numpy")
    tokenizer = train_bpe(["a"], vocab_size=MIN_VOCAB_SIZE)
    encoding = tokenizer.encode(["a"], np.array([[1, 2, 3, 4]]), np.array([5]))
    assert encoding.bbox[1] == [1, 2, 3, 4] and type(encoding.bbox[1][0]) is int and encoding.labels[1] == 5


# ---------------------------------------------------------------- training and files


def test_trained_vocabulary_layout(trained) -> None:
    assert MIN_VOCAB_SIZE < trained.vocab_size <= 400
    assert (trained.cls_token_id, trained.pad_token_id, trained.sep_token_id, trained.unk_token_id) == (0, 1, 2, 3)
    assert trained.mask_token_id == TRAINED_MASK_ID
    encoding = trained.encode(["invoices:", "tobacco", "Ωμέγα"], [[0, 0, 1, 1]] * 3)
    tokens_per_word = [encoding.word_ids.count(word) for word in range(3)]
    assert tokens_per_word[:2] == [2, 1]  # merges learnt for corpus words; unseen text falls back to bytes
    assert trained.unk_token_id not in encoding.input_ids
    assert trained.decode(encoding.input_ids) == " invoices: tobacco Ωμέγα"


def test_save_load_round_trip(trained, tmp_path) -> None:
    trained.save_pretrained(tmp_path / "vocab")
    loaded = LayoutLMv3Tokenizer.from_pretrained(tmp_path / "vocab")
    words = corpus(seed=1)[:300]
    boxes = [[0, 0, 1, 1]] * len(words)
    assert loaded.encode(words, boxes, max_length=None) == trained.encode(words, boxes, max_length=None)
    assert loaded.fingerprint == trained.fingerprint
    assert (loaded.vocab_size, loaded.mask_token_id, loaded.model_max_length) == (trained.vocab_size, 4, 512)


def test_fingerprint_tracks_the_vocabulary(trained) -> None:
    assert re.fullmatch(r"[0-9a-f]{16}", trained.fingerprint)
    assert train_bpe(corpus(), vocab_size=400).fingerprint == trained.fingerprint  # training is deterministic
    assert train_bpe(corpus(), vocab_size=350).fingerprint != trained.fingerprint
    assert train_bpe(corpus(seed=5), vocab_size=400).fingerprint != trained.fingerprint


def test_fingerprint_ignores_the_file_layout(trained, ours, roberta_vocab_dir, tmp_path) -> None:
    ours.save_pretrained(tmp_path)  # our files hold the same vocabulary as the originals, in another layout
    assert LayoutLMv3Tokenizer.from_pretrained(tmp_path).fingerprint == ours.fingerprint
    assert LayoutLMv3Tokenizer.from_pretrained(roberta_vocab_dir).fingerprint == ours.fingerprint != trained.fingerprint


def test_transformers_loads_a_saved_vocabulary(trained, tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    trained.save_pretrained(tmp_path)
    hf = transformers.LayoutLMv3Tokenizer.from_pretrained(tmp_path)
    words = ["invoice", "tobacco brand", "<mask>", "xyz"]
    boxes = [[0, 0, 1, 1]] * 4
    assert hf(words, boxes=boxes)["input_ids"] == trained.encode(words, boxes).input_ids
    assert hf.mask_token_id == TRAINED_MASK_ID and hf.model_max_length == 512


def test_train_bpe_rejects_a_tiny_vocabulary() -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(["a"], vocab_size=MIN_VOCAB_SIZE - 1)


def test_train_tokenizer_cli(tmp_path, capsys) -> None:
    (tmp_path / "corpus.txt").write_text("\n".join(corpus()[:1000]) + "\n", encoding="utf-8")
    form = {"form": [{"label": "question", "words": [{"text": "Tobacco", "box": [0, 0, 1, 1]}, {"text": "brand:"}]}]}
    (tmp_path / "forms").mkdir()
    (tmp_path / "forms" / "page.json").write_text(json.dumps(form), encoding="utf-8")
    out = tmp_path / "vocab"
    train_tokenizer_main(["--input", str(tmp_path / "corpus.txt"), str(tmp_path / "forms"), "--out", str(out),
                          "--vocab-size", "300", "--min-frequency", "1"])  # fmt: skip
    tokenizer = LayoutLMv3Tokenizer.from_pretrained(out)
    assert MIN_VOCAB_SIZE < tokenizer.vocab_size <= 300 and tokenizer.mask_token_id == TRAINED_MASK_ID
    assert tokenizer.fingerprint in capsys.readouterr().out
    with pytest.raises(SystemExit):
        train_tokenizer_main(["--input", str(tmp_path / "corpus.txt"), "--out", str(out), "--vocab-size", "10"])


def test_tokenize_words_is_the_untruncated_content_of_encode(trained) -> None:
    words = corpus(seed=2)[:600] + ["", "Ωμέγα"]
    boxes = [[i % 1000, 1, i % 1000, 2] for i in range(len(words))]
    ids, bbox, word_ids = trained.tokenize_words(words, boxes)
    full = trained.encode(words, boxes, max_length=None)
    assert len(ids) > 512 and (ids, bbox, word_ids) == (full.input_ids[1:-1], full.bbox[1:-1], full.word_ids[1:-1])
    assert trained.cls_token_id not in ids and len(words) - 2 not in word_ids  # no specials; "" gives no token
    with pytest.raises(ValueError, match="must lie in"):
        trained.tokenize_words(["a"], [[0, 0, 1001, 1]])


# ---------------------------------------------------------------- the transformers call


def _same_batch(got, expected) -> None:
    assert sorted(got) == sorted(expected.keys())
    for name in got:
        value = expected[name]
        assert (got[name].tolist() if hasattr(got[name], "tolist") else got[name]) == (
            value.tolist() if hasattr(value, "tolist") else value
        ), name


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"truncation": True, "padding": "max_length", "max_length": 512, "return_tensors": "pt"},
        {"max_length": 100},
        {"truncation": True, "max_length": 128, "stride": 32, "return_overflowing_tokens": True, "padding": True},
        {"truncation": True, "max_length": 64, "stride": 0, "return_overflowing_tokens": True, "return_tensors": "pt",
         "padding": "max_length"},
    ],
    ids=["plain", "truncated-padded-pt", "max-length-alone", "windows-longest", "windows-pt"],
)  # fmt: skip
def test_the_call_equals_transformers_fast_tokenizer_on_funsd_pages(ours, hf, funsd_pages, options) -> None:
    """A transformers user's call, page by page and as one batch: ids, boxes, masks, labels (a window opening
    inside a word labels that continuation, as transformers does), overflow mapping and word ids."""
    for words, boxes, labels in funsd_pages:
        got = ours(words, boxes=boxes, word_labels=labels, **options)
        expected = hf(words, boxes=boxes, word_labels=labels, **options)
        _same_batch(got, expected)
        rows = len(expected["input_ids"]) if options.get("return_overflowing_tokens") else 1
        assert [got.word_ids(i) for i in range(rows)] == [expected.word_ids(i) for i in range(rows)]
    pages = [list(page) for page in zip(*funsd_pages)]
    got = ours(pages[0], boxes=pages[1], word_labels=pages[2], **{"padding": True, **options})
    _same_batch(got, hf(pages[0], boxes=pages[1], word_labels=pages[2], **{"padding": True, **options}))


def test_the_call_refuses_ragged_tensors_and_unknown_tensor_kinds(ours) -> None:
    pages = [["a", "b", "c"], ["a"]]
    boxes = [[[0, 0, 1, 1]] * 3, [[0, 0, 1, 1]]]
    with pytest.raises(ValueError, match="padding=True"):
        ours(pages, boxes=boxes, return_tensors="pt")
    with pytest.raises(ValueError, match="'np'"):
        ours(pages, boxes=boxes, padding=True, return_tensors="np")
    assert ours(pages, boxes=boxes, padding=True, return_tensors="pt")["input_ids"].shape[0] == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [("[1]", "no 'form' list"), ('{"form": [{"words": [{"text": 3}]}]}', 'entity 0 is not an object whose "words"'),
     ('{"form": [7]}', "entity 0"), ('{"form": [{"words": [{"text": NaN}]}]}', "NaN"), ("{", "")],
)  # fmt: skip
def test_a_malformed_annotation_in_a_tokenizer_corpus_is_one_error_line(tmp_path, capsys, content, message) -> None:
    """The corpus is the user's data: a malformed FUNSD-style file is named in one line (exit 2), not a KeyError or
    TypeError traceback, and nothing is written."""
    (tmp_path / "forms").mkdir()
    (tmp_path / "forms" / "page.json").write_text(content, encoding="utf-8")
    code = train_tokenizer_main(
        ["--input", str(tmp_path / "forms"), "--out", str(tmp_path / "vocab"), "--vocab-size", "300"]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and str(tmp_path / "forms" / "page.json") in err and message in err
    assert not (tmp_path / "vocab").exists()
