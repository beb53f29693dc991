"""FlexAttention against SDPA on the same weights and inputs: the loss and the gradients of the trainable
relative-position bias tables (the part only flex computes differently: inside the kernel, from lookup tables).

    python benchmarks/flex_check.py --flavor base --device cuda --dtype bf16 --json out/flex_check.json
    python benchmarks/flex_check.py --flavor tiny --device cpu --dtype fp32      # forward only: no CPU backward

Exit 0 when every figure is within its tolerance (fp32: 1e-5 relative on the loss, cosine >= 0.99999 on the
gradients; bf16/fp16: 2e-2 and 0.99, as the two paths round at different places), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from layoutlmv3.model import LayoutLMv3Config, LayoutLMv3Model  # noqa: E402
from layoutlmv3.model.relative_position import BucketBiasTable  # noqa: E402

TOLERANCES = {"fp32": (1e-5, 0.99999), "bf16": (2e-2, 0.99), "fp16": (2e-2, 0.99)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def random_batch(batch: int, length: int, vocab: int, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Padded text (every sample but the first loses a tail), boxes spread over the page, random images."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    x0, y0 = torch.randint(0, 900, (batch, length), generator=g), torch.randint(0, 950, (batch, length), generator=g)
    boxes = torch.stack([x0, y0, x0 + torch.randint(0, 100, x0.shape, generator=g), y0 + 40], dim=-1)
    for row in range(1, batch):
        used = length - 37 * row % length or length
        ids[row, used:], mask[row, used:], boxes[row, used:] = 1, 0, 0
    pixels = torch.randn(batch, 3, 224, 224, generator=g)
    batch_inputs = {"input_ids": ids, "bbox": boxes, "attention_mask": mask, "pixel_values": pixels}
    return {name: tensor.to(device) for name, tensor in batch_inputs.items()}


def loss_and_grads(model: LayoutLMv3Model, inputs: dict, dtype: torch.dtype, backward: bool):
    """A scalar that depends on every output position, and the bias tables' gradients."""
    model.zero_grad(set_to_none=True)
    device_type = inputs["input_ids"].device.type
    with torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32), torch.set_grad_enabled(backward):
        hidden = model(**inputs).last_hidden_state.float()
    weights = torch.linspace(-1, 1, hidden.shape[-1], device=hidden.device)
    loss = (hidden * weights).mean()
    grads = {}
    if backward:
        loss.backward()
        grads = {
            name: module.weight.grad.detach().float().clone()
            for name, module in model.named_modules()
            if isinstance(module, BucketBiasTable)
        }
    return loss.detach().float(), grads, hidden.detach()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flavor", default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--text-length", type=int, default=315, help="text tokens (+197 visual)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    backward = args.device != "cpu"  # PyTorch has no CPU backward for FlexAttention
    config = LayoutLMv3Config.from_flavor(
        args.flavor, attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0, attn_implementation="sdpa"
    )
    torch.manual_seed(0)
    model = LayoutLMv3Model(config).to(args.device)
    for module in model.modules():  # visible biases, so a wrong lookup shows
        if isinstance(module, BucketBiasTable):
            torch.nn.init.normal_(module.weight, std=1.0)
    inputs = random_batch(args.batch, args.text_length, config.vocab_size, args.device)
    dtype = DTYPES[args.dtype]
    reference_loss, reference_grads, reference_hidden = loss_and_grads(model, inputs, dtype, backward)
    model.set_attn_implementation("flex")
    flex_loss, flex_grads, flex_hidden = loss_and_grads(model, inputs, dtype, backward)
    loss_tolerance, cosine_floor = TOLERANCES[args.dtype]
    relative = float((flex_loss - reference_loss).abs() / reference_loss.abs().clamp_min(1e-12))
    figures = {
        "flavor": args.flavor,
        "device": args.device,
        "dtype": args.dtype,
        "backward": backward,
        "loss_sdpa": float(reference_loss),
        "loss_flex": float(flex_loss),
        "loss_relative_difference": relative,
        "hidden_max_abs_difference": float((flex_hidden - reference_hidden).abs().max()),
        "bias_table_gradients": {},
    }
    ok = relative <= loss_tolerance
    for name, reference in reference_grads.items():
        got = flex_grads[name]
        cosine = float(torch.nn.functional.cosine_similarity(got.flatten(), reference.flatten(), dim=0))
        max_relative = float((got - reference).abs().max() / reference.abs().max().clamp_min(1e-12))
        figures["bias_table_gradients"][name] = {"cosine": cosine, "max_relative_difference": max_relative}
        ok = ok and cosine >= cosine_floor
    figures["within_tolerance"] = ok
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
