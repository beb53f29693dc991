"""One collator for every pretraining mask and label: MLM spans, MIM blocks, WPA alignment.

Each sample's masks come from an RNG seeded by (seed, epoch, sample key), so a batch is reproducible whatever
the worker layout or resume point, and a page is masked differently each epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from layoutlmv3.data.collate import Collator
from layoutlmv3.data.decode import PageSample

from .masking import IGNORE, block_mask, span_mask, wpa_labels

_MASK_STREAM = 1  # RNG stream id: independent of the base collator's crop RNG for the same (seed, epoch, key)


@dataclass
class MaskingConfig:
    """Paper defaults (arXiv 2204.08387, sec. 2.3)."""

    text_mask_ratio: float = 0.30
    span_lambda: float = 3.0
    # Of the masked text tokens: share replaced by <mask>, share replaced by a random token; the rest keep their
    # token (BERT's 80/10/10). Masked tokens always keep their layout (box).
    mask_token_share: float = 0.8
    random_token_share: float = 0.1
    image_mask_ratio: float = 0.40
    min_block_patches: int = 16
    patches_per_side: int = 14

    def __post_init__(self) -> None:
        for name in ("text_mask_ratio", "image_mask_ratio", "mask_token_share", "random_token_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.mask_token_share + self.random_token_share > 1.0:
            raise ValueError("mask_token_share + random_token_share must not exceed 1")
        if self.span_lambda <= 0:
            raise ValueError(f"span_lambda must be > 0, got {self.span_lambda}")
        if self.min_block_patches < 1 or self.patches_per_side < 1:
            raise ValueError("min_block_patches and patches_per_side must be >= 1")


class PretrainingCollator:
    """Shapes pages with the data collator, then adds mlm_labels, patch_mask and wpa_labels.

    Batch keys added: `mlm_labels` [B, T] (original id where masked, else -100; `input_ids` are replaced per
    the 80/10/10 rule), `patch_mask` bool [B, P], `wpa_labels` [B, T] (0 aligned, 1 unaligned, -100 none).
    """

    def __init__(
        self,
        base: Collator,
        mask_token_id: int,
        vocab_size: int,
        special_token_ids: Sequence[int],
        config: MaskingConfig | None = None,
    ) -> None:
        self.base = base
        self.config = config or MaskingConfig()
        self.mask_token_id = mask_token_id
        self.special_token_ids = np.array(sorted(special_token_ids))
        self.replacement_ids = np.setdiff1d(np.arange(vocab_size), self.special_token_ids)

    def __call__(self, samples: Sequence[PageSample], epoch: int = 0) -> dict:
        batch = self.base(samples, epoch)
        input_ids = batch["input_ids"].numpy().copy()
        bbox = batch["bbox"].numpy()
        maskable = batch["attention_mask"].numpy().astype(bool) & ~np.isin(input_ids, self.special_token_ids)
        mlm_labels = np.full_like(input_ids, IGNORE)
        wpa = np.full_like(input_ids, IGNORE)
        patch_mask = np.zeros((len(samples), self.config.patches_per_side**2), dtype=bool)
        for row, sample in enumerate(samples):
            rng = self.base.sample_rng(sample.key, epoch, stream=_MASK_STREAM)
            text_mask = self._mask_text(input_ids[row], mlm_labels[row], maskable[row], rng)
            patch_mask[row] = block_mask(
                self.config.patches_per_side, self.config.image_mask_ratio, rng, self.config.min_block_patches
            )
            wpa[row] = wpa_labels(bbox[row], maskable[row], text_mask, patch_mask[row], self.config.patches_per_side)
        batch.update(
            input_ids=torch.from_numpy(input_ids),
            mlm_labels=torch.from_numpy(mlm_labels),
            patch_mask=torch.from_numpy(patch_mask),
            wpa_labels=torch.from_numpy(wpa),
        )
        return batch

    def _mask_text(self, ids: np.ndarray, labels: np.ndarray, maskable: np.ndarray, rng) -> np.ndarray:
        """Span-mask one row in place: labels get the original ids, ids get <mask> / random / themselves."""
        cfg = self.config
        text_mask = span_mask(maskable, cfg.text_mask_ratio, cfg.span_lambda, rng)
        positions = np.flatnonzero(text_mask)
        labels[positions] = ids[positions]
        draw = rng.random(len(positions))
        to_mask = positions[draw < cfg.mask_token_share]
        to_random = positions[(draw >= cfg.mask_token_share) & (draw < cfg.mask_token_share + cfg.random_token_share)]
        ids[to_mask] = self.mask_token_id
        ids[to_random] = rng.choice(self.replacement_ids, size=len(to_random))
        return text_mask
