"""A small synthetic corpus, its vocabulary and a build's settings, shared by the data-prep tests.

The fixtures are module-scoped and offered to every test module through tests/conftest.py, so a module that uses
them builds its own corpus once and no test module imports another."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from data_prep.build_shards import BuildConfig
from data_prep.synth import write_corpus
from layoutlmv3.tokenizer import train_bpe
from tests.file_digests import digests

SYNTH_PAGES = 12


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 synthetic pages in FUNSD layout."""
    out = tmp_path_factory.mktemp("synth")
    write_corpus(out, SYNTH_PAGES, seed=0)
    return out


@pytest.fixture(scope="module")
def corpus_dir(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic pages plus two that must be rejected: a corrupt image and a page without words."""
    out = tmp_path_factory.mktemp("corpus")
    shutil.copytree(synth_dir, out, dirs_exist_ok=True)
    (out / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (out / "annotations" / "broken.json").write_text('{"form": []}')
    Image.new("L", (600, 800), 255).save(out / "images" / "blank.png")
    (out / "annotations" / "blank.json").write_text('{"form": []}')
    return out


@pytest.fixture(scope="module")
def tokenizer_dir(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small BPE vocabulary trained on the corpus words: no dependency on the shared RoBERTa files."""
    words = [word["text"] for path in sorted((synth_dir / "annotations").glob("*.json")) for word in funsd_words(path)]
    out = tmp_path_factory.mktemp("vocab")
    train_bpe(words, vocab_size=600).save_pretrained(out)
    return out


def funsd_words(path: Path) -> list[dict]:
    """Every word of a FUNSD annotation file, in its entities' order."""
    return [word for entity in json.loads(path.read_text())["form"] for word in entity["words"]]


def config(input_dir: Path, out: Path, tokenizer_dir: Path, **overrides) -> BuildConfig:
    """The tests' build settings: FUNSD words, small shards and chunks, no progress bar."""
    settings = {"ocr": "funsd", "max_samples_per_shard": 5, "files_per_chunk": 6, "progress_bar": False}
    settings |= overrides
    return BuildConfig(input=input_dir, out=out, tokenizer_dir=tokenizer_dir, **settings)


def output_files(out: Path) -> dict[str, str]:
    """Every output file but the chunk locks (which name their last holder), by size and digest."""
    return digests((p for p in out.rglob("*") if p.is_file() and p.suffix != ".lock"), out)


def shard_bytes(out: Path) -> dict[str, str]:
    """The shards among `output_files`."""
    return {name: data for name, data in output_files(out).items() if name.endswith(".tar")}
