"""The whole chain on CPU with tiny sizes: synthetic corpus -> pretraining under the real DeepSpeed launcher ->
convert -> fine-tune on synthetic FUNSD-format forms -> predict a page (Tesseract OCR)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from data_prep.build_shards import BuildConfig, build
from data_prep.synth import write_corpus
from data_prep.train_tokenizer import input_files, read_texts
from layoutlmv3.finetune.funsd import LABELS
from layoutlmv3.pretraining.image_tokenizer import ImageTokenizer, ImageTokenizerConfig
from layoutlmv3.tokenizer import train_bpe
from layoutlmv3.training.checkpointing import LATEST_FILE, tag_for

REPO_ROOT = Path(__file__).resolve().parents[1]
STEPS = 4
TIMEOUT = 300

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(command: list[str], **kwargs) -> str:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT, **kwargs)
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done.stdout


def _pretraining_inputs(root: Path) -> Path:
    """Shards, a BPE vocabulary and an (untrained) tiny image tokenizer, as configs/pretrain/tiny.yaml describes."""
    write_corpus(root / "synth", 6, seed=0)
    words = list(read_texts(input_files([root / "synth" / "annotations"])))  # the words the tokenizer CLI would read
    train_bpe(words, vocab_size=1000).save_pretrained(root / "vocab")
    build(
        BuildConfig(
            input=root / "synth",
            out=root / "shards",
            ocr="funsd",
            tokenizer_dir=root / "vocab",
            max_samples_per_shard=3,
            progress_bar=False,
        )
    )
    torch.manual_seed(0)
    ImageTokenizer(ImageTokenizerConfig.from_flavor("tiny")).save_pretrained(root / "image_tokenizer")
    config = {
        "model": {"flavor": "tiny"},
        "data": {
            "train_shards": str(root / "shards"),
            "tokenizer": str(root / "vocab"),
            "max_length": 128,
            "num_workers": 0,
            "shuffle_buffer": 4,
        },
        "objectives": {"image_tokenizer": str(root / "image_tokenizer")},
        "train": {"steps": STEPS, "lr": 5.0e-4, "seed": 7},
        "logging": {"dir": str(root / "logs"), "every": 1, "val_every": 0, "progress": False},
        "checkpoint": {"dir": str(root / "checkpoints"), "every": STEPS, "keep": 1},
        "deepspeed": str(REPO_ROOT / "ds_configs" / "cpu_fp32.json"),
    }
    (root / "pretrain.yaml").write_text(yaml.safe_dump(config))
    return root / "pretrain.yaml"


def test_pretrain_convert_finetune_predict(tmp_path: Path) -> None:
    python = sys.executable
    launcher = [python, "-m", "deepspeed.launcher.runner", "--num_gpus", "1", "--master_port", str(_free_port())]
    config = _pretraining_inputs(tmp_path)
    _run([*launcher, "launch/pretrain.py", "--config", str(config)])
    assert (tmp_path / "checkpoints" / LATEST_FILE).read_text() == tag_for(STEPS)

    model = tmp_path / "model"
    _run([python, "launch/convert.py", "--checkpoint", str(tmp_path / "checkpoints"), "--out", str(model)])
    assert (model / "model.safetensors").is_file() and (model / "vocab.json").is_file()

    finetuned = tmp_path / "finetune"
    command = [python, "launch/finetune.py", "--config", "configs/finetune/tiny.yaml", "--model", str(model)]
    command += [
        "--out",
        str(finetuned),
        "--train.steps",
        "6",
        "--logging.val_every",
        "3",
        "--logging.progress",
        "false",
    ]
    command += ["--data.synthetic_train_pages", "4", "--data.synthetic_test_pages", "2"]
    _run(command)
    results = json.loads((finetuned / "results.json").read_text())
    best = max(results["dev_history"], key=lambda entry: entry["dev_f1"])
    assert [entry["step"] for entry in results["dev_history"]] == [3, 6]
    assert (results["best_step"], results["dev_f1"]) == (best["step"], best["dev_f1"])

    page = sorted((finetuned / "synthetic" / "testing_data" / "images").glob("*.png"))[0]
    out = tmp_path / "prediction.json"
    command = [python, "launch/predict.py", "--model", str(finetuned / "best"), "--image", str(page)]
    _run([*command, "--out", str(out), "--viz", str(tmp_path / "prediction.png")])
    prediction = json.loads(out.read_text())
    assert prediction["words"] and all(word["label"] in LABELS for word in prediction["words"])
    kinds = {label.split("-", 1)[-1] for label in LABELS}
    assert all(entity["label"] in kinds for entity in prediction["entities"])
    assert (tmp_path / "prediction.png").is_file()
