"""Visual tokens on the device in the training step, or precomputed into the shards? The measurement behind the
choice in layoutlmv3/pretraining/step.py.

For one batch it times, side by side in alternating rounds: a full pretraining step (forward with MLM + MIM +
WPA losses, backward, AdamW) given the visual tokens, and the frozen image tokenizer's encode of the same batch's
112 px images (what computing them on the device adds to each step). It also times what precomputing would save
the loader: decoding the 112 px page image from PNG, per sample.

    python benchmarks/visual_tokens.py --flavor tiny --image-tokenizer tiny --batch 8
    python benchmarks/visual_tokens.py --flavor base --image-tokenizer base --batch 2 --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import time
from datetime import date

import numpy as np
import torch
from PIL import Image

from layoutlmv3.data.decode import decode_png
from layoutlmv3.model import LayoutLMv3Config
from layoutlmv3.pretraining.image_tokenizer import ImageTokenizer, ImageTokenizerConfig
from layoutlmv3.pretraining.model import LayoutLMv3ForPretraining

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_batch(batch: int, text_length: int, config: LayoutLMv3Config, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    patches = config.patches_per_side**2
    x0, y0 = (
        torch.randint(0, 900, (batch, text_length), generator=g),
        torch.randint(0, 950, (batch, text_length), generator=g),
    )
    labelled = torch.rand(batch, text_length, generator=g)
    tensors = {
        "input_ids": torch.randint(5, config.vocab_size, (batch, text_length), generator=g),
        "bbox": torch.stack([x0, y0, x0 + 50, y0 + 20], -1),
        "attention_mask": torch.ones(batch, text_length, dtype=torch.long),
        "pixel_values": torch.randn(batch, 3, 224, 224, generator=g),
        "mlm_labels": torch.where(
            labelled < 0.3, torch.randint(5, config.vocab_size, labelled.shape, generator=g), -100
        ),
        "patch_mask": torch.rand(batch, patches, generator=g) < 0.4,
        "wpa_labels": torch.where(labelled >= 0.3, (labelled > 0.65).long(), -100),
        "tokenizer_pixel_values": torch.rand(batch, 3, 112, 112, generator=g),
    }
    return {name: tensor.to(device) for name, tensor in tensors.items()}


def page_png_112(seed: int) -> bytes:
    """A 112 px page-like image (text-line strokes on white) as the shard writer stores it."""
    rng = np.random.default_rng(seed)
    page = np.full((112, 112), 255, np.uint8)  # grayscale, as scanned pages are stored
    for row in range(6, 106, 5):
        for start in range(4, 100, int(rng.integers(8, 20))):
            page[row : row + 2, start : start + int(rng.integers(3, 10))] = int(rng.integers(0, 90))
    buffer = io.BytesIO()
    Image.fromarray(page).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flavor", default="tiny", help="LayoutLMv3 flavor")
    parser.add_argument(
        "--image-tokenizer", default="tiny", help="image tokenizer flavor (tiny: 512 codes, base: 8192)"
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--text-length", type=int, default=512)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype", choices=tuple(DTYPES), default=None, help="autocast (default bf16 on CUDA, fp32 on CPU)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext

    tokenizer = (
        ImageTokenizer(ImageTokenizerConfig.from_flavor(args.image_tokenizer)).to(device).eval().requires_grad_(False)
    )
    config = LayoutLMv3Config.from_flavor(
        args.flavor, visual_codebook_size=tokenizer.codebook_size, attn_implementation="sdpa"
    )
    model = LayoutLMv3ForPretraining(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batch = make_batch(args.batch, args.text_length, config, device)
    model_inputs = {
        name: batch[name]
        for name in ("input_ids", "bbox", "attention_mask", "pixel_values", "mlm_labels", "patch_mask", "wpa_labels")
    }

    def encode() -> torch.Tensor:
        with torch.no_grad(), autocast():
            return tokenizer.encode(batch["tokenizer_pixel_values"])

    targets = encode()

    def step() -> None:
        with autocast():
            loss = model(**model_inputs, mim_targets=targets).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def timed(function) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    for _ in range(2):  # warm-up
        step()
        encode()
    step_times, encode_times = [], []
    for _ in range(args.rounds):
        step_times.append(timed(step))
        encode_times.append(timed(encode))
    png = page_png_112(0)
    decode_times = [timed(lambda: decode_png(png, 112)) for _ in range(200)]

    step_ms, encode_ms = 1000 * statistics.median(step_times), 1000 * statistics.median(encode_times)
    report = {
        "date": date.today().isoformat(),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads",
        "flavor": args.flavor,
        "image_tokenizer": args.image_tokenizer,
        "batch": args.batch,
        "text_length": args.text_length,
        "train_step_ms": step_ms,
        "encode_ms": encode_ms,
        "encode_share_of_step": encode_ms / step_ms,
        "png_112_decode_ms_per_sample": 1000 * statistics.median(decode_times),
        "codes_bytes_per_sample": config.patches_per_side**2 * 2,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
