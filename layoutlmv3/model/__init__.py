"""The LayoutLMv3 model: pure PyTorch, no knowledge of DeepSpeed, data files or Slurm."""

from .config import FLAVORS, LayoutLMv3Config
from .modeling import (
    LayoutLMv3ForMaskedLM,
    LayoutLMv3ForQuestionAnswering,
    LayoutLMv3ForSequenceClassification,
    LayoutLMv3ForTokenClassification,
    LayoutLMv3Model,
    LayoutLMv3PreTrainedModel,
)
from .outputs import (
    LayoutLMv3ModelOutput,
    MaskedLMOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

__all__ = [
    "FLAVORS",
    "LayoutLMv3Config",
    "LayoutLMv3ForMaskedLM",
    "LayoutLMv3ForQuestionAnswering",
    "LayoutLMv3ForSequenceClassification",
    "LayoutLMv3ForTokenClassification",
    "LayoutLMv3Model",
    "LayoutLMv3ModelOutput",
    "LayoutLMv3PreTrainedModel",
    "MaskedLMOutput",
    "QuestionAnsweringModelOutput",
    "SequenceClassifierOutput",
    "TokenClassifierOutput",
]
