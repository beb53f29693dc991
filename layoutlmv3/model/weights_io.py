"""Reading and writing model directories (config.json + weights), ours or transformers'.

Weights are read without executing pickled code: safetensors, or `torch.load(weights_only=True)` for the
pytorch_model.bin files older transformers checkpoints ship. Files are written through `layoutlmv3.atomic_files`,
so an interrupted save never leaves a half-written file under the real name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from layoutlmv3.atomic_files import file_in_place, write_text
from layoutlmv3.json_files import read_json_file

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
PICKLE_NAME = "pytorch_model.bin"


def read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_NAME
    if not path.exists():  # a FIFO or folder of that name is refused by kind below, never opened
        raise FileNotFoundError(f"{directory} is not a model directory: no {CONFIG_NAME}")
    values = read_json_file(path)  # from elsewhere maybe: bad JSON, NaN, a FIFO or 10 GB named, not read
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a JSON object of config fields")
    return values


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a model directory: model.safetensors, a sharded safetensors index, or pytorch_model.bin."""
    if (directory / SAFETENSORS_NAME).is_file():
        return _load_safetensors(directory / SAFETENSORS_NAME)
    if (directory / SAFETENSORS_INDEX_NAME).is_file():
        weights: dict[str, torch.Tensor] = {}
        for shard in _index_shards(directory / SAFETENSORS_INDEX_NAME):
            weights.update(_load_safetensors(directory / shard))
        return weights
    if (directory / PICKLE_NAME).is_file():
        try:
            return torch.load(directory / PICKLE_NAME, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for truncated or hostile files
            raise ValueError(f"cannot read {directory / PICKLE_NAME} as plain tensors: {error}") from error
    raise FileNotFoundError(f"{directory}: no {SAFETENSORS_NAME}, {SAFETENSORS_INDEX_NAME} or {PICKLE_NAME}")


def _index_shards(index_path: Path) -> list[str]:
    """The weight files a sharded safetensors index names: plain file names beside it, nothing else (an index from
    elsewhere naming `../../x` or `/abs` must not have files outside the model directory read)."""
    index = read_json_file(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index_path}: expected an object with a non-empty 'weight_map' of tensor -> file name")
    shards = sorted({str(name) for name in weight_map.values()})
    for name in shards:
        if Path(name).name != name or name in (".", "..") or "\x00" in name or not name.endswith(".safetensors"):
            raise ValueError(f"{index_path}: {name!r} is not a .safetensors file name beside the index")
        if (index_path.parent / name).is_symlink():
            raise ValueError(f"{index_path}: {name!r} is a link; weight files are read from the model directory")
    return shards


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is truncated or not a safetensors file: {error}") from error


def write_weights(weights: dict[str, torch.Tensor], path: Path) -> None:
    """Atomically write contiguous CPU copies of `weights` as safetensors."""
    tensors = {key: value.detach().contiguous().cpu() for key, value in weights.items()}
    with file_in_place(path) as temporary:
        save_file(tensors, temporary, metadata={"format": "pt"})


def write_json(values: dict[str, Any], path: Path) -> None:
    """Atomically write `values` as a model directory's JSON (sorted keys, indented)."""
    write_text(path, json.dumps(values, indent=2, sort_keys=True) + "\n")
