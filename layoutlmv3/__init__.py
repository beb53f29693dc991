"""A from-scratch LayoutLMv3 pretraining system: model, tokenizer, objectives, data, training, conversion."""

from .model import (
    LayoutLMv3Config,
    LayoutLMv3ForMaskedLM,
    LayoutLMv3ForTokenClassification,
    LayoutLMv3Model,
)

__version__ = "0.1.0"


def __getattr__(name: str):
    # The tokenizer pulls in `tokenizers`; import it only when asked for.
    if name == "LayoutLMv3Tokenizer":
        from .tokenizer import LayoutLMv3Tokenizer

        return LayoutLMv3Tokenizer
    raise AttributeError(f"module 'layoutlmv3' has no attribute {name!r}")


__all__ = [
    "LayoutLMv3Config",
    "LayoutLMv3ForMaskedLM",
    "LayoutLMv3ForTokenClassification",
    "LayoutLMv3Model",
    "LayoutLMv3Tokenizer",
]
