"""Fuzzing the readers of records that come with shards and checkpoints: any input gives a valid result or a
named reject, never another exception, a hang or a value that crashes later.

Shard members (tokens.npz, meta.json, the PNGs): `decode_sample` returns a page that collation takes in both box
modes, or raises `BadSample` naming the sample. Hypothesis runs derandomized so a failure reproduces every run.
"""

from __future__ import annotations

import io
import json
import time
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from layoutlmv3.data.collate import Collator
from layoutlmv3.data.decode import BadSample, PageSample, decode_sample
from layoutlmv3.data.sample_format import (
    IMAGE_FILE,
    IMAGE_SIZE,
    META_FILE,
    TOKENIZER_IMAGE_FILE,
    TOKENIZER_IMAGE_SIZE,
    TOKENS_FILE,
)
from layoutlmv3.tokenizer import MAX_COORD

FUZZ = settings(
    max_examples=100,
    deadline=3000,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
KEY = "doc_p00000"


def _png(mode: str, size: int) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (size, size), 128).save(buffer, format="PNG")
    return buffer.getvalue()


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def _valid_parts(length: int = 6, words: int = 3) -> tuple[dict[str, np.ndarray], dict]:
    arrays = {
        "input_ids": np.arange(5, 5 + length, dtype=np.int32),
        "bbox": np.tile(np.array([[10, 20, 30, 40]], dtype=np.int16), (length, 1)),
        "word_ids": (np.arange(length) % words).astype(np.int32),
    }
    meta = {
        "words": [f"w{i}" for i in range(words)],
        "word_boxes": [[10, 20, 30, 40]] * words,
        "line_ids": [0] * words,
        "line_boxes": [[10, 20, 30, 40]],
        "page_size": [1000, 1300],
        "source": "doc.pdf",
        "page": 0,
        "tokenizer": "test",
    }
    return arrays, meta


def _sample(arrays: dict[str, np.ndarray], meta: object, **members: object) -> dict[str, object]:
    raw = {
        "__key__": KEY,
        IMAGE_FILE: _png("L", IMAGE_SIZE),
        TOKENIZER_IMAGE_FILE: _png("RGB", TOKENIZER_IMAGE_SIZE),
        TOKENS_FILE: _npz(arrays),
        META_FILE: json.dumps(meta).encode() if not isinstance(meta, bytes) else meta,
    }
    raw.update(members)
    return raw


def decode_or_reject(raw: dict[str, object]) -> PageSample | None:
    """decode_sample's contract: a page collation takes (both box modes), or BadSample naming the sample."""
    start = time.process_time()
    try:
        page = decode_sample(raw)
    except BadSample as error:
        assert isinstance(raw.get("__key__"), str) is False or repr(raw["__key__"]) in str(error)
        return None
    finally:
        assert time.process_time() - start < 3
    count = len(page.input_ids)
    assert page.input_ids.dtype == np.int32 and page.input_ids.shape == (count,) and (page.input_ids >= 0).all()
    assert page.bbox.dtype == np.int16 and page.bbox.shape == (count, 4)
    assert ((page.bbox >= 0) & (page.bbox <= MAX_COORD)).all()
    assert page.word_ids.dtype == np.int32 and page.word_ids.shape == (count,)
    assert ((page.word_ids >= 0) & (page.word_ids < len(page.meta["words"]))).all()
    assert page.image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and page.image.dtype == np.uint8
    assert page.tokenizer_image.shape == (TOKENIZER_IMAGE_SIZE, TOKENIZER_IMAGE_SIZE, 3)
    if count:  # collation is where a bad index or box used to crash the run (a window needs a token)
        for boxes in ("word", "segment"):
            batch = Collator(max_length=16, boxes=boxes)([page])
            assert int(batch["bbox"].min()) >= 0 and int(batch["bbox"].max()) <= MAX_COORD
    return page


def test_a_valid_sample_decodes() -> None:
    arrays, meta = _valid_parts()
    assert decode_or_reject(_sample(arrays, meta)) is not None


# ---- tokens.npz ------------------------------------------------------------------------------------------------

DTYPES = st.sampled_from(["int8", "int16", "int32", "int64", "uint8", "uint16", "uint64", "float32", "float64", "bool",
                          "U3", "complex64"])  # fmt: skip
VALUES = st.one_of(
    st.integers(-(2**63), 2**64 - 1),
    st.integers(-3, 1005),
    st.sampled_from([float("nan"), float("inf"), -1.5, 1000.5, 70_000]),
)


@st.composite
def token_arrays(draw) -> dict[str, np.ndarray]:
    arrays, _ = _valid_parts()
    for name in list(arrays):
        action = draw(st.sampled_from(["keep", "keep", "values", "shape", "dtype", "drop"]))
        if action == "values":
            flat = arrays[name].astype(np.float64).ravel()
            for _ in range(draw(st.integers(1, 3))):
                flat[draw(st.integers(0, flat.size - 1))] = draw(VALUES)
            with np.errstate(all="ignore"):
                arrays[name] = np.array(flat.tolist(), dtype=object).reshape(arrays[name].shape)
                try:
                    arrays[name] = arrays[name].astype(draw(st.sampled_from(["int64", "uint64", "float64"])))
                except (OverflowError, ValueError, TypeError):
                    arrays[name] = arrays[name].astype(np.float64)
        elif action == "shape":
            shape = tuple(draw(st.lists(st.integers(0, 7), max_size=3)))
            arrays[name] = np.zeros(shape, dtype=arrays[name].dtype)
        elif action == "dtype":
            arrays[name] = arrays[name].astype(draw(DTYPES))
        else:
            arrays.pop(name) if action == "drop" else None
    return arrays


@FUZZ
@given(token_arrays())
def test_fuzz_token_arrays_decode_or_are_refused(arrays: dict[str, np.ndarray]) -> None:
    _, meta = _valid_parts()
    decode_or_reject(_sample(arrays, meta))


def _damaged(data: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.integers(0, len(data)).map(lambda cut: data[:cut]),
        st.tuples(st.integers(0, len(data) - 1), st.integers(1, 255)).map(
            lambda flip: data[: flip[0]] + bytes([data[flip[0]] ^ flip[1]]) + data[flip[0] + 1 :]
        ),
        st.binary(max_size=64),
    )


_VALID_NPZ = _npz(_valid_parts()[0])


@FUZZ
@given(_damaged(_VALID_NPZ))
def test_fuzz_damaged_npz_bytes_decode_or_are_refused(tokens: bytes) -> None:
    decode_or_reject(_sample(*_valid_parts(), **{TOKENS_FILE: tokens}))


def _zip_of(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _npy_header(shape: tuple[int, ...], dtype: str = "<i4") -> bytes:
    stream = io.BytesIO()
    np.lib.format.write_array_header_1_0(stream, {"descr": dtype, "fortran_order": False, "shape": shape})
    return stream.getvalue()


@pytest.mark.parametrize(
    "tokens",
    [
        # a 40-byte member whose header claims 2**40 tokens: refused from the header, nothing allocated
        _zip_of({name + ".npy": _npy_header((2**40,)) for name in ("input_ids", "bbox", "word_ids")}),
        # a zip bomb: 48 MB of zeros compressed to ~50 kB
        _zip_of({"input_ids.npy": _npy_header((12_000_000,)) + bytes(48_000_000)}, zipfile.ZIP_DEFLATED),
        # an object array (a pickle) is never unpickled
        _zip_of({name + ".npy": _npy_header((1,), "|O") + b"\x80\x04K\x01." for name in ("input_ids", "bbox")}),
        _zip_of({"input_ids.npy": b"\x93NUMPY\x03\x00" + b"\x00" * 60}),
    ],
    ids=["huge-header", "zip-bomb", "pickle", "npy-v3"],
)
def test_token_arrays_too_large_or_not_integers_are_refused_before_allocation(tokens: bytes) -> None:
    start = time.process_time()
    with pytest.raises(BadSample, match=f"{KEY}.*{TOKENS_FILE}"):
        decode_sample(_sample(*_valid_parts(), **{TOKENS_FILE: tokens}))
    assert time.process_time() - start < 5


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"bbox": np.array([[0, 0, 1001, 5]] * 6, dtype=np.int64)}, "box coordinates"),
        ({"bbox": np.array([[0, 0, 70_000, 5]] * 6, dtype=np.int64)}, "box coordinates"),  # wrapped to int16 before
        ({"input_ids": np.array([-1, 5, 5, 5, 5, 5])}, "token ids"),
        ({"word_ids": np.array([0, 1, 2, 3, 0, 0])}, "past its 3 words"),
        ({"word_ids": np.array([0, -1, 0, 0, 0, 0])}, "negative word id"),
        ({"input_ids": np.arange(6, dtype=np.float32)}, "integers"),
    ],
)
def test_token_values_that_would_crash_collation_or_the_model_are_refused(change: dict, match: str) -> None:
    arrays, meta = _valid_parts()
    with pytest.raises(BadSample, match=match):
        decode_sample(_sample({**arrays, **change}, meta))


# ---- meta.json ---------------------------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=5),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)
META_KEYS = ["words", "word_boxes", "line_ids", "line_boxes", "tokenizer", "page_size"]


@st.composite
def metas(draw) -> object:
    _, meta = _valid_parts()
    for key in draw(st.lists(st.sampled_from(META_KEYS), max_size=3, unique=True)):
        action = draw(st.sampled_from(["replace", "drop", "element"]))
        if action == "drop":
            meta.pop(key)
        elif action == "element" and isinstance(meta[key], list) and meta[key]:
            meta[key][draw(st.integers(0, len(meta[key]) - 1))] = draw(JSON_VALUES)
        else:
            meta[key] = draw(JSON_VALUES)
    return meta if draw(st.integers(0, 9)) else draw(JSON_VALUES)


@FUZZ
@given(metas())
def test_fuzz_meta_json_decodes_or_is_refused(meta: object) -> None:
    arrays, _ = _valid_parts()
    decode_or_reject(_sample(arrays, meta))


@FUZZ
@given(st.one_of(_damaged(json.dumps(_valid_parts()[1]).encode()), st.sampled_from([b"[" * 100_000, b"\xff\xfe"])))
def test_fuzz_damaged_meta_bytes_decode_or_are_refused(meta: bytes) -> None:
    arrays, _ = _valid_parts()
    decode_or_reject(_sample(arrays, meta))


@pytest.mark.parametrize(
    "meta_change",
    [{"line_ids": [0, 0, 5]}, {"line_ids": [0, 0]}, {"line_boxes": [[1, 2, 3, 2000]]}, {"words": ["a", None, "c"]}],
)
def test_meta_that_collation_would_index_out_of_range_is_refused(meta_change: dict) -> None:
    arrays, meta = _valid_parts()
    with pytest.raises(BadSample, match=f"{KEY}.*{META_FILE}"):
        decode_sample(_sample(arrays, {**meta, **meta_change}))


# ---- the page images ---------------------------------------------------------------------------------------------

_VALID_PNG = _png("L", IMAGE_SIZE)


@FUZZ
@given(
    st.one_of(
        _damaged(_VALID_PNG),
        st.tuples(st.sampled_from(["1", "L", "LA", "P", "RGB", "RGBA", "I;16"]), st.sampled_from([224, 223, 1])).map(
            lambda mode_size: _png(*mode_size)
        ),
    )
)
def test_fuzz_page_images_decode_or_are_refused(image: bytes) -> None:
    decode_or_reject(_sample(*_valid_parts(), **{IMAGE_FILE: image}))


@FUZZ
@given(st.sampled_from([None, 7, b"", "doc", ("a",)]), st.sampled_from(["__key__", IMAGE_FILE, TOKENS_FILE]))
def test_fuzz_members_of_the_wrong_type_are_refused(value: object, name: str) -> None:
    decode_or_reject(_sample(*_valid_parts(), **{name: value}))
