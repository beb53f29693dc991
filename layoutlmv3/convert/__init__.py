"""Model directories from DeepSpeed pretraining checkpoints and from transformers' LayoutLMv3 directories."""

from .checkpoint import convert_checkpoint, resolve_tag
from .hf import convert_from_hf, convert_to_hf

__all__ = ["convert_checkpoint", "convert_from_hf", "convert_to_hf", "resolve_tag"]
