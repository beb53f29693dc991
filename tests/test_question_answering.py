"""Extractive question answering (DocVQA's task): ANLS, answers located among OCR words, question + page
windows, a run of the launcher on the trainer on the built-in synthetic questions, answering a new question."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data_prep.synth import write_question_split
from launch.answer import main as answer_main
from layoutlmv3.finetune.anls import anls, answer_similarity, levenshtein
from layoutlmv3.finetune.qa import QuestionWindows, best_answers, locate_answer, read_questions
from layoutlmv3.model import LayoutLMv3Config, LayoutLMv3ForQuestionAnswering, LayoutLMv3Model
from layoutlmv3.processing import LayoutLMv3Processor
from layoutlmv3.tokenizer import train_bpe

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_anls_as_docvqa_scores_it() -> None:
    assert levenshtein("kitten", "sitting") == 3
    assert answer_similarity("  The Date ", ["the date"]) == 1.0
    assert answer_similarity("12/03/1998", ["12/03/1989"]) == pytest.approx(1 - 2 / 10)
    assert answer_similarity("1998", ["12/03/1998"]) == 0.0  # NL 0.6 >= 0.5: nothing
    assert answer_similarity("Smith", ["John Smith", "Smith"]) == 1.0  # the best accepted answer counts
    assert anls(["a", "xyz"], [["a"], ["b"]]) == 0.5
    with pytest.raises(ValueError, match="2 predictions for 1 questions"):
        anls(["a", "b"], [["a"]])


def test_answers_are_located_as_word_runs() -> None:
    words = ["Date:", "12/03/1998", "Name:", "John", "Smith"]
    assert locate_answer(words, ["john  SMITH"]) == (3, 4)
    assert locate_answer(words, ["nobody", "12/03/1998"]) == (1, 1)
    assert locate_answer(words, ["John Doe"]) is None


def test_question_windows_put_the_question_first_and_the_answer_in_the_window_that_holds_it(tmp_path: Path) -> None:
    tokenizer = train_bpe(["What", "is", "the", "Date", "Name", "John", "Smith", "1998"] * 5, vocab_size=300)
    words = ["Date:", "12/03/1998", "Name:", "John", "Smith"] * 6
    windows = LayoutLMv3Processor(tokenizer, max_length=32, stride=8).encode_questions(
        ["What is the Name?"], words, [[1, 2, 3, 4]] * 30
    )[0]
    assert len(windows) > 2 and all(len(w.input_ids) == 32 for w in windows)
    first = windows[0]
    assert first.input_ids[0] == tokenizer.cls_token_id
    sep = first.input_ids.index(tokenizer.sep_token_id)
    assert first.input_ids[sep + 1] == tokenizer.sep_token_id and first.word_ids[: sep + 2] == [None] * (sep + 2)
    assert all(box == [0, 0, 0, 0] for box in first.bbox[: sep + 2]) and first.word_ids[sep + 2] == 0
    covered = {word for window in windows for word in window.word_ids if word is not None}
    assert covered == set(range(30))
    processor = LayoutLMv3Processor(tokenizer, max_length=32, stride=8)  # a page's words tokenised once for all
    together = processor.encode_questions(["What is the Name?", "What is the Date?"], words, [[1, 2, 3, 4]] * 30)
    alone = processor.encode_questions(["What is the Date?"], words, [[1, 2, 3, 4]] * 30)[0]
    assert together == [windows, alone] and together[0] != together[1]


def _model(directory: Path) -> None:
    tokenizer = train_bpe(["What", "is", "the", "Date", "Name", "Total", "Address"] * 10, vocab_size=300)
    tokenizer.save_pretrained(directory)
    LayoutLMv3Model(LayoutLMv3Config.from_flavor("tiny", vocab_size=tokenizer.vocab_size)).save_pretrained(directory)


def test_windows_point_at_the_answer_and_the_best_span_is_read_back(tmp_path: Path) -> None:
    write_question_split(tmp_path / "train", 2, seed=0)
    questions = read_questions(tmp_path / "train")
    assert questions and all(question.span is not None for question in questions)
    _model(tmp_path / "model")
    from layoutlmv3.tokenizer import LayoutLMv3Tokenizer

    windows = QuestionWindows(questions, LayoutLMv3Tokenizer.from_pretrained(tmp_path / "model"), 128, 32, 224)
    logits = []
    for item in windows.items:  # logits that peak exactly at the labelled positions
        start, end = torch.full((128,), -5.0), torch.full((128,), -5.0)
        start[item["start_positions"]] = end[item["end_positions"]] = 5.0
        logits.append((start, end))
    answers = best_answers(questions, windows, logits)
    inside = {int(item["question"]) for item in windows.items if item["start_positions"] > 0}
    assert len(inside) >= len(questions) - 1  # an answer longer than a window's room points at <s> instead
    assert [answers[n] for n in sorted(inside)] == [questions[n].answers[0] for n in sorted(inside)]


def test_every_field_can_be_asked_and_answerless_training_windows_are_thinned(tmp_path: Path) -> None:
    """The built-in set asks up to 4 fields a page, or every field with an answer; with short windows most of a
    page's windows lack the answer, and data.answerless_windows keeps a seeded fraction of those."""
    four = write_question_split(tmp_path / "four" / "train", 3, seed=0)
    every = write_question_split(tmp_path / "every" / "train", 3, seed=0, per_page=None)
    assert four <= 12 < every
    questions = read_questions(tmp_path / "every" / "train")
    asked = [[q.question.lower() for q in questions if q.image_path == page] for page in sorted(
        {q.image_path for q in questions})]  # fmt: skip
    assert all(len(fields) == len(set(fields)) for fields in asked) and max(map(len, asked)) > 4  # each field once
    assert all(question.span is not None for question in questions)  # every answer is a run of the page's words

    tokenizer = train_bpe([word for question in questions for word in question.words], vocab_size=400)
    windows = lambda: QuestionWindows(questions, tokenizer, 48, 8, 224)  # noqa: E731
    whole = windows()
    answerless = [item for item in whole.items if int(item["start_positions"]) == 0]
    assert len(answerless) > len(whole.items) / 2
    none, half, again, all_ = windows(), windows(), windows(), windows()
    none.keep_answerless(0.0, seed=1)
    half.keep_answerless(0.5, seed=1)
    again.keep_answerless(0.5, seed=1)
    all_.keep_answerless(1.0, seed=1)
    assert len(all_) == len(whole) and all(int(item["start_positions"]) > 0 for item in none.items)
    assert len(none) == len(whole) - len(answerless) < len(half) < len(whole)
    assert [int(item["question"]) for item in half.items] == [int(item["question"]) for item in again.items]
    text_only = QuestionWindows(questions, tokenizer, 48, 8, None)  # a text-only model's: no image read
    assert "pixel_values" in whole.items[0] and all("pixel_values" not in item for item in text_only.items)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(whole.items, text_only.items, strict=True))


@pytest.mark.slow
def test_question_answering_runs_on_the_trainer_and_answers_a_new_question(tmp_path: Path, capsys) -> None:
    _model(tmp_path / "model")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "launch.finetune", "--config", "configs/finetune/tiny_qa.yaml", "--model"]
    command += [str(tmp_path / "model"), "--out", str(out), "--train.steps", "4", "--logging.val_every", "2"]
    command += ["--logging.progress", "false", "--data.synthetic_train_pages", "6", "--data.synthetic_test_pages", "2"]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert [entry["step"] for entry in results["dev_history"]] == [2, 4] and "dev_anls" in results
    assert set(results["test"]) >= {"anls", "exact", "examples"}
    model = LayoutLMv3ForQuestionAnswering.from_pretrained(out / "best")
    assert model.config.id2label == {0: "start", 1: "end"}
    page = sorted((out / "synthetic" / "test" / "documents").glob("*.png"))[0]
    words = {word["text"] for word in json.loads(page.with_suffix(".json").read_text())["words"]}
    arguments = ["--model", str(out / "best"), "--image", str(page), "--question", "What is the Date?"]
    assert answer_main([*arguments, "--max-length", "192", "--stride", "64"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["question"] == "What is the Date?" and set(printed["answer"].split()) <= words


@pytest.mark.slow
def test_a_short_cpu_run_reads_the_question_and_beats_the_question_blind_baseline(tmp_path: Path) -> None:
    """The claim of the built-in question set: tiny_qa.yaml's recipe, shortened for a test (1000 steps over
    64-token windows at lr 4e-3, about 3 CPU minutes with the pages) on a fresh tiny model, answers held-out
    pages' questions far better than a model that knows where values sit but not which one is asked
    (question-blind, 0.06 on these pages with every field asked). Measured on one thread, dev-2c, 2026-12-07
    (the bound asks 0.122): ANLS 0.249 after 1000 steps over 400 training pages (0.173 over 300, 0.276 over 600,
    0.386 after 1500 steps over 600); BENCHMARKS.md has the full run (0.67).
    Fresh weights start at init 0.1: at 0.02 a 64-wide model's attention starts nearly shut."""
    from benchmarks.qa_baselines import question_blind_value
    from data_prep.synth.generate import generate_page

    words = [word.text for index in range(40) for e in generate_page(9, index).entities for word in e.words]
    tokenizer = train_bpe(words + ["What", "is", "the"] * 20, vocab_size=1500)
    tokenizer.save_pretrained(tmp_path / "model")
    config = LayoutLMv3Config.from_flavor("tiny", vocab_size=tokenizer.vocab_size)
    LayoutLMv3Model(config).save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "launch.finetune", "--config", "configs/finetune/tiny_qa.yaml", "--model"]
    command += [str(tmp_path / "model"), "--out", str(out), "--model.init", "random"]
    command += ["--model.overrides.initializer_range", "0.1", "--train.steps", "1000", "--logging.val_every", "1000"]
    command += ["--data.max_length", "64", "--data.stride", "16", "--train.lr", "4e-3"]
    command += ["--data.synthetic_train_pages", "400", "--data.synthetic_test_pages", "20"]
    command += ["--data.dev_fraction", "0.05", "--logging.progress", "false"]
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    blind = question_blind_value(read_questions(out / "synthetic" / "test"))
    assert blind < 0.15 and results["test"]["anls"] > max(0.12, 2 * blind), (results["test"], blind)


def test_a_long_question_is_cut_to_fit_and_the_dev_split_holds_out_whole_pages(tmp_path: Path) -> None:
    tokenizer = train_bpe(["What", "is", "the", "Date"] * 5, vocab_size=300)
    processor = LayoutLMv3Processor(tokenizer, max_length=128, stride=64)
    windows = processor.encode_questions(["What is the date " * 40], ["Date:", "1998"], [[1, 2, 3, 4]] * 2)[0]
    assert len(windows) == 1 and len(windows[0].input_ids) == 128 and 0 in windows[0].word_ids
    from layoutlmv3.finetune.config import load_finetune_config
    from layoutlmv3.finetune.qa_job import QuestionAnsweringJob

    write_question_split(tmp_path / "qa" / "train", 10, seed=0)
    write_question_split(tmp_path / "qa" / "test", 1, seed=1)
    _model(tmp_path / "model")
    overrides = [
        "--model.path",
        str(tmp_path / "model"),
        "--data.dir",
        str(tmp_path / "qa"),
        "--output.dir",
        str(tmp_path),
    ]
    job = QuestionAnsweringJob(load_finetune_config(REPO_ROOT / "configs" / "finetune" / "tiny_qa.yaml", overrides))
    train_pages = {question.image_path for question in job.questions["train"]}
    dev_pages = {question.image_path for question in job.questions["dev"]}
    assert train_pages and dev_pages and not train_pages & dev_pages


@pytest.mark.slow
def test_two_ranks_under_zero3_score_what_the_kept_model_answers(tmp_path: Path) -> None:
    """QA on 2 CPU ranks, ZeRO-3: dev and test windows are spread over the ranks in lockstep (every rank runs the
    same number of forwards, as sharded parameters need) and the kept model is gathered from the shards; reloaded
    on one process it gives the test answers and ANLS the run reported."""
    _model(tmp_path / "model")
    ds = json.loads((REPO_ROOT / "ds_configs" / "finetune_cpu_fp32.json").read_text())
    (tmp_path / "zero3.json").write_text(json.dumps({**ds, "zero_optimization": {"stage": 3}}))
    out = tmp_path / "out"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(port)]
    command += ["launch/finetune.py", "--config", "configs/finetune/tiny_qa.yaml", "--model", str(tmp_path / "model")]
    command += ["--out", str(out), "--train.steps", "4", "--logging.val_every", "2", "--logging.progress", "false"]
    command += ["--data.synthetic_train_pages", "6", "--data.synthetic_test_pages", "3"]
    # the multimodal path (the config's recipe is text only), with the windows the check below makes
    command += ["--model.overrides.visual_embed", "true", "--data.max_length", "192", "--data.stride", "64"]
    command += ["--deepspeed", str(tmp_path / "zero3.json")]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "ZeRO-3" in done.stdout + done.stderr
    results = json.loads((out / "results.json").read_text())
    model = LayoutLMv3ForQuestionAnswering.from_pretrained(out / "best").eval()
    from layoutlmv3.tokenizer import LayoutLMv3Tokenizer

    questions = read_questions(out / "synthetic" / "test")
    windows = QuestionWindows(questions, LayoutLMv3Tokenizer.from_pretrained(out / "best"), 192, 64, 224)
    logits = []
    with torch.no_grad():
        for item in windows.items:
            output = model(
                **{name: item[name][None] for name in ("input_ids", "bbox", "attention_mask", "pixel_values")}
            )
            text = item["input_ids"].shape[0]
            logits.append((output.start_logits[0, :text], output.end_logits[0, :text]))
    answers = best_answers(questions, windows, logits)
    assert len(questions) > 5 and [e["predicted"] for e in results["test"]["examples"]] == answers[:5]
    assert results["test"]["anls"] == pytest.approx(anls(answers, [q.answers for q in questions]), abs=1e-9)
