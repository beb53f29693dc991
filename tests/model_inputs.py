"""Random but realistic model inputs for tests: padded text, spread-out boxes, images."""

from __future__ import annotations

import torch


def random_boxes(batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """Valid 0..1000 boxes spread over the whole page, so near and far (log-bucketed) distances both occur."""
    x0 = torch.randint(0, 900, (batch, length), generator=generator)
    y0 = torch.randint(0, 950, (batch, length), generator=generator)
    x1 = x0 + torch.randint(0, 100, (batch, length), generator=generator)
    y1 = y0 + torch.randint(0, 50, (batch, length), generator=generator)
    return torch.stack([x0, y0, x1, y1], dim=-1)


def random_inputs(
    batch: int = 2, length: int = 150, vocab_size: int = 50265, pad_id: int = 1, seed: int = 0
) -> dict[str, torch.Tensor]:
    """input_ids with <s> ... </s> and right padding on all but the first sample; matching boxes, mask, images."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, vocab_size, (batch, length), generator=generator)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    bbox = random_boxes(batch, length, generator)
    for row in range(batch):
        used = length - 37 * row if row else length
        input_ids[row, 0], input_ids[row, used - 1] = 0, 2
        input_ids[row, used:] = pad_id
        attention_mask[row, used:] = 0
        bbox[row, used:] = 0
    pixel_values = torch.randn(batch, 3, 224, 224, generator=generator)
    return {"input_ids": input_ids, "bbox": bbox, "attention_mask": attention_mask, "pixel_values": pixel_values}
