"""Model outputs are transformers' own `ModelOutput` dataclasses, so code written for transformers (its `Trainer`,
pipelines, `isinstance` checks, user loops) reads ours unchanged: `out.logits`, `out["logits"]`, `out[0]` (the loss
when there is one), slices, `to_tuple()`, `keys()`; fields left None are skipped by indexing and tuples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

Tensors = tuple[torch.Tensor, ...]


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
