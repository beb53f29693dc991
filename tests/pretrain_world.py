"""The small pretraining world every launched pretraining run in the tests reads (the launcher's, the Slurm
cluster's): synthetic shards, a BPE vocabulary, an untrained tiny image tokenizer and the run config."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from data_prep.build_shards import BuildConfig, build
from data_prep.synth import write_corpus
from data_prep.train_tokenizer import input_files, read_texts
from layoutlmv3.pretraining.image_tokenizer import ImageTokenizer, ImageTokenizerConfig
from layoutlmv3.tokenizer import train_bpe

REPO_ROOT = Path(__file__).resolve().parents[1]
WORLD_STEPS = 20  # the run config's train.steps


def build_world(root: Path) -> Path:
    """Shards (8 train, 3 held-out), a 1000-id BPE vocabulary, a tiny image tokenizer and the run config."""
    write_corpus(root / "synth_train", 24, seed=0)
    write_corpus(root / "synth_val", 6, seed=1)
    words = list(read_texts(input_files([root / "synth_train" / "annotations"])))  # as the tokenizer CLI reads them
    train_bpe(words, vocab_size=1000).save_pretrained(root / "vocab")
    for name, per_shard in (("train", 3), ("val", 2)):
        build(
            BuildConfig(
                input=root / f"synth_{name}",
                out=root / "shards" / name,
                ocr="funsd",
                tokenizer_dir=root / "vocab",
                max_samples_per_shard=per_shard,
                progress_bar=False,
            )
        )
    torch.manual_seed(0)
    ImageTokenizer(ImageTokenizerConfig.from_flavor("tiny")).save_pretrained(root / "image_tokenizer")
    config = {
        "model": {"flavor": "tiny"},
        "data": {
            "train_shards": str(root / "shards" / "train"),
            "val_shards": str(root / "shards" / "val"),
            "tokenizer": str(root / "vocab"),
            "max_length": 128,
            "num_workers": 0,
            "shuffle_buffer": 8,
            "val_batches": 2,
        },
        "objectives": {"image_tokenizer": str(root / "image_tokenizer")},
        "train": {"steps": WORLD_STEPS, "lr": 5.0e-4, "seed": 7},
        "logging": {"every": 5, "val_every": 10, "progress": False},
        "checkpoint": {"every": 10, "keep": 3},
        "deepspeed": str(REPO_ROOT / "ds_configs" / "cpu_fp32.json"),
    }
    (root / "run.yaml").write_text(yaml.safe_dump(config))
    return root
