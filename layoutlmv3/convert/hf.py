"""A transformers LayoutLMv3 directory -> our model directory, to fine-tune or continue pretraining from."""

from __future__ import annotations

import shutil
from pathlib import Path

from layoutlmv3.model import LayoutLMv3Model
from layoutlmv3.tokenizer import CONFIG_FILE, MERGES_FILE, VOCAB_FILE

from .publish import publish

TOKENIZER_FILES = (VOCAB_FILE, MERGES_FILE, CONFIG_FILE)


def convert_from_hf(source: str | Path, out: str | Path) -> Path:
    """Backbone weights in our layout, plus the tokenizer files the source ships (vocab.json, merges.txt: without
    them the directory could not be fine-tuned or predicted with, so their absence is an error)."""
    source, out = Path(source), Path(out)
    if missing := [name for name in (VOCAB_FILE, MERGES_FILE) if not (source / name).is_file()]:
        raise ValueError(f"{source} has no {' or '.join(missing)}: copy the tokenizer files of the model there")
    model = LayoutLMv3Model.from_pretrained(source)

    def write(directory: Path) -> None:
        model.save_pretrained(directory)
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, directory / name)

    return publish(out, write)
