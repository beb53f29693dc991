"""The OCR quality benchmark's matching rules (benchmarks/ocr_quality.py): what counts as a read word. The measured
figures themselves live in BENCHMARKS.md, never here."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.ocr_quality import Score, iou, match_words, normalise, score_page, true_words
from data_prep.words import Word

REPO = Path(__file__).resolve().parents[1]
needs_tesseract = pytest.mark.skipif(shutil.which("tesseract") is None, reason="needs tesseract-ocr")


def words(*items: tuple[str, tuple[int, int, int, int]]) -> list[Word]:
    return [Word(text, box, line) for line, (text, box) in enumerate(items)]


def test_perfect_prediction_scores_one():
    truth = words(("Date:", (0, 0, 50, 10)), ("12/03/98", (60, 0, 120, 10)), ("TOTAL", (0, 20, 40, 30)))
    metrics = score_page(truth, list(reversed(truth))).metrics()
    assert metrics == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "text_recall": 1.0}


def test_a_box_matches_from_iou_one_half():
    truth = words(("form", (0, 0, 100, 10)))
    # shifted right by s: IoU = (100 - s) / (100 + s); s = 300/7 gives 0.4, s = 25 gives 0.6
    assert iou((0, 0, 100, 10), (25, 0, 125, 10)) == pytest.approx(0.6)
    assert iou((0, 0, 100, 10), (300 / 7, 0, 100 + 300 / 7, 10)) == pytest.approx(0.4)
    assert match_words(truth, words(("form", (25, 0, 125, 10)))) == [(0, 0)]
    assert match_words(truth, words(("form", (300 / 7, 0, 100 + 300 / 7, 10)))) == []
    assert match_words(truth, words(("form", (0, 0, 50, 10)))) == [(0, 0)]  # IoU exactly 0.5 matches
    assert match_words(truth, words(("form", (0, 0, 49, 10)))) == []
    low = score_page(truth, words(("form", (300 / 7, 0, 100 + 300 / 7, 10)))).metrics()
    assert (low["f1"], low["text_recall"]) == (0.0, 1.0)  # the text was read, at the wrong place


def test_iou_of_disjoint_touching_and_inverted_boxes():
    assert iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert iou((10, 10, 0, 0), (0, 0, 10, 10)) == 1.0


def test_normalisation():
    assert normalise("Date:") == "Date"
    assert normalise("(see") == "see"
    assert normalise("“quoted”,") == "quoted"
    assert normalise("ﬁle") == "file"  # NFKC: the ligature is the same word
    assert normalise("１２３") == "123"  # full-width digits
    assert normalise(" 5. ") == "5"
    assert normalise(":") == ":"  # nothing but punctuation: kept, so ":" still matches ":"
    assert normalise("$12.00") == "$12.00"  # symbols and inner punctuation are part of the word
    assert normalise("U.S.A.") == "U.S.A"
    assert normalise("TOTAL") != normalise("Total")  # case kept: the tokenizer is cased
    box = (0, 0, 40, 10)
    assert match_words(words(("Date", box)), words(("Date:", box))) == [(0, 0)]
    assert match_words(words(("Total", box)), words(("TOTAL", box))) == []


def test_matching_is_one_to_one():
    truth = words(("the", (0, 0, 30, 10)))
    twice = words(("the", (0, 0, 30, 10)), ("the", (1, 0, 31, 10)))
    assert match_words(truth, twice) == [(0, 0)]  # the better overlap wins, the other prediction is unmatched
    score = score_page(truth, twice)
    assert (score.matched, score.predicted_words, score.true_words) == (1, 2, 1)
    assert score.metrics()["precision"] == 0.5 and score.metrics()["recall"] == 1.0
    # two true words, one prediction overlapping both: it matches the one it overlaps best, once
    two_true = words(("a", (0, 0, 10, 10)), ("a", (4, 0, 14, 10)))
    assert match_words(two_true, words(("a", (3, 0, 13, 10)))) == [(1, 0)]


def test_greedy_by_iou_not_by_order():
    # the first prediction overlaps the second true word best (9/11), but that true word is the second
    # prediction's exact box (1.0): taken first, the first prediction then matches the first true word (8/12)
    truth = words(("x", (0, 0, 10, 10)), ("x", (3, 0, 13, 10)))
    predicted = words(("x", (2, 0, 12, 10)), ("x", (3, 0, 13, 10)))
    assert sorted(match_words(truth, predicted)) == [(0, 0), (1, 1)]


def test_text_recall_ignores_position():
    truth = words(("Name", (0, 0, 40, 10)), ("Name", (0, 50, 40, 60)), ("Date", (0, 100, 40, 110)))
    far = words(("Name", (500, 500, 540, 510)), ("Date:", (900, 0, 940, 10)), ("Date", (0, 0, 1, 1)))
    score = score_page(truth, far)
    assert score.matched == 0 and score.text_matched == 2  # one Name (of two), one Date (extra Date not counted)
    assert score.metrics()["text_recall"] == pytest.approx(2 / 3)


def test_scores_add_up_over_pages():
    total = Score(10, 8, 6, 7) + Score(5, 4, 3, 5)
    assert total == Score(15, 12, 9, 12)
    metrics = total.metrics()
    assert metrics["precision"] == 0.75 and metrics["recall"] == 0.6
    assert metrics["f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert Score().metrics() == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "text_recall": 0.0}


def test_blank_truth_words_are_dropped():
    kept, dropped = true_words(words(("", (0, 0, 1, 1)), ("  ", (0, 0, 1, 1)), ("ok", (0, 0, 5, 5))))
    assert [word.text for word in kept] == ["ok"] and dropped == 2


@pytest.mark.slow
@needs_tesseract
def test_benchmark_reads_synthetic_pages(tmp_path):
    out = tmp_path / "quality.json"
    subprocess.run(
        [sys.executable, "benchmarks/ocr_quality.py", "--sets", "synthetic", "--synthetic", "2", "--configs",
         "plain,up300", "--json", str(out)],
        cwd=REPO, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    report = json.loads(out.read_text())["sets"]["synthetic"]
    assert report["skipped"] == {"up300": "plain"}  # 300 dpi pages: upscaling to 300 is a no-op
    (row,) = report["results"]
    assert row["config"] == "plain" and row["pages"] == 2 and row["failed_pages"] == 0
    assert row["f1"] > 0.5 and row["true_words"] > 50
    assert row["cpu_s_per_page"] > 0
