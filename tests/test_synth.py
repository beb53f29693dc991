"""Tests for the embedded synthetic corpus (data_prep.synth): determinism, exact boxes, FUNSD output, CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep.synth import LABELS, generate_page, render_clean, to_funsd, write_corpus, write_page
from data_prep.synth.__main__ import main
from data_prep.synth.layout import Layout, compose
from data_prep.synth.render import render
from data_prep.synth.text import TextSource
from tests.file_digests import digests

REPO_ROOT = Path(__file__).resolve().parents[1]
FUNSD_KEYS = {"box", "text", "label", "words", "linking", "id"}
PAGES = range(6)


def _words(page):
    return [word for entity in page.entities for word in entity.words]


def _corpus_files(out: Path) -> dict[str, str]:
    return digests((p for p in out.rglob("*") if p.is_file()), out)


def test_same_seed_same_page_different_seed_different_page() -> None:
    a, b, c = generate_page(7, 3), generate_page(7, 3), generate_page(8, 3)
    assert a.image.tobytes() == b.image.tobytes()
    assert to_funsd(a) == to_funsd(b)
    assert a.image.tobytes() != c.image.tobytes()
    assert to_funsd(a) != to_funsd(c)
    assert generate_page(7, 4).image.tobytes() != a.image.tobytes()


def test_page_shape_and_words_are_clean_tokens() -> None:
    for index in PAGES:
        page = generate_page(0, index)
        assert page.image.mode == "L" and page.image.size == (1000, 1300)
        width, height = page.image.size
        for entity in page.entities:
            assert entity.words and entity.label in LABELS
            assert entity.box == tuple(f([w.box[i] for w in entity.words]) for i, f in enumerate((min, min, max, max)))
            for word in entity.words:
                assert word.text and not any(ch.isspace() for ch in word.text)
                x0, y0, x1, y1 = word.box
                assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height


@pytest.mark.parametrize("index", PAGES)
def test_word_boxes_are_exact_ink_bounds(index: int) -> None:
    """With only text drawn, every box edge touches ink and no ink lies outside the boxes."""
    layout = compose(TextSource(1000 + index))
    text_only = render(Layout(layout.size, layout.runs, [], layout.links))
    ink = np.asarray(text_only.image) < 255
    covered = np.zeros_like(ink)
    for word in _words(text_only):
        x0, y0, x1, y1 = word.box
        crop = ink[y0:y1, x0:x1]
        assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any(), word
        covered[y0:y1, x0:x1] = True
    assert not (ink & ~covered).any()


@pytest.mark.parametrize("index", PAGES)
def test_dark_pixels_of_clean_render_are_words_or_drawn_marks(index: int) -> None:
    page = render_clean(3, index)
    dark = np.asarray(page.image) < 128
    covered = np.zeros_like(dark)
    words = _words(page)
    for x0, y0, x1, y1 in [w.box for w in words] + page.shape_boxes:
        covered[max(y0, 0) : y1, max(x0, 0) : x1] = True
    assert not (dark & ~covered).any()
    assert all(dark[y0:y1, x0:x1].any() for x0, y0, x1, y1 in (w.box for w in words))
    boxes = np.array([w.box for w in words])  # words never overlap each other
    x0, y0, x1, y1 = (boxes[:, i] for i in range(4))
    overlap = (np.minimum(x1[:, None], x1) > np.maximum(x0[:, None], x0)) & (
        np.minimum(y1[:, None], y1) > np.maximum(y0[:, None], y0)
    )
    assert overlap.sum() == len(words)


def test_entities_sharing_a_line_id_share_a_visual_line() -> None:
    for index in PAGES:
        lines: dict[int, list[tuple[int, int, int, int]]] = {}
        for entity in render_clean(4, index).entities:
            lines.setdefault(entity.line_id, []).append(entity.box)
        for boxes in lines.values():
            assert max(b[1] for b in boxes) < min(b[3] for b in boxes), boxes


def test_all_labels_occur_across_ten_pages() -> None:
    labels = {entity.label for index in range(10) for entity in generate_page(5, index).entities}
    assert labels == set(LABELS)


def test_funsd_json_round_trips(tmp_path: Path) -> None:
    page = generate_page(2, 0)
    write_page(page, tmp_path)
    form = json.loads((tmp_path / "annotations" / f"{page.page_id}.json").read_text())["form"]
    assert [entry["id"] for entry in form] == list(range(len(page.entities)))
    for entry, entity in zip(form, page.entities, strict=True):
        assert set(entry) == FUNSD_KEYS
        assert entry["label"] == entity.label and tuple(entry["box"]) == entity.box
        assert entry["text"] == " ".join(w["text"] for w in entry["words"])
        assert [(w["text"], tuple(w["box"])) for w in entry["words"]] == [(w.text, w.box) for w in entity.words]
        assert [tuple(pair) for pair in entry["linking"]] == entity.linking
    with Image.open(tmp_path / "images" / f"{page.page_id}.png") as image:
        assert image.mode == "L" and image.tobytes() == page.image.tobytes()


KILLED_AT_THE_ANNOTATIONS_RENAME = """
import os, signal, sys
from pathlib import Path
from data_prep.synth import generate_page, write_page
real_replace = os.replace
def replace(source, target):
    if Path(target).suffix == ".json":
        os.kill(os.getpid(), signal.SIGKILL)  # a node lost, an OOM kill: no clean-up of any kind runs
    real_replace(source, target)
os.replace = replace
write_page(generate_page(2, 1), Path(sys.argv[1]))
"""


def test_a_page_write_killed_before_its_rename_leaves_no_file_a_reader_or_rerun_takes(tmp_path: Path) -> None:
    """A SIGKILL between writing the annotation and renaming it into place leaves only a hidden temporary: no
    annotation a FUNSD reader would glob, the page incomplete so a rerun writes it, and the rerun removes the
    temporary (the killed process's name: nothing else ever would)."""
    from data_prep.synth.funsd_format import is_complete

    page = generate_page(2, 1)
    killed = subprocess.run([sys.executable, "-c", KILLED_AT_THE_ANNOTATIONS_RENAME, str(tmp_path)], cwd=REPO_ROOT)
    assert killed.returncode == -signal.SIGKILL
    assert (tmp_path / "images" / f"{page.page_id}.png").is_file() and not is_complete(tmp_path, page.page_id)
    assert [p.name.startswith(f".{page.page_id}.json.") for p in (tmp_path / "annotations").iterdir()] == [True]
    write_corpus(tmp_path, pages=2, seed=2)  # the rerun: completes the page, removes what the killed run left
    assert json.loads((tmp_path / "annotations" / f"{page.page_id}.json").read_text()) == to_funsd(page)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        f"{generate_page(2, index).page_id}{suffix}" for index in range(2) for suffix in (".json", ".png")
    )


def test_links_go_from_questions_to_answers_and_are_mirrored() -> None:
    n_links = 0
    for index in PAGES:
        form = to_funsd(generate_page(6, index))["form"]
        for entry in form:
            for question, answer in entry["linking"]:
                assert entry["id"] in (question, answer)
                assert form[question]["label"] == "question" and form[answer]["label"] == "answer"
                assert [question, answer] in form[question]["linking"] and [question, answer] in form[answer]["linking"]
                n_links += 1
    assert n_links > 0


def test_cli_writes_pages_identically_for_any_worker_count_and_skips_on_rerun(tmp_path: Path) -> None:
    parallel, serial = tmp_path / "parallel", tmp_path / "serial"
    args = ["--out", str(parallel), "--pages", "3", "--seed", "9", "--workers", "2", "--quiet"]
    subprocess.run([sys.executable, "-m", "data_prep.synth", *args], cwd=REPO_ROOT, check=True, timeout=120)
    assert write_corpus(serial, 3, seed=9).written == 3
    files = _corpus_files(parallel)
    assert len(files) == 6 and files == _corpus_files(serial)

    mtimes = {p: p.stat().st_mtime_ns for p in parallel.rglob("*") if p.is_file()}
    main(["--out", str(parallel), "--pages", "4", "--seed", "9", "--quiet"])
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert len(_corpus_files(parallel)) == 8
    assert write_corpus(parallel, 4, seed=9).skipped == 4


def test_cli_help_mentions_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(option in out for option in ("--out", "--pages", "--seed", "--workers"))
