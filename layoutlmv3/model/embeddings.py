"""Input embeddings: text tokens with their 2D layout, and image patches with their grid boxes."""

from __future__ import annotations

import torch
from torch import nn

from .config import LayoutLMv3Config

BOX_SCALE = 1000  # boxes are normalised to a 0..1000 grid, as in LayoutLM v1-v3


def check_boxes(bbox: torch.Tensor) -> None:
    """Raise a ValueError naming the bad values when a box coordinate lies outside 0..1000.

    One reduction and one host sync per forward; it turns an opaque CUDA index error into a clear message.
    """
    if bbox.shape[-1] != 4:
        raise ValueError(f"bbox must have shape [batch, tokens, 4], got {tuple(bbox.shape)}")
    low, high = torch.aminmax(bbox)
    if int(low) < 0 or int(high) > BOX_SCALE:
        bad = ((bbox < 0) | (bbox > BOX_SCALE)).any(-1).nonzero()[0].tolist()
        raise ValueError(
            f"bbox coordinates must lie in 0..{BOX_SCALE} (normalise pixel boxes by 1000*x/width, 1000*y/height); "
            f"found values in [{int(low)}, {int(high)}], e.g. sample {bad[0]} token {bad[1]}: {bbox[tuple(bad)].tolist()}"
        )


def roberta_position_ids(input_ids: torch.Tensor, padding_idx: int) -> torch.Tensor:
    """RoBERTa/fairseq positions: padding_idx + running count of non-pad tokens; pads keep padding_idx."""
    not_pad = input_ids.ne(padding_idx).int()
    return (torch.cumsum(not_pad, dim=1) * not_pad).long() + padding_idx


class TextEmbeddings(nn.Module):
    """word + 1D position + token type + 2D layout ([x0, y0, x1, y1, h, w] concatenated), then LayerNorm."""

    def __init__(self, config: LayoutLMv3Config) -> None:
        super().__init__()
        pad = config.pad_token_id
        self.padding_idx = pad
        self.word = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=pad)
        self.position = nn.Embedding(config.max_position_embeddings, config.hidden_size, padding_idx=pad)
        self.token_type = nn.Embedding(config.type_vocab_size, config.hidden_size)
        # x0 and x1 share one table, y0 and y1 another: a coordinate means the same whichever edge it is.
        self.x = nn.Embedding(config.max_2d_position_embeddings, config.coordinate_size)
        self.y = nn.Embedding(config.max_2d_position_embeddings, config.coordinate_size)
        self.h = nn.Embedding(config.max_2d_position_embeddings, config.shape_size)
        self.w = nn.Embedding(config.max_2d_position_embeddings, config.shape_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.max_shape = config.max_2d_position_embeddings - 1

    def layout(self, bbox: torch.Tensor) -> torch.Tensor:
        x0, y0, x1, y1 = bbox.unbind(-1)
        height = (y1 - y0).clamp(0, self.max_shape)
        width = (x1 - x0).clamp(0, self.max_shape)
        parts = (self.x(x0), self.y(y0), self.x(x1), self.y(y1), self.h(height), self.w(width))
        return torch.cat(parts, dim=-1)

    def forward(
        self,
        input_ids: torch.Tensor,
        bbox: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if position_ids is None:
            # Positions reach padding_idx + length: check the shape, not the values (no host sync).
            if input_ids.shape[1] + self.padding_idx >= self.position.num_embeddings:
                raise ValueError(
                    f"sequence too long: {input_ids.shape[1]} tokens, at most "
                    f"{self.position.num_embeddings - self.padding_idx - 1}; split long pages into windows"
                )
            position_ids = roberta_position_ids(input_ids, self.padding_idx)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        embeddings = self.word(input_ids) + self.token_type(token_type_ids) + self.position(position_ids)
        embeddings = embeddings + self.layout(bbox)
        return self.dropout(self.norm(embeddings))


def patch_grid_boxes(patches_per_side: int, scale: int = BOX_SCALE) -> torch.Tensor:
    """Boxes [1 + n*n, 4] for the visual tokens: the CLS box [1, 1, 999, 999], then each patch's cell, row-major."""
    edges = torch.div(torch.arange(0, scale * (patches_per_side + 1), scale), patches_per_side, rounding_mode="trunc")
    y_cells, x_cells = torch.meshgrid(torch.arange(patches_per_side), torch.arange(patches_per_side), indexing="ij")
    x_cells, y_cells = x_cells.flatten(), y_cells.flatten()
    grid = torch.stack([edges[x_cells], edges[y_cells], edges[x_cells + 1], edges[y_cells + 1]], dim=-1)
    cls_box = torch.tensor([[1, 1, scale - 1, scale - 1]])
    return torch.cat([cls_box, grid], dim=0)


class VisualEmbeddings(nn.Module):
    """Linear patch projection (a strided Conv2d), a CLS token, learned 1D positions, LayerNorm (ViT-style)."""

    def __init__(self, config: LayoutLMv3Config) -> None:
        super().__init__()
        self.input_size = config.input_size
        self.patch_proj = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position = nn.Parameter(torch.zeros(1, config.num_visual_tokens, config.hidden_size))
        self.norm = nn.LayerNorm(config.hidden_size, eps=1e-6)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if config.patch_mask_token else None

    def forward(self, pixel_values: torch.Tensor, patch_mask: torch.Tensor | None = None) -> torch.Tensor:
        """patch_mask: optional bool [batch, patches]; masked patches are replaced by the learned mask token."""
        expected = (self.patch_proj.in_channels, self.input_size, self.input_size)
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(f"pixel_values must have shape [batch, {', '.join(map(str, expected))}], "
                             f"got {tuple(pixel_values.shape)}")  # fmt: skip
        patches = self.patch_proj(pixel_values.to(self.patch_proj.weight.dtype)).flatten(2).transpose(1, 2)
        if patch_mask is not None:
            if self.mask_token is None:
                raise ValueError("patch_mask needs a model built with patch_mask_token=True")
            if patch_mask.shape != patches.shape[:2]:
                raise ValueError(f"patch_mask must be [batch, {patches.shape[1]}], got {tuple(patch_mask.shape)}")
            patches = torch.where(patch_mask[..., None], self.mask_token.to(patches.dtype), patches)
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        return self.norm(torch.cat([cls, patches], dim=1) + self.position)
