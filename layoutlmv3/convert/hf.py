"""Model directories to and from transformers' LayoutLMv3 layout.

From transformers: backbone weights in our layout plus the tokenizer files, to fine-tune or continue pretraining from.
To transformers: a directory that transformers alone loads (`AutoConfig`, `AutoModel*`, `AutoTokenizer`,
`AutoProcessor`), with a `preprocessor_config.json` written from our processor's constants so that its
`LayoutLMv3Processor` prepares pages as ours does.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from layoutlmv3.model import (
    LayoutLMv3ForQuestionAnswering,
    LayoutLMv3ForSequenceClassification,
    LayoutLMv3ForTokenClassification,
    LayoutLMv3Model,
    LayoutLMv3PreTrainedModel,
    weights_io,
)
from layoutlmv3.page_sources import RESAMPLE
from layoutlmv3.processing import IMAGE_MEAN, IMAGE_STD
from layoutlmv3.tokenizer import CONFIG_FILE, MERGES_FILE, VOCAB_FILE, LayoutLMv3Tokenizer

from .publish import PREPROCESSOR_FILE, publish

TOKENIZER_FILES = (VOCAB_FILE, MERGES_FILE, CONFIG_FILE)
# Fine-tuned models keep their head in transformers' layout; any other model directory gives its backbone.
HEAD_CLASSES = {
    cls.hf_architecture: cls
    for cls in (LayoutLMv3ForTokenClassification, LayoutLMv3ForSequenceClassification, LayoutLMv3ForQuestionAnswering)
}


def convert_from_hf(source: str | Path, out: str | Path) -> Path:
    """Backbone weights in our layout, plus the tokenizer files the source ships (vocab.json, merges.txt: without
    them the directory could not be fine-tuned or predicted with, so their absence is an error)."""
    source, out = Path(source), Path(out)
    _require_tokenizer_files(source)
    model = LayoutLMv3Model.from_pretrained(source)

    def write(directory: Path) -> None:
        model.save_pretrained(directory)
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, directory / name)

    return publish(out, write)


def convert_to_hf(source: str | Path, out: str | Path) -> Path:
    """One of our model directories (a converted pretraining checkpoint, a fine-tuning run's best/) in transformers'
    layout: a fine-tuned model keeps its head (transformers' class of the same name loads it), any other gives its
    backbone (`LayoutLMv3Model`)."""
    source, out = Path(source), Path(out)
    _require_tokenizer_files(source)
    saved_by = weights_io.read_config(source).get("architectures") or []
    model_class = next((HEAD_CLASSES[name] for name in saved_by if name in HEAD_CLASSES), LayoutLMv3Model)
    model = model_class.from_pretrained(source)
    tokenizer = LayoutLMv3Tokenizer.from_pretrained(source)
    return publish(out, lambda directory: write_for_transformers(model, tokenizer, directory))


def write_for_transformers(model: LayoutLMv3PreTrainedModel, tokenizer: LayoutLMv3Tokenizer, directory: Path) -> None:
    """config.json + model.safetensors in transformers' layout, the tokenizer's files and the processor's settings."""
    model.save_pretrained(directory, format="hf")
    tokenizer.save_pretrained(directory)
    weights_io.write_json(image_processor_config(model.config.input_size), directory / PREPROCESSOR_FILE)


def image_processor_config(image_size: int) -> dict[str, Any]:
    """transformers' `LayoutLMv3ImageProcessor` settings doing what `layoutlmv3.processing` does: the page squashed
    to image_size x image_size with our resampling, scaled to 0..1 and normalised with our mean and std; no OCR
    (words and boxes come with the page, as in our processor)."""
    return {
        "image_processor_type": "LayoutLMv3ImageProcessor",
        "processor_class": "LayoutLMv3Processor",
        "do_resize": True,
        "size": {"height": image_size, "width": image_size},
        "resample": int(RESAMPLE),
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [IMAGE_MEAN] * 3,
        "image_std": [IMAGE_STD] * 3,
        "apply_ocr": False,
    }


def _require_tokenizer_files(source: Path) -> None:
    if missing := [name for name in (VOCAB_FILE, MERGES_FILE) if not (source / name).is_file()]:
        raise ValueError(f"{source} has no {' or '.join(missing)}: copy the tokenizer files of the model there")
