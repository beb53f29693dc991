"""Where a conversion lands: written beside `--out` and swapped in whole (`layoutlmv3.atomic_files`), so a failed
conversion leaves the old directory as it was, and a directory holding something else (a fine-tuned model) is never
written over."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from layoutlmv3.atomic_files import directory_in_place
from layoutlmv3.model import weights_io
from layoutlmv3.tokenizer import CONFIG_FILE, MERGES_FILE, VOCAB_FILE

PREPROCESSOR_FILE = "preprocessor_config.json"  # transformers' image processor settings (--to hf)
# What a conversion writes; an --out holding only these is an earlier conversion, replaced.
CONVERTED_FILES = frozenset(
    {weights_io.CONFIG_NAME, weights_io.SAFETENSORS_NAME, VOCAB_FILE, MERGES_FILE, CONFIG_FILE, PREPROCESSOR_FILE}
)


def publish(out: Path, write: Callable[[Path], None]) -> Path:
    """Run `write(folder)` on a new folder beside `out`, then swap it in as `out` (replacing an earlier conversion)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a directory")
    if out.is_dir() and (foreign := sorted(path.name for path in out.iterdir() if path.name not in CONVERTED_FILES)):
        raise ValueError(f"--out {out} holds files a conversion does not write ({', '.join(foreign[:4])}): "
                         "a fine-tuned model? choose another --out or empty it")  # fmt: skip
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"--out {out}: cannot make its folder: {error}") from None
    with directory_in_place(out) as staged:
        write(staged)
    return out
