"""Fine-tuning: FUNSD reading, windows and their merging, entity scores, config checks, a tiny training run."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from data_prep.synth import write_corpus
from launch.finetune import main as finetune_main
from layoutlmv3.finetune.config import load_finetune_config
from layoutlmv3.finetune.dataset import NO_WORD, WindowDataset, make_windows
from layoutlmv3.finetune.evaluate import entity_scores, evaluate, merge_windows
from layoutlmv3.finetune.funsd import LABEL_IDS, LABELS, read_page, read_split
from layoutlmv3.finetune.train import BEST_DIR, RESULTS_FILE, split_dev
from layoutlmv3.model import LayoutLMv3Config, LayoutLMv3ForTokenClassification, LayoutLMv3Model
from layoutlmv3.tokenizer import LayoutLMv3Tokenizer, train_bpe

REPO_ROOT = Path(__file__).resolve().parents[1]
WORDS = ["Date", "Total", "Name", "Amount", "Signature", "Remarks", "approved", "received", "1998", "John"]


def _write_page(root: Path) -> tuple[Path, Path]:
    """A 200x100 page: a header, a question with an empty word, an answer, an `other` entity."""
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    Image.new("RGB", (200, 100), "white").save(root / "images" / "p.png")
    form = [
        {"id": 0, "label": "header", "box": [0, 0, 100, 10], "words": [{"text": "FORM", "box": [0, 0, 40, 10]}]},
        {
            "id": 1,
            "label": "question",
            "box": [0, 20, 100, 30],
            "words": [
                {"text": "", "box": [0, 20, 5, 30]},
                {"text": "Total", "box": [10, 20, 50, 30]},
                {"text": "due:", "box": [60, 20, 100, 30]},
            ],
        },
        {"id": 2, "label": "answer", "box": [120, 20, 200, 30], "words": [{"text": "12", "box": [120, 20, 140, 30]}]},
        {"id": 3, "label": "other", "box": [0, 80, 20, 90], "words": [{"text": "x", "box": [0, 80, 20, 90]}]},
    ]
    (root / "annotations" / "p.json").write_text(json.dumps({"form": form}))
    return root / "annotations" / "p.json", root / "images" / "p.png"


def test_funsd_page_bio_labels_boxes_and_empty_words(tmp_path: Path) -> None:
    annotation, image = _write_page(tmp_path)
    page = read_page(annotation, image, boxes="segment")
    assert page.words == ["FORM", "Total", "due:", "12", "x"]  # the empty word is dropped
    assert [LABELS[label] for label in page.labels] == ["B-HEADER", "B-QUESTION", "I-QUESTION", "B-ANSWER", "O"]
    assert page.boxes[1] == page.boxes[2] == [0, 200, 500, 300]  # the entity's box, on the 0..1000 grid
    word_level = read_page(annotation, image, boxes="word")
    assert word_level.boxes[1] == [50, 200, 250, 300]
    assert len(LABELS) == 7 and LABELS[0] == "O"


def test_real_funsd_reads(funsd_dir: Path) -> None:
    train = read_split(funsd_dir / "training_data")
    test = read_split(funsd_dir / "testing_data", boxes="word")
    assert (len(train), len(test)) == (149, 50)
    for page in train + test:
        assert len(page.words) == len(page.boxes) == len(page.labels) > 0
        assert all(word.strip() for word in page.words)
        assert all(0 <= c <= 1000 for box in page.boxes for c in box)
    counts = {label: sum(p.labels.count(LABEL_IDS[label]) for p in train) for label in LABELS}
    assert all(counts[label] > 0 for label in LABELS)


def test_dev_split_is_deterministic_and_disjoint(tmp_path: Path) -> None:
    annotation, image = _write_page(tmp_path)
    page = read_page(annotation, image)
    pages = [type(page)(f"p{i}", image, page.words, page.boxes, page.labels) for i in range(20)]
    train, dev = split_dev(pages, 0.1, seed=3)
    assert len(dev) == 2 and len(train) == 18
    assert {p.id for p in dev} == {p.id for p in split_dev(list(reversed(pages)), 0.1, seed=3)[1]}
    assert not {p.id for p in train} & {p.id for p in dev}


@pytest.mark.parametrize("stride", [0, 5])
def test_windows_merge_back_onto_every_word(stride: int) -> None:
    """A long page in overlapping windows: predicting each token's word label gives every word's label back."""
    tokenizer = train_bpe(WORDS * 3, vocab_size=400)
    words = [WORDS[i % len(WORDS)] + ("s" * (i % 3)) for i in range(60)]
    boxes = [[i, i, i + 10, i + 10] for i in range(60)]
    labels = [i % len(LABELS) for i in range(60)]
    windows = make_windows(tokenizer, 0, words, boxes, labels, max_length=24, stride=stride)
    assert len(windows) > 3
    for window in windows:  # labels sit on first sub-tokens only
        assert (window.labels != -100).sum() <= (window.word_ids != NO_WORD).sum()
    stream = []
    for index, window in enumerate(windows):
        word_labels = torch.tensor([labels[w] if w != NO_WORD else 0 for w in window.word_ids.tolist()])
        stream.append((index, window.word_ids, torch.nn.functional.one_hot(word_labels, len(LABELS)).float()))
    merged = merge_windows(len(words), stream)
    assert merged.labels == labels
    assert merged.confidences == [1.0] * len(words)


def test_merge_prefers_a_words_start_to_a_window_cut() -> None:
    """Word 0 starts in window 0; window 1 begins inside it, so its vote there is ignored."""
    first = (0, torch.tensor([NO_WORD, 0, 0, NO_WORD]), torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1.0], [1.0, 0]]))
    second = (1, torch.tensor([NO_WORD, 0, 1, NO_WORD]), torch.tensor([[1.0, 0], [0, 1.0], [0.2, 0.8], [1.0, 0]]))
    merged = merge_windows(2, [first, second])
    assert merged.labels == [0, 1]
    assert merged.confidences == pytest.approx([0.9, 0.8])


def test_entity_scores() -> None:
    gold = [["B-QUESTION", "I-QUESTION", "O", "B-ANSWER"]]
    assert entity_scores(gold, gold)["f1"] == 1.0
    half = entity_scores(gold, [["B-QUESTION", "I-QUESTION", "O", "O"]])
    assert (half["precision"], half["recall"]) == (1.0, 0.5)
    assert set(half["per_class"]) >= {"QUESTION", "ANSWER"}


def test_config_checks(tmp_path: Path) -> None:
    config = load_finetune_config(REPO_ROOT / "configs" / "finetune" / "funsd.yaml", ["--model.path", "m"])
    assert (config.train.lr, config.train.batch_size, config.train.steps) == (1e-5, 16, 1000)
    with pytest.raises(ValueError, match="unknown key"):
        load_finetune_config(None, ["--model.path", "m", "--train.lrate", "1"])
    with pytest.raises(ValueError, match="data.boxes"):
        load_finetune_config(None, ["--model.path", "m", "--data.boxes", "line"])
    with pytest.raises(ValueError, match="model.path"):
        load_finetune_config(None)
    with pytest.raises(ValueError, match="model.init must be one of"):
        load_finetune_config(None, ["--model.path", "m", "--model.init", "scratch"])


def test_random_init_keeps_the_architecture_and_draws_fresh_weights(tmp_path: Path) -> None:
    """model.init=random: the from-scratch baseline of a pretraining comparison (same shape, no learned weights)."""
    torch.manual_seed(0)
    saved = LayoutLMv3Model(LayoutLMv3Config.from_flavor("tiny", vocab_size=500, num_labels=7))
    saved.save_pretrained(tmp_path / "model")
    torch.manual_seed(1)
    fresh = LayoutLMv3ForTokenClassification.from_config_of(tmp_path / "model", num_labels=7)
    loaded = LayoutLMv3ForTokenClassification.from_pretrained(tmp_path / "model", num_labels=7)
    assert fresh.config == loaded.config
    fresh_weights, loaded_weights = fresh.layoutlmv3.state_dict(), loaded.layoutlmv3.state_dict()
    assert fresh_weights.keys() == loaded_weights.keys()
    assert torch.equal(loaded_weights["text_embeddings.word.weight"], saved.state_dict()["text_embeddings.word.weight"])
    assert not torch.equal(fresh_weights["text_embeddings.word.weight"], loaded_weights["text_embeddings.word.weight"])


def test_fine_tuning_learns_and_keeps_the_best_dev_model(tmp_path: Path) -> None:
    """A tiny random model fine-tuned 100 steps on synthetic forms: entity F1 on unseen forms far above what a
    labeller without the model gets (the same label frequencies, drawn at random), the kept model is the one with
    the best dev F1 of the recorded history, and it reproduces the reported test score when reloaded."""
    write_corpus(tmp_path / "data" / "training_data", 24, seed=0)
    write_corpus(tmp_path / "data" / "testing_data", 8, seed=1)
    words = [word for page in read_split(tmp_path / "data" / "training_data") for word in page.words]
    tokenizer = train_bpe(words, vocab_size=800)
    tokenizer.save_pretrained(tmp_path / "model")
    torch.manual_seed(0)
    LayoutLMv3Model(LayoutLMv3Config.from_flavor("tiny", vocab_size=tokenizer.vocab_size)).save_pretrained(
        tmp_path / "model"
    )
    argv = ["--config", str(REPO_ROOT / "configs" / "finetune" / "tiny.yaml"), "--model", str(tmp_path / "model")]
    argv += ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--train.steps", "100"]
    argv += ["--train.eval_every", "25", "--train.lr", "2e-3", "--output.progress", "false"]
    assert finetune_main(argv) == 0
    results = json.loads((tmp_path / "out" / RESULTS_FILE).read_text())

    test_pages = read_split(tmp_path / "data" / "testing_data")
    gold = [[LABELS[label] for label in page.labels] for page in test_pages]
    frequencies = [label for page in read_split(tmp_path / "data" / "training_data") for label in page.labels]
    rng = random.Random(0)
    guessed = [[LABELS[rng.choice(frequencies)] for _ in page] for page in gold]
    chance = entity_scores(gold, guessed)["f1"]
    assert chance < 0.25 and results["test"]["f1"] > max(0.4, 2.5 * chance), (results["test"]["f1"], chance)

    history = results["dev_history"]
    assert [entry["step"] for entry in history] == [25, 50, 75, 100]
    best = max(history, key=lambda entry: entry["dev_f1"])  # the first of equal scores, as training keeps
    assert (results["best_step"], results["dev_f1"]) == (best["step"], best["dev_f1"])
    assert history[-1]["loss"] < history[0]["loss"] or best["dev_f1"] > history[0]["dev_f1"]

    model = LayoutLMv3ForTokenClassification.from_pretrained(tmp_path / "out" / BEST_DIR)
    assert model.config.id2label == dict(enumerate(LABELS))
    tokenizer = LayoutLMv3Tokenizer.from_pretrained(tmp_path / "out" / BEST_DIR)
    dataset = WindowDataset(test_pages, tokenizer, 128, 32, model.config.input_size)
    rescored = evaluate(model.eval(), DataLoader(dataset, batch_size=4), test_pages, LABELS)
    assert rescored["f1"] == pytest.approx(results["test"]["f1"], abs=1e-9)
    assert list((tmp_path / "out" / "tensorboard").glob("events.out.tfevents.*"))


def test_help() -> None:
    with pytest.raises(SystemExit) as exit_info:
        finetune_main(["--help"])
    assert exit_info.value.code == 0
