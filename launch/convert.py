"""Convert a model for use elsewhere: a DeepSpeed pretraining checkpoint, or a transformers LayoutLMv3 directory,
into a self-contained model directory (config.json + model.safetensors + tokenizer files) that
`LayoutLMv3ForTokenClassification.from_pretrained` loads. With --to hf (a checkpoint, or with --model one of our
model directories, e.g. a fine-tuning run's best/) the directory is transformers' own: its AutoModel*, AutoTokenizer
and AutoProcessor load it with nothing of this project installed.

A checkpoint is verified before anything of it is loaded (its `complete` record, pickles that would run code,
file sizes and checksums): a damaged, planted or other job's checkpoint is exit 2 with the file named.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from layoutlmv3.convert import convert_checkpoint, convert_from_hf, convert_to_hf, resolve_tag
from layoutlmv3.convert.checkpoint import add_allow_global

EPILOG = """\
examples:
  python launch/convert.py --checkpoint outputs/checkpoints/pretrain/tiny --out outputs/models/tiny
  python launch/convert.py --checkpoint outputs/checkpoints/pretrain/tiny --tag step00000300 \\
      --drop-pretraining-heads --out outputs/models/tiny-backbone
  python launch/convert.py --checkpoint outputs/checkpoints/pretrain/tiny --to hf --out outputs/models/tiny-hf
  python launch/convert.py --model outputs/finetune/funsd/best --to hf --out outputs/models/funsd-hf
  python launch/convert.py --from-hf path/to/layoutlmv3-base --out outputs/models/base
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="checkpoint.dir of a pretraining run (or one tag directory)")
    source.add_argument("--from-hf", type=Path, help="a transformers LayoutLMv3 model directory")
    source.add_argument(
        "--model", type=Path, help="one of our model directories (a conversion, a fine-tuning best/); needs --to hf"
    )
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    parser.add_argument("--tag", default="latest", help="checkpoint tag, e.g. step00001000 (default: latest)")
    parser.add_argument("--to", choices=("native", "hf"), default="native", help="output format (default: native)")
    parser.add_argument(
        "--drop-pretraining-heads", action="store_true", help="keep only the backbone (LayoutLMv3Model weights)"
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="config.json giving the model shape (default: the model config saved in the checkpoint; checkpoints "
        "older than that record: rebuilt from the run config)",
    )
    parser.add_argument("--tokenizer", type=Path, help="tokenizer directory (default: the run's data.tokenizer)")
    add_allow_global(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.from_hf:
            out = convert_from_hf(args.from_hf, args.out)
        elif args.model:
            if args.to != "hf":
                raise ValueError("--model is already in our format: add --to hf to write transformers' layout")
            out = convert_to_hf(args.model, args.out)
        else:
            out = convert_checkpoint(
                resolve_tag(args.checkpoint, args.tag),
                args.out,
                to=args.to,
                drop_pretraining_heads=args.drop_pretraining_heads,
                config_path=args.config,
                tokenizer_dir=args.tokenizer,
                allowed_globals=tuple(args.allow_global),
            )
    except (ValueError, OSError) as error:  # a damaged, unsafe or other job's checkpoint included: named
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
