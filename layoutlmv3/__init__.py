"""A from-scratch LayoutLMv3 pretraining system: model, tokenizer, objectives, data, training, conversion.

Names are imported on first use, so tools that need only the tokenizer (data preparation workers) do not pay
for importing torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "LayoutLMv3Config": "layoutlmv3.model",
    "LayoutLMv3Model": "layoutlmv3.model",
    "LayoutLMv3ForTokenClassification": "layoutlmv3.model",
    "LayoutLMv3ForSequenceClassification": "layoutlmv3.model",
    "LayoutLMv3ForQuestionAnswering": "layoutlmv3.model",
    "LayoutLMv3ForMaskedLM": "layoutlmv3.model",
    "LayoutLMv3Tokenizer": "layoutlmv3.tokenizer",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'layoutlmv3' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = list(_EXPORTS)
