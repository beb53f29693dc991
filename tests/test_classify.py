"""Document classification (RVL-CDIP's task): reading a class-folder or index-file root, the scores, a run of the
launcher on the trainer, and classifying a new page with the kept model."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from data_prep.build_shards import BuildConfig, build
from data_prep.finetune_data import fill_missing_words
from data_prep.synth import DOCUMENT_KINDS, write_class_split
from data_prep.synth.generate import generate_page
from launch.classify import main as classify_main
from layoutlmv3.finetune.classes import class_names, page_words, read_class_split, words_file
from layoutlmv3.finetune.classify_job import class_scores, draw_confusion
from layoutlmv3.finetune.config import load_finetune_config
from layoutlmv3.model import LayoutLMv3Config, LayoutLMv3ForSequenceClassification, LayoutLMv3Model
from layoutlmv3.tokenizer import train_bpe

REPO_ROOT = Path(__file__).resolve().parents[1]


def _page(folder: Path, name: str, words: list[dict] | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("L", (100, 80), 255).save(folder / f"{name}.png")
    if words is not None:
        (folder / f"{name}.json").write_text(json.dumps({"words": words}))
    return folder / f"{name}.png"


def test_folders_and_index_files_give_the_same_pages(tmp_path: Path) -> None:
    """A folder per class, or RVL-CDIP's index file (path + class number); classes sorted numerically; a line's
    words share the line's box; another class, or a page without words, is an error naming the file."""
    words = [{"text": "Dear", "box": [5, 5, 20, 10], "line": 0}, {"text": "Sir", "box": [25, 5, 40, 12], "line": 0}]
    _page(tmp_path / "train" / "letter", "a", words)
    _page(tmp_path / "train" / "memo", "b", words[:1])
    pages = read_class_split(tmp_path / "train", class_names(tmp_path / "train"))
    assert [(page.image_path.stem, page.label, page.words) for page in pages] == [
        ("a", 0, ["Dear", "Sir"]),
        ("b", 1, ["Dear"]),
    ]
    assert pages[0].boxes[0] == pages[0].boxes[1] == [50, 62, 400, 150]  # the line's box, on the 0..1000 grid
    (tmp_path / "index").mkdir()
    _page(tmp_path / "index" / "images", "c", words)
    _page(tmp_path / "index" / "images", "d", words)
    (tmp_path / "index" / "train.txt").write_text("images/c.png 10\nimages/d.png 2\n")
    assert class_names(tmp_path / "index" / "train") == ("2", "10")
    assert [p.label for p in read_class_split(tmp_path / "index" / "train", ("2", "10"))] == [1, 0]
    with pytest.raises(ValueError, match="class 'memo' is not one of letter"):
        read_class_split(tmp_path / "train", ("letter",))
    _page(tmp_path / "train" / "letter", "e", None)
    with pytest.raises(FileNotFoundError, match="e.png has no words file e.json"):
        read_class_split(tmp_path / "train", ("letter", "memo"))


def test_scores_and_confusion() -> None:
    scores = class_scores([0, 0, 1, 2], [0, 1, 1, 1], ("a", "b", "c"))
    assert scores["accuracy"] == 0.5 and scores["confusion"] == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
    assert scores["per_class"]["b"] == {"precision": 1 / 3, "recall": 1.0, "f1": 0.5, "support": 1}
    assert scores["per_class"]["c"]["f1"] == 0.0
    assert draw_confusion(scores["confusion"], ("a", "b", "c")).size[0] > 100


# Measured with this test's model and settings, seeds 1/2/3 (the seed also draws the pages): test accuracy
# 0.55/0.75/0.525; seed 1 at lr 1e-3 instead: 0.45.
CLASSIFY_SEED = 1


@pytest.mark.slow
def test_document_classification_learns_on_the_trainer_and_classifies_a_new_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's claim, held: a short CPU run on the built-in labelled set (synthetic pages, their five templates
    as classes; 160 training / 40 dev / 40 test pages, 200 steps of a fresh tiny model at lr 2e-3, about a minute) classifies unseen pages far
    above chance: test accuracy at least 0.4, twice chance and above always answering the test split's most
    frequent class. Accuracy selects the kept model, the test split gets a per-class report and the confusion
    matrix, and the kept model classifies a new page through launch/classify.py."""
    vocabulary = [w.text for i in range(40) for e in generate_page(99, i).entities for w in e.words]
    tokenizer = train_bpe(vocabulary, vocab_size=1000)  # another corpus seed than the pages trained on
    tokenizer.save_pretrained(tmp_path / "model")
    LayoutLMv3Model(LayoutLMv3Config.from_flavor("tiny", vocab_size=tokenizer.vocab_size)).save_pretrained(
        tmp_path / "model"
    )
    out = tmp_path / "out"
    command = [sys.executable, "-m", "launch.finetune", "--config", "configs/finetune/tiny_classes.yaml"]
    command += ["--model", str(tmp_path / "model"), "--out", str(out), "--train.steps", "200", "--train.lr", "2e-3"]
    command += ["--train.seed", str(CLASSIFY_SEED), "--logging.val_every", "100", "--logging.progress", "false"]
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}  # the threads of this worker (one under make test's xdist)
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    classes = DOCUMENT_KINDS  # the synthetic set names every template
    assert [entry["step"] for entry in results["dev_history"]] == [100, 200] and "dev_accuracy" in results
    test = results["test"]
    assert set(test["per_class"]) == set(classes)
    confusion = test["confusion"]
    assert sum(map(sum, confusion)) == 40 and (out / "confusion.png").is_file()
    most_frequent = max(map(sum, confusion)) / 40  # rows: the true classes
    assert test["accuracy"] >= max(0.4, 2 / len(classes)) and test["accuracy"] > most_frequent, (test, most_frequent)
    model = LayoutLMv3ForSequenceClassification.from_pretrained(out / "best")
    assert model.config.id2label == dict(enumerate(classes))
    assert json.loads((out / "best" / "processing.json").read_text()) == {
        "max_length": 128,
        "stride": 32,
        "boxes": "segment",
    }
    page = sorted((out / "synthetic" / "test").rglob("*.png"))[0]
    assert classify_main(["--model", str(out / "best"), "--image", str(page.parent), "--words", "w.json"]) == 2
    assert classify_main(["--model", str(out / "best"), "--image", str(page), "--out", str(tmp_path / "c.jsonl")]) == 0
    answer = json.loads((tmp_path / "c.jsonl").read_text())
    assert answer["class"] in classes and abs(sum(answer["probabilities"].values()) - 1) < 1e-3
    scans = tmp_path / "scans"  # a folder with one unreadable page among good ones: the others are classified
    scans.mkdir()
    for index, source in enumerate(sorted((out / "synthetic" / "test").rglob("*.png"))[:3]):
        shutil.copy(source, scans / f"{index}.png")
        shutil.copy(source.with_suffix(".json"), scans / f"{index}.json")
    (scans / "1.json").write_text('{"words": [{"text": null, "box": [0, 0, 1, 1]}]}')
    capsys.readouterr()
    assert classify_main(["--model", str(out / "best"), "--image", str(scans), "--out", str(tmp_path / "d.jsonl")]) == 1
    stderr = capsys.readouterr().err
    assert re.search(r"(^|\r)skipped .*1\.(json|png)", stderr, re.MULTILINE) and "1 of 3 pages skipped" in stderr, (
        stderr
    )
    assert [json.loads(line)["image"] for line in (tmp_path / "d.jsonl").read_text().splitlines()] == [
        str(scans / "0.png"),
        str(scans / "2.png"),
    ]
    assert torch.is_tensor(model(**{"input_ids": torch.tensor([[0, 5, 2]])}).logits)


def test_words_come_from_data_prep_shards_instead_of_ocr(tmp_path: Path) -> None:
    """Pages OCR'd once by data_prep for pretraining are classified from the shards' words: the words files
    written back read as the originals (same words, same 0..1000 boxes and lines), and a page the shards lack
    is an error naming it."""
    write_class_split(tmp_path / "root" / "train", 4, seed=3)
    write_class_split(tmp_path / "root" / "test", 2, seed=4)
    images = sorted((tmp_path / "root").rglob("*.png"))
    originals = {(image, boxes): page_words(image, boxes) for image in images for boxes in ("word", "segment")}
    for image in images:  # data_prep's JSON OCR input, then no words beside the pages
        words = json.loads(words_file(image).read_text())["words"]
        image.with_suffix(".json").write_text(json.dumps({"pages": [{"page": 0, "words": words}]}))
    all_words = [
        w["text"] for image in images for w in json.loads(image.with_suffix(".json").read_text())["pages"][0]["words"]
    ]
    train_bpe(all_words, vocab_size=300).save_pretrained(tmp_path / "vocab")
    build(BuildConfig(tmp_path / "root", tmp_path / "shards", "json", tmp_path / "vocab", progress_bar=False))
    for image in images:
        words_file(image).unlink()
    config = load_finetune_config(None, ["--task", "classes", "--model.path", "m", "--data.dir", str(tmp_path / "root"),
                                         "--data.words_from_shards", str(tmp_path / "shards"), "--output.dir", "o"])  # fmt: skip
    fill_missing_words(config)  # the launcher's step before training
    assert {(image, boxes): page_words(image, boxes) for image in images for boxes in ("word", "segment")} == originals
    shard = sorted((tmp_path / "shards").glob("*.tar"))[0]
    intact = shard.read_bytes()
    shard.write_bytes(intact[:700])  # a truncated shard: named, not a traceback
    words_file(images[0]).unlink()
    with pytest.raises(ValueError, match=rf"{shard.name}: not a readable data_prep shard"):
        fill_missing_words(config)
    shard.write_bytes(intact)
    fill_missing_words(config)
    extra = images[0].parent / "unseen.png"
    shutil.copy(images[0], extra)
    with pytest.raises(ValueError, match=r"1 of 1 pages without words are not in the shards .*unseen.png"):
        fill_missing_words(config)
    with pytest.raises(ValueError, match="words_from_shards is for task classes or questions"):
        load_finetune_config(None, ["--model.path", "m", "--data.words_from_shards", "s"])
    if shutil.which("tesseract"):  # without shards: Tesseract reads the pages that have no words file
        extra.unlink()
        words_file(images[1]).unlink()
        fill_missing_words(replace(config, data=replace(config.data, words_from_shards=None)))
        read = {word.lower() for word in page_words(images[1], "word")[0] if len(word) > 3}
        truth = {word.lower() for word in originals[(images[1], "word")][0] if len(word) > 3}
        assert len(read & truth) > 0.5 * len(truth)
