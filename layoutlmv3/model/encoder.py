"""The Transformer encoder: post-LN BERT layers sharing one relative-position bias."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import SelfAttention
from .config import LayoutLMv3Config
from .relative_position import AttentionBias, RelativePositionBias

ACTIVATIONS = {"gelu": nn.GELU, "gelu_new": lambda: nn.GELU(approximate="tanh"), "relu": nn.ReLU}


class EncoderLayer(nn.Module):
    """attention -> dropout -> residual -> LayerNorm; FFN (GELU) -> dropout -> residual -> LayerNorm."""

    def __init__(self, config: LayoutLMv3Config) -> None:
        super().__init__()
        if config.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {sorted(ACTIVATIONS)}, got {config.hidden_act!r}")
        self.attention = SelfAttention(config)
        self.attn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn_up = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACTIVATIONS[config.hidden_act]()
        self.ffn_down = nn.Linear(config.intermediate_size, config.hidden_size)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, hidden_states: torch.Tensor, bias: AttentionBias, return_probs: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the layer's output, its attention probabilities if `return_probs`)."""
        attended, probs = self.attention(hidden_states, bias, return_probs)
        hidden_states = self.attn_norm(hidden_states + self.dropout(attended))
        ffn = self.ffn_down(self.activation(self.ffn_up(hidden_states)))
        return self.ffn_norm(hidden_states + self.dropout(ffn)), probs


class Encoder(nn.Module):
    """Builds the attention bias once per forward, then runs the layers (optionally with activation checkpointing)."""

    def __init__(self, config: LayoutLMv3Config) -> None:
        super().__init__()
        self.config = config
        self.relative_bias = RelativePositionBias(config)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))

    def attention_bias(
        self, position_ids: torch.Tensor, bbox: torch.Tensor | None, key_valid: torch.Tensor, dtype: torch.dtype
    ) -> AttentionBias:
        """The bias every layer adds: relative positions scaled by 1/sqrt(head_dim), padded keys masked out."""
        scale = 1.0 / math.sqrt(self.config.head_dim)
        if self.config.attn_implementation == "flex":
            return AttentionBias(score_mod=self.relative_bias.flex_score_mod(position_ids, bbox, key_valid, scale))
        relative = self.relative_bias.dense_bias(position_ids, bbox)
        if relative is None:
            dense = torch.zeros(key_valid.shape[0], 1, 1, key_valid.shape[1], dtype=dtype, device=key_valid.device)
        else:
            dense = (relative * scale).to(dtype)
        return AttentionBias(dense=dense.masked_fill(~key_valid[:, None, None, :], torch.finfo(dtype).min))

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_ids: torch.Tensor,
        bbox: torch.Tensor | None,
        key_valid: torch.Tensor,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...] | None]:
        """(last hidden state, the input and every layer's output if asked, every layer's attention
        probabilities if asked) -- transformers' `hidden_states` and `attentions`."""
        device_type = hidden_states.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden_states.dtype
        bias = self.attention_bias(position_ids, bbox, key_valid, dtype)
        states, attentions = [hidden_states], []
        for layer in self.layers:
            if self.config.gradient_checkpointing and self.training:
                hidden_states, probs = checkpoint(layer, hidden_states, bias, output_attentions, use_reentrant=False)
            else:
                hidden_states, probs = layer(hidden_states, bias, output_attentions)
            if output_hidden_states:  # kept only when asked: inference holds one layer's activations at a time
                states.append(hidden_states)
            if output_attentions:
                attentions.append(probs)
        return (
            hidden_states,
            tuple(states) if output_hidden_states else None,
            tuple(attentions) if output_attentions else None,
        )
