"""Padding waste: the share of a training step's sequence positions (text + 197 visual) and attention-score work
that is padding, for each `data.pad_to` policy and for length bucketing, on real shards.

Pages are read from the shards in stream order and cut into batches as the loader does (a page longer than
max_length - 2 content tokens is cropped to a full window, so it has no padding). Policies:
  max_length       every batch padded to max_length (the paper's setting; one shape for torch.compile)
  longest          each batch padded to its longest page
  multiple-of-64   the longest page rounded up to a multiple of 64 (at most max_length / 64 shapes)
  bucketed-64      multiple-of-64 after sorting each group of --bucket-batches batches by length (length
                   bucketing: short pages are batched with short pages)

    python benchmarks/padding_waste.py outputs/funsd_gain/shards/train --max-length 512 --batch 16
"""

from __future__ import annotations

import argparse
import json
import math
import tarfile

import numpy as np

from layoutlmv3.data.decode import decode_tokens
from layoutlmv3.data.sample_format import TOKENS_FILE
from layoutlmv3.data.shards import list_shards

VISUAL_TOKENS = 197
SPECIALS = 2  # <s> and </s>


def page_lengths(source: str) -> list[int]:
    """Content tokens per page, read straight from the shards' token arrays."""
    lengths = []
    for shard in list_shards(source):
        with tarfile.open(shard.url) as tar:
            for member in tar:
                if member.name.endswith("." + TOKENS_FILE):
                    input_ids, _, _ = decode_tokens(tar.extractfile(member).read())
                    lengths.append(len(input_ids))
    return lengths


def padded_length(longest: int, policy: str, max_length: int) -> int:
    if policy == "max_length":
        return max_length
    if policy == "longest":
        return longest
    return min(max_length, 64 * math.ceil(longest / 64))


def waste(lengths: list[int], batch: int, max_length: int, policy: str, bucket_batches: int) -> dict:
    text = [min(n + SPECIALS, max_length) for n in lengths]
    if policy == "bucketed-64":
        group = batch * bucket_batches
        text = [n for start in range(0, len(text), group) for n in sorted(text[start : start + group])]
        policy = "multiple-of-64"
    real_positions = padded_positions = real_scores = padded_scores = 0
    shapes = set()
    for start in range(0, len(text) - batch + 1, batch):
        rows = text[start : start + batch]
        width = padded_length(max(rows), policy, max_length)
        shapes.add(width)
        for n in rows:
            real_positions += n + VISUAL_TOKENS
            padded_positions += width + VISUAL_TOKENS
            real_scores += (n + VISUAL_TOKENS) ** 2
            padded_scores += (width + VISUAL_TOKENS) ** 2
    return {
        "padding_share_of_positions": 1 - real_positions / padded_positions,
        "padding_share_of_attention": 1 - real_scores / padded_scores,
        "mean_positions_per_sample": padded_positions / (len(text) // batch * batch),
        "distinct_shapes": len(shapes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shards", help="shard directory (manifest.json) or pattern")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--bucket-batches", type=int, default=8, help="batches sorted together by length-bucketing")
    parser.add_argument("--seed", type=int, default=0, help="page order shuffle (the loader's shuffle buffer)")
    args = parser.parse_args()
    lengths = page_lengths(args.shards)
    np.random.default_rng(args.seed).shuffle(lengths)
    content = np.array(lengths)
    print(
        f"{len(lengths)} pages; content tokens per page: median {np.median(content):.0f}, mean {content.mean():.0f}, "
        f"{(content + SPECIALS >= args.max_length).mean():.0%} fill a {args.max_length}-token window"
    )
    report = {}
    for policy in ("max_length", "longest", "multiple-of-64", "bucketed-64"):
        report[policy] = waste(lengths, args.batch, args.max_length, policy, args.bucket_batches)
        row = report[policy]
        print(
            f"{policy:<15} padding {row['padding_share_of_positions']:6.1%} of positions, "
            f"{row['padding_share_of_attention']:6.1%} of attention scores, "
            f"{row['mean_positions_per_sample']:6.0f} positions/sample, {row['distinct_shapes']} shapes"
        )
    print(json.dumps({"pages": len(lengths), "batch": args.batch, "max_length": args.max_length, "policies": report}))


if __name__ == "__main__":
    main()
