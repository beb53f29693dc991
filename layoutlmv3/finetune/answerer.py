"""A fine-tuned question-answering model (launch/finetune.py with task: questions) on new pages: image + OCR words
+ questions -> each question's answer, a span of the page's words. The page and the questions are windowed by the
page processor as in training (the window length, stride and box level of the model's processing.json unless told
otherwise), and the best span over all of a question's windows is its answer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from layoutlmv3.model import LayoutLMv3ForQuestionAnswering
from layoutlmv3.page_layout import Word, model_words, to_sample_mode
from layoutlmv3.processing import LayoutLMv3Processor, processing_settings
from layoutlmv3.tokenizer import LayoutLMv3Tokenizer

from .dataset import model_inputs
from .qa import Question, best_answers


class Answerer:
    """A fine-tuned question-answering model with its tokenizer, ready for pages and questions."""

    def __init__(
        self,
        model_dir: str | Path,
        max_length: int | None = None,
        stride: int | None = None,
        boxes: str | None = None,
        device: str = "cpu",
    ) -> None:
        self.model = LayoutLMv3ForQuestionAnswering.from_pretrained(model_dir, trained_head=True).to(device).eval()
        settings = processing_settings(model_dir, max_length, stride, boxes, self.model.config)
        tokenizer = LayoutLMv3Tokenizer.from_pretrained(model_dir)
        image_size = self.model.config.input_size
        self.processor = LayoutLMv3Processor(tokenizer, image_size, settings["max_length"], settings["stride"])
        self.boxes, self.device = settings["boxes"], torch.device(device)

    @torch.no_grad()
    def answer(self, image: Image.Image, words: Sequence[Word], questions: Sequence[str]) -> list[str]:
        """The answer to each question about the page ("" when the page has no words)."""
        image = to_sample_mode(image)
        texts, boxes = model_words(words, *image.size, self.boxes)
        inputs = self.processor(image, texts, boxes, boxes_normalized=True, questions=questions)
        parameter = next(self.model.parameters())
        text = inputs.input_ids.shape[1]  # the head scores visual positions too; answers are text
        logits = []
        for part in inputs.model_batches():
            output = self.model(**model_inputs(part, self.model.config, self.device, parameter.dtype))
            logits += zip(output.start_logits[:, :text].float().cpu(), output.end_logits[:, :text].float().cpu())
        windows = [inputs.window(row) for row in range(len(inputs.input_ids))]
        asked = [Question(str(n), question, Path(), texts, boxes, [], None) for n, question in enumerate(questions)]
        return best_answers(asked, windows, logits)
