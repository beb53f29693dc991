"""build_shards: pages + OCR -> shards. End to end on synthetic and real pages, rejects, resume, array tasks."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image, ImageDraw, ImageFont

from data_prep import build_shards, chunks
from data_prep.build_shards import build
from data_prep.manifest import MergeError, merge_task_manifests
from data_prep.merge_manifests import main as merge_main
from data_prep.ocr import parse_tsv
from data_prep.ocr_settings import OcrSettings
from data_prep.process import PageProcessor, WorkItem
from data_prep.progress import PROGRESS_DIR
from data_prep.rejects import PageRejected
from data_prep.samples import encode_npz, line_layout, normalize_box
from data_prep.shard_writer import ShardWriter, encode_members
from data_prep.synth import write_corpus
from data_prep.tesseract_engine import ENGINE_ENV, tesseract_language_data, tesseract_version
from layoutlmv3.data.sample_format import (
    IMAGE_FILE,
    IMAGE_SIZE,
    MANIFEST_FILE,
    META_FILE,
    REJECTS_FILE,
    SAMPLE_FILES,
    TOKENIZER_IMAGE_FILE,
    TOKENIZER_IMAGE_SIZE,
    TOKENS_FILE,
    sample_key,
)
from layoutlmv3.data.shards import list_shards
from layoutlmv3.tokenizer import LayoutLMv3Tokenizer, train_bpe
from tests.shard_build import SYNTH_PAGES, config, funsd_words, output_files, shard_bytes

REPO_ROOT = Path(__file__).resolve().parents[1]
HAS_TESSERACT = shutil.which("tesseract") is not None
needs_tesseract = pytest.mark.skipif(not HAS_TESSERACT, reason="tesseract is not installed")


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir) -> LayoutLMv3Tokenizer:
    return LayoutLMv3Tokenizer.from_pretrained(tokenizer_dir)


def read_dataset(out: Path) -> list[dict]:
    """Every sample of the manifest's shards, in manifest order, read with webdataset."""
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    urls = [str(out / shard["name"]) for shard in manifest["shards"]]
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False)) if urls else []


def read_rejects(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / REJECTS_FILE).read_text().splitlines()]


def sample_bytes(samples: list[dict]) -> list[tuple[str, dict[str, str]]]:
    """Each sample's key and its files' digests."""
    return [
        (s["__key__"], {k: hashlib.sha256(v).hexdigest() for k, v in s.items() if k in SAMPLE_FILES}) for s in samples
    ]


# ---------------------------------------------------------------- end to end


def test_synthetic_corpus_end_to_end(corpus_dir, tokenizer_dir, tokenizer, tmp_path) -> None:
    manifest = build(config(corpus_dir, tmp_path, tokenizer_dir))

    assert manifest["total_samples"] == SYNTH_PAGES and manifest["rejects"] == {"no_words": 1, "unreadable_image": 1}
    assert manifest["tokenizer"] == tokenizer.fingerprint and manifest["seed"] == 0
    assert (manifest["image_size"], manifest["tokenizer_image_size"]) == (IMAGE_SIZE, TOKENIZER_IMAGE_SIZE)
    assert json.loads((tmp_path / MANIFEST_FILE).read_text()) == manifest
    for shard in manifest["shards"]:
        assert (tmp_path / shard["name"]).stat().st_size == shard["bytes"] and 0 < shard["samples"] <= 5
    assert sum(shard["samples"] for shard in manifest["shards"]) == SYNTH_PAGES
    assert {(r["source"], r["page"], r["reason"]) for r in read_rejects(tmp_path)} == {
        ("images/broken.png", 0, "unreadable_image"),
        ("images/blank.png", 0, "no_words"),
    }

    samples = read_dataset(tmp_path)
    assert len(samples) == SYNTH_PAGES
    assert len({sample["__key__"] for sample in samples}) == SYNTH_PAGES
    for sample in samples:
        check_sample(sample, corpus_dir, tokenizer)


def check_sample(sample: dict, corpus_dir: Path, tokenizer: LayoutLMv3Tokenizer) -> None:
    """A sample matches sample_format and the page's FUNSD annotation it was made from."""
    assert set(sample) - {"__key__", "__url__", "__local_path__"} == set(SAMPLE_FILES)
    meta = json.loads(sample[META_FILE])
    assert sample["__key__"] == sample_key(meta["source"], meta["page"]) and meta["page"] == 0
    assert meta["tokenizer"] == tokenizer.fingerprint
    path = corpus_dir / meta["source"]
    with Image.open(path) as original:
        assert meta["page_size"] == list(original.size)
    width, height = meta["page_size"]

    words = funsd_words(corpus_dir / "annotations" / f"{path.stem}.json")
    assert meta["words"] == [word["text"].strip() for word in words]
    expected_boxes = [[int(1000 * v / size) for v, size in zip(w["box"], (width, height) * 2)] for w in words]
    assert meta["word_boxes"] == expected_boxes
    assert len(meta["line_ids"]) == len(words) and sorted(set(meta["line_ids"])) == list(range(len(meta["line_boxes"])))
    for line, line_box in enumerate(meta["line_boxes"]):
        boxes = np.array([box for box, i in zip(meta["word_boxes"], meta["line_ids"]) if i == line])
        assert line_box == [*boxes[:, :2].min(0).tolist(), *boxes[:, 2:].max(0).tolist()]

    for name, size in ((IMAGE_FILE, IMAGE_SIZE), (TOKENIZER_IMAGE_FILE, TOKENIZER_IMAGE_SIZE)):
        with Image.open(io.BytesIO(sample[name])) as image:
            assert image.size == (size, size) and image.mode in {"L", "RGB"} and image.format == "PNG"

    tokens = np.load(io.BytesIO(sample[TOKENS_FILE]))
    ids, bbox, word_ids = tokens["input_ids"], tokens["bbox"], tokens["word_ids"]
    assert (ids.dtype, bbox.dtype, word_ids.dtype) == (np.int32, np.int16, np.int32)
    assert bbox.shape == (len(ids), 4) and word_ids.shape == ids.shape
    assert not set(ids.tolist()) & tokenizer.special_token_ids
    assert tokenizer.decode(ids.tolist()) == "".join(f" {word}" for word in meta["words"])
    assert (bbox == np.array(meta["word_boxes"])[word_ids]).all()
    for index, word in enumerate(meta["words"]):
        assert tokenizer.decode(ids[word_ids == index].tolist()) == f" {word}"


@needs_tesseract
def test_real_funsd_pages_through_tesseract(funsd_dir, tokenizer_dir, tmp_path) -> None:
    pages = sorted((funsd_dir / "testing_data" / "images").glob("*.png"))[:2]
    (tmp_path / "in").mkdir()
    for page in pages:
        shutil.copy(page, tmp_path / "in" / page.name)
    manifest = build(config(tmp_path / "in", tmp_path / "out", tokenizer_dir, ocr="tesseract"))

    assert manifest["total_samples"] == len(pages) and manifest["rejects"] == {}
    for sample in read_dataset(tmp_path / "out"):
        meta = json.loads(sample[META_FILE])
        truth = funsd_words(funsd_dir / "testing_data" / "annotations" / f"{Path(meta['source']).stem}.json")
        truth_words = {word["text"].lower() for word in truth if len(word["text"]) > 3}
        found = {word.lower() for word in meta["words"]}
        assert len(truth_words & found) > 0.5 * len(truth_words)  # Tesseract reads most of the printed words
        assert len(meta["line_boxes"]) > 10 and all(0 <= v <= 1000 for box in meta["word_boxes"] for v in box)


def make_g4_tiff(path: Path, texts: list[str]) -> list[list[tuple[str, list[int]]]]:
    """A bilevel Group 4 multi-page TIFF, one line of large text per page; returns each page's words and boxes."""
    font = ImageFont.load_default(size=48)
    pages, words = [], []
    for text in texts:
        image = Image.new("1", (900, 300), 1)
        draw = ImageDraw.Draw(image)
        x, page_words = 40, []
        for word in text.split():
            box = draw.textbbox((x, 100), word, font=font)
            draw.text((x, 100), word, font=font, fill=0)
            page_words.append((word, list(box)))
            x = box[2] + 30
        pages.append(image)
        words.append(page_words)
    pages[0].save(path, save_all=True, append_images=pages[1:], compression="group4", dpi=(200, 200))
    with Image.open(path) as check:
        assert check.info["compression"] == "group4" and check.n_frames == len(texts)
    return words


PAGE_TEXTS = ["TOTAL AMOUNT DUE", "TOBACCO RESEARCH REPORT", "SIGNATURE DATE"]


def test_multipage_group4_tiff_gives_one_sample_per_page(tokenizer_dir, tmp_path) -> None:
    (tmp_path / "in").mkdir()
    words = make_g4_tiff(tmp_path / "in" / "doc.tif", PAGE_TEXTS + ["NOT IN THE OCR FILE"])
    ocr_pages = [
        {"page": page, "words": [{"text": text, "box": box, "line": 7} for text, box in words[page]]}
        for page in range(len(PAGE_TEXTS))
    ]
    (tmp_path / "in" / "doc.json").write_text(json.dumps({"pages": ocr_pages}))
    manifest = build(config(tmp_path / "in", tmp_path / "out", tokenizer_dir, ocr="json"))

    samples = read_dataset(tmp_path / "out")
    assert [s["__key__"] for s in samples] == [f"doc_tif_p{page:05d}" for page in range(3)]
    for page, sample in enumerate(samples):
        meta = json.loads(sample[META_FILE])
        assert (meta["source"], meta["page"], meta["page_size"]) == ("doc.tif", page, [900, 300])
        assert meta["words"] == PAGE_TEXTS[page].split() and meta["line_ids"] == [0] * len(meta["words"])
        with Image.open(io.BytesIO(sample[IMAGE_FILE])) as image:
            assert image.mode == "L" and 0 < np.asarray(image).mean() < 255  # grey text on white, not blank
    assert manifest["rejects"] == {"ocr_missing": 1}
    assert [(r["source"], r["page"]) for r in read_rejects(tmp_path / "out")] == [("doc.tif", 3)]


def test_a_broken_page_directory_keeps_the_pages_before_it(tokenizer_dir, tmp_path) -> None:
    """Page 3's directory pointer leads past the end of the file: Pillow cannot count the pages, but pages 1-2
    still read; only page 3 is rejected (it was the whole file)."""
    (tmp_path / "in").mkdir()
    path = tmp_path / "in" / "doc.tif"
    words = make_g4_tiff(path, PAGE_TEXTS)
    data = bytearray(path.read_bytes())
    order = "<" if data[:2] == b"II" else ">"
    offset = struct.unpack(f"{order}I", data[4:8])[0]
    offset = _next_ifd(data, offset, order)[1]  # the second page's directory
    entries, _ = _next_ifd(data, offset, order)
    data[offset + 2 + 12 * entries : offset + 6 + 12 * entries] = struct.pack(f"{order}I", len(data) + 4096)
    path.write_bytes(bytes(data))
    ocr_pages = [{"page": p, "words": [{"text": t, "box": b, "line": 0} for t, b in words[p]]} for p in range(3)]
    (tmp_path / "in" / "doc.json").write_text(json.dumps({"pages": ocr_pages}))
    manifest = build(config(tmp_path / "in", tmp_path / "out", tokenizer_dir, ocr="json"))
    assert [json.loads(s[META_FILE])["page"] for s in read_dataset(tmp_path / "out")] == [0, 1]
    assert manifest["rejects"] == {"unreadable_page": 1}
    (reject,) = read_rejects(tmp_path / "out")
    assert reject["page"] == 2 and "later pages cannot be located" in reject["detail"]


def _next_ifd(data: bytearray, offset: int, order: str) -> tuple[int, int]:
    """(entry count of the TIFF directory at `offset`, offset of the next directory)."""
    entries = struct.unpack(f"{order}H", data[offset : offset + 2])[0]
    return entries, struct.unpack(f"{order}I", data[offset + 2 + 12 * entries : offset + 6 + 12 * entries])[0]


def test_files_that_are_not_pages_are_reported_and_no_pages_is_an_error(tokenizer_dir, tmp_path, caplog) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "scan.djvu").write_bytes(b"AT&TFORM")  # a scan, but of a type Pillow does not read
    (tmp_path / "in" / "notes.docx").write_bytes(b"PK")
    argv = ["--input", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--ocr", "tesseract", "--quiet"]
    with pytest.raises(SystemExit, match="no page files for --ocr tesseract under"):
        build_shards.main([*argv, "--tokenizer", str(tokenizer_dir)])
    assert "skipping 2 file(s) under" in caplog.text and ".djvu: 1, .docx: 1" in caplog.text
    Image.new("L", (100, 100), 255).save(tmp_path / "in" / "blank.png")  # a page, but without words
    with pytest.raises(SystemExit, match="every page of this task was rejected"):
        build_shards.main([*argv, "--tokenizer", str(tokenizer_dir)])


@needs_tesseract
def test_tesseract_reads_each_page_of_a_group4_tiff(tokenizer_dir, tmp_path) -> None:
    (tmp_path / "in").mkdir()
    make_g4_tiff(tmp_path / "in" / "doc.tiff", PAGE_TEXTS)
    build(config(tmp_path / "in", tmp_path / "out", tokenizer_dir, ocr="tesseract"))
    pages = [json.loads(sample[META_FILE]) for sample in read_dataset(tmp_path / "out")]
    assert [meta["page"] for meta in pages] == [0, 1, 2]
    assert [meta["words"] for meta in pages] == [text.split() for text in PAGE_TEXTS]


def test_bad_input_is_rejected_with_reasons_and_counted(synth_dir, tokenizer_dir, tmp_path) -> None:
    src = synth_dir / "images" / "synth_0_000000.png"
    good = funsd_words(synth_dir / "annotations" / "synth_0_000000.json")
    images, annotations = tmp_path / "in" / "images", tmp_path / "in" / "annotations"
    images.mkdir(parents=True)
    annotations.mkdir()

    def page(name: str, form: object, image: bytes = src.read_bytes()) -> None:
        (images / f"{name}.png").write_bytes(image)
        if form is not None:
            (annotations / f"{name}.json").write_text(json.dumps({"form": form}))

    entity = {"id": 3, "words": good}
    page("good", [entity])
    page("truncated", [entity], src.read_bytes()[:2000])
    page("garbage", [entity], bytes(range(256)) * 12)
    page("empty", [])
    page("spaces", [{"id": 0, "words": [{"text": "  ", "box": [1, 1, 5, 5]}]}])
    page("outside", [{"id": 0, "words": [*good, {"text": "far", "box": [0, 0, 5000, 20]}]}])
    page("nan", [{"id": 0, "words": [{"text": "x", "box": [0, 0, "wide", 1]}]}])
    page("inverted", [{"id": 0, "words": [{"text": "flip", "box": [300, 400, 100, 200]}]}])
    page("no_annotation", None)
    page("bad_annotation", [{"words": "not a list of words"}])
    page("dup.x", [entity])
    page("dup_x", [entity])  # its sample keys would equal those of dup.x.png
    manifest = build(config(tmp_path / "in", tmp_path / "out", tokenizer_dir))

    reasons = {Path(r["source"]).stem: r["reason"] for r in read_rejects(tmp_path / "out")}
    assert reasons == {
        "truncated": "unreadable_page",
        "garbage": "unreadable_image",
        "empty": "no_words",
        "spaces": "no_words",
        "outside": "absurd_box",
        "nan": "absurd_box",
        "no_annotation": "ocr_missing",
        "bad_annotation": "ocr_invalid",
        "dup_x": "duplicate_key",
    }
    assert manifest["rejects"] == dict(sorted(Counter(reasons.values()).items()))
    samples = {json.loads(s[META_FILE])["source"]: json.loads(s[META_FILE]) for s in read_dataset(tmp_path / "out")}
    assert sorted(samples) == ["images/dup.x.png", "images/good.png", "images/inverted.png"]
    assert manifest["total_samples"] == 3
    width, height = samples["images/inverted.png"]["page_size"]
    assert samples["images/inverted.png"]["word_boxes"] == [
        [int(100_000 / width), int(200_000 / height), int(300_000 / width), int(400_000 / height)]
    ]


def test_json_ocr_errors_are_rejects(tokenizer_dir, tmp_path) -> None:
    (tmp_path / "in").mkdir()
    for name in ("invalid", "missing", "wrong_shape", "null_text"):
        Image.new("L", (100, 100), 255).save(tmp_path / "in" / f"{name}.jpg")
    (tmp_path / "in" / "invalid.json").write_text("{not json")
    (tmp_path / "in" / "wrong_shape.json").write_text('{"pages": [{"page": 0, "words": [{"text": "a"}]}]}')
    null_word = {"text": None, "box": [1, 1, 9, 9], "line": 0}  # str(None) would train the word "None"
    (tmp_path / "in" / "null_text.json").write_text(json.dumps({"pages": [{"page": 0, "words": [null_word]}]}))
    manifest = build(config(tmp_path / "in", tmp_path / "out", tokenizer_dir, ocr="json"))
    assert manifest["rejects"] == {"ocr_invalid": 3, "ocr_missing": 1} and manifest["total_samples"] == 0
    details = {r["source"]: r["detail"] for r in read_rejects(tmp_path / "out")}
    assert "word text must be a string, got None" in details["null_text.jpg"]
    assert manifest["shards"] == []


@pytest.mark.parametrize(
    ("script", "reason", "detail"),
    [
        ("echo 'Error in pixReadMem' >&2; exit 3", "ocr_failed", "exit 3: Error in pixReadMem"),
        ("exec sleep 5", "ocr_timeout", "0.3 s"),
    ],
)
def test_tesseract_errors_and_timeouts_are_rejects(tokenizer_dir, tmp_path, monkeypatch, script, reason, detail):
    fake = tmp_path / "bin" / "tesseract"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\n{script}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv(ENGINE_ENV, "cli")  # the command's failures are the subject here
    (tmp_path / "in").mkdir()
    Image.new("L", (200, 100), 255).save(tmp_path / "in" / "page.png")
    manifest = build(config(tmp_path / "in", tmp_path / "out", tokenizer_dir, ocr="tesseract", ocr_timeout=0.3))
    assert manifest["rejects"] == {reason: 1}
    (rejected,) = read_rejects(tmp_path / "out")
    assert rejected["source"] == "page.png" and detail in rejected["detail"]


@needs_tesseract
@pytest.mark.parametrize(
    "settings",
    [OcrSettings(), OcrSettings(psm=11, invert=True, min_dpi=200, max_dpi=0)],
    ids=["default", "psm11-noinvert-200dpi"],
)
def test_the_in_process_engine_writes_the_commands_shards_byte_for_byte(
    tokenizer_dir, tmp_path, monkeypatch, settings
) -> None:
    """tesserocr built against the system's Tesseract (make test builds it) gives the command's words and boxes:
    the shards of a multi-page Group 4 TIFF and a synthetic PNG page are byte-identical either way, with the
    default settings and with others (another segmentation mode, no inverted retries, pages upscaled)."""
    pytest.importorskip("tesserocr", reason="`make test` builds tesserocr against the system's Tesseract")
    (tmp_path / "in").mkdir()
    make_g4_tiff(tmp_path / "in" / "doc.tiff", PAGE_TEXTS)
    write_corpus(tmp_path / "synth", 1, seed=4)
    shutil.copy(next((tmp_path / "synth" / "images").glob("*.png")), tmp_path / "in" / "form.png")
    outputs = {}
    for engine in ("cli", "api"):
        monkeypatch.setenv(ENGINE_ENV, engine)
        build(config(tmp_path / "in", tmp_path / engine, tokenizer_dir, ocr="tesseract", ocr_settings=settings))
        outputs[engine] = output_files(tmp_path / engine)
    assert outputs["api"] == outputs["cli"]
    # As data prep runs it by default: one spawned worker with one OpenMP thread, the engine chosen there.
    monkeypatch.delenv(ENGINE_ENV)
    monkeypatch.setattr(build_shards, "PERSISTENT_OCR_MIN_FILES", 1)
    build(config(tmp_path / "in", tmp_path / "auto", tokenizer_dir, ocr="tesseract", ocr_settings=settings))
    assert output_files(tmp_path / "auto") == outputs["cli"]
    assert len([name for name in outputs["cli"] if name.endswith(".tar")]) >= 1
    manifest = json.loads((tmp_path / "auto" / MANIFEST_FILE).read_text())
    assert manifest["ocr"] == {
        "source": "tesseract", **settings.as_record(), "tesseract_version": tesseract_version(),
        "language_data": tesseract_language_data(),
    }  # fmt: skip


def _word_pages(folder: Path, words: list[str]) -> None:
    """One small page per word (about 55 dpi by its size, no resolution recorded): cheap for Tesseract."""
    folder.mkdir(parents=True, exist_ok=True)
    font = ImageFont.load_default(size=40)
    for word in words:
        page = Image.new("L", (600, 300), 255)
        ImageDraw.Draw(page).text((60, 110), word, font=font, fill=0)
        page.save(folder / f"{word.lower()}.png")


@needs_tesseract
def test_ocr_flags_reach_the_workers_and_the_manifest(tokenizer_dir, tmp_path, capsys) -> None:
    """--no-ocr-invert --ocr-min-dpi 200 --ocr-max-dpi 0 on the command line: spawned workers read the pages with them (their
    shards are those of an in-process build with the same OcrSettings, not the default's) and the manifest says so."""
    _word_pages(tmp_path / "in", ["INVOICE", "TOTAL"])
    argv = ["--input", str(tmp_path / "in"), "--ocr", "tesseract", "--tokenizer", str(tokenizer_dir), "--quiet"]
    build_shards.main(
        [
            *argv,
            "--out",
            str(tmp_path / "cli"),
            "--workers",
            "2",
            "--no-ocr-invert",
            "--ocr-min-dpi",
            "200",
            "--ocr-max-dpi",
            "0",
        ]
    )
    chosen = OcrSettings(invert=False, min_dpi=200, max_dpi=0)
    manifest = json.loads((tmp_path / "cli" / MANIFEST_FILE).read_text())
    assert manifest["ocr"] == {
        "source": "tesseract", "psm": 3, "invert": False, "min_dpi": 200, "max_dpi": 0,
        "tesseract_version": tesseract_version(), "language_data": tesseract_language_data(),
    }  # fmt: skip
    assert manifest["ocr"]["language_data"].startswith("sha256:")  # the English model Tesseract read with
    build(config(tmp_path / "in", tmp_path / "same", tokenizer_dir, ocr="tesseract", ocr_settings=chosen))
    build(config(tmp_path / "in", tmp_path / "default", tokenizer_dir, ocr="tesseract"))
    assert shard_bytes(tmp_path / "cli") == shard_bytes(tmp_path / "same") != shard_bytes(tmp_path / "default")
    assert json.loads((tmp_path / "default" / MANIFEST_FILE).read_text())["ocr"]["min_dpi"] == OcrSettings().min_dpi


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ocr-psm", "11"], "--ocr-psm: Tesseract's settings apply to --ocr tesseract only, not --ocr funsd"),
        (["--no-ocr-invert", "--ocr-max-dpi", "300"], "--ocr-invert --ocr-max-dpi: Tesseract's settings apply"),
    ],
)
def test_ocr_flags_with_another_source_are_refused(tokenizer_dir, tmp_path, capsys, flags, message) -> None:
    argv = [
        "--input",
        str(tmp_path),
        "--out",
        str(tmp_path / "out"),
        "--ocr",
        "funsd",
        "--tokenizer",
        str(tokenizer_dir),
    ]
    with pytest.raises(SystemExit) as exit:
        build_shards.parse_config([*argv, *flags])
    assert exit.value.code == 2 and message in capsys.readouterr().err


@needs_tesseract
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ocr-psm", "7"], "argument --ocr-psm: invalid choice: 7"),
        (["--ocr-min-dpi", "30"], "--ocr-min-dpi: min_dpi must be 0 (off) or between 50 and 1200 dpi, got 30"),
        (["--ocr-min-dpi", "300", "--ocr-max-dpi", "200"], "min_dpi (300) is above max_dpi (200)"),
    ],
)
def test_bad_ocr_settings_are_refused_by_the_command_line(tokenizer_dir, tmp_path, capsys, flags, message) -> None:
    argv = ["--input", str(tmp_path), "--out", str(tmp_path / "out"), "--ocr", "tesseract"]
    with pytest.raises(SystemExit) as exit:
        build_shards.parse_config([*argv, "--tokenizer", str(tokenizer_dir), *flags])
    assert exit.value.code == 2 and message in capsys.readouterr().err


@needs_tesseract
def test_a_corpus_of_other_ocr_settings_is_refused_on_resume_naming_both(tokenizer_dir, tmp_path) -> None:
    _word_pages(tmp_path / "in", ["INVOICE"])
    build(config(tmp_path / "in", tmp_path / "out", tokenizer_dir, ocr="tesseract"))
    other = config(tmp_path / "in", tmp_path / "out", tokenizer_dir, ocr="tesseract", ocr_settings=OcrSettings(psm=11))
    with pytest.raises(build_shards.ProgressMismatch) as refused:
        build(other)
    recorded = {
        **OcrSettings().as_record(), "tesseract_version": tesseract_version(), "language_data": tesseract_language_data()
    }  # fmt: skip
    message = str(refused.value)
    assert "shard-000000.json was built with other settings: tesseract recorded " in message
    assert f"recorded {json.dumps(recorded, sort_keys=True)}, requested " in message
    assert json.dumps({**recorded, "psm": 11}, sort_keys=True) in message, message


@needs_tesseract
def test_merge_refuses_tasks_of_other_ocr_settings_naming_both(tokenizer_dir, tmp_path) -> None:
    _word_pages(tmp_path / "in", ["INVOICE", "TOTAL"])
    for task, settings in enumerate([OcrSettings(), OcrSettings(invert=True)]):
        task_config = config(tmp_path / "in", tmp_path / "out", tokenizer_dir, ocr="tesseract", files_per_chunk=1)
        build(replace(task_config, task_index=task, num_tasks=2, ocr_settings=settings))
    with pytest.raises(MergeError) as refused:
        merge_task_manifests(tmp_path / "out")
    message = str(refused.value)
    assert "task manifests disagree on 'ocr': manifest.task0000-of-0002.json has {" in message
    assert '"invert": true' in message and "manifest.task0001-of-0002.json has {" in message
    assert '"invert": false' in message and not (tmp_path / "out" / MANIFEST_FILE).exists()


def test_an_unexpected_error_rejects_the_page_and_the_run_goes_on(synth_dir, tokenizer, capsys) -> None:
    class BrokenOcr:
        def read(self, path, page, image):
            raise ZeroDivisionError("a bug")

    item = WorkItem(synth_dir, "images/synth_0_000000.png", 0, chunk=0, file_index=0)
    (outcome,) = PageProcessor(BrokenOcr(), tokenizer).process(item)
    assert (outcome.source, outcome.page, outcome.reason) == ("images/synth_0_000000.png", 0, "internal_error")
    assert outcome.detail == "ZeroDivisionError: a bug" and "Traceback" in capsys.readouterr().err


# ---------------------------------------------------------------- determinism, array tasks, resume


def test_same_input_gives_identical_bytes_for_any_worker_count(corpus_dir, tokenizer_dir, tmp_path) -> None:
    build(config(corpus_dir, tmp_path / "a", tokenizer_dir, workers=1))
    build(config(corpus_dir, tmp_path / "b", tokenizer_dir, workers=2))
    assert output_files(tmp_path / "a") == output_files(tmp_path / "b")

    build(config(corpus_dir, tmp_path / "c", tokenizer_dir, seed=1))
    keys = [sample["__key__"] for sample in read_dataset(tmp_path / "a")]
    other = [sample["__key__"] for sample in read_dataset(tmp_path / "c")]
    assert other != keys and sorted(other) == sorted(keys)  # the seed shuffles the order, never the content


def test_two_array_tasks_and_merge_equal_one_task(corpus_dir, tokenizer_dir, tmp_path, capsys) -> None:
    build(config(corpus_dir, tmp_path / "one", tokenizer_dir, files_per_chunk=4, max_samples_per_shard=3))
    for task in range(2):
        two = config(corpus_dir, tmp_path / "two", tokenizer_dir, files_per_chunk=4, max_samples_per_shard=3)
        build(replace(two, task_index=task, num_tasks=2))
    assert not (tmp_path / "two" / MANIFEST_FILE).exists()
    killed_merge = tmp_path / "two" / f".{MANIFEST_FILE}.dead.host.9.tmp"  # a merge killed mid-write left this
    killed_merge.write_bytes(b'{"sha')
    merge_main(["--out", str(tmp_path / "two")])
    assert "merged: 12 samples" in capsys.readouterr().out and not killed_merge.exists()

    one, two = output_files(tmp_path / "one"), output_files(tmp_path / "two")
    assert shard_bytes(tmp_path / "one") == shard_bytes(tmp_path / "two")
    for name in (MANIFEST_FILE, REJECTS_FILE):
        assert one[name] == two[name]
    assert sample_bytes(read_dataset(tmp_path / "one")) == sample_bytes(read_dataset(tmp_path / "two"))


def test_merge_refuses_an_incomplete_job(corpus_dir, tokenizer_dir, tmp_path) -> None:
    with pytest.raises(MergeError, match="no task manifests"):
        merge_task_manifests(tmp_path)
    build(replace(config(corpus_dir, tmp_path, tokenizer_dir), task_index=1, num_tasks=3))
    with pytest.raises(MergeError, match=r"2 of 3 tasks have not finished \(missing tasks \[0, 2\]\)"):
        merge_task_manifests(tmp_path)


def _clean_reference(corpus_dir: Path, tokenizer_dir: Path, out: Path) -> dict[str, str]:
    build(config(corpus_dir, out, tokenizer_dir, max_samples_per_shard=2))
    return output_files(out)


def _assert_resumed_equals(out: Path, reference: dict[str, str]) -> None:
    assert output_files(out) == reference  # every shard, manifest, rejects and progress record, byte for byte
    assert not [path for path in out.rglob("*") if path.name.endswith(".tmp")]
    keys = [sample["__key__"] for sample in read_dataset(out)]
    assert len(keys) == len(set(keys)) == SYNTH_PAGES


class Killed(BaseException):
    """Stands in for a kill: not an Exception, so nothing in the pipeline may swallow it."""


def count_processed_files(monkeypatch) -> list[tuple[str, int]]:
    """Record (source, first page) of every file the build processes from now on."""
    process, seen = PageProcessor.process, []

    def counting(self, item):
        seen.append((item.source, item.start_page))
        return process(self, item)

    monkeypatch.setattr(PageProcessor, "process", counting)
    return seen


def test_resume_after_a_kill_between_shards(corpus_dir, tokenizer_dir, tmp_path, monkeypatch) -> None:
    reference = _clean_reference(corpus_dir, tokenizer_dir, tmp_path / "reference")
    commit, commits = ShardWriter.commit, []

    def commit_then_die(self: ShardWriter):
        if len(commits) == 3:
            raise Killed
        commits.append(self.path.name)
        return commit(self)

    monkeypatch.setattr(ShardWriter, "commit", commit_then_die)
    out = tmp_path / "out"
    with pytest.raises(Killed):
        build(config(corpus_dir, out, tokenizer_dir, max_samples_per_shard=2))
    assert not (out / MANIFEST_FILE).exists() and len(list(out.glob("*.tar"))) == 3
    # What a SIGKILL would also leave: the temporary of the shard being written.
    (out / f".{chunks.chunk_prefix('shard', 1)}-000000.tar.otherhost.4242.tmp").write_bytes(b"partial")
    monkeypatch.setattr(ShardWriter, "commit", commit)
    resumed = count_processed_files(monkeypatch)
    build(config(corpus_dir, out, tokenizer_dir, max_samples_per_shard=2))
    _assert_resumed_equals(out, reference)
    assert 0 < len(resumed) < SYNTH_PAGES  # the recorded shards' pages were not processed again


def test_resume_inside_a_multipage_file(tokenizer_dir, tmp_path, monkeypatch) -> None:
    (tmp_path / "in").mkdir()
    texts = [f"PAGE {n} OF THE REPORT" for n in range(5)]
    words = make_g4_tiff(tmp_path / "in" / "doc.tif", texts)
    pages = [{"page": n, "words": [{"text": t, "box": b, "line": 0} for t, b in words[n]]} for n in range(5)]
    (tmp_path / "in" / "doc.json").write_text(json.dumps({"pages": pages}))
    build(config(tmp_path / "in", tmp_path / "reference", tokenizer_dir, ocr="json", max_samples_per_shard=2))
    commit = ShardWriter.commit

    def die_on_second(self: ShardWriter):
        if self.path.name.endswith("-000001.tar"):
            raise Killed
        return commit(self)

    monkeypatch.setattr(ShardWriter, "commit", die_on_second)
    with pytest.raises(Killed):
        build(config(tmp_path / "in", tmp_path / "out", tokenizer_dir, ocr="json", max_samples_per_shard=2))
    monkeypatch.setattr(ShardWriter, "commit", commit)
    resumed = count_processed_files(monkeypatch)
    build(config(tmp_path / "in", tmp_path / "out", tokenizer_dir, ocr="json", max_samples_per_shard=2))
    assert resumed == [("doc.tif", 2)]  # the file is reopened at the first page of the unfinished shard
    assert output_files(tmp_path / "out") == output_files(tmp_path / "reference")
    assert [json.loads(s[META_FILE])["page"] for s in read_dataset(tmp_path / "out")] == [0, 1, 2, 3, 4]


def test_resume_after_a_kill_between_rename_and_record(corpus_dir, tokenizer_dir, tmp_path, monkeypatch) -> None:
    reference = _clean_reference(corpus_dir, tokenizer_dir, tmp_path / "reference")
    save, saves = chunks.save_progress, []

    def save_then_die(path, progress):
        if len(saves) == 1:
            raise Killed  # the second shard is renamed into place but not recorded: a rerun must redo it
        saves.append(path)
        save(path, progress)

    monkeypatch.setattr(chunks, "save_progress", save_then_die)
    out = tmp_path / "out"
    with pytest.raises(Killed):
        build(config(corpus_dir, out, tokenizer_dir, max_samples_per_shard=2))
    assert len(list(out.glob("*.tar"))) == 2
    monkeypatch.setattr(chunks, "save_progress", save)
    resumed = count_processed_files(monkeypatch)
    build(config(corpus_dir, out, tokenizer_dir, max_samples_per_shard=2))
    _assert_resumed_equals(out, reference)
    assert 0 < len(resumed) < SYNTH_PAGES


def _cli_command(corpus_dir: Path, tokenizer_dir: Path, out: Path) -> list[str]:
    """The data-prep command line of the CLI tests: one worker, 2-sample shards, 6-file chunks."""
    command = [sys.executable, "-m", "data_prep.build_shards", "--input", str(corpus_dir), "--out", str(out)]
    command += ["--ocr", "funsd", "--tokenizer", str(tokenizer_dir), "--workers", "1", "--quiet"]
    return command + ["--max-samples-per-shard", "2", "--files-per-chunk", "6"]


def test_resume_after_sigkill_of_the_cli(corpus_dir, tokenizer_dir, tmp_path) -> None:
    reference = _clean_reference(corpus_dir, tokenizer_dir, tmp_path / "reference")
    out = tmp_path / "out"
    command = _cli_command(corpus_dir, tokenizer_dir, out)
    process = subprocess.Popen(command, cwd=REPO_ROOT)
    deadline = time.monotonic() + 30
    while process.poll() is None and not list(out.glob("*.tar")) and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True)
    _assert_resumed_equals(out, reference)


def test_a_progress_record_half_written_at_a_kill_is_removed_on_resume(corpus_dir, tokenizer_dir, tmp_path) -> None:
    """A SIGKILL while a progress record or the manifest is being written leaves its temporary behind (the test
    above once caught one in CI); the next run of the task removes them, and the output equals a clean run's."""
    reference = _clean_reference(corpus_dir, tokenizer_dir, tmp_path / "reference")
    out = tmp_path / "out"
    build(config(corpus_dir, out, tokenizer_dir, max_samples_per_shard=2))
    record = sorted((out / PROGRESS_DIR).glob("*.json"))[0]
    record.with_name(f".{record.name}.other.host.4242.tmp").write_bytes(b'{"half a rec')  # a killed run's name
    (out / f".{MANIFEST_FILE}.other.host.4243.tmp").write_bytes(b'{"half a man')
    build(config(corpus_dir, out, tokenizer_dir, max_samples_per_shard=2))
    _assert_resumed_equals(out, reference)


def test_two_runs_on_one_output_never_publish_a_partial_shard(corpus_dir, tokenizer_dir, tmp_path) -> None:
    """A requeued task whose first attempt still runs: the second waits for the first's chunk locks; the first is
    then cancelled (SIGKILL) mid-chunk, and the second finishes the job exactly as one clean run would."""
    reference = _clean_reference(corpus_dir, tokenizer_dir, tmp_path / "reference")
    out = tmp_path / "out"
    command = _cli_command(corpus_dir, tokenizer_dir, out)
    first = subprocess.Popen(command, cwd=REPO_ROOT)
    deadline = time.monotonic() + 60
    while not _named_lock_holders(out) and time.monotonic() < deadline:
        time.sleep(0.005)  # the lock file exists a moment before its holder has locked it and written its name
    first.send_signal(signal.SIGSTOP)  # a slow first attempt, holding its chunks
    second = subprocess.Popen(command, cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
    waiting = second.stderr.readline()
    first.send_signal(signal.SIGKILL)  # then cancelled
    first.wait()
    _, errors = second.communicate(timeout=120)
    assert second.returncode == 0, errors
    assert f"is being written by host {socket.gethostname()} pid {first.pid}: waiting" in waiting
    _assert_resumed_equals(out, reference)
    assert not list(out.glob(".*.tmp"))


def _named_lock_holders(out: Path) -> list[str]:
    """The holders named in chunk lock files (a file still empty is not yet held)."""
    names = []
    for lock in (out / "progress").glob("*.lock"):
        with contextlib.suppress(OSError):
            names += [name for name in [lock.read_text().strip()] if name]
    return names


def test_changed_settings_are_refused_on_resume(corpus_dir, tokenizer_dir, tmp_path, capsys) -> None:
    """Each setting that differs is named with its recorded and requested value (the tokenizer by fingerprint)."""
    build(config(corpus_dir, tmp_path, tokenizer_dir))
    argv = ["--input", str(corpus_dir), "--out", str(tmp_path), "--ocr", "funsd", "--quiet"]
    with pytest.raises(
        SystemExit, match="was built with other settings: max_samples_per_shard recorded 5, requested 4"
    ):
        build_shards.main(
            [*argv, "--tokenizer", str(tokenizer_dir), "--max-samples-per-shard", "4", "--files-per-chunk", "6"]
        )
    other = tmp_path.parent / f"{tmp_path.name}-vocab"
    train_bpe(["other", "words", "entirely"], vocab_size=300).save_pretrained(other)
    recorded = LayoutLMv3Tokenizer.from_pretrained(tokenizer_dir).fingerprint
    requested = LayoutLMv3Tokenizer.from_pretrained(other).fingerprint
    with pytest.raises(SystemExit) as refused:
        build_shards.main([*argv, "--tokenizer", str(other), "--max-samples-per-shard", "5", "--files-per-chunk", "6"])
    assert f'other settings: tokenizer recorded "{recorded}", requested "{requested}"; use the settings' in str(
        refused.value.code
    )


def test_outputs_written_before_the_ocr_and_settings_were_recorded_still_merge_load_and_resume(
    corpus_dir, tokenizer_dir, tmp_path
) -> None:
    """Task manifests without "ocr" (older builds) merge, the merged manifest loads; progress records without
    "settings" resume, and one of other settings is refused by its digest alone."""
    job = config(corpus_dir, tmp_path, tokenizer_dir, num_tasks=2)
    for task in range(2):
        build(replace(job, task_index=task))
    for path in tmp_path.glob("manifest.task*.json"):
        manifest = json.loads(path.read_text())
        assert manifest.pop("ocr") == {"source": "funsd"}
        path.write_text(json.dumps(manifest))
    merged = merge_task_manifests(tmp_path)
    assert "ocr" not in merged and len(list_shards(tmp_path)) == len(merged["shards"])
    for path in (tmp_path / PROGRESS_DIR).glob("*.json"):
        record = json.loads(path.read_text())
        assert record.pop("settings")["tokenizer"] == LayoutLMv3Tokenizer.from_pretrained(tokenizer_dir).fingerprint
        path.write_text(json.dumps(record))
    reference = shard_bytes(tmp_path)
    build(replace(job, task_index=1))
    assert shard_bytes(tmp_path) == reference
    with pytest.raises(build_shards.ProgressMismatch, match=r"other settings or input files \(digest \w+ != \w+\)"):
        build(replace(job, task_index=1, seed=3))


def test_a_deleted_shard_is_rebuilt(corpus_dir, tokenizer_dir, tmp_path) -> None:
    build(config(corpus_dir, tmp_path, tokenizer_dir))
    reference = output_files(tmp_path)
    victim = sorted(tmp_path.glob("*.tar"))[1]
    victim.unlink()
    build(config(corpus_dir, tmp_path, tokenizer_dir))
    assert output_files(tmp_path) == reference


# ---------------------------------------------------------------- shard limits and units


def test_shards_respect_the_byte_limit_and_oversized_samples_are_rejected(corpus_dir, tokenizer_dir, tmp_path) -> None:
    build(config(corpus_dir, tmp_path / "free", tokenizer_dir, max_samples_per_shard=100, files_per_chunk=100))
    sizes = [len(members(s)) for s in read_dataset(tmp_path / "free")]
    limit = 2 * max(sizes) + 2048
    manifest = build(
        config(corpus_dir, tmp_path / "capped", tokenizer_dir, max_samples_per_shard=100, max_shard_bytes=limit)
    )
    assert len(manifest["shards"]) > 2 and manifest["total_samples"] == SYNTH_PAGES
    assert all((tmp_path / "capped" / s["name"]).stat().st_size == s["bytes"] <= limit for s in manifest["shards"])
    assert sample_bytes(read_dataset(tmp_path / "capped")) == sample_bytes(read_dataset(tmp_path / "free"))

    tiny = build(config(corpus_dir, tmp_path / "tiny", tokenizer_dir, max_shard_bytes=min(sizes)))
    assert tiny["total_samples"] == 0 and tiny["rejects"]["sample_too_large"] == SYNTH_PAGES


def members(sample: dict) -> bytes:
    return encode_members(sample["__key__"], {k: v for k, v in sample.items() if k in SAMPLE_FILES})


def test_shard_writer_predicts_its_size_and_writes_a_standard_tar(tmp_path) -> None:
    writer = ShardWriter(tmp_path / "x-000000.tar")
    long_key = "é" * 80  # needs a PAX header
    for key, files in (("a", {"meta.json": b"{}", "image.png": b"\0" * 1000}), (long_key, {"tokens.npz": b"1"})):
        expected = writer.size_with(encode_members(key, files))
        writer.add(encode_members(key, files))
        assert writer.size == expected
    (temporary,) = tmp_path.iterdir()  # hidden, this host's and process's, the writer's own: .NAME.HOST.PID-TOKEN.tmp
    assert temporary.name.rpartition("-")[0] == f".x-000000.tar.{socket.gethostname()}.{os.getpid()}"
    record = writer.commit()
    assert list(tmp_path.iterdir()) == [tmp_path / "x-000000.tar"]
    assert record.bytes == (tmp_path / "x-000000.tar").stat().st_size and record.samples == 2
    with tarfile.open(tmp_path / "x-000000.tar") as tar:
        assert tar.getnames() == ["a.image.png", "a.meta.json", f"{long_key}.tokens.npz"]
        assert {(m.mtime, m.uid, m.gid, m.uname, m.mode) for m in tar.getmembers()} == {(0, 0, 0, "", 0o444)}
        assert tar.extractfile("a.image.png").read() == b"\0" * 1000


def test_normalize_box() -> None:
    assert normalize_box([10, 20, 30, 40], 100, 200) == [100, 100, 300, 200]
    assert normalize_box([30.9, 40, 10, 20], 100, 200) == [100, 100, 309, 200]  # inverted: reordered
    assert normalize_box([-5, -5, 105, 210], 100, 200) == [0, 0, 1000, 1000]  # slight overhang: clipped
    for absurd in ([0, 0, 200, 10], [-50, 0, 10, 10], [0, 0, float("nan"), 1], [0, 0, 1], ["a", 0, 1, 1], None):
        with pytest.raises(PageRejected) as raised:
            normalize_box(absurd, 100, 200)
        assert raised.value.reason == "absurd_box"


def test_line_layout_numbers_lines_densely_and_unites_their_boxes() -> None:
    line_ids, boxes = line_layout([7, 3, 7, 9], [[10, 10, 20, 20], [0, 50, 5, 60], [30, 5, 40, 15], [1, 1, 2, 2]])
    assert line_ids == [0, 1, 0, 2]
    assert boxes == [[10, 5, 40, 20], [0, 50, 5, 60], [1, 1, 2, 2]]


def test_parse_tesseract_tsv() -> None:
    header = "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext"
    rows = [
        "1\t1\t0\t0\t0\t0\t0\t0\t800\t600\t-1\t",
        "4\t1\t1\t1\t1\t0\t10\t10\t200\t20\t-1\t",
        "5\t1\t1\t1\t1\t1\t10\t10\t50\t20\t96.5\tHello",
        "5\t1\t1\t1\t1\t2\t70\t12\t40\t18\t91\tworld",
        "5\t1\t1\t1\t1\t3\t120\t12\t10\t18\t95\t ",
        "5\t1\t1\t2\t1\t1\t10\t40\t30\t20\t88\tnext",
        "5\t1\t2\t1\t1\t1\t10\t80\t30\t20\t88\tblock",
    ]
    words = parse_tsv("\n".join([header, *rows]) + "\n")
    assert [(w.text, w.box, w.line) for w in words] == [
        ("Hello", (10, 10, 60, 30), 0),
        ("world", (70, 12, 110, 30), 0),
        ("next", (10, 40, 40, 60), 1),
        ("block", (10, 80, 40, 100), 2),
    ]


def test_npz_is_reproducible_and_loads() -> None:
    arrays = {"input_ids": np.arange(5, dtype=np.int32), "bbox": np.ones((5, 4), dtype=np.int16)}
    first = encode_npz(arrays)
    assert encode_npz(arrays) == first
    with zipfile.ZipFile(io.BytesIO(first)) as archive:  # np.savez would stamp the current time here
        assert {member.date_time for member in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    loaded = np.load(io.BytesIO(first))
    assert loaded["bbox"].dtype == np.int16 and (loaded["input_ids"] == arrays["input_ids"]).all()


# ---------------------------------------------------------------- command line


def test_cli_requires_a_tokenizer(corpus_dir, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.delenv(build_shards.TOKENIZER_ENV, raising=False)
    with pytest.raises(SystemExit):
        build_shards.main(["--input", str(corpus_dir), "--out", str(tmp_path), "--ocr", "funsd"])
    assert "pass --tokenizer DIR or set LAYOUTLMV3_TOKENIZER" in capsys.readouterr().err


def test_cli_takes_the_tokenizer_and_task_from_the_environment(corpus_dir, tokenizer_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(build_shards.TOKENIZER_ENV, str(tokenizer_dir))
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    cli = build_shards.parse_config(["--input", str(corpus_dir), "--out", str(tmp_path), "--ocr", "funsd"])
    assert (cli.tokenizer_dir, cli.task_index, cli.num_tasks) == (tokenizer_dir, 1, 2)
    assert cli.files_per_chunk == cli.max_samples_per_shard == 5000 and cli.max_shard_bytes == 10**9


def test_cli_help_explains_every_flag() -> None:
    help_text = build_shards.build_parser().format_help()
    for flag in ("--input", "--out", "--ocr", "--tokenizer", "--workers", "--task-index", "--num-tasks", "--prefix"):
        assert flag in help_text
    for flag in ("--max-samples-per-shard", "--max-shard-bytes", "--seed", "--files-per-chunk", "--ocr-timeout"):
        assert flag in help_text
    for flag in ("--ocr-psm MODE", "--ocr-invert, --no-ocr-invert", "--ocr-min-dpi DPI", "--ocr-max-dpi DPI"):
        assert flag in help_text
    assert "--file-list LIST" in help_text and "python -m data_prep.file_list" in help_text
