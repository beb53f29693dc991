"""Pretrain LayoutLMv3 (MLM + MIM + WPA) with DeepSpeed.

The YAML run config names the model flavor, the shards, the tokenizers, objectives, optimizer and schedule,
logging and checkpointing (configs/pretrain/*.yaml); its `deepspeed` key names the DeepSpeed JSON that alone
sets micro-batch, gradient accumulation, precision and ZeRO stage (ds_configs/*.json). Any setting of the YAML
can be overridden on the command line as --section.key VALUE (VALUE is read as YAML: 1e-4, true, [3, 5]).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from layoutlmv3.config_help import add_common_arguments, config_yaml, report_bad_config, settings_help
from layoutlmv3.pretraining.run_config import RunConfig, load_run_config
from layoutlmv3.training.signals import EXIT_OK

EPILOG = """\
examples:
  deepspeed launch/pretrain.py --config configs/pretrain/base.yaml
  DS_ACCELERATOR=cpu deepspeed --num_gpus 2 launch/pretrain.py --config configs/pretrain/tiny.yaml
  deepspeed launch/pretrain.py --config configs/pretrain/base.yaml --train.lr 5e-5 --deepspeed ds_configs/zero3_bf16.json

resuming: --resume auto (the default) continues from the newest complete checkpoint in checkpoint.dir, or starts
afresh if there is none; on another number of ranks it goes through DeepSpeed's universal checkpoint.

exit codes: 0 done (or train.stop_at_step reached); 2 unusable config or inputs; 3 too many non-finite losses
(train.max_bad_steps); 4 a checkpoint could not be written (disk full; the previous one is kept); 5 checkpoint.dir
is locked by another run (for checkpoint.lock_wait_s); 42 stopped by SIGUSR1/SIGTERM or a first Ctrl-C after saving
a checkpoint: requeue and resume; 1 anything else (a crash, a collective timeout).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog=f"{EPILOG}\n{settings_help(RunConfig)}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        usage="%(prog)s --config YAML [--out DIR] [--resume {auto,none,PATH}] [--print-config] [--section.key VALUE ...]",
    )
    add_common_arguments(
        parser,
        config_help="YAML run config (configs/pretrain/*.yaml)",
        out_help="output directory: logs in DIR/runs, checkpoints in DIR/checkpoints (overrides logging.dir and "
        "checkpoint.dir)",
        resume_help="auto: newest complete checkpoint if any (default); none: start afresh (refused if "
        "checkpoint.dir holds checkpoints); PATH: a checkpoint tag directory, e.g. checkpoints/pretrain/step00010000",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = build_parser().parse_known_args(argv)
    if args.out:  # paths as quoted YAML: a directory named 2024 stays a string
        out = Path(args.out)
        overrides += [
            "--logging.dir",
            json.dumps(str(out / "runs")),
            "--checkpoint.dir",
            json.dumps(str(out / "checkpoints")),
        ]
    try:
        config = load_run_config(args.config, overrides)
    except (OSError, ValueError) as error:
        return report_bad_config(error)
    if args.print_config:
        print(config_yaml(config), end="")
        return EXIT_OK
    from layoutlmv3.pretraining.job import run  # imports DeepSpeed: not needed for --help or --print-config

    return run(config, resume=args.resume)


if __name__ == "__main__":
    sys.exit(main())
