"""The one page processor equals transformers' LayoutLMv3Processor(apply_ocr=False): the same pixel values, the
same 0..1000 boxes (our normalize_box against its normalize_box) and the same tokens, on FUNSD pages and on
synthetic ones; and every path that makes page images uses its one resampling filter."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image
from transformers.models.layoutlmv3 import image_processing_pil_layoutlmv3 as hf_images

from data_prep.samples import encode_png
from data_prep.synth import generate_page
from layoutlmv3.page_layout import normalize_box
from layoutlmv3.processing import LayoutLMv3Processor, page_pixels, resize_page
from layoutlmv3.tokenizer import LayoutLMv3Tokenizer


def _hf_processor(vocab_dir: Path) -> transformers.LayoutLMv3Processor:
    images = hf_images.LayoutLMv3ImageProcessorPil(apply_ocr=False)
    return transformers.LayoutLMv3Processor(images, transformers.LayoutLMv3Tokenizer.from_pretrained(vocab_dir))


def _compare(ours: LayoutLMv3Processor, hf, image: Image.Image, words: list[str], boxes: list) -> None:
    width, height = image.size
    assert [normalize_box(box, width, height) for box in boxes] == [
        hf_images.normalize_box(b, width, height) for b in boxes
    ]
    mine = ours(image, words, boxes)
    theirs = hf(
        image.convert("RGB"),
        words,
        boxes=[hf_images.normalize_box(box, width, height) for box in boxes],
        truncation=True,
        max_length=512,
        padding="max_length",
        return_tensors="pt",
    )
    assert torch.allclose(mine.pixel_values, theirs["pixel_values"][0], atol=1e-6)
    assert torch.equal(mine.input_ids[0], theirs["input_ids"][0])
    assert torch.equal(mine.bbox[0], theirs["bbox"][0])
    assert torch.equal(mine.attention_mask[0], theirs["attention_mask"][0])


def test_equal_to_transformers_on_funsd_pages(funsd_dir: Path, roberta_vocab_dir: Path) -> None:
    ours = LayoutLMv3Processor(LayoutLMv3Tokenizer.from_pretrained(roberta_vocab_dir))
    hf = _hf_processor(roberta_vocab_dir)
    annotations = sorted((funsd_dir / "training_data" / "annotations").glob("*.json"))[:6]
    for path in annotations:
        form = json.loads(path.read_text(encoding="utf-8"))["form"]
        words = [(w["text"], w["box"]) for entity in form for w in entity["words"] if w["text"].strip()]
        with Image.open(funsd_dir / "training_data" / "images" / f"{path.stem}.png") as image:
            _compare(ours, hf, image, [text for text, _ in words], [box for _, box in words])


def test_equal_to_transformers_on_synthetic_pages(roberta_vocab_dir: Path) -> None:
    ours = LayoutLMv3Processor(LayoutLMv3Tokenizer.from_pretrained(roberta_vocab_dir))
    hf = _hf_processor(roberta_vocab_dir)
    for index in range(2):
        page = generate_page(5, index)
        words = [word for entity in page.entities for word in entity.words]
        _compare(ours, hf, page.image, [word.text for word in words], [list(word.box) for word in words])


def test_every_stored_page_image_is_the_processors_resize() -> None:
    """Shard images (pretraining) and fine-tuning / prediction pixels come from the same squashed page."""
    image = generate_page(5, 0).image.convert("RGB")
    with Image.open(io.BytesIO(encode_png(image, 224))) as stored:
        stored_pixels = np.array(stored.convert("RGB"), dtype=np.uint8)
    assert np.array_equal(stored_pixels, np.asarray(resize_page(image, 224)))
    fed = page_pixels(image)
    assert torch.allclose(fed, torch.from_numpy(stored_pixels).permute(2, 0, 1).float() / 127.5 - 1, atol=1e-6)
