"""The DeepSpeed JSON: the one source of truth for micro-batch, accumulation, precision and ZeRO.

The run config never repeats these; the loop reads them back from the engine. The checks here are stricter than
DeepSpeed's own: it ignores unknown top-level keys (a misspelt `gradient_clipping` silently means no clipping),
so keys outside `KNOWN_KEYS` are rejected, and the settings the run config owns (optimizer, schedule) or that
would tie a file to one world size (`train_batch_size`) are refused with the reason. Nested sections are then
validated by DeepSpeed's own config class, which needs no distributed set-up.

Global batch = train_micro_batch_size_per_gpu x gradient_accumulation_steps x world size. The one exception to
"the JSON alone": a run config's `train.global_batch_size` sets the accumulation for the world size at hand
(`with_global_batch`), so one file serves any node count and a resumed run keeps its batch.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

REQUIRED_KEYS = (
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "gradient_clipping",
    "zero_optimization",
)
KNOWN_KEYS = frozenset(
    {
        *REQUIRED_KEYS,
        "bf16",
        "fp16",
        "steps_per_print",
        "wall_clock_breakdown",
        "memory_breakdown",
        "communication_data_type",
        "prescale_gradients",
        "gradient_predivide_factor",
        "zero_allow_untested_optimizer",
        "zero_force_ds_cpu_optimizer",
        "activation_checkpointing",
        "flops_profiler",
        "comms_logger",
        "data_types",
        "checkpoint",
        "aio",
    }
)
REFUSED_KEYS = {
    "optimizer": "the optimizer is built from the run config's train section (lr, betas, eps, weight_decay)",
    "scheduler": "the learning-rate schedule comes from the run config's train section (layoutlmv3.training.schedule)",
    "train_batch_size": "the global batch is micro-batch x accumulation x world size; fixing it ties the file to one "
    "world size and breaks resuming on another",
}


def load_ds_config(path: str | Path) -> dict[str, Any]:
    """Read and validate a DeepSpeed JSON; returns the dict to pass to `deepspeed.initialize`."""
    path = Path(path)
    if not path.is_file():  # a relative default read from another directory, a typo: name the setting
        where = "is a directory" if path.is_dir() else f"does not exist (from {Path.cwd()})"
        raise ValueError(f"deepspeed: the DeepSpeed config {path} {where}; set `deepspeed` or pass --deepspeed")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON: {error}") from None
    validate_ds_config(values, str(path))
    return values


def validate_ds_config(values: Any, source: str = "DeepSpeed config") -> None:
    """Raise ValueError naming `source` and the offending key when the config is unusable for this project."""
    if not isinstance(values, dict):
        raise ValueError(f"{source}: a DeepSpeed config must be a JSON object")
    for key, reason in REFUSED_KEYS.items():
        if key in values:
            raise ValueError(f"{source}: remove {key!r}: {reason}")
    unknown = sorted(set(values) - KNOWN_KEYS)
    if unknown:
        raise ValueError(
            f"{source}: unknown key(s) {unknown} (DeepSpeed would ignore them); known: {sorted(KNOWN_KEYS)}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in values]
    if missing:
        raise ValueError(f"{source}: missing {missing}")
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        if not isinstance(values[key], int) or isinstance(values[key], bool) or values[key] < 1:
            raise ValueError(f"{source}: {key} must be a positive integer, got {values[key]!r}")
    clipping = values["gradient_clipping"]
    if not isinstance(clipping, int | float) or isinstance(clipping, bool) or clipping < 0:
        raise ValueError(f"{source}: gradient_clipping must be a number >= 0 (0: off), got {clipping!r}")
    if "load_universal" in values.get("checkpoint", {}):
        raise ValueError(f"{source}: checkpoint.load_universal is set by the run when it resumes on another world size")
    _deepspeed_check(values, source)


def _deepspeed_check(values: dict[str, Any], source: str) -> None:
    from deepspeed.runtime.config import DeepSpeedConfig

    try:
        DeepSpeedConfig(copy.deepcopy(values))
    except Exception as error:  # pydantic ValidationError, AssertionError: DeepSpeed's own verdict on the values
        raise ValueError(f"{source}: rejected by DeepSpeed: {' '.join(str(error).split())}") from None


def offloads_optimizer(values: dict[str, Any]) -> bool:
    """ZeRO-Offload of the optimizer: DeepSpeed then needs its CPU Adam, not a GPU optimizer."""
    device = values.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
    return device in ("cpu", "nvme")


def with_global_batch(values: dict[str, Any], global_batch_size: int | None, world_size: int) -> dict[str, Any]:
    """A copy of `values` whose accumulation makes micro-batch x accumulation x `world_size` = `global_batch_size`.

    None returns `values` unchanged. A global batch the micro-batch times the world size does not divide is
    refused (ValueError): silently rounding would change the batch the run config asked for.
    """
    if global_batch_size is None:
        return values
    micro = values["train_micro_batch_size_per_gpu"]
    per_step = micro * world_size
    if global_batch_size % per_step:
        raise ValueError(
            f"train.global_batch_size {global_batch_size} is not a multiple of micro-batch {micro} x {world_size} "
            f"ranks = {per_step}; choose a global batch, micro-batch or rank count that divides"
        )
    adjusted = copy.deepcopy(values)
    adjusted["gradient_accumulation_steps"] = global_batch_size // per_step
    return adjusted
