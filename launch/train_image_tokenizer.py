"""Train the discrete image tokenizer (VQ-VAE) whose codes LayoutLMv3's masked image modeling predicts.

The YAML file has three sections: `model` (a flavor plus ImageTokenizerConfig fields), `data` (one source: page
images, webdataset shards or synthetic pages, and the held-out split) and `training` (optimiser, schedule, logging,
output); see configs/image_tokenizer/*.yaml and layoutlmv3/pretraining/image_tokenizer_training.py. The run
directory receives the tokenizer (config.json + model.safetensors), checkpoints, TensorBoard logs,
eval_metrics.json and reconstructions.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from data_prep.synth import generate_page, page_id
from layoutlmv3.pretraining.image_tokenizer_training import RunConfig, load_run_config, train

EPILOG = """\
examples:
  python launch/train_image_tokenizer.py --config configs/image_tokenizer/tiny.yaml
  python launch/train_image_tokenizer.py --config configs/image_tokenizer/tiny.yaml --images data/synth/images
  python launch/train_image_tokenizer.py --config configs/image_tokenizer/base.yaml --shards 'data/shards/train-{000000..000099}.tar'
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, type=Path, help="YAML run config (sections model, data, training)")
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
        help="train on webdataset shards (their tok.png) instead: a directory of *.tar, a brace pattern or a glob",
    )
    parser.add_argument("--out", metavar="DIR", help="run directory (overrides training.out_dir)")
    parser.add_argument("--steps", metavar="N", type=int, help="training steps (overrides training.steps)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def apply_overrides(config: RunConfig, args: argparse.Namespace) -> RunConfig:
    """The config with the command line's data source, output directory and step count, validated again."""
    data, training = config.data, config.training
    if args.images or args.shards:
        data = dataclasses.replace(data, images=args.images, shards=args.shards, synthetic_pages=0)
    if args.out:
        training = dataclasses.replace(training, out_dir=args.out)
    if args.steps is not None:
        training = dataclasses.replace(training, steps=args.steps)
    data.validate()
    training.validate()
    return dataclasses.replace(config, data=data, training=training)


def with_synthetic_folder(config: RunConfig) -> RunConfig:
    """The config training on data.synthetic_pages data_prep.synth pages, written once as PNG files named by page
    id under the run directory (the same keys, hence the same held-out split, as generating them in memory)."""
    data = config.data
    folder = Path(config.training.out_dir) / "synthetic_pages"
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(data.synthetic_pages):
        path = folder / f"{page_id(data.synthetic_seed, index)}.png"
        if not path.is_file():  # written under a temporary name: a killed run leaves no half page
            temporary = path.with_name(f".{path.name}.tmp")
            generate_page(data.synthetic_seed, index).image.save(temporary, format="PNG", compress_level=1)
            temporary.replace(path)
    data = dataclasses.replace(data, images=str(folder), synthetic_pages=0)
    return dataclasses.replace(config, data=data)


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = apply_overrides(load_run_config(args.config), args)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    if config.data.synthetic_pages > 0:
        config = with_synthetic_folder(config)
    metrics = train(config, progress=not args.quiet)
    print(", ".join(f"{name} {value:.4g}" for name, value in metrics.items()))


if __name__ == "__main__":
    main()
