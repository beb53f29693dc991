"""Train a byte-level BPE vocabulary for LayoutLMv3 from text files or FUNSD-style annotations.

    python -m data_prep.train_tokenizer --input corpus.txt funsd/training_data/annotations --out vocab/ --vocab-size 8000

Text files give one text per line; ``*.json`` files are FUNSD-style annotations whose ``form[*].words[*].text``
give one text per word (the way words are encoded later). A directory stands for the ``*.json`` and ``*.txt``
files under it. The vocabulary is written with ``save_pretrained`` (vocab.json, merges.txt, tokenizer_config.json).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from layoutlmv3.json_files import read_json_file
from layoutlmv3.tokenizer import MIN_VOCAB_SIZE, TRAINED_MASK_ID, train_bpe


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.train_tokenizer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        type=Path,
        metavar="PATH",
        help="text files (one text per line), FUNSD-style annotation JSONs (one text per word), "
        "or directories holding such *.txt / *.json files (searched recursively)",
    )
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="DIR",
        help="directory to write vocab.json, merges.txt and tokenizer_config.json to",
    )
    parser.add_argument(
        "--vocab-size",
        required=True,
        type=int,
        metavar="N",
        help=f"target number of ids, special tokens and the 256 byte symbols included (so at least {MIN_VOCAB_SIZE}); "
        "a small corpus may yield fewer",
    )
    parser.add_argument(
        "--min-frequency",
        type=int,
        default=2,
        metavar="K",
        help="only merge a pair of symbols seen at least K times in the corpus (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.vocab_size < MIN_VOCAB_SIZE:
        parser.error(f"--vocab-size must be at least {MIN_VOCAB_SIZE}, got {args.vocab_size}")
    if args.min_frequency < 1:
        parser.error(f"--min-frequency must be at least 1, got {args.min_frequency}")
    return args


def input_files(paths: Sequence[Path]) -> list[Path]:
    """Expand directories into their *.json / *.txt files, sorted so runs are reproducible."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix in {".json", ".txt"} and p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"input {path} does not exist")
    return files


def read_texts(files: Sequence[Path]) -> Iterator[str]:
    """Yield training texts lazily, so a corpus larger than memory can be streamed into the trainer."""
    for path in files:
        if path.suffix == ".json":
            yield from funsd_words(path)
        else:
            with path.open(encoding="utf-8") as handle:
                for line in handle:
                    yield line.rstrip("\n")


def funsd_words(path: Path) -> Iterator[str]:
    """The word texts of a FUNSD-style annotation file: ``{"form": [{"words": [{"text": ...}]}]}`` (boxes not
    needed); read as data (`json_files`: named, bounded), a file of another shape is a ValueError naming it."""
    data = read_json_file(path)
    form = data.get("form") if isinstance(data, dict) else None
    if not isinstance(form, list):
        raise ValueError(f"{path} is not a FUNSD-style annotation (no 'form' list)")
    for number, entity in enumerate(form):
        words = entity.get("words", []) if isinstance(entity, dict) else None
        if not isinstance(words, list) or not all(
            isinstance(w, dict) and isinstance(w.get("text"), str) for w in words
        ):
            raise ValueError(f'{path}: entity {number} is not an object whose "words" are objects with a "text" string')
        yield from (word["text"] for word in words)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        files = input_files(args.input)
        tokenizer = train_bpe(read_texts(files), vocab_size=args.vocab_size, min_frequency=args.min_frequency)
        tokenizer.save_pretrained(args.out)
    except (OSError, ValueError) as error:  # a missing input or a malformed annotation: one line, exit 2
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"trained on {len(files)} files: {tokenizer.vocab_size} ids (<mask>={TRAINED_MASK_ID}), "
        f"fingerprint {tokenizer.fingerprint} -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
