"""One full training step, ours vs transformers' LayoutLMv3, side by side in one run.

A step is forward, the loss, backward and the optimizer step, at --text-length text tokens + 197 visual tokens.
Variants (our model per attention implementation, with and without torch.compile of the layers; transformers'
`LayoutLMv3ForTokenClassification` with the same config, batch, optimizer and autocast) start from the same
weights, are warmed up, then timed in alternating rounds so that machine noise hits all of them alike. The
median step time gives samples/s, tokens/s and MFU; peak memory is measured per variant on its own.

    python benchmarks/train_step.py --flavor base --batch 8,16,32 --device cuda --dtype bf16 --plot docs/x.png
    python benchmarks/train_step.py --flavor small --batch 4 --device cpu

MFU = (6 * N * T + 12 * L * H * T^2) * batch / step time / peak, with N the non-embedding parameters counted as
the training loop counts them (engine.non_embedding_parameters), T the text + visual tokens, L layers, H hidden
size (layoutlmv3.training.metrics.model_flops_per_sample); the peak is the dense bf16/fp16 tensor-core figure of
the GPU (PEAK_TFLOPS there) or --peak-tflops.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import torch

from layoutlmv3.model import LayoutLMv3Config, LayoutLMv3ForTokenClassification
from layoutlmv3.model.hf_interop import config_to_hf, native_to_hf
from layoutlmv3.training.engine import non_embedding_parameters
from layoutlmv3.training.metrics import device_peak_tflops, estimate_mfu, model_flops_per_sample

NUM_LABELS = 7  # FUNSD's BIO tags
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Variant:
    """One contender: `impl` ours|hf, our attention implementation, compiled or not."""

    impl: str
    attn: str = "eager"
    compiled: bool = False

    @property
    def name(self) -> str:
        return f"{self.impl}-{self.attn}" + ("+compile" if self.compiled else "")


@dataclass
class Result:
    variant: str
    batch: int
    step_times_s: list[float] = field(default_factory=list)
    first_loss: float = float("nan")
    peak_memory_gb: float | None = None
    compile_s: float = 0.0

    def summary(self, tokens_per_sample: int, flops_per_sample: float, peak_tflops: float | None) -> dict:
        median = statistics.median(self.step_times_s)
        return {
            "variant": self.variant,
            "batch": self.batch,
            "step_ms": 1000 * median,
            "step_ms_min": 1000 * min(self.step_times_s),
            "samples_per_s": self.batch / median,
            "tokens_per_s": self.batch * tokens_per_sample / median,
            "mfu": estimate_mfu(flops_per_sample * self.batch, median, 1, peak_tflops) if peak_tflops else None,
            "peak_memory_gb": self.peak_memory_gb,
            "first_loss": self.first_loss,
            "warmup_and_compile_s": self.compile_s,
            "timed_steps": len(self.step_times_s),
        }


# ---- models --------------------------------------------------------------------------------------------------
def model_config(args: argparse.Namespace) -> LayoutLMv3Config:
    return LayoutLMv3Config.from_flavor(
        args.flavor,
        attention_probs_dropout_prob=args.attention_dropout,
        max_position_embeddings=max(514, args.text_length + 2),
        gradient_checkpointing=args.gradient_checkpointing,
        num_labels=NUM_LABELS,
    )


def reference_weights(config: LayoutLMv3Config, seed: int) -> tuple[dict[str, torch.Tensor], int]:
    """One set of initial weights every variant starts from, so their losses can be compared, and the model's
    non-embedding parameter count for FLOPs, counted exactly as the training loop counts it for its MFU."""
    torch.manual_seed(seed)
    model = LayoutLMv3ForTokenClassification(config)
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}, non_embedding_parameters(model)


def build_model(variant: Variant, config: LayoutLMv3Config, weights: dict, device: torch.device) -> torch.nn.Module:
    config = dataclasses.replace(config, attn_implementation=variant.attn)
    if variant.impl == "ours":
        model = LayoutLMv3ForTokenClassification(config)
        model.load_state_dict(weights)
        model.to(device).train()
        if variant.compiled:
            model.compile_layers()
        return model
    import transformers

    hf_config = config_to_hf(config, "LayoutLMv3ForTokenClassification")
    hf_config.num_labels = NUM_LABELS
    model = transformers.LayoutLMv3ForTokenClassification(hf_config)
    hf_weights, _ = native_to_hf(weights)
    missing, unexpected = model.load_state_dict(hf_weights, strict=False)
    missing = [name for name in missing if not name.endswith(("position_ids", "visual_bbox"))]
    if missing or unexpected:
        raise RuntimeError(f"weights do not map onto transformers' model: missing {missing}, unexpected {unexpected}")
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.to(device).train()
    if variant.compiled:
        for layer in model.layoutlmv3.encoder.layer:
            layer.compile()
    return model


def build_optimizer(name: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The same optimizer for every variant: DeepSpeed's FusedAdam (what pretraining uses on GPU), torch's fused
    AdamW, or torch's foreach AdamW (CPU)."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    if name == "deepspeed-fused":
        from deepspeed.ops.adam import FusedAdam

        return FusedAdam(parameters, lr=1e-5, weight_decay=0.01, adam_w_mode=True)
    return torch.optim.AdamW(parameters, lr=1e-5, weight_decay=0.01, fused=name == "fused" or None)


def resolve_optimizer(name: str) -> str:
    """DeepSpeed's FusedAdam is built on first use and needs the CUDA toolkit (nvcc); without it fall back to
    torch's fused AdamW (the same single-kernel update) and say so."""
    if name != "deepspeed-fused":
        return name
    try:
        build_optimizer(name, torch.nn.Linear(1, 1, device="cuda"))
    except Exception as error:  # ImportError, or the op's JIT build failing
        print(f"DeepSpeed FusedAdam unavailable ({type(error).__name__}: {error}); using torch AdamW(fused=True)")
        return "fused"
    return name


def make_batch(batch: int, text_length: int, vocab_size: int, device: torch.device, seed: int) -> dict:
    """Full-length text (no padding: the step is measured at exactly text_length tokens), spread-out boxes."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, vocab_size, (batch, text_length), generator=g)
    input_ids[:, 0], input_ids[:, -1] = 0, 2
    x0, y0 = (
        torch.randint(0, 900, (batch, text_length), generator=g),
        torch.randint(0, 950, (batch, text_length), generator=g),
    )
    bbox = torch.stack(
        [x0, y0, x0 + torch.randint(0, 100, x0.shape, generator=g), y0 + torch.randint(0, 50, y0.shape, generator=g)],
        -1,
    )
    labels = torch.randint(0, NUM_LABELS, (batch, text_length), generator=g)
    labels[:, 0] = labels[:, -1] = -100
    tensors = {
        "input_ids": input_ids,
        "bbox": bbox,
        "attention_mask": torch.ones(batch, text_length, dtype=torch.long),
        "pixel_values": torch.randn(batch, 3, 224, 224, generator=g),
        "labels": labels,
    }
    return {name: tensor.to(device) for name, tensor in tensors.items()}


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def train_step(model, optimizer, batch: dict, dtype: torch.dtype | None, device: torch.device) -> torch.Tensor:
    with autocast(device, dtype):
        loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def evaluation_loss(model, batch: dict, dtype: torch.dtype | None, device: torch.device) -> float:
    """The loss without dropout: equal across variants up to rounding, a check that they compute the same thing."""
    model.eval()
    with torch.no_grad(), autocast(device, dtype):
        loss = model(**batch).loss.item()
    model.train()
    return loss


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- measurement ---------------------------------------------------------------------------------------------
def time_variants(args, config, weights, variants: list[Variant], batch_size: int, device) -> list[Result]:
    """Warm every variant up (compiling it), then time them in alternating rounds."""
    batch = make_batch(batch_size, args.text_length, config.vocab_size, device, args.seed)
    contenders = []
    for variant in variants:
        model = build_model(variant, config, weights, device)
        optimizer = build_optimizer(args.optimizer, model)
        result = Result(variant.name, batch_size, first_loss=evaluation_loss(model, batch, DTYPES[args.dtype], device))
        started = time.perf_counter()
        for _ in range(args.warmup):
            train_step(model, optimizer, batch, DTYPES[args.dtype], device)
        synchronize(device)
        result.compile_s = time.perf_counter() - started
        contenders.append((model, optimizer, result))
    for _ in range(args.rounds):
        for model, optimizer, result in contenders:
            for _ in range(args.steps):
                synchronize(device)
                started = time.perf_counter()
                train_step(model, optimizer, batch, DTYPES[args.dtype], device)
                synchronize(device)
                result.step_times_s.append(time.perf_counter() - started)
    return [result for _, _, result in contenders]


def peak_memory_gb(args, config, weights, variant: Variant, batch_size: int, device) -> float:
    """Peak memory of a variant alone: CUDA allocator peak (model, optimizer state, activations), or on CPU the
    growth of the peak resident set of a fresh process over its size before the model was built."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        model = build_model(variant, config, weights, device)
        optimizer = build_optimizer(args.optimizer, model)
        batch = make_batch(batch_size, args.text_length, config.vocab_size, device, args.seed)
        for _ in range(2):
            train_step(model, optimizer, batch, DTYPES[args.dtype], device)
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del model, optimizer, batch
        return peak / 2**30
    command = [sys.executable, __file__, *args.argv, "--memory-probe", variant.name, "--batch", str(batch_size)]
    probe = subprocess.run(
        command, capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": _repo_path()}
    )
    return json.loads(probe.stdout.strip().splitlines()[-1])["peak_memory_gb"]


def memory_probe(args, config, weights, variant: Variant, device) -> None:
    """Child process of peak_memory_gb on CPU: build one variant, run two steps, print the growth of the peak
    resident set (VmHWM, reset first so that imports and the reference weights do not count)."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: reset VmHWM to the current RSS
    baseline = _proc_status_bytes("VmHWM")
    model = build_model(variant, config, weights, device)
    optimizer = build_optimizer(args.optimizer, model)
    batch = make_batch(int(args.batch), args.text_length, config.vocab_size, device, args.seed)
    for _ in range(2):
        train_step(model, optimizer, batch, DTYPES[args.dtype], device)
    print(json.dumps({"peak_memory_gb": (_proc_status_bytes("VmHWM") - baseline) / 2**30}))


def _proc_status_bytes(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"/proc/self/status has no {field_name}")


def _repo_path() -> str:
    root = str(Path(__file__).resolve().parents[1])
    return os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))


# ---- command line --------------------------------------------------------------------------------------------
def parse_variants(args, device: torch.device) -> list[Variant]:
    attns = (
        args.attn.split(",")
        if args.attn
        else (["eager", "sdpa", "flex"] if device.type == "cuda" else ["eager", "sdpa"])
    )
    compiled = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    variants = []
    for impl in args.impl.split(","):
        if impl not in ("ours", "hf"):
            raise SystemExit(f"--impl takes ours and/or hf, got {impl!r}")
        for flag in compiled:
            for attn in attns if impl == "ours" else ["eager"]:  # transformers' LayoutLMv3 has eager attention only
                if attn == "flex" and device.type != "cuda":
                    raise SystemExit("flex needs CUDA for training (PyTorch has no CPU backward for FlexAttention)")
                if attn == "flex" and args.attention_dropout:
                    raise SystemExit("flex runs without attention dropout: pass --attention-dropout 0")
                variants.append(Variant(impl, attn, flag))
    return variants


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flavor", default="tiny", help="model flavor: tiny, small, base, large (default tiny)")
    parser.add_argument("--batch", default="4", help="batch size, or a comma list for a throughput-vs-batch sweep")
    parser.add_argument("--impl", default="ours,hf", help="ours, hf or both (default ours,hf)")
    parser.add_argument(
        "--attn", default=None, help="our attention implementations (default eager,sdpa[,flex on CUDA])"
    )
    parser.add_argument("--compile", choices=("off", "on", "both"), default="both", help="torch.compile the layers")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype", choices=tuple(DTYPES), default=None, help="autocast dtype (default bf16 on CUDA, fp32 on CPU)"
    )
    parser.add_argument("--optimizer", choices=("adamw", "fused", "deepspeed-fused"), default=None,
                        help="default deepspeed-fused on CUDA, adamw on CPU")  # fmt: skip
    parser.add_argument("--text-length", type=int, default=512)
    parser.add_argument("--attention-dropout", type=float, default=0.0,
                        help="attention-probability dropout (0 by default: FlexAttention has none)")  # fmt: skip
    parser.add_argument(
        "--gradient-checkpointing", action="store_true", help="activation checkpointing in every variant"
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant (compilation happens here)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds over the variants")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: GPU table)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-variant peak-memory measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--plot", type=Path, default=None, help="PNG of samples/s vs batch size (needs matplotlib)")
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = _without_option(argv, "--batch")  # the CPU memory probe gets one batch size of its own
    args.dtype = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    args.optimizer = args.optimizer or ("deepspeed-fused" if args.device.startswith("cuda") else "adamw")
    return args


def _without_option(argv: list[str], option: str) -> list[str]:
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            kept.append(arg)
    return kept


def format_table(rows: list[dict]) -> str:
    header = f"{'variant':<22} {'batch':>5} {'step ms':>9} {'samples/s':>10} {'tokens/s':>10} {'MFU':>6} {'peak GB':>8} {'loss0':>7}"
    lines = [header, "-" * len(header)]
    for row in rows:
        mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "n/a"
        memory = f"{row['peak_memory_gb']:.2f}" if row["peak_memory_gb"] is not None else "n/a"
        lines.append(
            f"{row['variant']:<22} {row['batch']:>5} {row['step_ms']:>9.1f} {row['samples_per_s']:>10.2f} "
            f"{row['tokens_per_s']:>10.0f} {mfu:>6} {memory:>8} {row['first_loss']:>7.4f}"
        )
    return "\n".join(lines)


def plot_throughput(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for variant in dict.fromkeys(row["variant"] for row in rows):
        points = sorted((row["batch"], row["samples_per_s"]) for row in rows if row["variant"] == variant)
        axis.plot(
            *zip(*points, strict=True), marker="o", label=variant, linestyle="--" if variant.startswith("hf") else "-"
        )
    axis.set(xlabel="batch size", ylabel="samples / s", title=title)
    axis.set_xscale("log", base=2)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    )


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = model_config(args)
    weights, non_embedding = reference_weights(config, args.seed)
    variants = parse_variants(args, device)
    args.optimizer = resolve_optimizer(args.optimizer)
    if args.memory_probe:
        memory_probe(args, config, weights, next(v for v in variants if v.name == args.memory_probe), device)
        return {}

    tokens_per_sample = args.text_length + config.num_visual_tokens
    flops = model_flops_per_sample(
        non_embedding, config.num_hidden_layers, config.hidden_size, args.text_length, config.num_visual_tokens
    )
    peak = device_peak_tflops(args.dtype if device.type == "cuda" else "fp32", args.peak_tflops)
    rows = []
    for batch_size in [int(b) for b in args.batch.split(",")]:
        results = time_variants(args, config, weights, variants, batch_size, device)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        for variant, result in zip(variants, results, strict=True):
            if not args.no_memory:
                result.peak_memory_gb = peak_memory_gb(args, config, weights, variant, batch_size, device)
            rows.append(result.summary(tokens_per_sample, flops, peak))
    report = {
        "date": date.today().isoformat(),
        "device": device_description(device),
        "torch": torch.__version__,
        "flavor": args.flavor,
        "dtype": args.dtype,
        "optimizer": args.optimizer,
        "text_length": args.text_length,
        "visual_tokens": config.num_visual_tokens,
        "gradient_checkpointing": args.gradient_checkpointing,
        "flops_per_sample": flops,
        "peak_tflops": peak,
        "command": "python benchmarks/train_step.py " + " ".join(argv),
        "results": rows,
    }
    print(
        f"{args.flavor}, {args.dtype}, {args.optimizer}, T = {args.text_length} + {config.num_visual_tokens}, {report['device']}"
    )
    print(format_table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        plot_throughput(rows, args.plot, f"{args.flavor} training step, {args.dtype}, {report['device']}")
    return report


if __name__ == "__main__":
    main()
