"""Learned relative-position attention biases (T5-style buckets), 1D over token order and 2D over layout.

The paper adds, to every attention score, a learned scalar per head chosen by the bucketed distance between
the two tokens: in sequence position (1D), in x0 and in y1 (2D). The bucket ids depend only on the inputs, so
they are computed once per forward and shared by all layers. Unlike transformers (which gathers the tables
under `torch.no_grad()`, so they never learn), the tables here are ordinary trainable parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .config import LayoutLMv3Config

# Largest |difference| of two box coordinates on the 0..1000 grid (tables allow up to 1023).
_MAX_COORDINATE_DISTANCE = 1023


def relative_position_bucket(relative_position: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """Bidirectional T5 bucketing: exact buckets for small distances, log-spaced up to `max_distance`.

    Half of the buckets are for positive distances, half for the rest; within each half, the first half is
    one bucket per distance and the second half log-spaced, with everything beyond `max_distance` in the last.
    """
    num_buckets //= 2
    buckets = (relative_position > 0).long() * num_buckets
    distance = relative_position.abs()
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # clamp(min=1) avoids log(0); those entries take the `is_small` branch anyway.
    log_ratio = torch.log(distance.clamp(min=1).float() / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


def bucket_lookup_table(max_distance_seen: int, num_buckets: int, max_distance: int, device: torch.device):
    """Bucket id of every relative distance in [-max_distance_seen, max_distance_seen], indexed by distance + offset.

    The FlexAttention path reads this table inside the kernel instead of materialising [T, T] bucket ids.
    """
    distances = torch.arange(-max_distance_seen, max_distance_seen + 1, device=device)
    return relative_position_bucket(distances, num_buckets, max_distance)


@dataclass
class AttentionBias:
    """What every layer adds to its attention scores; built once per forward.

    `dense` ([batch or 1, heads or 1, T, T], already scaled by 1/sqrt(head_dim), padded keys at the dtype's
    minimum) serves the eager and sdpa paths; `score_mod` (a FlexAttention score modifier computing the same
    values from lookup tables inside the kernel) serves the flex path.
    """

    dense: torch.Tensor | None = None
    score_mod: Callable | None = None


class _GatherBucketBias(torch.autograd.Function):
    """out[b, h, i, j] = table[bucket[b, i, j], h], with a backward that sums the gradient per bucket with
    `index_add_` along the bucket axis. nn.Embedding's CPU backward sorts all B*T*T indices first: with trainable
    bias tables that sort was half of a CPU training step (tiny model, 709 tokens); this backward is 7-50x faster.
    """

    @staticmethod
    def forward(ctx, table: torch.Tensor, bucket: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(bucket)
        ctx.num_buckets = table.shape[0]
        heads = table.shape[1]
        gathered = table.t().contiguous().index_select(1, bucket.flatten())  # [heads, b*T*T]
        return gathered.view(heads, *bucket.shape).transpose(0, 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (bucket,) = ctx.saved_tensors
        heads = grad.shape[1]
        per_head = grad.transpose(0, 1).reshape(heads, -1)
        grad_table = grad.new_zeros(heads, ctx.num_buckets).index_add_(1, bucket.flatten(), per_head)
        return grad_table.t(), None


class BucketBiasTable(nn.Embedding):
    """A [buckets, heads] table of learned biases, looked up head-major: bucket ids [b, T, T] -> [b, heads, T, T].

    A module (not a bare weight) so that DeepSpeed ZeRO-3 gathers the table when it is called. On CPU the lookup
    uses `_GatherBucketBias`; on GPUs nn.Embedding's backward (sort + segmented sum) is the right kernel, since
    index_add_ onto a few dozen buckets would serialise on atomics.
    """

    def forward(self, bucket: torch.Tensor) -> torch.Tensor:
        if bucket.device.type == "cpu":
            return _GatherBucketBias.apply(self.weight, bucket)
        return super().forward(bucket).permute(0, 3, 1, 2)


class RelativePositionBias(nn.Module):
    """The three bias tables ([buckets, heads]) and the code that turns positions and boxes into biases."""

    def __init__(self, config: LayoutLMv3Config) -> None:
        super().__init__()
        self.config = config
        heads = config.num_attention_heads
        self.pos_1d = BucketBiasTable(config.rel_pos_bins, heads) if config.has_relative_attention_bias else None
        if config.has_spatial_attention_bias:
            self.pos_x = BucketBiasTable(config.rel_2d_pos_bins, heads)
            self.pos_y = BucketBiasTable(config.rel_2d_pos_bins, heads)
        else:
            self.pos_x = self.pos_y = None

    def dense_bias(self, position_ids: torch.Tensor, bbox: torch.Tensor | None) -> torch.Tensor | None:
        """Unscaled bias [batch or 1, heads, T, T] for 1D positions [batch or 1, T] and boxes [batch, T, 4]."""
        cfg = self.config
        bias = None
        if self.pos_1d is not None:
            relative = position_ids[:, None, :] - position_ids[:, :, None]  # [b, query, key] = pos[key] - pos[query]
            bias = self.pos_1d(relative_position_bucket(relative, cfg.rel_pos_bins, cfg.max_rel_pos))
        if self.pos_x is not None and bbox is not None:
            x, y = bbox[:, :, 0], bbox[:, :, 3]  # the paper's 2D bias uses the left edge and the bottom edge
            bucket_x = relative_position_bucket(x[:, None, :] - x[:, :, None], cfg.rel_2d_pos_bins, cfg.max_rel_2d_pos)
            bucket_y = relative_position_bucket(y[:, None, :] - y[:, :, None], cfg.rel_2d_pos_bins, cfg.max_rel_2d_pos)
            spatial = self.pos_x(bucket_x) + self.pos_y(bucket_y)
            bias = spatial if bias is None else bias + spatial
        return bias

    def flex_score_mod(
        self, position_ids: torch.Tensor, bbox: torch.Tensor | None, key_valid: torch.Tensor, scale: float
    ) -> Callable:
        """A FlexAttention score_mod adding the same bias as `dense_bias` (times `scale`) without any [T, T] tensor.

        Bucket ids come from small per-distance lookup tables; padded keys (key_valid False) get -inf.
        """
        cfg = self.config
        device = key_valid.device
        zero = torch.zeros((), device=device)
        pos = position_ids[0]  # 1D positions are the same for every sample (see LayoutLMv3Model.forward)
        if self.pos_1d is not None:
            span_1d = int(pos.max()) + 1
            lut_1d = bucket_lookup_table(span_1d, cfg.rel_pos_bins, cfg.max_rel_pos, device)
            table_1d = self.pos_1d.weight
        use_2d = self.pos_x is not None and bbox is not None
        if use_2d:
            lut_2d = bucket_lookup_table(_MAX_COORDINATE_DISTANCE, cfg.rel_2d_pos_bins, cfg.max_rel_2d_pos, device)
            x, y = bbox[:, :, 0], bbox[:, :, 3]
            table_x, table_y = self.pos_x.weight, self.pos_y.weight

        def score_mod(score, b, h, q_idx, kv_idx):
            bias = zero
            if self.pos_1d is not None:
                bias = bias + table_1d[lut_1d[pos[kv_idx] - pos[q_idx] + span_1d], h]
            if use_2d:
                bias = bias + table_x[lut_2d[x[b, kv_idx] - x[b, q_idx] + _MAX_COORDINATE_DISTANCE], h]
                bias = bias + table_y[lut_2d[y[b, kv_idx] - y[b, q_idx] + _MAX_COORDINATE_DISTANCE], h]
            score = score + bias * scale
            return torch.where(key_valid[b, kv_idx], score, -float("inf"))

        return score_mod
