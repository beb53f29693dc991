"""A fine-tuned document classifier (launch/finetune.py with task: classes) on new pages: image + OCR words -> the
class and every class's probability. The page is read by the page processor as in training: its first window, at
the window length and box level the model was fine-tuned with (its processing.json) unless told otherwise."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from layoutlmv3.model import LayoutLMv3ForSequenceClassification
from layoutlmv3.page_layout import Word, model_words, to_sample_mode
from layoutlmv3.processing import LayoutLMv3Processor, processing_settings
from layoutlmv3.tokenizer import LayoutLMv3Tokenizer

from .dataset import model_inputs


class Classifier:
    """A fine-tuned document classifier with its tokenizer and class names."""

    def __init__(
        self, model_dir: str | Path, max_length: int | None = None, boxes: str | None = None, device: str = "cpu"
    ) -> None:
        self.model = LayoutLMv3ForSequenceClassification.from_pretrained(model_dir, trained_head=True)
        self.model = self.model.to(device).eval()
        config = self.model.config
        if len(config.id2label) != config.num_labels:
            raise ValueError(f"{model_dir} names no classes (id2label): not a fine-tuned document classifier")
        self.classes = [config.id2label[index] for index in range(config.num_labels)]
        settings = processing_settings(model_dir, max_length, 0, boxes, config)  # stride 0: the first window decides
        tokenizer = LayoutLMv3Tokenizer.from_pretrained(model_dir)
        self.processor = LayoutLMv3Processor(tokenizer, config.input_size, settings["max_length"], 0)
        self.boxes, self.device = settings["boxes"], torch.device(device)

    @torch.no_grad()
    def classify(self, image: Image.Image, words: Sequence[Word]) -> dict:
        """{"class": the likeliest, "probabilities": {class: probability}, likeliest first} of one page."""
        image = to_sample_mode(image)
        texts, boxes = model_words(words, *image.size, self.boxes)
        inputs = self.processor(image, texts, boxes, boxes_normalized=True).model_inputs()
        first = {name: value[:1] for name, value in inputs.items()}  # the first window decides
        parameter = next(self.model.parameters())
        logits = self.model(**model_inputs(first, self.model.config, self.device, parameter.dtype)).logits
        probabilities = logits.float().softmax(-1)[0].cpu()
        ranked = sorted(zip(self.classes, probabilities.tolist(), strict=True), key=lambda pair: -pair[1])
        return {"class": ranked[0][0], "probabilities": {name: round(value, 4) for name, value in ranked}}
