"""Merge the manifests of an array job's tasks: ``python -m data_prep.merge_manifests --out DIR``.

Run once every task of ``python -m data_prep.build_shards --num-tasks N`` has finished; it writes
``manifest.json`` and ``rejects.jsonl``, identical to what a single-task build of the same input writes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from layoutlmv3.data.sample_format import MANIFEST_FILE, REJECTS_FILE

from .build_shards import storage_error
from .manifest import MergeError, merge_task_manifests


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.merge_manifests",
        description=f"Merge manifest.taskIIII-of-NNNN.json / rejects.taskIIII-of-NNNN.jsonl of all N tasks of a "
        f"build_shards array job into {MANIFEST_FILE} and {REJECTS_FILE} (shards stay where they are).",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="the --out directory of the tasks")
    args = parser.parse_args(argv)
    try:
        manifest = merge_task_manifests(args.out)
    except MergeError as error:
        sys.exit(f"error: {error}")
    except OSError as error:  # a full, read-only or unreadable --out: one line, as build_shards says it
        sys.exit(f"error: {storage_error(error, args.out)}")
    print(
        f"merged: {manifest['total_samples']} samples in {len(manifest['shards'])} shards, "
        f"rejects {manifest['rejects']} -> {args.out / MANIFEST_FILE}"
    )


if __name__ == "__main__":
    main()
