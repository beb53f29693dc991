"""The paper's initialisation: LayoutLMv3's text side starts from RoBERTa (arXiv 2204.08387, Sec. 3.1: "the
word embeddings ... from RoBERTa"), optionally with its 1D position embeddings and its Transformer layers.

RoBERTa's weight names in transformers are LayoutLMv3's own for the parts they share (`embeddings.*`,
`encoder.layer.N.*`), so the copy goes through the same name translation as loading a transformers LayoutLMv3
(`hf_interop.hf_to_native`). A vocabulary that differs from the model's is refused: copied rows would give
token ids another word's meaning.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from . import hf_interop, weights_io

logger = logging.getLogger(__name__)

PARTS = ("words", "positions", "layers")
ROBERTA_MODEL_TYPES = ("roberta", "xlm-roberta")
_PART_KEYS = {
    "words": ("embeddings.word_embeddings.weight",),
    "positions": ("embeddings.position_embeddings.weight",),
}


def init_text_from_roberta(
    model: torch.nn.Module, directory: str | Path, parts: Sequence[str] = ("words",)
) -> list[str]:
    """Copy `parts` of a transformers RoBERTa directory into `model` (a LayoutLMv3Model); returns the names of
    the weights copied. "layers" copies the first N encoder layers (N = the smaller depth) and the embedding
    LayerNorm; the widths must match."""
    directory = Path(directory)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise ValueError(f"model.init_text_parts must name some of {PARTS}, got {list(parts)}")
    values = weights_io.read_config(directory)
    if values.get("model_type") not in ROBERTA_MODEL_TYPES:
        raise ValueError(f"{directory} is not a RoBERTa model (model_type {values.get('model_type')!r})")
    config = model.config
    if values.get("vocab_size") != config.vocab_size:
        raise ValueError(
            f"{directory} has {values.get('vocab_size')} token ids, this model {config.vocab_size}: the word "
            "embeddings belong to RoBERTa's vocabulary; use it as data.tokenizer (roberta-base's vocab.json and "
            "merges.txt) or leave model.init_text_from unset"
        )
    if values.get("hidden_size") != config.hidden_size:
        raise ValueError(f"{directory} is {values.get('hidden_size')} wide, this model {config.hidden_size}")
    weights = {_strip(key): tensor for key, tensor in weights_io.read_weights(directory).items()}
    wanted = {key for part in parts if part in _PART_KEYS for key in _PART_KEYS[part]}
    if "layers" in parts:
        depth = min(config.num_hidden_layers, values.get("num_hidden_layers", 0))
        wanted |= {"embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias"}
        wanted |= {key for key in weights if key.startswith("encoder.layer.") and int(key.split(".")[2]) < depth}
        if depth < config.num_hidden_layers:
            logger.warning("%s has %d layers: layers %d.. keep their fresh weights", directory, depth, depth)
    missing = sorted(key for key in wanted if key not in weights and not key.startswith("encoder.layer."))
    if missing:
        raise ValueError(f"{directory} lacks {missing}")
    copied = hf_interop.hf_to_native({key: weights[key] for key in sorted(wanted)})
    own = model.state_dict()
    wrong = [
        f"{key} {tuple(tensor.shape)} vs {tuple(own[key].shape)}"
        for key, tensor in copied.items()
        if own[key].shape != tensor.shape
    ]
    if wrong:
        raise ValueError(f"{directory} does not fit this model: {wrong[:4]}")
    model.load_state_dict(copied, strict=False)
    logger.info("initialised %d text weights from %s (%s)", len(copied), directory, ", ".join(parts))
    return sorted(copied)


def _strip(key: str) -> str:
    """RobertaForMaskedLM and friends keep the encoder under `roberta.`; the bare RobertaModel does not."""
    return key[len("roberta.") :] if key.startswith("roberta.") else key
