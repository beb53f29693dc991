"""One training step of the tiny image tokenizer, plain torch vs the DeepSpeed engine the trainer uses, side by
side in one process (the machine's speed drifts: only same-run figures compare).

    OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu python benchmarks/image_tokenizer_step.py [--steps 40] [--batch 16]

Prints milliseconds per step (forward + backward + AdamW) after warm-up, for each; the figures go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import deepspeed
import torch

from layoutlmv3.pretraining.image_tokenizer import ImageTokenizer, ImageTokenizerConfig
from layoutlmv3.training.distributed import run_alone_without_launcher


def milliseconds_per_step(step: Callable[[], None], steps: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    images = torch.rand(args.batch, 3, 112, 112)
    plain = ImageTokenizer(ImageTokenizerConfig.from_flavor("tiny")).train()
    optimizer = torch.optim.AdamW(plain.parameters(), lr=1e-3)

    def plain_step() -> None:
        output = plain(images)
        optimizer.zero_grad()
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), 1.0)
        optimizer.step()

    run_alone_without_launcher()
    deepspeed.init_distributed()
    model = ImageTokenizer(ImageTokenizerConfig.from_flavor("tiny")).train()
    config = {"train_micro_batch_size_per_gpu": args.batch, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
              "zero_optimization": {"stage": 0}, "steps_per_print": 10**9}  # fmt: skip
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3), config=config
    )

    def engine_step() -> None:
        output = engine(images)
        engine.backward(output.loss)
        engine.step()

    print(f"plain torch: {milliseconds_per_step(plain_step, args.steps):.1f} ms/step")
    print(f"DeepSpeed engine (fp32, ZeRO-0): {milliseconds_per_step(engine_step, args.steps):.1f} ms/step")
    print(f"torch threads: {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
