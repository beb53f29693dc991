"""Decoded pages -> a padded batch of model inputs (shaping only; pretraining masks are added on top later).

Pages are stored uncut, so the crop happens here: a page longer than `max_length - 2` content tokens is cut to
one window, at a random start drawn from an RNG seeded by (seed, epoch, page key) -- the same page gets the
same window in a given epoch whatever the worker layout, batch composition or resume point, and another
window the next epoch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from layoutlmv3.constants import NO_WORD
from layoutlmv3.data.decode import PageSample
from layoutlmv3.processing import IMAGE_MEAN, IMAGE_STD  # the page processor's normalisation
from layoutlmv3.tokenizer import CLS_ID, PAD_ID, SEP_ID  # fixed by the tokenizer, which checks them on load

PadTo = Literal["max_length", "longest"] | int
Crop = Literal["random", "start"]
BoxLevel = Literal["word", "segment"]


class Collator:
    """Crop, add <s>/</s>, pad and stack pages into tensors the model takes.

    pad_to: "max_length" (fixed shapes: no recompilation), "longest" (least padding), or an int N (the
    longest length rounded up to a multiple of N, at most max_length: few distinct shapes, little padding).
    crop: "random" window start for long pages (training) or "start" (evaluation: the first tokens).
    boxes: "word" keeps each token's word box; "segment" gives it its line's box, the paper's layout positions.
    """

    def __init__(
        self,
        max_length: int = 512,
        pad_to: PadTo = "max_length",
        crop: Crop = "random",
        boxes: BoxLevel = "word",
        seed: int = 0,
    ) -> None:
        if max_length < 3:
            raise ValueError(f"max_length must leave room for <s>, </s> and a token, got {max_length}")
        if not (pad_to in ("max_length", "longest") or (isinstance(pad_to, int) and pad_to > 0)):
            raise ValueError(f"pad_to must be 'max_length', 'longest' or a positive int, got {pad_to!r}")
        if crop not in ("random", "start"):
            raise ValueError(f"crop must be 'random' or 'start', got {crop!r}")
        if boxes not in ("word", "segment"):
            raise ValueError(f"boxes must be 'word' or 'segment', got {boxes!r}")
        self.max_length, self.pad_to, self.crop, self.boxes, self.seed = max_length, pad_to, crop, boxes, seed

    def __call__(self, samples: Sequence[PageSample], epoch: int = 0) -> dict:
        """Batch dict: input_ids, bbox, attention_mask, word_ids [B, T] (int64), pixel_values [B, 3, 224, 224]
        (normalised to [-1, 1]), tokenizer_pixel_values [B, 3, 112, 112] (in [0, 1]), keys (list of str)."""
        windows = [self.window(sample, epoch) for sample in samples]
        length = self._padded_length(max(len(ids) for ids, _, _ in windows) + 2)
        input_ids = np.full((len(samples), length), PAD_ID, dtype=np.int64)
        bbox = np.zeros((len(samples), length, 4), dtype=np.int64)
        word_ids = np.full((len(samples), length), NO_WORD, dtype=np.int64)
        for row, (ids, boxes, words) in enumerate(windows):
            end = len(ids) + 1
            input_ids[row, 0], input_ids[row, 1:end], input_ids[row, end] = CLS_ID, ids, SEP_ID
            bbox[row, 1:end] = boxes
            word_ids[row, 1:end] = words
        attention_mask = (np.arange(length) < np.array([[len(ids) + 2] for ids, _, _ in windows])).astype(np.int64)
        return {
            "input_ids": torch.from_numpy(input_ids),
            "bbox": torch.from_numpy(bbox),
            "attention_mask": torch.from_numpy(attention_mask),
            "word_ids": torch.from_numpy(word_ids),
            "pixel_values": _pixels([s.image for s in samples], 1 / (255 * IMAGE_STD), -IMAGE_MEAN / IMAGE_STD),
            "tokenizer_pixel_values": _pixels([s.tokenizer_image for s in samples], 1 / 255, 0.0),
            "keys": [sample.key for sample in samples],
        }

    def window(self, sample: PageSample, epoch: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The page's (input_ids, boxes, word_ids) cut to at most max_length - 2 content tokens."""
        content = self.max_length - 2
        start = 0
        if len(sample.input_ids) > content and self.crop == "random":
            start = int(self.sample_rng(sample.key, epoch).integers(0, len(sample.input_ids) - content + 1))
        stop = start + content
        return sample.input_ids[start:stop], self._boxes(sample, start, stop), sample.word_ids[start:stop]

    def _boxes(self, sample: PageSample, start: int, stop: int) -> np.ndarray:
        if self.boxes == "word":
            return sample.bbox[start:stop]
        line_boxes = np.asarray(sample.meta["line_boxes"], dtype=np.int64).reshape(-1, 4)
        line_ids = np.asarray(sample.meta["line_ids"], dtype=np.int64)
        return line_boxes[line_ids[sample.word_ids[start:stop]]]

    def sample_rng(self, key: str, epoch: int, stream: int = 0) -> np.random.Generator:
        """RNG of one page in one epoch, independent of batch composition, worker layout and resume point;
        `stream` separates independent uses (0: the crop window; collators built on this one pick others)."""
        key_hash = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
        return np.random.default_rng((self.seed, epoch, key_hash, stream))

    def _padded_length(self, longest: int) -> int:
        if self.pad_to == "max_length":
            return self.max_length
        if self.pad_to == "longest":
            return longest
        return min(-(-longest // self.pad_to) * self.pad_to, self.max_length)


def _pixels(images: Sequence[np.ndarray], scale: float, offset: float) -> torch.Tensor:
    """uint8 [H, W, 3] images -> float32 [B, 3, H, W] = pixel * scale + offset.

    numpy, one pass per image straight from the (possibly broadcast grayscale) view: single-threaded, so it
    neither waits on nor oversubscribes torch's thread pool when collating in the main process.
    """
    height, width, _ = images[0].shape
    out = np.empty((len(images), 3, height, width), dtype=np.float32)
    for row, image in enumerate(images):
        np.multiply(image.transpose(2, 0, 1), np.float32(scale), out=out[row])
    out += np.float32(offset)
    return torch.from_numpy(out)
