"""The one page processor: page image + words + pixel boxes (+ labels) -> the model's inputs.

What transformers' `LayoutLMv3Processor(apply_ocr=False)` does, in one place for every path that turns a page into
model inputs (shard writing and collation, fine-tuning, prediction, the image tokenizer, the demo): the page
squashed to a square with one resampling filter (bilinear with antialiasing, as its image processor), pixel values
rescaled by 1/255 and normalised with mean 0.5 / std 0.5, boxes normalised to 0..1000 by `page_layout.normalize_box`
(int(1000 * x / size), as its `normalize_box`), words tokenised into windows by our tokenizer. A test holds it equal
to transformers' processor on FUNSD pages.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from layoutlmv3.page_layout import normalize_box
from layoutlmv3.tokenizer import Encoding, LayoutLMv3Tokenizer

logger = logging.getLogger(__name__)

RESAMPLE = Image.Resampling.BILINEAR  # LayoutLMv3ImageProcessor's; Pillow antialiases when shrinking
IMAGE_MEAN, IMAGE_STD = 0.5, 0.5  # IMAGENET_STANDARD_MEAN / STD, per channel


def resize_page(image: Image.Image, size: int) -> Image.Image:
    """The page squashed to size x size (its mode kept), as every stored or fed page image is made."""
    return image if image.size == (size, size) else image.resize((size, size), RESAMPLE)


def normalize_pixels(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float32 [..., 3, H, W] in [-1, 1]: rescaled by 1/255, then (x - mean) / std."""
    values = torch.from_numpy(np.asarray(pixels, dtype=np.float32))  # a fresh float copy of the uint8 pixels
    return ((values / 255.0 - IMAGE_MEAN) / IMAGE_STD).movedim(-1, -3).contiguous()


def page_pixels(image: Image.Image, size: int = 224) -> torch.Tensor:
    """[3, size, size] pixel values of any PIL page (converted to RGB first)."""
    return normalize_pixels(np.asarray(resize_page(image.convert("RGB"), size), dtype=np.uint8))


@dataclass
class PageInputs:
    """One page's windows as the model takes them (each [W, T] or [W, T, 4]) and the page image [3, S, S]."""

    input_ids: torch.Tensor
    bbox: torch.Tensor
    attention_mask: torch.Tensor
    word_ids: torch.Tensor  # page word index per token, -1 for specials and padding
    labels: torch.Tensor | None  # word label on a word's first sub-token, IGNORE_INDEX elsewhere
    pixel_values: torch.Tensor

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """The four tensors the model's forward takes, the image repeated for every window."""
        windows = len(self.input_ids)
        return {
            "input_ids": self.input_ids,
            "bbox": self.bbox,
            "attention_mask": self.attention_mask,
            "pixel_values": self.pixel_values.expand(windows, -1, -1, -1),
        }


NO_WORD = -1


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

    def normalize_boxes(self, boxes: Sequence[Sequence[float]], width: int, height: int) -> list[list[int]]:
        """Pixel boxes -> 0..1000 (a box that cannot belong to the page raises page_layout.BadBox)."""
        return [normalize_box(box, width, height) for box in boxes]

    def encode(
        self, words: Sequence[str], boxes: Sequence[Sequence[int]], labels: Sequence[int] | None = None
    ) -> list[Encoding]:
        """Windows of already normalised (0..1000) boxes, padded to max_length (fixed shapes stack into batches)."""
        return self.tokenizer.encode_windows(
            words, boxes, labels, max_length=self.max_length, stride=self.stride, pad_to=self.max_length
        )

    def encode_question(
        self, question: str, words: Sequence[str], boxes: Sequence[Sequence[int]], max_question_tokens: int = 64
    ) -> list[Encoding]:
        """Windows of ``<s> question </s></s> page words </s>`` (RoBERTa's pair layout, as transformers' LayoutLMv3
        processor builds it for question answering), padded to max_length: the question in every window with the
        special box, the page's words split into windows sharing `stride` tokens. Word ids are those of the page's
        words (None on the question and the specials), so answer spans map back to words."""
        return self.encode_questions([question], words, boxes, max_question_tokens)[0]

    def encode_questions(
        self,
        questions: Sequence[str],
        words: Sequence[str],
        boxes: Sequence[Sequence[int]],
        max_question_tokens: int = 64,
    ) -> list[list[Encoding]]:
        """`encode_question` for several questions about one page, its words tokenised once (a page is asked
        about many times: DocVQA's pages, every field of a form)."""
        if any(not question.split() for question in questions):
            raise ValueError("the question is empty")
        room = self.max_length - 4 - self.stride - 1  # the question may take what the page's windows can spare
        if room < 1:
            raise ValueError(f"max_length {self.max_length} with stride {self.stride} leaves no room for a question")
        page = self.tokenizer.tokenize_words(words, boxes) if words else ([], [], [])
        return [self._question_windows(question, page, room, max_question_tokens) for question in questions]

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

    def __call__(
        self,
        image: Image.Image,
        words: Sequence[str],
        boxes: Sequence[Sequence[float]],
        labels: Sequence[int] | None = None,
        boxes_normalized: bool = False,
    ) -> PageInputs:
        """A page's model inputs; `boxes` in pixels of `image` unless `boxes_normalized` (0..1000 already)."""
        if not boxes_normalized:
            boxes = self.normalize_boxes(boxes, *image.size)
        windows = self.encode(words, boxes, labels)
        return PageInputs(
            input_ids=torch.tensor([w.input_ids for w in windows]),
            bbox=torch.tensor([w.bbox for w in windows]),
            attention_mask=torch.tensor([w.attention_mask for w in windows]),
            word_ids=torch.tensor([[NO_WORD if i is None else i for i in w.word_ids] for w in windows]),
            labels=None if labels is None else torch.tensor([w.labels for w in windows]),
            pixel_values=page_pixels(image, self.image_size),
        )
