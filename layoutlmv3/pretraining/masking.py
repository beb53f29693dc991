"""The masks of LayoutLMv3's objectives: span masking of text (MLM), blockwise masking of patches (MIM), and the
word-patch alignment labels (WPA) that follow from both.

All functions take a `numpy.random.Generator`, so the collator controls reproducibility.
"""

from __future__ import annotations

import math

import numpy as np

from layoutlmv3.model.config import IGNORE_INDEX

IGNORE = IGNORE_INDEX  # the model's one definition
ALIGNED, UNALIGNED = 0, 1


def span_mask(maskable: np.ndarray, ratio: float, mean_span: float, rng: np.random.Generator) -> np.ndarray:
    """Mask exactly `round(ratio * maskable.sum())` tokens in spans with lengths ~ Poisson(mean_span) (min 1).

    Span lengths are drawn until they cover the budget (the last one cut to fit), then the spans are dropped
    into distinct gaps between the kept tokens, so spans never touch and each masked run is one span. Positions
    are counted over maskable tokens only (specials are skipped, never inside a span). Returns bool like `maskable`.
    """
    candidates = np.flatnonzero(maskable)
    budget = int(round(ratio * len(candidates)))
    lengths = []
    while sum(lengths) < budget:
        lengths.append(max(1, int(rng.poisson(mean_span))))
    if lengths:
        lengths[-1] -= sum(lengths) - budget
    kept = len(candidates) - budget
    # kept tokens leave kept + 1 gaps; one span per gap keeps spans apart (if there are too many spans, share).
    gaps = np.sort(rng.choice(kept + 1, size=len(lengths), replace=len(lengths) > kept + 1))
    taken = np.zeros(len(candidates), dtype=bool)
    offset = 0  # masked tokens placed before the current gap
    for gap, length in zip(gaps, rng.permutation(lengths), strict=True):
        taken[gap + offset : gap + offset + length] = True
        offset += length
    mask = np.zeros(len(maskable), dtype=bool)
    mask[candidates[taken]] = True
    return mask


def block_mask(
    grid: int,
    ratio: float,
    rng: np.random.Generator,
    min_block: int = 16,
    aspect_range: tuple[float, float] = (0.3, 1 / 0.3),
    max_attempts: int = 100,
) -> np.ndarray:
    """BEiT's blockwise masking on a grid x grid patch grid: add random rectangles of at least `min_block`
    patches with aspect ratio in `aspect_range` until `round(ratio * grid**2)` patches are masked.

    A rectangle may overlap earlier ones but must add at least one and at most the remaining number of patches,
    so every connected masked region holds a whole rectangle (>= min_block patches). Returns bool [grid * grid],
    row-major like the model's patch order.
    """
    target = int(round(ratio * grid * grid))
    mask = np.zeros((grid, grid), dtype=bool)
    log_low, log_high = math.log(aspect_range[0]), math.log(aspect_range[1])
    count = 0
    while count < target:
        added = _add_block(mask, target - count, grid, min_block, log_low, log_high, rng, max_attempts)
        if added == 0:
            break
        count += added
    return mask.reshape(-1)


def _add_block(mask, remaining, grid, min_block, log_low, log_high, rng, max_attempts) -> int:
    for _ in range(max_attempts):
        area = rng.uniform(min_block, max(min_block, remaining))
        aspect = math.exp(rng.uniform(log_low, log_high))
        height = min(grid, max(1, round(math.sqrt(area * aspect))))
        width = min(grid, max(1, round(math.sqrt(area / aspect))))
        while height * width < min_block:  # rounding may dip below the minimum: grow the shorter side
            if height <= width and height < grid:
                height += 1
            else:
                width += 1
        top = int(rng.integers(grid - height + 1))
        left = int(rng.integers(grid - width + 1))
        block = mask[top : top + height, left : left + width]
        new = int(block.size - block.sum())
        if 0 < new <= remaining:
            block[:] = True
            return new
    return 0


def patch_edges(patches_per_side: int, scale: int = 1000) -> np.ndarray:
    """Cell edges of the patch grid on the 0..1000 box scale (the same cells as the visual tokens' boxes)."""
    return np.arange(patches_per_side + 1) * scale // patches_per_side


def masked_area_fraction(boxes: np.ndarray, patch_mask: np.ndarray, patches_per_side: int) -> np.ndarray:
    """For each box [N, 4] (0..1000), the fraction of its area lying on masked patches.

    Overlaps factorise over x and y, so the area on patch (r, c) is overlap_y[r] * overlap_x[c]. A box without
    area (a point or a line) takes the patch under its centre.
    """
    edges = patch_edges(patches_per_side).astype(np.float64)
    boxes = boxes.astype(np.float64)
    x0, y0, x1, y1 = (boxes[:, i : i + 1] for i in range(4))
    overlap_x = np.clip(np.minimum(x1, edges[1:]) - np.maximum(x0, edges[:-1]), 0, None)  # [N, grid]
    overlap_y = np.clip(np.minimum(y1, edges[1:]) - np.maximum(y0, edges[:-1]), 0, None)
    grid_mask = patch_mask.reshape(patches_per_side, patches_per_side).astype(np.float64)
    masked = np.einsum("nr,rc,nc->n", overlap_y, grid_mask, overlap_x)
    area = ((x1 - x0) * (y1 - y0))[:, 0]
    fraction = np.divide(masked, area, out=np.zeros_like(masked), where=area > 0)
    degenerate = area <= 0
    if degenerate.any():
        cx = np.clip(((x0 + x1) / 2)[degenerate, 0], 0, 999)
        cy = np.clip(((y0 + y1) / 2)[degenerate, 0], 0, 999)
        col = np.searchsorted(edges, cx, side="right") - 1
        row = np.searchsorted(edges, cy, side="right") - 1
        fraction[degenerate] = grid_mask[row, col]
    return fraction


def wpa_labels(
    boxes: np.ndarray, labelable: np.ndarray, text_mask: np.ndarray, patch_mask: np.ndarray, patches_per_side: int
) -> np.ndarray:
    """Word-patch alignment labels: for each unmasked, labelable text token, UNALIGNED (1) when at least half
    of its box's area lies on masked image patches, else ALIGNED (0); IGNORE for masked tokens, specials, padding.

    The paper labels a token by whether "the corresponding image patches" are masked; the half-area rule makes
    that precise for boxes spanning several patches.
    """
    labels = np.full(len(boxes), IGNORE, dtype=np.int64)
    use = labelable & ~text_mask
    if use.any():
        fraction = masked_area_fraction(boxes[use], patch_mask, patches_per_side)
        labels[use] = np.where(fraction >= 0.5, UNALIGNED, ALIGNED)
    return labels
