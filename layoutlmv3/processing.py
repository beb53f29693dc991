"""The one page processor: page image + words + pixel boxes (+ labels) -> the model's inputs.

What transformers' `LayoutLMv3Processor(apply_ocr=False)` does: the page squashed to a square with one resampling
filter (bilinear with antialiasing, as its image processor), pixel values rescaled by 1/255 and normalised with
mean 0.5 / std 0.5, boxes normalised to 0..1000 by `page_layout.normalize_box` (int(1000 * x / size), as its
`normalize_box`), words tokenised into padded windows by our tokenizer. A test holds it equal to transformers'
processor on FUNSD pages.

Its one call (`LayoutLMv3Processor.__call__`) is how every fine-tuning dataset and every predictor makes a page's
inputs, with the labels of its task: word labels on sub-tokens (entities), the page's class (classification), or
questions with their answers' first and last tokens (question answering). Pretraining stores pages uncut and
windows them at load time, so shard writing and collation use its parts instead: the one resize
(`page_sources.resize_page`, torch-free for data prep), `normalize_box` and the pixel normalisation. A fine-tuned model carries the windows it was tuned on (`PROCESSING_FILE`), and
`processing_settings` gives them to its predictor.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from layoutlmv3.atomic_files import write_text
from layoutlmv3.constants import IGNORE_INDEX, NO_WORD
from layoutlmv3.json_files import read_json_file
from layoutlmv3.model import LayoutLMv3Config
from layoutlmv3.page_layout import BOX_LEVELS, normalize_box
from layoutlmv3.page_sources import resize_page
from layoutlmv3.tokenizer import Encoding, LayoutLMv3Tokenizer

logger = logging.getLogger(__name__)

IMAGE_MEAN, IMAGE_STD = 0.5, 0.5  # IMAGENET_STANDARD_MEAN / STD, per channel
MAX_QUESTION_TOKENS = 64  # a longer question is cut to this many tokens (once said)
PROCESSING_FILE = "processing.json"  # beside a fine-tuned model: how its pages were made inputs
DEFAULT_PROCESSING = {"max_length": 512, "stride": 128, "boxes": "segment"}  # for a model without the file
WINDOWS_PER_FORWARD = 8  # a predictor runs a page's windows this many at a time: memory bounded however long the page


def normalize_pixels(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float32 [..., 3, H, W] in [-1, 1]: rescaled by 1/255, then (x - mean) / std."""
    values = torch.from_numpy(np.asarray(pixels, dtype=np.float32))  # a fresh float copy of the uint8 pixels
    return ((values / 255.0 - IMAGE_MEAN) / IMAGE_STD).movedim(-1, -3).contiguous()


def page_pixels(image: Image.Image, size: int = 224) -> torch.Tensor:
    """[3, size, size] pixel values of any PIL page (converted to RGB first)."""
    return normalize_pixels(np.asarray(resize_page(image.convert("RGB"), size), dtype=np.uint8))


@dataclass
class PageInputs:
    """One page's windows as the model takes them ([W, T] or [W, T, 4]), the page image [3, S, S] (None for a
    text-only model) and the task's labels: `labels` [W, T] (word labels on tokens) or [W] (the page's class);
    for questions, which question each window asks and where its answer starts and ends ([W] each)."""

    input_ids: torch.Tensor
    bbox: torch.Tensor
    attention_mask: torch.Tensor
    word_ids: torch.Tensor  # page word index per token, NO_WORD for specials, questions and padding
    pixel_values: torch.Tensor | None
    labels: torch.Tensor | None = None
    question: torch.Tensor | None = None  # index into the call's questions
    start_positions: torch.Tensor | None = None  # the answer's first token, 0 (<s>) where it is not whole
    end_positions: torch.Tensor | None = None

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """The tensors the model's forward takes, the image repeated for every window."""
        inputs = {"input_ids": self.input_ids, "bbox": self.bbox, "attention_mask": self.attention_mask}
        if self.pixel_values is not None:
            inputs["pixel_values"] = self.pixel_values.expand(len(self.input_ids), -1, -1, -1)
        return inputs

    def model_batches(self, windows: int = WINDOWS_PER_FORWARD) -> Iterator[dict[str, torch.Tensor]]:
        """`model_inputs` a few windows at a time, for a forward whose memory does not grow with the page (a words
        file of 10^5 words is a thousand windows)."""
        inputs = self.model_inputs()
        for start in range(0, len(self.input_ids), windows):
            yield {name: value[start : start + windows] for name, value in inputs.items()}

    def window(self, index: int) -> dict[str, torch.Tensor]:
        """Window `index` as a dataset item: its row of every tensor there is, and the page image."""
        tensors = {field.name: getattr(self, field.name) for field in fields(self)}
        return {
            name: value if name == "pixel_values" else value[index]
            for name, value in tensors.items()
            if value is not None
        }


class LayoutLMv3Processor:
    """Tokenizer + image geometry: `processor(image, words, pixel_boxes, labels)` -> PageInputs."""

    def __init__(
        self, tokenizer: LayoutLMv3Tokenizer, image_size: int = 224, max_length: int = 512, stride: int = 128
    ) -> None:
        if not 0 <= stride < max_length - 2:  # as the tokenizer's windows (questions check their own room)
            raise ValueError(f"need 0 <= stride < max_length - 2 (stride: tokens shared by consecutive windows), got "
                             f"stride={stride}, max_length={max_length}")  # fmt: skip
        self.tokenizer, self.image_size, self.max_length, self.stride = tokenizer, image_size, max_length, stride
        self._said_cut = False

    def __call__(
        self,
        image: Image.Image | None,
        words: Sequence[str],
        boxes: Sequence[Sequence[float]],
        labels: Sequence[int] | None = None,
        *,
        boxes_normalized: bool = False,
        continuation: Sequence[int] | None = None,
        page_label: int | None = None,
        questions: Sequence[str] | None = None,
        answer_spans: Sequence[tuple[int, int] | None] | None = None,
    ) -> PageInputs:
        """A page's model inputs, padded windows of `max_length` tokens sharing `stride`; `boxes` in pixels of
        `image` unless `boxes_normalized` (0..1000 already; needed without an image, for a text-only model).

        Entities: `labels` (one per word) sit on each word's first sub-token, IGNORE_INDEX elsewhere, or with
        `continuation` on every sub-token (`continuation[label]` on the later ones: B-X -> I-X). Classification:
        `page_label` is every window's label (a classifier reads the first window). Question answering: every
        window of every question of `questions` (`encode_questions`), `question` naming it; with `answer_spans`
        (the answer's first and last word per question, or None) the windows holding the whole answer point at
        its first and last token, the others at <s>."""
        if not boxes_normalized:
            if image is None:
                raise ValueError("pixel boxes need the page image to be normalised")
            boxes = [normalize_box(box, *image.size) for box in boxes]
        pixel_values = None if image is None else page_pixels(image, self.image_size)
        if questions is not None:
            if not questions:
                raise ValueError("no questions: a page is asked at least one")
            if labels is not None or page_label is not None:
                raise ValueError("questions are labelled by their answer spans, not by word or page labels")
            return self._question_inputs(questions, words, boxes, answer_spans, pixel_values)
        windows = self.tokenizer.encode_windows(
            words, boxes, labels, max_length=self.max_length, stride=self.stride, pad_to=self.max_length
        )
        inputs = _stack(windows, pixel_values)
        if labels is not None:
            if page_label is not None:
                raise ValueError("a page has word labels or a page label, not both")
            inputs.labels = torch.tensor([_token_labels(w, labels, continuation) for w in windows])
        elif page_label is not None:
            inputs.labels = torch.full((len(windows),), page_label)
        return inputs

    def encode_questions(
        self,
        questions: Sequence[str],
        words: Sequence[str],
        boxes: Sequence[Sequence[int]],
        max_question_tokens: int = MAX_QUESTION_TOKENS,
    ) -> list[list[Encoding]]:
        """Per question, the windows of ``<s> question </s></s> page words </s>`` (RoBERTa's pair layout, as
        transformers' LayoutLMv3 processor builds it for question answering), padded to max_length: the question
        in every window with the special box, the page's words split into windows sharing `stride` tokens and
        tokenised once for all questions (a page is asked about many times). Word ids are those of the page's
        words (None on the question and the specials), so answer spans map back to words."""
        if any(not question.split() for question in questions):
            raise ValueError("the question is empty")
        room = self.max_length - 4 - self.stride - 1  # the question may take what the page's windows can spare
        if room < 1:
            raise ValueError(f"max_length {self.max_length} with stride {self.stride} leaves no room for a question")
        page = self.tokenizer.tokenize_words(words, boxes) if words else ([], [], [])
        return [self._question_windows(question, page, room, max_question_tokens) for question in questions]

    def _question_inputs(
        self,
        questions: Sequence[str],
        words: Sequence[str],
        boxes: Sequence[Sequence[int]],
        answer_spans: Sequence[tuple[int, int] | None] | None,
        pixel_values: torch.Tensor | None,
    ) -> PageInputs:
        if answer_spans is not None and len(answer_spans) != len(questions):
            raise ValueError(f"{len(answer_spans)} answer spans for {len(questions)} questions")
        encoded = self.encode_questions(questions, words, boxes)
        windows = [window for question in encoded for window in question]
        inputs = _stack(windows, pixel_values)
        inputs.question = torch.tensor([number for number, question in enumerate(encoded) for _ in question])
        if answer_spans is not None:
            positions = [
                _answer_positions(window, answer_spans[number])
                for number, question in enumerate(encoded)
                for window in question
            ]
            inputs.start_positions = torch.tensor([start for start, _ in positions])
            inputs.end_positions = torch.tensor([end for _, end in positions])
        return inputs

    def _question_windows(
        self,
        question: str,
        page: tuple[list[int], list[list[int]], list[int]],
        room: int,
        max_question_tokens: int,
    ) -> list[Encoding]:
        question_ids = self.tokenizer.tokenize_words(question.split(), [[0, 0, 0, 0]] * len(question.split()))[0]
        if len(question_ids) > min(max_question_tokens, room) and not self._said_cut:
            self._said_cut = True  # once per processor (a split, a prediction run): the rest are cut alike
            logger.warning("a question longer than %d tokens is cut to them: %r", min(max_question_tokens, room),
                           question[:120])  # fmt: skip
        question_ids = question_ids[: min(max_question_tokens, room)]
        ids, token_boxes, word_ids = page
        content = self.max_length - len(question_ids) - 4
        tokenizer, special = self.tokenizer, [0, 0, 0, 0]
        windows = []
        for start in range(0, max(len(ids) - self.stride, 1), content - self.stride):
            part = slice(start, start + content)
            head = [tokenizer.cls_token_id, *question_ids, tokenizer.sep_token_id, tokenizer.sep_token_id]
            input_ids = [*head, *ids[part], tokenizer.sep_token_id]
            bbox = [*([special] * len(head)), *token_boxes[part], special]
            window_words = [*([None] * len(head)), *word_ids[part], None]
            extra = self.max_length - len(input_ids)
            windows.append(
                Encoding(
                    input_ids=input_ids + [tokenizer.pad_token_id] * extra,
                    bbox=bbox + [special] * extra,
                    attention_mask=[1] * len(input_ids) + [0] * extra,
                    word_ids=window_words + [None] * extra,
                    labels=None,
                )
            )
        return windows


def _stack(windows: Sequence[Encoding], pixel_values: torch.Tensor | None) -> PageInputs:
    return PageInputs(
        input_ids=torch.tensor([w.input_ids for w in windows]),
        bbox=torch.tensor([w.bbox for w in windows]),
        attention_mask=torch.tensor([w.attention_mask for w in windows]),
        word_ids=torch.tensor([[NO_WORD if i is None else i for i in w.word_ids] for w in windows]),
        pixel_values=pixel_values,
    )


def _token_labels(window: Encoding, labels: Sequence[int], continuation: Sequence[int] | None) -> list[int]:
    """The window's token labels; with `continuation`, a word's later sub-tokens get its continuation label."""
    if continuation is None:
        return window.labels
    return [
        continuation[labels[word]] if label == IGNORE_INDEX and word is not None else label
        for label, word in zip(window.labels, window.word_ids, strict=True)
    ]


def _answer_positions(window: Encoding, span: tuple[int, int] | None) -> tuple[int, int]:
    """The first token of the answer's first word and the last of its last word, or (0, 0) (<s>: no answer
    here) when the window does not hold the whole answer or there is none."""
    if span is None:
        return 0, 0
    first, last = span
    starts = [i for i, word in enumerate(window.word_ids) if word == first]
    ends = [i for i, word in enumerate(window.word_ids) if word == last]
    return (starts[0], ends[-1]) if starts and ends else (0, 0)


def write_processing_settings(model_dir: str | Path, settings: dict[str, Any]) -> None:
    """The windows (and box level) a model was fine-tuned with, beside it (PROCESSING_FILE), where
    `processing_settings` finds them; written whole (a reader never sees half a file)."""
    write_text(Path(model_dir) / PROCESSING_FILE, json.dumps(settings, sort_keys=True) + "\n")


def processing_settings(
    model_dir: str | Path,
    max_length: int | None = None,
    stride: int | None = None,
    boxes: str | None = None,
    model_config: LayoutLMv3Config | None = None,
) -> dict[str, Any]:
    """The window length, stride and box level to read pages at for the model in `model_dir`: those given, else
    those it was fine-tuned with (its PROCESSING_FILE), else DEFAULT_PROCESSING, so a predictor prepares pages as
    training did unless told otherwise. A box level there is none of, or (with `model_config`) a window longer than
    the model's text positions, is an error naming where it came from, before a page is padded to it."""
    path = Path(model_dir) / PROCESSING_FILE
    saved = read_json_file(path) if path.exists() else {}  # a broken file is named, never silently ignored
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: expected a JSON object (window length, stride, box level)")
    for name, value in saved.items():  # a model from elsewhere: a wrong kind is named here, not a traceback later
        default = DEFAULT_PROCESSING.get(name)
        if default is not None and (type(value) is not type(default)):
            raise ValueError(f"{path}: {name} must be {type(default).__name__}, got {value!r}")
    given = {"max_length": max_length, "stride": stride, "boxes": boxes}
    settings = {
        name: saved.get(name, value) if given[name] is None else given[name]
        for name, value in DEFAULT_PROCESSING.items()
    }
    source = {name: f"{path}: {name}" if given[name] is None else name for name in given}
    if settings["boxes"] not in BOX_LEVELS:
        raise ValueError(f"{source['boxes']} must be one of {BOX_LEVELS}, got {settings['boxes']!r}")
    if model_config is not None:  # RoBERTa's positions start after the pad id
        longest = model_config.max_position_embeddings - model_config.pad_token_id - 1
        if settings["max_length"] > longest:
            raise ValueError(f"{source['max_length']} {settings['max_length']} is beyond the model's {longest} text "
                             f"positions (max_position_embeddings {model_config.max_position_embeddings})")  # fmt: skip
    return settings
