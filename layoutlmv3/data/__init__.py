"""Reading tokenized webdataset shards for training: splitting, decoding, collation, resumable position.

The names below load on first use (PEP 562): data preparation imports `layoutlmv3.data.sample_format` and
`shards` on machines that train nothing, and an eager import of the collator here cost every data-prep command
torch and transformers (about 3 s of start-up for a process that needs neither)."""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Collator": "collate",
    "PageSample": "decode",
    "decode_sample": "decode",
    "ShardLoader": "loader",
    "build_train_loader": "loader",
    "Shard": "shards",
    "WeightedShards": "shards",
    "list_shards": "shards",
    "read_manifest": "shards",
    "total_samples": "shards",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
