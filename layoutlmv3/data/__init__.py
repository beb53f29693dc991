"""Reading tokenized webdataset shards for training: splitting, decoding, collation, resumable position."""

from layoutlmv3.data.collate import Collator
from layoutlmv3.data.decode import PageSample, decode_sample
from layoutlmv3.data.loader import ShardLoader, build_train_loader
from layoutlmv3.data.shards import Shard, WeightedShards, list_shards, read_manifest, total_samples

__all__ = [
    "Collator",
    "PageSample",
    "Shard",
    "ShardLoader",
    "WeightedShards",
    "build_train_loader",
    "decode_sample",
    "list_shards",
    "read_manifest",
    "total_samples",
]
