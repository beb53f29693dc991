"""Model outputs that behave like transformers' `ModelOutput`, so code written for transformers (its `Trainer`,
pipelines, user loops) reads ours unchanged: `out.logits`, `out["logits"]`, `out[0]` (the loss when there is
one), slices, `to_tuple()`, `keys()`. As in transformers, fields left None are skipped by indexing and tuples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

Tensors = tuple[torch.Tensor, ...]


class ModelOutput:
    """Mixin for output dataclasses: attribute, key and position access over the fields that are set."""

    def keys(self) -> list[str]:
        return [field.name for field in dataclasses.fields(self) if getattr(self, field.name) is not None]

    def values(self) -> list[Any]:
        return [getattr(self, name) for name in self.keys()]

    def items(self) -> list[tuple[str, Any]]:
        return [(name, getattr(self, name)) for name in self.keys()]

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(self.values())

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())


@dataclass
class LayoutLMv3ModelOutput(ModelOutput):
    """`last_hidden_state`: [batch, text tokens + visual tokens, hidden]; text positions come first.
    `hidden_states`: the embedding output and each layer's (num_layers + 1 tensors), with output_hidden_states;
    `attentions`: each layer's attention probabilities [batch, heads, T, T], with output_attentions (eager)."""

    last_hidden_state: torch.Tensor | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@dataclass
class TokenClassifierOutput(ModelOutput):
    """`logits`: [batch, text tokens, labels]."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@dataclass
class SequenceClassifierOutput(ModelOutput):
    """`logits`: [batch, labels], from the first text token (<s>)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@dataclass
class QuestionAnsweringModelOutput(ModelOutput):
    """`start_logits`, `end_logits`: [batch, T] over every position (text, then visual), as transformers."""

    loss: torch.Tensor | None = None
    start_logits: torch.Tensor | None = None
    end_logits: torch.Tensor | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@dataclass
class MaskedLMOutput(ModelOutput):
    """With labels, `logits` are only those of the labelled positions ([n_labelled, vocab]): the full
    [batch, T, vocab] tensor is never built in training."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
