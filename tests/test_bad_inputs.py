"""Inputs a user gets wrong: each is a clear error naming the file and the thing in it, never a silent default
or a traceback from deep inside (the faults table in the README's reliability section)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from launch.finetune import main as finetune_main
from layoutlmv3.finetune.funsd import read_page
from layoutlmv3.model import LayoutLMv3Config
from layoutlmv3.pretraining.run_config import load_run_config
from layoutlmv3.tokenizer import LayoutLMv3Tokenizer, train_bpe


def _page(root: Path, entity: dict) -> tuple[Path, Path]:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    Image.new("RGB", (200, 100), "white").save(root / "images" / "p.png")
    good = {"id": 0, "label": "question", "box": [0, 0, 50, 10], "words": [{"text": "Date", "box": [0, 0, 50, 10]}]}
    (root / "annotations" / "p.json").write_text(json.dumps({"form": [good, entity]}))
    return root / "annotations" / "p.json", root / "images" / "p.png"


@pytest.mark.parametrize(
    ("entity", "message"),
    [
        ({"id": 7, "label": "signature", "box": [0, 20, 50, 30], "words": [{"text": "x", "box": [0, 20, 50, 30]}]},
         "entity 7 has label 'signature', which is not one of header, question, answer, other"),
        ({"id": 7, "box": [0, 20, 50, 30], "words": [{"text": "x", "box": [0, 20, 50, 30]}]},
         "entity 7 has no 'label'"),
        ({"id": 7, "label": "answer", "box": [0, 20, 900, 30], "words": [{"text": "x", "box": [0, 20, 900, 30]}]},
         "entity 7 word 'x': "),
    ],
)  # fmt: skip
def test_fine_tuning_annotations_with_unknown_labels_or_bad_boxes_are_errors(tmp_path, entity, message) -> None:
    """An unknown label used to become O (the model taught that a signature is nothing), a missing one too, and an
    out-of-range box stopped with a PageRejected naming no file."""
    annotation, image = _page(tmp_path, entity)
    with pytest.raises(ValueError, match=f"{annotation}: {message}"):
        read_page(annotation, image)


def test_the_fine_tuning_command_reports_bad_data_in_one_line(tmp_path, caplog) -> None:
    """The label set comes from the training annotations: a type that only the test split uses is named, not
    turned into O."""
    data = tmp_path / "data"
    entity = {"id": 3, "label": "signature", "box": [0, 20, 50, 30], "words": [{"text": "x", "box": [0, 20, 50, 30]}]}
    plain = {"id": 3, "label": "answer", "box": [0, 20, 50, 30], "words": [{"text": "x", "box": [0, 20, 50, 30]}]}
    _page(data / "training_data", plain)
    _page(data / "testing_data", entity)
    model = tmp_path / "model"
    train_bpe(["Date", "x"] * 5, vocab_size=300).save_pretrained(model)
    LayoutLMv3Config.from_flavor("tiny", vocab_size=300).save(model / "config.json")
    config = str(Path(__file__).resolve().parents[1] / "configs" / "finetune" / "tiny.yaml")
    argv = ["--config", config, "--model", str(model), "--data", str(data), "--out", str(tmp_path / "out")]
    assert finetune_main(argv) == 2
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert (
        len(errors) == 1
        and "testing_data/annotations/p.json: entity 3 has label 'signature', which is not one of question, answer, other"
        in errors[0]
    )


def test_a_model_config_with_a_wrong_typed_field_names_it(tmp_path) -> None:
    path = tmp_path / "config.json"
    values = LayoutLMv3Config.from_flavor("tiny").to_dict()
    path.write_text(json.dumps({**values, "hidden_size": "64"}))
    with pytest.raises(ValueError, match=f"{path}: LayoutLMv3Config.hidden_size must be int, got '64'"):
        LayoutLMv3Config.load(path)
    path.write_text(json.dumps({**values, "num_hidden_layers": True}))
    with pytest.raises(ValueError, match="num_hidden_layers must be int, got True"):
        LayoutLMv3Config.load(path)
    path.write_text(json.dumps({**values, "classifier_dropout": None, "layer_norm_eps": 1}))
    assert LayoutLMv3Config.load(path).layer_norm_eps == 1  # None where allowed, an int where a float is


def test_a_missing_tokenizer_directory_is_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=f"tokenizer directory {tmp_path / 'nope'} does not exist"):
        LayoutLMv3Tokenizer.from_pretrained(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "vocab.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="half lacks merges.txt"):
        LayoutLMv3Tokenizer.from_pretrained(tmp_path / "half")


def test_broken_yaml_names_its_file_line_and_column(tmp_path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  flavor: tiny\n data: [\n")
    with pytest.raises(ValueError, match=rf'(?s){path} is not valid YAML: .*in "{path}", line 3'):
        load_run_config(path)
    with pytest.raises(FileNotFoundError, match=f"config file {tmp_path / 'missing.yaml'} does not exist"):
        load_run_config(tmp_path / "missing.yaml")
    with pytest.raises(FileNotFoundError, match=f"config file {tmp_path} is a directory"):
        load_run_config(tmp_path)


def test_a_missing_deepspeed_config_names_the_setting(tmp_path) -> None:
    from layoutlmv3.training.ds_config import load_ds_config

    with pytest.raises(ValueError, match=r"deepspeed: the DeepSpeed config ds_configs/x.json does not exist \(from "):
        load_ds_config("ds_configs/x.json")
    with pytest.raises(ValueError, match=f"the DeepSpeed config {tmp_path} is a directory"):
        load_ds_config(tmp_path)


def test_special_ids_and_the_patch_grid_have_one_source_each() -> None:
    """The tokenizer fixes <s>/<pad>/</s> (refusing a vocabulary that moves them); the engine refuses a model config
    that disagrees with it, or whose patch grid is not the image tokenizer's code grid."""
    from layoutlmv3.pretraining.build import check_inputs_fit

    tokenizer = train_bpe(["Date", "Total"] * 5, vocab_size=300)
    ids = {"pad": tokenizer.pad_token_id, "cls": tokenizer.cls_token_id, "sep": tokenizer.sep_token_id}
    check_inputs_fit(LayoutLMv3Config.from_flavor("tiny"), ids, image_grid=14)
    with pytest.raises(ValueError, match=r"pad_token_id=7 \(tokenizer: 1\)"):
        check_inputs_fit(LayoutLMv3Config.from_flavor("tiny", pad_token_id=7), ids, image_grid=14)
    with pytest.raises(ValueError, match="28x28 patch grid, the image tokenizer codes a 14x14 grid"):
        check_inputs_fit(LayoutLMv3Config.from_flavor("tiny", input_size=448), ids, image_grid=14)
    check_inputs_fit(LayoutLMv3Config.from_flavor("tiny"), ids, image_grid=14, max_length=512)
    with pytest.raises(ValueError, match="data.max_length 513 is beyond the model's 512 text positions"):
        check_inputs_fit(LayoutLMv3Config.from_flavor("tiny"), ids, image_grid=14, max_length=513)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    with pytest.raises(ValueError, match="RoBERTa-format vocabularies have <s>=0, <pad>=1, </s>=2"):
        LayoutLMv3Tokenizer(vocab, [])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"wordz": []}', r'expected \{"words": \[...\]\} or a list of words, got an object with keys \[\'wordz\'\]'),
        ('{"words": [{"text": null, "box": [0, 0, 1, 1]}]}', "a word's text must be a string, got None"),
        ('{"words": [{"text": {"a": 1}, "box": [0, 0, 1, 1]}]}', "a word's text must be a string"),
        ('{"words": [{"text": "x"}]}', 'each word needs a "text" and a 4-number "box"'),
        ("not json", "is not valid JSON"),
    ],
)
def test_a_bad_words_file_is_an_error_naming_it(tmp_path, content, message) -> None:
    """Words files come from users' OCR: a wrong shape is named, never read as the text "None" or a KeyError."""
    from layoutlmv3.page_layout import read_words

    (tmp_path / "page.json").write_text(content)
    with pytest.raises(ValueError, match=message) as raised:
        read_words(tmp_path / "page.json")
    assert str(tmp_path / "page.json") in str(raised.value)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"question": "What is the Date?", "answers": ["1"]}, 'has no "image"'),
        ({"image": "documents/p.png", "question": "  ", "answers": ["1"]}, 'has no "question" text'),
        ({"image": "documents/p.png", "question": "What?", "answers": "02-Jul"}, '"answers" must be a list of strings'),
    ],
)  # fmt: skip
def test_a_bad_question_entry_is_an_error_naming_the_file_and_the_entry(tmp_path, entry, message) -> None:
    from layoutlmv3.finetune.qa import read_questions

    split = tmp_path / "train"
    split.mkdir()
    good = {"image": "documents/p.png", "question": "What is the Total?", "answers": ["1"]}
    (split / "train.json").write_text(json.dumps({"data": [good, entry]}))
    with pytest.raises(ValueError, match=f"train.json: question 1 .*{message}"):
        read_questions(split)
    (split / "train.json").write_text(json.dumps({"questions": [good]}))
    with pytest.raises(ValueError, match="expected DocVQA's"):
        read_questions(split)


def test_an_empty_class_folder_is_named_not_dropped(tmp_path) -> None:
    """A class folder without pages would make a model that silently lacks the class."""
    from layoutlmv3.finetune.classes import class_names

    for kind in ("letter", "memo"):
        (tmp_path / "train" / kind).mkdir(parents=True)
    Image.new("L", (20, 20), 255).save(tmp_path / "train" / "letter" / "a.png")
    (tmp_path / "train" / "memo" / "notes.txt").write_text("not a page")
    with pytest.raises(ValueError, match=r"train/memo: a class folder without page images"):
        class_names(tmp_path / "train")


def test_windows_refuse_a_negative_stride_and_an_empty_question_and_say_they_cut_a_long_one(caplog) -> None:
    from layoutlmv3.processing import LayoutLMv3Processor

    tokenizer = train_bpe(["What", "is", "the", "Date", "12/03/1998"] * 5, vocab_size=300)
    with pytest.raises(ValueError, match="need 0 <= stride < max_length - 2"):
        LayoutLMv3Processor(tokenizer, max_length=64, stride=-50)
    processor = LayoutLMv3Processor(tokenizer, max_length=64, stride=8)
    with pytest.raises(ValueError, match="the question is empty"):
        processor.encode_questions(["   "], ["Date"], [[0, 0, 10, 10]])
    assert len(processor.encode_questions(["What is the Date?"], ["Date"], [[0, 0, 10, 10]])[0]) == 1
    with caplog.at_level("WARNING"):
        for _ in range(2):  # said once, not for every long question of a split
            ((window,),) = processor.encode_questions(["What is the Date? " * 40], ["Date"], [[0, 0, 10, 10]])
    assert [record.message[:42] for record in caplog.records] == ["a question longer than 51 tokens is cut to"]
    assert window.word_ids.count(0) == 1  # the page's word is still read


def test_classify_finds_no_pages_or_an_unwritable_out_before_any_work(tmp_path, capsys) -> None:
    """Both are said in one line (exit 2) before the model is even loaded: no model directory is needed."""
    from launch.classify import main as classify_main

    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "readme.txt").write_text("no pages here")
    assert classify_main(["--model", str(tmp_path / "model"), "--image", str(tmp_path / "scans")]) == 2
    err = capsys.readouterr().err
    assert "error: no page images (.bmp .gif .jpeg .jpg .pdf .png .tif .tiff .webp) under" in err
    assert "skipped 1 file(s) of other types than pages: 1 .txt (e.g. readme.txt)" in err
    Image.new("L", (20, 20), 255).save(tmp_path / "scans" / "p.png")
    out = tmp_path / "missing" / "classes.jsonl"
    assert (
        classify_main(["--model", str(tmp_path / "model"), "--image", str(tmp_path / "scans"), "--out", str(out)]) == 2
    )
    assert f"error: --out {out}: no folder {out.parent}" in capsys.readouterr().err


def test_a_data_root_whose_pages_all_have_words_is_only_read(tmp_path) -> None:
    """Words are written (under a lock file in the root) only for pages that lack them: a read-only data root
    with every words file present trains, and no lock file is left among the user's data."""
    from data_prep.finetune_data import fill_missing_words
    from layoutlmv3.finetune.config import FinetuneConfig

    (tmp_path / "train" / "letter").mkdir(parents=True)
    Image.new("L", (20, 20), 255).save(tmp_path / "train" / "letter" / "a.png")
    (tmp_path / "train" / "letter" / "a.json").write_text('{"words": [{"text": "Dear", "box": [1, 1, 9, 9]}]}')
    config = FinetuneConfig(task="classes")
    config.data.dir = str(tmp_path)
    fill_missing_words(config)
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["a.json", "a.png", "letter", "train"]


def test_words_temporaries_a_killed_run_left_beside_the_pages_are_removed_on_the_rerun(tmp_path) -> None:
    """A run killed while writing a page's words file leaves a hidden temporary beside the user's page; the next
    run, which OCRs the pages still missing words, removes it (a dead writer of this host's), and the words are
    written."""
    import socket
    import subprocess

    from data_prep.finetune_data import fill_missing_words
    from data_prep.synth import write_class_split
    from layoutlmv3.finetune.config import FinetuneConfig
    from layoutlmv3.page_layout import words_file

    write_class_split(tmp_path / "train", 1)
    page = sorted((tmp_path / "train").rglob("*.png"))[0]
    words_file(page).unlink()  # its OCR was cut short:
    killed = subprocess.Popen(["true"])
    killed.wait()
    left = words_file(page).with_name(f".{words_file(page).name}.{socket.gethostname()}.{killed.pid}.tmp")
    left.write_bytes(b'{"words": [{"te')
    config = FinetuneConfig(task="classes")
    config.data.dir = str(tmp_path)
    fill_missing_words(config)
    assert not left.exists()
    assert json.loads(words_file(page).read_text())["words"]  # Tesseract's words of the page
    assert sorted(path.name for path in page.parent.iterdir()) == sorted([page.name, words_file(page).name])


def test_no_tesseract_on_path_says_what_to_install(tmp_path, monkeypatch) -> None:
    from data_prep.ocr import run_tesseract

    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no tesseract anywhere on PATH
    with pytest.raises(FileNotFoundError, match="tesseract is not installed or not on PATH"):
        run_tesseract(Image.new("L", (20, 20), 255), timeout=10)


def test_a_negative_page_number_is_a_usage_error(capsys) -> None:
    from launch.predict import main as predict_main

    with pytest.raises(SystemExit) as stopped:
        predict_main(["--model", "m", "--image", "a.tif", "--out", "r.json", "--page", "-1"])
    assert stopped.value.code == 2 and "a page number counts from 0, got '-1'" in capsys.readouterr().err
