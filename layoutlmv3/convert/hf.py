"""A transformers LayoutLMv3 directory -> our model directory, to fine-tune or continue pretraining from."""

from __future__ import annotations

import shutil
from pathlib import Path

from layoutlmv3.model import LayoutLMv3Model
from layoutlmv3.tokenizer import CONFIG_FILE, MERGES_FILE, VOCAB_FILE

TOKENIZER_FILES = (VOCAB_FILE, MERGES_FILE, CONFIG_FILE)


def convert_from_hf(source: str | Path, out: str | Path) -> Path:
    """Backbone weights in our layout, plus the tokenizer files the source ships (vocab.json, merges.txt)."""
    source, out = Path(source), Path(out)
    LayoutLMv3Model.from_pretrained(source).save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
    return out
