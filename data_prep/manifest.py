"""The dataset manifest (``manifest.json``, keys as in ``layoutlmv3.data.sample_format``) and ``rejects.jsonl``.

A one-task build writes both directly. Task ``i`` of an ``n``-task array job writes
``manifest.task{i:04d}-of-{n:04d}.json`` and ``rejects.task{i:04d}-of-{n:04d}.jsonl`` instead, and
:func:`merge_task_manifests` (``python -m data_prep.merge_manifests``) concatenates them in task order into
the same ``manifest.json`` and ``rejects.jsonl`` a one-task build would have written.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from layoutlmv3.atomic_files import remove_temporaries_of, write_bytes
from layoutlmv3.data.sample_format import (
    IMAGE_SIZE,
    MANIFEST_FILE,
    MANIFEST_FORMAT_VERSION,
    REJECTS_FILE,
    TOKENIZER_IMAGE_SIZE,
)
from layoutlmv3.data.shards import ManifestError
from layoutlmv3.json_files import JsonFileError, parse_json, read_json_file

from .rejects import Reject
from .shard_writer import ShardRecord

TASK_MANIFEST = "manifest.task{task:04d}-of-{tasks:04d}.json"
TASK_REJECTS = "rejects.task{task:04d}-of-{tasks:04d}.jsonl"
TASK_MANIFEST_RE = re.compile(r"manifest\.task(\d{4,})-of-(\d{4,})\.json")
SHARED_KEYS = ("format_version", "tokenizer", "image_size", "tokenizer_image_size", "seed")
# Shared too, but absent from manifests written before they were recorded (which still load and merge): the OCR
# configuration (ocr.ocr_configuration) and the shared file list's digest (file_list.py; absent: --input walked).
RECORDED_KEYS = ("ocr", "file_list")


class MergeError(RuntimeError):
    """The task manifests in a directory do not make one complete, consistent job."""


def make_manifest(
    tokenizer: str,
    seed: int,
    shards: Sequence[ShardRecord],
    rejects: Iterable[Reject],
    ocr: dict | None = None,
    file_list: dict | None = None,
) -> dict:
    """The manifest of these shards (in order) and rejects, reasons counted and sorted by name; `ocr` and
    `file_list` (RECORDED_KEYS) are recorded when given."""
    counts = Counter(reject.reason for reject in rejects)
    manifest = {
        "format_version": MANIFEST_FORMAT_VERSION,
        "tokenizer": tokenizer,
        "image_size": IMAGE_SIZE,
        "tokenizer_image_size": TOKENIZER_IMAGE_SIZE,
        "shards": [shard.to_json() for shard in shards],
        "total_samples": sum(shard.samples for shard in shards),
        "rejects": dict(sorted(counts.items())),
        "seed": seed,
    }
    recorded = {"ocr": ocr, "file_list": file_list}
    manifest.update({key: value for key, value in recorded.items() if value is not None})
    return manifest


def output_names(task_index: int, num_tasks: int) -> tuple[str, str]:
    """(manifest, rejects) file names of a task; a single task writes the final names."""
    if num_tasks == 1:
        return MANIFEST_FILE, REJECTS_FILE
    names = {"task": task_index, "tasks": num_tasks}
    return TASK_MANIFEST.format(**names), TASK_REJECTS.format(**names)


def write_outputs(out: Path, names: tuple[str, str], manifest: dict, rejects: Iterable[Reject]) -> None:
    """Write the rejects, then the manifest (whose presence says the output is complete), each atomically."""
    lines = "".join(json.dumps(reject.to_json(), ensure_ascii=False) + "\n" for reject in rejects)
    write_bytes(out / names[1], lines.encode("utf-8"))
    write_bytes(out / names[0], (json.dumps(manifest, ensure_ascii=False, indent=1) + "\n").encode("utf-8"))


def merge_task_manifests(out: Path) -> dict:
    """Merge the task manifests in ``out`` into manifest.json + rejects.jsonl; returns the merged manifest.

    Refuses (MergeError) if tasks are missing, two job sizes are mixed, the tasks disagree on tokenizer, seed,
    format, OCR configuration or file list (naming two tasks and what each recorded), a listed shard is missing or of the wrong size, or a task's manifest or rejects file is not what a
    task writes (broken JSON, a wrong shape: the file named). Shard entries keep every field (size, sha256).
    """
    tasks = _task_manifest_paths(out)
    manifests = [_task_manifest(path) for path in tasks]
    for key in SHARED_KEYS + RECORDED_KEYS:
        first = json.dumps(manifests[0].get(key), sort_keys=True)
        for path, manifest in zip(tasks[1:], manifests[1:], strict=True):
            if (value := json.dumps(manifest.get(key), sort_keys=True)) != first:
                raise MergeError(
                    f"task manifests disagree on {key!r}: {tasks[0].name} has {first}, {path.name} has {value} "
                    "(tasks of one job must be built with the same settings and inputs)"
                )
    try:
        shards = [
            shard
            for path, manifest in zip(tasks, manifests, strict=True)
            for shard in ShardRecord.list_from_json(manifest, str(path))
        ]
    except ManifestError as error:
        raise MergeError(str(error)) from None
    check_shards(out, shards)
    num_tasks = len(tasks)
    rejects = [
        reject
        for task in range(num_tasks)
        for reject in _task_rejects(out / TASK_REJECTS.format(task=task, tasks=num_tasks))
    ]
    first = manifests[0]
    merged = make_manifest(first["tokenizer"], first["seed"], shards, rejects, first.get("ocr"), first.get("file_list"))
    remove_temporaries_of([out / MANIFEST_FILE, out / REJECTS_FILE])  # a killed merge's; one merge runs at a time
    write_outputs(out, (MANIFEST_FILE, REJECTS_FILE), merged, rejects)
    return merged


def _task_manifest(path: Path) -> dict:
    """A task's manifest, parsed, with the keys every task shares (MergeError naming the file otherwise)."""
    try:
        manifest = read_json_file(path)
    except (OSError, JsonFileError) as error:
        raise MergeError(f"cannot read task manifest {path}: {error}") from None
    if not isinstance(manifest, dict):
        raise MergeError(f"{path}: not a task manifest (a JSON object expected, got {type(manifest).__name__})")
    missing = [key for key in SHARED_KEYS if key not in manifest]
    if missing:
        raise MergeError(f"{path}: not a task manifest of build_shards (no {', '.join(missing)})")
    return manifest


def _task_rejects(path: Path) -> list[Reject]:
    """A task's rejects, one JSON record a line (MergeError naming the file and line otherwise)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise MergeError(f"cannot read task rejects {path}: {error}") from None
    rejects = []
    for number, line in enumerate(lines, 1):
        where = f"{path} line {number}"
        try:
            rejects.append(Reject.from_json(parse_json(line, where)))
        except JsonFileError as error:
            raise MergeError(str(error)) from None
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise MergeError(f"{where}: not a reject record ({type(error).__name__}: {error})") from None
    return rejects


def _task_manifest_paths(out: Path) -> list[Path]:
    """The task manifests of one job, in task order; all of 0..n-1 must be present."""
    found: dict[int, dict[int, Path]] = {}
    for path in out.iterdir():
        if match := TASK_MANIFEST_RE.fullmatch(path.name):
            found.setdefault(int(match[2]), {})[int(match[1])] = path
    if not found:
        raise MergeError(f"no task manifests ({TASK_MANIFEST.format(task=0, tasks=2)}, ...) in {out}")
    if len(found) > 1:
        raise MergeError(f"task manifests of jobs of different sizes {sorted(found)} in {out}; remove the stale ones")
    ((num_tasks, by_task),) = found.items()
    missing = [task for task in range(num_tasks) if task not in by_task]
    if missing:
        raise MergeError(f"{len(missing)} of {num_tasks} tasks have not finished (missing tasks {missing[:20]})")
    return [by_task[task] for task in range(num_tasks)]


def check_shards(out: Path, shards: Sequence[ShardRecord]) -> None:
    """Refuse (MergeError) shards whose file is missing or not the size recorded for it."""
    for shard in shards:
        path = out / shard.name
        if not path.is_file() or path.stat().st_size != shard.bytes:
            raise MergeError(f"shard {path} is missing or not the {shard.bytes} bytes its record says")
