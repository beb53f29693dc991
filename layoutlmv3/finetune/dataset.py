"""Pages -> fixed-length windows the token classifier takes, each with its page's 224 px image.

A page longer than `max_length` tokens becomes several windows that overlap by `stride` tokens (the page
processor's one call, `LayoutLMv3Processor.__call__`), so every word is seen; word ids stay page word indices,
which is how `evaluate.merge_windows` maps predictions back onto words. Labels sit on each word's first sub-token, or with a
`continuation` map on every sub-token (later ones get the word's continuation label: B-X -> I-X); evaluation
reads first sub-tokens either way.

A training window without a single labelled token (a page whose words are all empty, the inside of a word longer
than a window) would make a loss of 0/0 = NaN: `drop_unlabelled` leaves such windows out, counted in one warning
that names their pages (the model's loss is also finite for such a batch: `model.heads.labelled_cross_entropy`);
if no training window is left the job stops before training with an error naming the pages. Dev and test windows
are never dropped: every page is scored.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from layoutlmv3.constants import IGNORE_INDEX
from layoutlmv3.model import LayoutLMv3Config
from layoutlmv3.processing import LayoutLMv3Processor
from layoutlmv3.tokenizer import LayoutLMv3Tokenizer

logger = logging.getLogger(__name__)

MODEL_INPUTS = ("input_ids", "bbox", "attention_mask", "pixel_values")


def model_config(model: torch.nn.Module) -> LayoutLMv3Config:
    """The config of a model, or of the model a DeepSpeed engine wraps (the engine's own `config` is its JSON)."""
    return getattr(model, "module", model).config


def image_size(config: LayoutLMv3Config) -> int | None:
    """The side pages are read at for `config`'s model; None for a text-only one (no image to read)."""
    return config.input_size if config.visual_embed else None


def model_inputs(
    batch: Mapping[str, torch.Tensor],
    config: LayoutLMv3Config,
    device: torch.device | str,
    dtype: torch.dtype,
    extra: tuple[str, ...] = (),
) -> dict[str, torch.Tensor]:
    """A batch's model inputs (and `extra` fields, e.g. labels) on `device`, pixels in the model's `dtype`.

    A text-only model (`visual_embed: false`, which refuses pixels) gets none: one data pipeline feeds both."""
    names = [name for name in (*MODEL_INPUTS, *extra) if name != "pixel_values" or config.visual_embed]
    inputs = {name: batch[name].to(device, non_blocking=True) for name in names}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    return inputs


@dataclass
class Window:
    """One window's tensors ([T] each, bbox [T, 4]) and the index of the page it came from."""

    page: int
    input_ids: torch.Tensor
    bbox: torch.Tensor
    attention_mask: torch.Tensor
    word_ids: torch.Tensor
    labels: torch.Tensor | None


class WindowDataset(torch.utils.data.Dataset):
    """Windows of labelled pages, made by the page processor's one call; page images are decoded once and kept in
    memory (FUNSD: ~200 pages)."""

    def __init__(
        self,
        pages: Sequence,
        tokenizer: LayoutLMv3Tokenizer,
        max_length: int,
        stride: int,
        image_size: int = 224,
        continuation: Sequence[int] | None = None,
        drop_unlabelled: bool = False,
    ) -> None:
        processor = LayoutLMv3Processor(tokenizer, image_size, max_length, stride)
        self.pages, self.windows, self.pixels = list(pages), [], []
        for index, page in enumerate(self.pages):
            with Image.open(page.image_path) as image:
                inputs = processor(
                    image, page.words, page.boxes, page.labels, boxes_normalized=True, continuation=continuation
                )
            self.pixels.append(inputs.pixel_values)
            for row in range(len(inputs.input_ids)):
                labels = None if inputs.labels is None else inputs.labels[row]
                rows = (inputs.input_ids[row], inputs.bbox[row], inputs.attention_mask[row], inputs.word_ids[row])
                self.windows.append(Window(index, *rows, labels))
        self.unlabelled = 0  # windows left out for want of a labelled token
        if drop_unlabelled:
            self.windows = self._labelled_windows()

    def _labelled_windows(self) -> list[Window]:
        labelled = [w.labels is None or bool((w.labels != IGNORE_INDEX).any()) for w in self.windows]
        kept = [window for window, keep in zip(self.windows, labelled, strict=True) if keep]
        self.unlabelled = len(self.windows) - len(kept)
        if self.unlabelled:
            pages = sorted({window.page for window, keep in zip(self.windows, labelled, strict=True) if not keep})
            named = ", ".join(str(getattr(self.pages[page], "image_path", page)) for page in pages[:3])
            if not kept:  # nothing to learn from: a named error before training, not an empty loader
                raise ValueError(
                    f"none of the {self.unlabelled} training windows holds a labelled token (the words of the "
                    f"training pages are empty or longer than a window) on {len(pages)} page(s): {named}"
                    f"{', ...' if len(pages) > 3 else ''}; check the training annotations"
                )
            logger.warning(
                "%d of %d training windows hold no labelled token (pages whose words are empty, the inside of a word "
                "longer than a window) and are left out; on %d page(s): %s%s",
                self.unlabelled, len(self.windows), len(pages), named, ", ..." if len(pages) > 3 else "",
            )  # fmt: skip
        return kept

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        window = self.windows[index]
        item = {
            "input_ids": window.input_ids,
            "bbox": window.bbox,
            "attention_mask": window.attention_mask,
            "pixel_values": self.pixels[window.page],
            "word_ids": window.word_ids,
            "page": torch.tensor(window.page),
        }
        if window.labels is not None:
            item["labels"] = window.labels
        return item
