"""LayoutLMv3 with its three pretraining heads: L = w_mlm * L_MLM + w_mim * L_MIM + w_wpa * L_WPA.

The frozen image tokenizer is not part of this module: the training step computes the visual-token targets
(`mim_targets`) on the device and passes them in, so ZeRO never partitions or checkpoints the tokenizer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from layoutlmv3.model import LayoutLMv3Config, LayoutLMv3Model, LayoutLMv3PreTrainedModel
from layoutlmv3.model.config import IGNORE_INDEX
from layoutlmv3.model.heads import MaskedImageHead, MaskedLMHead, WordPatchAlignmentHead
from layoutlmv3.model.hf_interop import BASE_PREFIX

IGNORE = IGNORE_INDEX  # the model's one definition


@dataclass
class LossWeights:
    mlm: float = 1.0
    mim: float = 1.0
    wpa: float = 1.0


@dataclass
class PretrainingOutput:
    """The weighted total (what is optimised) and each objective's loss and accuracy, for logging."""

    loss: torch.Tensor
    mlm_loss: torch.Tensor
    mim_loss: torch.Tensor
    wpa_loss: torch.Tensor
    mlm_accuracy: torch.Tensor
    mim_accuracy: torch.Tensor
    wpa_accuracy: torch.Tensor

    def metrics(self) -> dict[str, torch.Tensor]:
        return {field.name: getattr(self, field.name).detach() for field in dataclasses.fields(self)}


class LayoutLMv3ForPretraining(LayoutLMv3PreTrainedModel):
    """The encoder with MLM (tied to the word embeddings), MIM and WPA heads."""

    base_prefix = BASE_PREFIX
    tied_weight_keys = ("mlm_head.decoder.weight",)

    def __init__(self, config: LayoutLMv3Config, loss_weights: LossWeights | None = None) -> None:
        if not config.patch_mask_token:  # MIM replaces masked patches by a learned embedding
            config = dataclasses.replace(config, patch_mask_token=True)
        super().__init__(config)
        self.loss_weights = loss_weights or LossWeights()
        self.layoutlmv3 = LayoutLMv3Model(config)
        self.mlm_head = MaskedLMHead(config, self.layoutlmv3.text_embeddings.word)
        self.mim_head = MaskedImageHead(config)
        self.wpa_head = WordPatchAlignmentHead(config)
        self.init_weights()

    def forward(
        self,
        input_ids: torch.Tensor,
        bbox: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        mlm_labels: torch.Tensor,
        patch_mask: torch.Tensor,
        mim_targets: torch.Tensor,
        wpa_labels: torch.Tensor,
    ) -> PretrainingOutput:
        """mlm_labels/wpa_labels: [B, T] with -100 where unlabelled; patch_mask: bool [B, P]; mim_targets: the
        visual-token id of every patch of the unmasked image [B, P] (the loss uses the masked ones)."""
        hidden = self.layoutlmv3(input_ids, bbox, attention_mask, pixel_values=pixel_values, patch_mask=patch_mask)
        hidden = hidden.last_hidden_state
        text = hidden[:, : input_ids.shape[1]]
        patches = hidden[:, input_ids.shape[1] + 1 :]  # after the visual CLS token

        mlm_selected = mlm_labels != IGNORE
        mlm_loss, mlm_accuracy = _classification(self.mlm_head(text[mlm_selected]), mlm_labels[mlm_selected])
        mim_loss, mim_accuracy = _classification(self.mim_head(patches[patch_mask]), mim_targets[patch_mask])
        wpa_selected = wpa_labels != IGNORE
        wpa_loss, wpa_accuracy = _binary(self.wpa_head(text[wpa_selected]), wpa_labels[wpa_selected])

        weights = self.loss_weights
        loss = weights.mlm * mlm_loss + weights.mim * mim_loss + weights.wpa * wpa_loss
        return PretrainingOutput(loss, mlm_loss, mim_loss, wpa_loss, mlm_accuracy, mim_accuracy, wpa_accuracy)


def _classification(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and accuracy; zero (not NaN) when nothing is labelled."""
    count = max(targets.numel(), 1)
    loss = nn.functional.cross_entropy(logits.float(), targets, reduction="sum") / count
    accuracy = (logits.argmax(-1) == targets).sum() / count
    return loss, accuracy


def _binary(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    count = max(targets.numel(), 1)
    loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="sum") / count
    accuracy = ((logits > 0).long() == targets).sum() / count
    return loss, accuracy
