"""Task heads on top of the encoder's hidden states."""

from __future__ import annotations

import torch
from torch import nn

from .config import LayoutLMv3Config


class ClassificationHead(nn.Module):
    """Dropout + linear (`kind="linear"`: the paper's FUNSD head), or transformers' RoBERTa-style head (`"mlp"`:
    dropout -> dense -> tanh -> dropout -> out_proj), which its token classifier uses from 10 labels on and its
    sequence classifier and question answering always. `kind` defaults to the config's `classifier_head`,
    `outputs` to its `num_labels`."""

    def __init__(self, config: LayoutLMv3Config, kind: str | None = None, outputs: int | None = None) -> None:
        super().__init__()
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.kind = kind or config.classifier_head
        outputs = outputs or config.num_labels
        if self.kind == "mlp":
            self.dense = nn.Linear(config.hidden_size, config.hidden_size)
            self.out_proj = nn.Linear(config.hidden_size, outputs)
        else:
            self.linear = nn.Linear(config.hidden_size, outputs)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dropout(hidden_states)
        if self.kind == "linear":
            return self.linear(hidden_states)
        hidden_states = self.dropout(torch.tanh(self.dense(hidden_states)))
        return self.out_proj(hidden_states)


class MaskedLMHead(nn.Module):
    """RoBERTa-style LM head: dense -> GELU -> LayerNorm -> decoder whose weight IS the word-embedding table.

    The decoder shares the embedding's Parameter object (not a copy), so optimizers and ZeRO see one tensor;
    `decoder.weight` is listed in the owning model's `tied_weight_keys` and left out of saved files.
    """

    def __init__(self, config: LayoutLMv3Config, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.GELU()
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.decoder.weight = word_embeddings.weight

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(self.activation(self.dense(hidden_states))))


class MaskedImageHead(nn.Module):
    """Predicts the visual token (image-tokenizer codebook id) of each patch from its final hidden state."""

    def __init__(self, config: LayoutLMv3Config) -> None:
        super().__init__()
        self.decoder = nn.Linear(config.hidden_size, config.visual_codebook_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(hidden_states)


class WordPatchAlignmentHead(nn.Module):
    """A 2-layer MLP giving one logit per text token: is this word's image region masked (unaligned)?"""

    def __init__(self, config: LayoutLMv3Config) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.GELU()
        self.out = nn.Linear(config.hidden_size, 1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.out(self.activation(self.dense(hidden_states))).squeeze(-1)


def labelled_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Mean cross-entropy over the positions whose label is not `ignore_index` (logits [N, C], labels [N]).

    Equal to `cross_entropy(..., ignore_index=ignore_index)` whenever a position is labelled; with none (a window of
    empty words, the inside of a long word, an answer outside every window of a batch) it is 0 with a zero
    gradient instead of 0/0 = NaN, which the trainer would count as divergence."""
    total = nn.functional.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="sum")
    return total / (labels != ignore_index).sum().clamp(min=1)
