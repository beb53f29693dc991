"""Command line: ``python -m data_prep.synth --out DIR --pages N --seed S [--workers K]``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .corpus import write_corpus

EPILOG = """\
output (FUNSD layout, readable by any FUNSD loader):
  DIR/images/synth_{seed}_{index:06d}.png         grayscale page, 1000x1300 px
  DIR/annotations/synth_{seed}_{index:06d}.json   {"form": [{"id", "text", "box", "label", "words", "linking"}]}

Pages are seeded from (seed, index), so output is byte-identical for any --workers; rerunning into the same
DIR skips pages that are already complete (e.g. to resume, or to extend a corpus with a larger --pages).

example:
  python -m data_prep.synth --out data/synth --pages 1000 --seed 0 --workers 8
"""


def _at_least(minimum: int) -> type[int]:
    def parse(value: str) -> int:
        number = int(value)
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {number}")
        return number

    return parse  # type: ignore[return-value]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.synth",
        description="Generate scanned-looking synthetic document pages (forms, invoices, letters, memos)\n"
        "with exact word boxes and header/question/answer/other entity labels. Needs no network.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument("--pages", type=_at_least(0), default=100, help="number of pages (default: 100)")
    parser.add_argument("--seed", type=_at_least(0), default=0, help="corpus seed (default: 0)")
    parser.add_argument("--workers", type=_at_least(1), default=1, help="worker processes (default: 1)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    result = write_corpus(args.out, args.pages, seed=args.seed, workers=args.workers, progress=not args.quiet)
    if not args.quiet:
        print(f"wrote {result.written} pages, skipped {result.skipped} already complete -> {args.out}")


if __name__ == "__main__":
    main()
