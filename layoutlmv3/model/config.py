"""Model shape and behaviour as one dataclass, with named flavors.

Field names follow transformers' `LayoutLMv3Config` so a config.json moves between the two with a plain
rename table (see `hf_interop`). The model config is the single source of truth for model shape: it is
saved beside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layoutlmv3.constants import IGNORE_INDEX  # noqa: F401 (re-exported: the model's losses skip it)
from layoutlmv3.json_files import read_json_file

ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa", "flex")
CLASSIFIER_HEADS = ("linear", "mlp")


@dataclass
class LayoutLMv3Config:
    """Shape of a LayoutLMv3 model. Defaults are the `base` flavor (microsoft/layoutlmv3-base)."""

    vocab_size: int = 50265
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    # 2D layout: boxes are on a 0..1000 grid; x0/x1 share one table, y0/y1 another; h and w are clipped.
    max_2d_position_embeddings: int = 1024
    coordinate_size: int = 128
    shape_size: int = 128
    # Relative position bias (T5-style buckets): 1D over token positions, 2D over x0 and y1.
    has_relative_attention_bias: bool = True
    rel_pos_bins: int = 32
    max_rel_pos: int = 128
    has_spatial_attention_bias: bool = True
    rel_2d_pos_bins: int = 64
    max_rel_2d_pos: int = 256
    # Image: input_size x input_size pixels cut into patch_size patches (224/16 -> 14x14 = 196 patches).
    text_embed: bool = True
    visual_embed: bool = True
    input_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    # Pretraining: a learned embedding replaces masked patches (MIM); the MIM head predicts one of
    # `visual_codebook_size` visual tokens (the image tokenizer's codebook).
    patch_mask_token: bool = False
    visual_codebook_size: int = 8192
    # Heads.
    num_labels: int = 2
    classifier_dropout: float | None = None
    classifier_head: str = "linear"
    id2label: dict[int, str] = field(default_factory=dict)
    # Execution (not shape): how attention is computed and whether layers recompute activations.
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        self.id2label = {int(k): v for k, v in self.id2label.items()}
        self.validate()

    def validate(self) -> None:
        """Raise ValueError on a shape that cannot build a model, naming the offending fields."""
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads})"
            )
        layout_width = 4 * self.coordinate_size + 2 * self.shape_size
        if self.text_embed and layout_width != self.hidden_size:
            raise ValueError(
                f"4*coordinate_size + 2*shape_size must equal hidden_size: 4*{self.coordinate_size} + "
                f"2*{self.shape_size} = {layout_width} != {self.hidden_size}"
            )
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size ({self.input_size}) must be a multiple of patch_size ({self.patch_size})")
        if self.attn_implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"attn_implementation must be one of {ATTENTION_IMPLEMENTATIONS}, got {self.attn_implementation!r}"
            )
        if self.attn_implementation == "flex" and self.attention_probs_dropout_prob > 0:
            raise ValueError(
                "attn_implementation='flex' has no attention-probability dropout: set attention_probs_dropout_prob=0"
            )
        if self.classifier_head not in CLASSIFIER_HEADS:
            raise ValueError(f"classifier_head must be one of {CLASSIFIER_HEADS}, got {self.classifier_head!r}")
        if not (self.text_embed or self.visual_embed):
            raise ValueError("at least one of text_embed and visual_embed must be true")
        if self.max_2d_position_embeddings <= 1000:
            raise ValueError("max_2d_position_embeddings must exceed 1000: boxes use a 0..1000 grid")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def patches_per_side(self) -> int:
        return self.input_size // self.patch_size

    @property
    def num_visual_tokens(self) -> int:
        """Visual CLS + one token per patch (197 for 224 px / 16 px)."""
        return self.patches_per_side**2 + 1

    @classmethod
    def from_flavor(cls, name: str, **overrides: Any) -> LayoutLMv3Config:
        """A named flavor (`tiny`, `small`, `base`, `large`), optionally with fields overridden."""
        if name not in FLAVORS:
            raise ValueError(f"unknown flavor {name!r}; choose one of {sorted(FLAVORS)}")
        return cls(**{**FLAVORS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LayoutLMv3Config:
        """Build from a dict, rejecting unknown keys so typos in a config file are not silently ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown LayoutLMv3Config fields: {unknown}")
        hints = typing.get_type_hints(cls)
        for name, value in values.items():
            if not _has_type(value, hints[name]):
                raise ValueError(f"LayoutLMv3Config.{name} must be {_type_name(hints[name])}, got {value!r}")
        return cls(**values)

    def save(self, path: str | Path, architecture: str | None = None) -> None:
        """config.json; `architecture` (the class that saved it, as transformers' "architectures") lets a loader
        that needs a fine-tuned head of one kind refuse another's."""
        from .weights_io import write_json

        saved_by = {"architectures": [architecture]} if architecture else {}
        write_json({"model_type": MODEL_TYPE, **saved_by, **self.to_dict()}, Path(path))

    @classmethod
    def load(cls, path: str | Path) -> LayoutLMv3Config:
        values = read_json_file(path)  # JsonFileError (a ValueError) naming the file
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a JSON object of config fields")
        model_type = values.pop("model_type", MODEL_TYPE)
        values.pop("architectures", None)  # which class saved it: `from_pretrained(trained_head=True)` reads it
        if model_type != MODEL_TYPE:
            raise ValueError(f"{path}: model_type {model_type!r} is not {MODEL_TYPE!r}")
        try:
            return cls.from_dict(values)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None


def _has_type(value: Any, hint: Any) -> bool:
    """Whether a config.json value fits a field's annotation (bool is not an int here; an int is a float)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_has_type(value, option) for option in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    origin = typing.get_origin(hint)
    return isinstance(value, origin or hint)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint)


# Our own config.json carries this marker; transformers' uses model_type "layoutlmv3" (see hf_interop).
MODEL_TYPE = "layoutlmv3-native"

FLAVORS: dict[str, dict[str, Any]] = {
    # Tests and CPU smoke runs: seconds per step on a laptop core; the paper's vocabulary and image geometry.
    "tiny": dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        coordinate_size=12, shape_size=8,
    ),
    # CPU benchmarks and short experiments.
    "small": dict(
        hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
        coordinate_size=48, shape_size=32,
    ),
    "base": dict(),
    "large": dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        coordinate_size=171, shape_size=170,
    ),
}  # fmt: skip
