"""A fine-tuned model on new pages: image (+ OCR words) -> labelled words and grouped entities, and a picture.

The caller brings the words: `launch/predict.py` runs Tesseract (data_prep.ocr) unless they are given as JSON:
``{"words": [{"text": "Date:", "box": [x0, y0, x1, y1], "line": 3}, ...]}`` with pixel boxes (``line`` optional).
The layout position of a word is its line's box by default (`boxes="segment"`: the union of the words of one OCR
line, `page_layout.line_layout`), the
nearest thing raw OCR has to the annotated segments the model was fine-tuned on; `boxes="word"` uses word boxes.
Entities are maximal BIO spans (seqeval's grouping); an entity's confidence is the mean of its words'.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from seqeval.metrics.sequence_labeling import get_entities

from layoutlmv3.model import LayoutLMv3ForTokenClassification
from layoutlmv3.page_layout import Word, model_words, to_sample_mode
from layoutlmv3.processing import LayoutLMv3Processor, processing_settings
from layoutlmv3.tokenizer import LayoutLMv3Tokenizer

from .dataset import model_inputs
from .evaluate import merge_windows

COLORS = {"HEADER": (31, 119, 180), "QUESTION": (44, 160, 44), "ANSWER": (255, 127, 14)}
OTHER_COLOR = (148, 103, 189)


@dataclass
class LabelledWord:
    text: str
    box: list[int]  # pixels of the page
    label: str
    confidence: float


@dataclass
class Entity:
    label: str  # entity type, e.g. QUESTION
    text: str
    box: list[int]  # union of its words' pixel boxes
    confidence: float
    words: list[int]  # indices into the page's words


@dataclass
class PagePrediction:
    image: str
    page: int
    width: int
    height: int
    words: list[LabelledWord]
    entities: list[Entity]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"


class Predictor:
    """A model directory (from launch/finetune.py) with its tokenizer and label names, ready for pages: read at the
    window length, stride and box level it was fine-tuned with (its processing.json) unless told otherwise."""

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "cpu",
        max_length: int | None = None,
        stride: int | None = None,
        boxes: str | None = None,
    ) -> None:
        self.model = LayoutLMv3ForTokenClassification.from_pretrained(model_dir, trained_head=True).to(device).eval()
        settings = processing_settings(model_dir, max_length, stride, boxes, self.model.config)
        if len(self.model.config.id2label) != self.model.config.num_labels:
            raise ValueError(f"{model_dir} names no labels (id2label): not a fine-tuned token classifier")
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        tokenizer = LayoutLMv3Tokenizer.from_pretrained(model_dir)
        image_size = self.model.config.input_size
        self.processor = LayoutLMv3Processor(tokenizer, image_size, settings["max_length"], settings["stride"])
        self.device, self.boxes = torch.device(device), settings["boxes"]

    @torch.no_grad()
    def predict(self, image: Image.Image, words: Sequence[Word], name: str = "", page: int = 0) -> PagePrediction:
        """Labelled words and entities of one page from its OCR words (pixel boxes; a bad box raises BadBox)."""
        image = to_sample_mode(image)
        words = [word for word in words if word.text.strip()]
        width, height = image.size
        texts, boxes = model_words(words, width, height, self.boxes)
        labels, confidences = self._classify(image, texts, boxes)
        pixels = [_ordered(word.box) for word in words]
        labelled = [
            LabelledWord(text, box, self.labels[label], round(confidence, 4))
            for text, box, label, confidence in zip(texts, pixels, labels, confidences, strict=True)
        ]
        entities = [
            Entity(
                label=kind,
                text=" ".join(texts[start : end + 1]),
                box=_union(pixels[start : end + 1]),
                confidence=round(sum(confidences[start : end + 1]) / (end + 1 - start), 4),
                words=list(range(start, end + 1)),
            )
            for kind, start, end in get_entities([self.labels[label] for label in labels])
        ]
        return PagePrediction(name, page, width, height, labelled, entities)

    def _classify(self, image: Image.Image, words: list[str], boxes: list[list[int]]) -> tuple[list[int], list[float]]:
        if not words:
            return [], []
        inputs = self.processor(image, words, boxes, boxes_normalized=True)
        parameter = next(self.model.parameters())
        probabilities = torch.cat(
            [
                self.model(**model_inputs(part, self.model.config, self.device, parameter.dtype)).logits.float().cpu()
                for part in inputs.model_batches()
            ]
        ).softmax(-1)
        merged = merge_windows(
            len(words), ((i, word_ids, probabilities[i]) for i, word_ids in enumerate(inputs.word_ids))
        )
        return merged.labels, merged.confidences


def draw(image: Image.Image, prediction: PagePrediction) -> Image.Image:
    """The page in RGB with each entity (a run of words of one class) as one translucent box in its class's colour,
    and a legend of the classes: the grouping the model found, readable at a glance."""
    canvas = image.convert("RGBA")
    overlay = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    pen = ImageDraw.Draw(overlay)
    for entity in prediction.entities:
        color = COLORS.get(entity.label, OTHER_COLOR)
        pen.rectangle(entity.box, fill=(*color, 60), outline=(*color, 255), width=2)
    _legend(pen, canvas.size, sorted({entity.label for entity in prediction.entities} | set(COLORS)))
    return Image.alpha_composite(canvas, overlay).convert("RGB")


def _legend(pen: ImageDraw.ImageDraw, size: tuple[int, int], labels: list[str]) -> None:
    """Colour swatches and class names in the top-right corner, on white."""
    row, swatch, margin = 14, 10, 6
    width = margin * 3 + swatch + 7 * max(len(label) for label in labels)
    left, top = size[0] - width - margin, margin
    pen.rectangle([left, top, left + width, top + row * len(labels) + margin], fill=(255, 255, 255, 230))
    for index, label in enumerate(labels):
        y = top + margin // 2 + index * row
        pen.rectangle(
            [left + margin, y + 2, left + margin + swatch, y + 2 + swatch], fill=(*COLORS.get(label, OTHER_COLOR), 255)
        )
        pen.text((left + 2 * margin + swatch, y), label.lower(), fill=(0, 0, 0, 255))


def _union(boxes: list[list[int]]) -> list[int]:
    return [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]


def _ordered(box: Sequence[object]) -> list[int]:
    """A pixel box as [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1 (as `normalize_box` reads a reversed one)."""
    x0, y0, x1, y1 = (round(float(value)) for value in box)  # type: ignore[arg-type]
    return [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]
