"""One pretraining forward pass from a collated batch: the piece every training loop (DeepSpeed or plain) shares.

Visual-token targets are computed here, on the training device, from the frozen image tokenizer: the 112 px
page image travels in the batch anyway, the tokenizer is small next to the encoder, and shards stay valid when
the tokenizer is retrained (precomputed codes would tie every shard to one tokenizer).
"""

from __future__ import annotations

import torch

from .image_tokenizer import VisualTokenizer
from .model import LayoutLMv3ForPretraining, PretrainingOutput

MODEL_INPUTS = ("input_ids", "bbox", "attention_mask", "pixel_values", "mlm_labels", "patch_mask", "wpa_labels")


def batch_to_device(batch: dict, device: torch.device | str) -> dict[str, torch.Tensor]:
    """The tensors of a collated batch on `device` (non-blocking: loaders pin memory on GPU)."""
    names = (*MODEL_INPUTS, "tokenizer_pixel_values")
    return {name: batch[name].to(device, non_blocking=True) for name in names}


def pretraining_forward(
    model: LayoutLMv3ForPretraining | torch.nn.Module, image_tokenizer: VisualTokenizer, batch: dict[str, torch.Tensor]
) -> PretrainingOutput:
    """Targets from the frozen image tokenizer, then the model's three losses (batch already on the device)."""
    with torch.no_grad():
        mim_targets = image_tokenizer.encode(batch["tokenizer_pixel_values"])
    return model(**{name: batch[name] for name in MODEL_INPUTS}, mim_targets=mim_targets)
