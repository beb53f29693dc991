"""Translation between transformers' LayoutLMv3 format and ours: config fields and weight names.

Our layout differs from transformers' in three ways, each for a reason: Q, K and V are one fused Linear (one
GEMM instead of three), the relative-position tables are Embeddings [buckets, heads] (transformers stores
Linear weights [heads, buckets]), and module names are short. Everything else is a rename.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from .config import LayoutLMv3Config

HF_MODEL_TYPE = "layoutlmv3"
BASE_PREFIX = "layoutlmv3."  # transformers' and our head models keep the backbone under this prefix

_RENAMES = {
    "embeddings.word_embeddings.weight": "text_embeddings.word.weight",
    "embeddings.position_embeddings.weight": "text_embeddings.position.weight",
    "embeddings.token_type_embeddings.weight": "text_embeddings.token_type.weight",
    "embeddings.x_position_embeddings.weight": "text_embeddings.x.weight",
    "embeddings.y_position_embeddings.weight": "text_embeddings.y.weight",
    "embeddings.h_position_embeddings.weight": "text_embeddings.h.weight",
    "embeddings.w_position_embeddings.weight": "text_embeddings.w.weight",
    "embeddings.LayerNorm.weight": "text_embeddings.norm.weight",
    "embeddings.LayerNorm.bias": "text_embeddings.norm.bias",
    "patch_embed.proj.weight": "visual_embeddings.patch_proj.weight",
    "patch_embed.proj.bias": "visual_embeddings.patch_proj.bias",
    "cls_token": "visual_embeddings.cls_token",
    "pos_embed": "visual_embeddings.position",
    "norm.weight": "visual_embeddings.norm.weight",
    "norm.bias": "visual_embeddings.norm.bias",
    "LayerNorm.weight": "embedding_norm.weight",
    "LayerNorm.bias": "embedding_norm.bias",
}
_TRANSPOSED = {
    "encoder.rel_pos_bias.weight": "encoder.relative_bias.pos_1d.weight",
    "encoder.rel_pos_x_bias.weight": "encoder.relative_bias.pos_x.weight",
    "encoder.rel_pos_y_bias.weight": "encoder.relative_bias.pos_y.weight",
}
_LAYER_RENAMES = {
    "attention.output.dense": "attention.out",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
    "output.LayerNorm": "ffn_norm",
}
_QKV = ("query", "key", "value")
# Token-classification head: transformers' linear head is `classifier`, ours `classifier.linear`.
_HEAD_RENAMES = {"classifier.weight": "classifier.linear.weight", "classifier.bias": "classifier.linear.bias"}
_HEAD_SAME = re.compile(r"(classifier|qa_outputs)\.(dense|out_proj)\.(weight|bias)$")  # transformers' MLP heads
# Buffers some transformers checkpoints carry; derived from the config, never loaded.
_HF_BUFFERS = re.compile(r"(embeddings\.position_ids|visual_bbox)$")
_HF_LAYER = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
_OUR_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")

# Config fields that mean the same in both libraries.
_SHARED_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
    "initializer_range", "layer_norm_eps", "pad_token_id", "bos_token_id", "eos_token_id",
    "max_2d_position_embeddings", "coordinate_size", "shape_size", "has_relative_attention_bias", "rel_pos_bins",
    "max_rel_pos", "has_spatial_attention_bias", "rel_2d_pos_bins", "max_rel_2d_pos", "text_embed", "visual_embed",
    "input_size", "patch_size", "num_channels", "classifier_dropout",
)  # fmt: skip
# transformers switches its token-classification head to an MLP at this many labels.
HF_MLP_HEAD_MIN_LABELS = 10


def is_hf_config(values: dict[str, Any]) -> bool:
    return values.get("model_type") == HF_MODEL_TYPE


def config_from_hf(values: dict[str, Any]) -> LayoutLMv3Config:
    """Our config from a transformers config.json dict (unknown transformers-only fields are ignored)."""
    fields = {name: values[name] for name in _SHARED_FIELDS if name in values}
    id2label = {int(k): v for k, v in (values.get("id2label") or {}).items()}
    num_labels = len(id2label) if id2label else values.get("num_labels", 2)
    head = "mlp" if num_labels >= HF_MLP_HEAD_MIN_LABELS else "linear"
    return LayoutLMv3Config(**fields, num_labels=num_labels, id2label=id2label, classifier_head=head)


def config_to_hf(config: LayoutLMv3Config, architecture: str) -> Any:
    """A `transformers.LayoutLMv3Config` equal in meaning to ours, naming `architecture` for AutoModel."""
    import transformers

    expected_head = "mlp" if config.num_labels >= HF_MLP_HEAD_MIN_LABELS else "linear"
    if architecture == "LayoutLMv3ForTokenClassification" and config.classifier_head != expected_head:
        raise ValueError(
            f"transformers uses a {expected_head} head for {config.num_labels} labels; this model has a "
            f"{config.classifier_head} head, which transformers could not load"
        )
    id2label = config.id2label or {i: f"LABEL_{i}" for i in range(config.num_labels)}
    return transformers.LayoutLMv3Config(
        **{name: getattr(config, name) for name in _SHARED_FIELDS},
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        architectures=[architecture],
    )


def _split_prefix(key: str) -> tuple[str, str]:
    return (BASE_PREFIX, key[len(BASE_PREFIX) :]) if key.startswith(BASE_PREFIX) else ("", key)


def hf_to_native(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers weights (LayoutLMv3Model or a head model) -> ours. Raises on any key it does not know."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str, str], dict[str, torch.Tensor]] = {}
    unknown = []
    for key, tensor in state_dict.items():
        prefix, rest = _split_prefix(key)
        layer = _HF_LAYER.match(rest)
        if _HF_BUFFERS.search(rest):
            continue
        if rest in _RENAMES:
            out[prefix + _RENAMES[rest]] = tensor
        elif rest in _TRANSPOSED:
            out[prefix + _TRANSPOSED[rest]] = tensor.t().contiguous()
        elif layer and layer[2].startswith("attention.self.") and layer[2].rsplit(".", 1)[1] in _QKV:
            qkv.setdefault((prefix, layer[1], layer[3]), {})[layer[2].rsplit(".", 1)[1]] = tensor
        elif layer and layer[2] in _LAYER_RENAMES:
            out[f"{prefix}encoder.layers.{layer[1]}.{_LAYER_RENAMES[layer[2]]}.{layer[3]}"] = tensor
        elif key in _HEAD_RENAMES:
            out[_HEAD_RENAMES[key]] = tensor
        elif _HEAD_SAME.match(key):
            out[key] = tensor
        else:
            unknown.append(key)
    for (prefix, index, kind), parts in qkv.items():
        if set(parts) != set(_QKV):
            unknown.append(f"{prefix}encoder.layer.{index}.attention.self.* ({kind}: only {sorted(parts)})")
            continue
        out[f"{prefix}encoder.layers.{index}.attention.qkv.{kind}"] = torch.cat([parts[n] for n in _QKV], dim=0)
    if unknown:
        raise ValueError(f"not a LayoutLMv3 checkpoint transformers would write; unknown weights: {unknown[:10]}")
    return out


def native_to_hf(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Ours -> transformers weights. Returns (weights, our keys that transformers has no place for)."""
    renames = {v: k for k, v in _RENAMES.items()}
    transposed = {v: k for k, v in _TRANSPOSED.items()}
    layer_renames = {v: k for k, v in _LAYER_RENAMES.items()}
    head_renames = {v: k for k, v in _HEAD_RENAMES.items()}
    out: dict[str, torch.Tensor] = {}
    dropped = []
    for key, tensor in state_dict.items():
        prefix, rest = _split_prefix(key)
        layer = _OUR_LAYER.match(rest)
        if rest in renames:
            out[prefix + renames[rest]] = tensor
        elif rest in transposed:
            out[prefix + transposed[rest]] = tensor.t().contiguous()
        elif layer and layer[2] == "attention.qkv":
            for name, part in zip(_QKV, tensor.chunk(3, dim=0), strict=True):
                out[f"{prefix}encoder.layer.{layer[1]}.attention.self.{name}.{layer[3]}"] = part.contiguous()
        elif layer and layer[2] in layer_renames:
            out[f"{prefix}encoder.layer.{layer[1]}.{layer_renames[layer[2]]}.{layer[3]}"] = tensor
        elif key in head_renames:
            out[head_renames[key]] = tensor
        elif _HEAD_SAME.match(key):
            out[key] = tensor
        else:
            dropped.append(key)
    return out, dropped
