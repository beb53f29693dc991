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
from layoutlmv3.tokenizer import LayoutLMv3Tokenizer, train_bpe
from layoutlmv3.training.run_config import load_run_config


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


def test_special_ids_and_the_patch_grid_have_one_source_each() -> None:
    """The tokenizer fixes <s>/<pad>/</s> (refusing a vocabulary that moves them); the engine refuses a model config
    that disagrees with it, or whose patch grid is not the image tokenizer's code grid."""
    from layoutlmv3.training.engine import check_inputs_fit

    tokenizer = train_bpe(["Date", "Total"] * 5, vocab_size=300)
    ids = {"pad": tokenizer.pad_token_id, "cls": tokenizer.cls_token_id, "sep": tokenizer.sep_token_id}
    check_inputs_fit(LayoutLMv3Config.from_flavor("tiny"), ids, image_grid=14)
    with pytest.raises(ValueError, match=r"pad_token_id=7 \(tokenizer: 1\)"):
        check_inputs_fit(LayoutLMv3Config.from_flavor("tiny", pad_token_id=7), ids, image_grid=14)
    with pytest.raises(ValueError, match="28x28 patch grid, the image tokenizer codes a 14x14 grid"):
        check_inputs_fit(LayoutLMv3Config.from_flavor("tiny", input_size=448), ids, image_grid=14)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    with pytest.raises(ValueError, match="RoBERTa-format vocabularies have <s>=0, <pad>=1, </s>=2"):
        LayoutLMv3Tokenizer(vocab, [])
