"""Multi-head self-attention with the relative-position bias, in three interchangeable implementations.

- `eager`: the reference; materialised scores and CogView's PB-relax softmax, as the paper and transformers do.
- `sdpa`: `torch.nn.functional.scaled_dot_product_attention` with the bias as an additive mask.
- `flex`: FlexAttention with a score_mod that computes the bucketed bias inside the kernel (CUDA; forward-only
  on CPU), so no [batch, heads, T, T] tensor exists at all.
All three compute the same function; tests hold them to fp32 tolerance.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .config import LayoutLMv3Config
from .relative_position import AttentionBias

PB_RELAX_ALPHA = 32.0


def pb_relax_softmax(scores: torch.Tensor, alpha: float = PB_RELAX_ALPHA) -> torch.Tensor:
    """CogView's precision-bottleneck relaxation (arXiv 2105.13290, sec. 2.4): softmax of scores shifted by their
    row maximum computed on scores/alpha, which keeps fp16 from overflowing. Mathematically a plain softmax."""
    scaled = scores / alpha
    shifted = (scaled - scaled.amax(dim=-1, keepdim=True)) * alpha
    return torch.softmax(shifted, dim=-1)


_compiled_flex_attention = None


def _flex_attention(query, key, value, score_mod):
    """FlexAttention, compiled on CUDA (where it is fast); the uncompiled reference on CPU (inference only)."""
    from torch.nn.attention.flex_attention import flex_attention

    if query.device.type != "cuda":
        if torch.is_grad_enabled() and query.requires_grad:
            raise RuntimeError("FlexAttention has no CPU backward; use attn_implementation='sdpa' for CPU training")
        with warnings.catch_warnings():  # the unfused reference path is the point here, not a mistake
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            return flex_attention(query, key, value, score_mod=score_mod)
    global _compiled_flex_attention
    if _compiled_flex_attention is None:
        _compiled_flex_attention = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex_attention(query, key, value, score_mod=score_mod)


class SelfAttention(nn.Module):
    """Fused QKV projection, attention with the shared bias, output projection."""

    def __init__(self, config: LayoutLMv3Config) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.config = config  # read at call time, so `set_attn_implementation` switches every layer
        self.dropout_p = config.attention_probs_dropout_prob
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self, hidden_states: torch.Tensor, bias: AttentionBias, return_probs: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(output, attention probabilities [batch, heads, T, T] if `return_probs`, else None). Only the eager
        path materialises the probabilities; the fused ones are asked for them in vain (ValueError)."""
        batch, length, _ = hidden_states.shape
        qkv = self.qkv(hidden_states).view(batch, length, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [batch, heads, T, head_dim]
        dropout_p = self.dropout_p if self.training else 0.0
        implementation = self.config.attn_implementation
        if return_probs and implementation != "eager":
            raise ValueError(
                f"output_attentions needs attn_implementation='eager': {implementation} never materialises the "
                "attention probabilities (model.set_attn_implementation('eager') switches, same weights)"
            )
        probs = None
        if implementation == "sdpa":
            context = F.scaled_dot_product_attention(query, key, value, attn_mask=bias.dense, dropout_p=dropout_p)
        elif implementation == "flex":
            context = _flex_attention(query, key, value, bias.score_mod)
        else:
            context, probs = self._eager(query, key, value, bias.dense, dropout_p)
        return self.out(context.transpose(1, 2).reshape(batch, length, -1)), probs if return_probs else None

    def _eager(self, query, key, value, dense_bias, dropout_p: float) -> tuple[torch.Tensor, torch.Tensor]:
        # Scale q before the product (Q(K/sqrt(d)) ordering from CogView) to keep fp16 in range.
        scores = torch.matmul(query / math.sqrt(self.head_dim), key.transpose(-1, -2))
        if dense_bias is not None:
            scores = scores + dense_bias
        probs = F.dropout(pb_relax_softmax(scores), p=dropout_p)
        return torch.matmul(probs.to(value.dtype), value), probs
