"""The benchmark scripts run and report what they claim: the training-step comparison (ours vs transformers from
the same weights, so their losses must agree) and the pretraining-curve plot. Throughput figures themselves live
in BENCHMARKS.md, never in a test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, check=True, timeout=600)


@pytest.fixture(scope="module")
def train_step_report(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("train_step")
    run_script(
        "benchmarks/train_step.py", "--flavor", "tiny", "--batch", "1,2", "--compile", "off", "--text-length", "40",
        "--warmup", "1", "--steps", "2", "--rounds", "2", "--threads", "1",
        "--json", str(out / "report.json"), "--plot", str(out / "throughput.png"),
    )  # fmt: skip
    return json.loads((out / "report.json").read_text()), out


@pytest.mark.slow
def test_train_step_reports_every_variant_and_batch(train_step_report):
    report, out = train_step_report
    variants = {row["variant"] for row in report["results"]}
    assert variants == {"ours-eager", "ours-sdpa", "hf-eager"}
    assert sorted(row["batch"] for row in report["results"]) == [1, 1, 1, 2, 2, 2]
    for row in report["results"]:
        assert row["timed_steps"] == 4  # 2 rounds x 2 steps
        assert row["samples_per_s"] > 0 and row["tokens_per_s"] == pytest.approx(row["samples_per_s"] * (40 + 197))
        assert row["peak_memory_gb"] > 0
        assert row["mfu"] is None  # fp32 on CPU: no peak to divide by unless --peak-tflops is given
    assert report["visual_tokens"] == 197 and report["flops_per_sample"] > 0
    assert (out / "throughput.png").stat().st_size > 1000


@pytest.mark.slow
def test_train_step_variants_compute_the_same_loss(train_step_report):
    """Every variant starts from the same weights: dropout-free losses agree, so the timings compare like for like."""
    report, _ = train_step_report
    for batch in (1, 2):
        losses = [row["first_loss"] for row in report["results"] if row["batch"] == batch]
        assert max(losses) - min(losses) < 1e-5, losses


@pytest.mark.slow
def test_train_step_compiled_layers_match(tmp_path):
    run_script(
        "benchmarks/train_step.py", "--flavor", "tiny", "--batch", "2", "--impl", "ours", "--attn", "sdpa",
        "--compile", "both", "--text-length", "24", "--warmup", "2", "--steps", "1", "--rounds", "1",
        "--no-memory", "--json", str(tmp_path / "report.json"),
    )  # fmt: skip
    rows = json.loads((tmp_path / "report.json").read_text())["results"]
    assert [row["variant"] for row in rows] == ["ours-sdpa", "ours-sdpa+compile"]
    assert rows[0]["first_loss"] == pytest.approx(rows[1]["first_loss"], abs=1e-5)


def test_train_step_refuses_flex_training_on_cpu():
    result = subprocess.run(
        [sys.executable, "benchmarks/train_step.py", "--device", "cpu", "--attn", "flex"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0 and "no CPU backward" in result.stderr


def test_plot_curves_draws_a_run(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    rows = [
        {"step": s, "train/loss": 3.0 - s / 100, "train/mlm_loss": 2.0, "train/mim_loss": 1.0, "train/wpa_loss": 0.6}
        for s in range(1, 101)
    ]
    rows.append({"step": 100, "val/loss": 2.0, "val/mlm_loss": 1.5, "val/mim_loss": 0.9, "val/wpa_loss": 0.5})
    metrics.write_text("".join(json.dumps(row) + "\n" for row in rows))
    run_script("benchmarks/plot_curves.py", str(metrics), "--out", str(tmp_path / "curves.png"), "--window", "10")
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_visual_tokens_reports_step_and_encode_times(tmp_path):
    run_script(
        "benchmarks/visual_tokens.py", "--flavor", "tiny", "--image-tokenizer", "tiny", "--batch", "2",
        "--text-length", "16", "--rounds", "1", "--json", str(tmp_path / "report.json"),
    )  # fmt: skip
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["train_step_ms"] > 0 and report["encode_ms"] > 0 and report["png_112_decode_ms_per_sample"] > 0
    assert report["encode_share_of_step"] == pytest.approx(report["encode_ms"] / report["train_step_ms"])


def test_padding_waste_on_real_shards(tmp_path):
    from data_prep.build_shards import BuildConfig, build
    from data_prep.synth import write_corpus
    from layoutlmv3.tokenizer import train_bpe

    write_corpus(tmp_path / "pages", pages=6, seed=3)
    words = [w["text"] for p in (tmp_path / "pages" / "annotations").glob("*.json")
             for e in json.loads(p.read_text())["form"] for w in e["words"]]  # fmt: skip
    train_bpe(words, vocab_size=400).save_pretrained(tmp_path / "tokenizer")
    build(BuildConfig(input=tmp_path / "pages", out=tmp_path / "shards", ocr="funsd",
                      tokenizer_dir=tmp_path / "tokenizer", progress_bar=False))  # fmt: skip
    output = run_script("benchmarks/padding_waste.py", str(tmp_path / "shards"), "--max-length", "512", "--batch", "2",
                        "--bucket-batches", "3").stdout  # fmt: skip
    report = json.loads(output.strip().splitlines()[-1])
    assert report["pages"] == 6
    policies = report["policies"]
    shares = {name: policies[name]["padding_share_of_positions"] for name in ("max_length", "longest", "bucketed-64")}
    assert 0 <= shares["bucketed-64"] <= shares["max_length"] and shares["longest"] <= shares["max_length"]
    assert policies["max_length"]["distinct_shapes"] == 1


def test_qa_baselines_table(tmp_path: Path) -> None:
    """The baselines of the synthetic questions: reading the question's key beats any question-blind answer."""
    from data_prep.synth import write_question_split

    write_question_split(tmp_path / "train", 3, seed=0)
    write_question_split(tmp_path / "test", 3, seed=1)
    output = run_script("benchmarks/qa_baselines.py", "--data", str(tmp_path)).stdout
    rows = [line.split("|")[1:3] for line in output.splitlines() if line.startswith("| ") and "ANLS" not in line]
    scores = {name.strip(): float(value) for name, value in rows}
    assert list(scores) == [
        "most frequent training answer",
        "question-blind: a value asked about on the page, at random",
        "key rule: the words after the question's key",
    ]
    blind, rule = scores["question-blind: a value asked about on the page, at random"], scores[list(scores)[2]]
    assert 0 < blind < rule and rule > 0.5


@pytest.mark.slow
def test_qa_training_probe_tells_one_pages_questions_apart_at_a_wide_init(tmp_path: Path) -> None:
    """The probe behind BENCHMARKS.md's question-answering diagnosis, and proof that a question's words reach the
    span head: a fresh tiny model at initializer_range 0.2 (no dropout) learns to answer each of one page's
    questions with its own value (ANLS 1), two of them as long in tokens as each other, so the answer cannot come
    from where the page's tokens start; at the default 0.02 it stays question-blind for hundreds of steps."""
    from data_prep.synth import write_question_split
    from layoutlmv3.finetune.qa import read_questions
    from layoutlmv3.finetune.splits import split_dev
    from layoutlmv3.model import LayoutLMv3Config, LayoutLMv3Model
    from layoutlmv3.tokenizer import train_bpe

    write_question_split(tmp_path / "data" / "train", 6, seed=42)
    questions = read_questions(tmp_path / "data" / "train")
    keys = [question.question.split("the ", 1)[1].rstrip("?") for question in questions]
    words = [word for question in questions for word in question.words] + keys * 20  # keys: few tokens each
    tokenizer = train_bpe(words, vocab_size=600)
    tokenizer.save_pretrained(tmp_path / "model")
    LayoutLMv3Model(LayoutLMv3Config.from_flavor("tiny", vocab_size=tokenizer.vocab_size)).save_pretrained(
        tmp_path / "model"
    )
    train, _ = split_dev(questions, 0.2, 0, key=lambda question: str(question.image_path))  # as the probe, --seed 0
    page = sorted({question.image_path for question in train})[0]
    on_page = [question.question for question in train if question.image_path == page]
    lengths = [len(tokenizer.tokenize_words(q.split(), [[0, 0, 0, 0]] * len(q.split()))[0]) for q in on_page]
    assert len(lengths) > len(set(lengths)), (on_page, lengths)
    overrides = {"initializer_range": 0.2, "hidden_dropout_prob": 0, "attention_probs_dropout_prob": 0}
    output = run_script(
        "benchmarks/qa_training_probe.py", "--data", str(tmp_path / "data"), "--model", str(tmp_path / "model"),
        "--init", "random", "--pages", "1", "--answered-only", "--batch", "4", "--steps", "120", "--every", "60",
        "--seed", "0",
        "--overrides", json.dumps(overrides),
    ).stdout  # fmt: skip
    scores = [float(line.split("ANLS ")[1].split()[0]) for line in output.splitlines() if line.startswith("step")]
    assert output.startswith(f"pages: {page.name}\n{len(on_page)} training questions"), output
    assert len(scores) == 2, output
    assert scores[-1] == 1.0, output
