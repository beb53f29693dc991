"""The LayoutLMv3 model: pure PyTorch, no knowledge of DeepSpeed, data files or Slurm."""

from .config import FLAVORS, LayoutLMv3Config
from .modeling import (
    LayoutLMv3ForMaskedLM,
    LayoutLMv3ForTokenClassification,
    LayoutLMv3Model,
    LayoutLMv3ModelOutput,
    LayoutLMv3PreTrainedModel,
    MaskedLMOutput,
    TokenClassifierOutput,
)

__all__ = [
    "FLAVORS",
    "LayoutLMv3Config",
    "LayoutLMv3ForMaskedLM",
    "LayoutLMv3ForTokenClassification",
    "LayoutLMv3Model",
    "LayoutLMv3ModelOutput",
    "LayoutLMv3PreTrainedModel",
    "MaskedLMOutput",
    "TokenClassifierOutput",
]
