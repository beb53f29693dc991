"""Train the discrete image tokenizer (VQ-VAE) whose codes LayoutLMv3's masked image modeling predicts.

Runs on the same DeepSpeed trainer as pretraining and fine-tuning: one process, or N ranks under
`deepspeed`/`torchrun`/`srun`, resumable from output.dir/checkpoints. The YAML file has the sections `model`
(a flavor plus ImageTokenizerConfig overrides), `data` (page images, webdataset shards or synthetic pages, and
the held-out split), `train`, `logging`, `checkpoint`, `output` and `deepspeed` (configs/image_tokenizer/*.yaml,
layoutlmv3/pretraining/image_tokenizer_job.py); any setting can be overridden as --section.key VALUE. The output
directory receives the tokenizer (config.json + model.safetensors), eval_metrics.json and reconstructions.png.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from data_prep.synth import generate_page, page_id
from layoutlmv3.atomic_files import file_in_place, remove_dead_temporaries_of
from layoutlmv3.config_help import add_common_arguments, config_yaml, report_bad_config, settings_help
from layoutlmv3.pretraining.image_tokenizer_job import (
    METRICS_FILE,
    ImageTokenizerRunConfig,
    load_image_tokenizer_config,
    run,
)
from layoutlmv3.training.signals import EXIT_OK

EPILOG = """\
examples:
  python launch/train_image_tokenizer.py --config configs/image_tokenizer/tiny.yaml
  python launch/train_image_tokenizer.py --config configs/image_tokenizer/tiny.yaml --images data/synth/images
  deepspeed --num_gpus 8 launch/train_image_tokenizer.py --config configs/image_tokenizer/base.yaml \\
      --shards 'data/shards/train-{000000..000099}.tar'

exit codes: as launch/pretrain.py -- 0 done, 2 unusable config or data, 4 a checkpoint could not be written,
5 checkpoint.dir locked by another run, 42 stopped by SIGUSR1/SIGTERM or a first Ctrl-C after saving a checkpoint
(run again to resume), 1 anything else.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog=f"{EPILOG}\n{settings_help(ImageTokenizerRunConfig)}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        usage="%(prog)s --config YAML [--images DIR | --shards PATTERN] [--out DIR] [--steps N] [--resume R] [--print-config] [--section.key VALUE]",
    )
    add_common_arguments(
        parser,
        config_help="YAML run config (configs/image_tokenizer/*.yaml)",
        out_help="output directory (overrides output.dir)",
        resume_help="auto: continue from the newest complete checkpoint in output.dir/checkpoints if any (default); "
        "none: start afresh (refused while checkpoints exist); PATH: a checkpoint tag directory",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--images",
        metavar="DIR",
        help="train on a folder of page images (PNG/JPEG/TIFF, recursive, resized to 112x112) instead of the "
        "config's data source",
    )
    source.add_argument(
        "--shards",
        metavar="DIR_OR_PATTERN",
        help="train on webdataset shards (their tok.png) instead: a data_prep shard directory, its manifest.json, a "
        "brace pattern of .tar files or http(s):// / pipe: URLs",
    )
    parser.add_argument("--steps", metavar="N", type=int, help="training steps (overrides train.steps)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (logging.progress false)")
    return parser


def command_line_overrides(args: argparse.Namespace) -> list[str]:
    """The shorthand options as dotted overrides (a source option replaces the config's source)."""
    overrides = []  # paths as quoted YAML: a folder named 2024 or a pattern {a,b} stays a string
    if args.images or args.shards:
        chosen, other = ("images", "shards") if args.images else ("shards", "images")
        overrides += ["--data.synthetic_pages", "0", f"--data.{chosen}", json.dumps(args.images or args.shards)]
        overrides += [f"--data.{other}", "null"]
    if args.out:
        overrides += ["--output.dir", json.dumps(args.out)]
    if args.steps is not None:
        overrides += ["--train.steps", str(args.steps)]
    if args.quiet:
        overrides += ["--logging.progress", "false"]
    return overrides


def with_synthetic_folder(config: ImageTokenizerRunConfig) -> ImageTokenizerRunConfig:
    """The config training on data.synthetic_pages data_prep.synth pages, written once as PNG files named by page
    id under the output directory (the ranks of a node start together: the first writes under a lock)."""
    data = config.data
    folder = Path(config.output.dir) / "synthetic_pages"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX)
        pages = {index: folder / f"{page_id(data.synthetic_seed, index)}.png" for index in range(data.synthetic_pages)}
        missing = {index: path for index, path in pages.items() if not path.is_file()}
        remove_dead_temporaries_of(missing.values())  # the half pages of a run killed while writing them
        for index, path in missing.items():  # written under a temporary name: a killed run leaves no half page
            with file_in_place(path) as temporary:
                generate_page(data.synthetic_seed, index).image.save(temporary, format="PNG", compress_level=1)
    data.images, data.synthetic_pages = str(folder), 0
    return config


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = build_parser().parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_image_tokenizer_config(args.config, [*overrides, *command_line_overrides(args)])
        if Path(config.output.dir).exists() and not Path(config.output.dir).is_dir():  # named as the user gave it
            raise ValueError(f"{'--out' if args.out else 'output.dir'} {config.output.dir} is a file, not a directory")
        if args.print_config:
            print(config_yaml(config), end="")
            return EXIT_OK
        if config.data.synthetic_pages > 0:
            config = with_synthetic_folder(config)
    except (OSError, ValueError) as error:  # bad config or output directory: one line, no traceback
        return report_bad_config(error)
    code = run(config, args.resume)
    metrics_file = Path(config.output.dir) / METRICS_FILE
    if code == EXIT_OK and os.environ.get("RANK", "0") == "0" and metrics_file.is_file():
        print(json.dumps(json.loads(metrics_file.read_text())))
    return code


if __name__ == "__main__":
    sys.exit(main())
