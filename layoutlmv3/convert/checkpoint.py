"""A DeepSpeed pretraining checkpoint (ZeRO 1, 2 or 3) -> a self-contained model directory.

DeepSpeed's `get_fp32_state_dict_from_zero_checkpoint` consolidates the fp32 master weights of every rank. The
model shape is the model config recorded in the checkpoint's `complete` file at save time (older checkpoints:
rebuilt from the run config in the client state); the tokenizer is copied from the run's `data.tokenizer`
directory, checked against the fingerprint the checkpoint recorded.

A checkpoint comes from elsewhere as often as not: it is verified (`checkpointing.verify_checkpoint`: record,
pickles, sizes, checksums) before anything of it is unpickled (DeepSpeed's consolidation loads with
`weights_only=False`), and a checkpoint of another job (the image tokenizer's, a fine-tuning run's) is named as
such with what to do instead.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
from pathlib import Path
from typing import Any

import torch

from layoutlmv3.model import (
    LayoutLMv3Config,
    LayoutLMv3ForQuestionAnswering,
    LayoutLMv3ForSequenceClassification,
    LayoutLMv3ForTokenClassification,
    LayoutLMv3Model,
    hf_interop,
    weights_io,
)
from layoutlmv3.pretraining.image_tokenizer import ImageTokenizer
from layoutlmv3.pretraining.model import LayoutLMv3ForPretraining
from layoutlmv3.tokenizer import LayoutLMv3Tokenizer
from layoutlmv3.training.checkpointing import (
    COMPLETE_FILE,
    LATEST_FILE,
    TAG_PATTERN,
    Checkpoint,
    complete_checkpoints,
    read_checkpoint,
    verify_checkpoint,
)

from .hf import write_for_transformers
from .publish import publish

logger = logging.getLogger(__name__)

FORMATS = ("native", "hf")
# DeepSpeed's model-states file holds the client state: ZeRO-1/2 write the first name, ZeRO-3 the second.
MODEL_STATES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")
WORD_EMBEDDINGS = "layoutlmv3.text_embeddings.word.weight"
MIM_DECODER = "mim_head.decoder.weight"


def resolve_tag(directory: str | Path, tag: str = "latest") -> Checkpoint:
    """The complete checkpoint `tag` under `directory` ("latest": the tag its `latest` file names); `directory`
    may also be a tag directory itself. Its record is read and checked (DamagedCheckpoint naming it); the files
    are verified by `convert_checkpoint`. `directory` is the user's (its links resolved); a tag, from `latest` or
    --tag, must be a tag name (stepNNNNNNNN): a folder of `directory`, nothing else."""
    directory = Path(directory).resolve()
    if os.path.lexists(directory / COMPLETE_FILE):
        return read_checkpoint(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such checkpoint directory")
    source = "--tag"
    if tag == "latest":
        latest = directory / LATEST_FILE
        if not latest.is_file():
            raise ValueError(f"{directory} has no {LATEST_FILE} file: pass --tag (complete tags: {_tags(directory)})")
        with open(latest, "rb") as handle:  # DeepSpeed's format: the tag alone; a longer file is not one
            tag, source = handle.read(64).decode("utf-8", "replace").strip(), str(latest)
    if not TAG_PATTERN.fullmatch(tag):
        raise ValueError(
            f"{source} names {tag[:40]!r}, not a checkpoint tag (a folder name such as step00001000) in "
            f"{directory}; complete tags: {_tags(directory)}"
        )
    if not os.path.lexists(directory / tag):
        raise ValueError(f"{directory} has no checkpoint tag {tag!r}; complete tags: {_tags(directory)}")
    return read_checkpoint(directory / tag)


def add_allow_global(parser: argparse.ArgumentParser) -> None:
    """--allow-global: what checkpoint.allowed_globals is to a resume, for tools that read no run config."""
    parser.add_argument(
        "--allow-global",
        action="append",
        default=[],
        metavar="NAME",
        help="a dotted type name a checkpoint's pickles may reference beyond the built-in allow-list (repeatable; "
        "only plain-data types of a newer DeepSpeed, named by a refusal)",
    )


def convert_checkpoint(
    checkpoint: Checkpoint,
    out: str | Path,
    *,
    to: str = "native",
    drop_pretraining_heads: bool = False,
    config_path: str | Path | None = None,
    tokenizer_dir: str | Path | None = None,
    allowed_globals: tuple[str, ...] = (),
) -> Path:
    """Write `checkpoint` as a model directory `out` (config.json, model.safetensors, tokenizer files).

    `to="hf"` writes transformers' layout, which has no pretraining heads, so it implies dropping them.
    `config_path` (a config.json, ours or transformers') replaces the model config the checkpoint records; a
    checkpoint of another size is refused with the offending weights named. `allowed_globals`: pickled types
    allowed beyond checkpointing.SAFE_GLOBALS (--allow-global), the user's word, never the checkpoint's.
    """
    if to not in FORMATS:
        raise ValueError(f"--to must be one of {FORMATS}, got {to!r}")
    verify_checkpoint(checkpoint, allowed_globals)  # before anything is unpickled: DeepSpeed would run planted code
    check_pretraining_checkpoint(checkpoint)
    client = read_client_state(checkpoint)
    tokenizer = LayoutLMv3Tokenizer.from_pretrained(_tokenizer_dir(client, tokenizer_dir))
    expected = client.get("tokenizer_fingerprint")
    if expected and tokenizer.fingerprint != expected:
        raise ValueError(
            f"the tokenizer has fingerprint {tokenizer.fingerprint}, the checkpoint was trained with {expected}"
        )
    weights = consolidate(checkpoint, verified=True)
    if broken := [name for name, tensor in weights.items() if not torch.isfinite(tensor).all()]:
        raise ValueError(f"{checkpoint.path}: non-finite values in {len(broken)} weights ({', '.join(broken[:4])}): "
                         "a corrupt file, or a run that diverged; convert an earlier tag")  # fmt: skip
    if config_path:
        config = _explicit_config(Path(config_path))
    elif checkpoint.model_config is not None:
        config = LayoutLMv3Config.from_dict(checkpoint.model_config)  # recorded at save: the one source
    else:  # checkpoints written before the record held the model config
        config = _run_model_config(client["config"], weights)
    model = _build(config, weights, backbone_only=drop_pretraining_heads or to == "hf", source=str(checkpoint.path))
    out = Path(out)

    def write(directory: Path) -> None:
        if to == "hf":
            write_for_transformers(model, tokenizer, directory)
        else:
            model.save_pretrained(directory)
            tokenizer.save_pretrained(directory)

    publish(out, write)
    logger.info("wrote %s (%s format, step %d)", out, to, checkpoint.step)
    return out


class NotAPretrainingCheckpoint(ValueError):
    """A checkpoint of another job (the image tokenizer, fine-tuning): there is nothing to convert."""


# What to do with a fine-tuned model, by the fine-tuning job's model class: its launcher.
FINETUNED_TOOLS = {
    LayoutLMv3ForTokenClassification.__name__: "launch/predict.py",
    LayoutLMv3ForSequenceClassification.__name__: "launch/classify.py",
    LayoutLMv3ForQuestionAnswering.__name__: "launch/answer.py",
}


def check_pretraining_checkpoint(checkpoint: Checkpoint) -> None:
    """Refuse a checkpoint whose record names another job's model, saying what kind it is and where that job's
    usable output is (checkpoints before the record named the class pass; their run config is checked later)."""
    kind = checkpoint.model_class
    if kind is None or kind == LayoutLMv3ForPretraining.__name__:
        return
    output = checkpoint.root.parent  # checkpoint.dir defaults to OUTPUT/checkpoints in both jobs
    if kind == ImageTokenizer.__name__:
        found = (output / weights_io.SAFETENSORS_NAME).is_file()
        raise NotAPretrainingCheckpoint(
            f"{checkpoint.path} is an image-tokenizer checkpoint ({kind}), not a pretraining one: "
            "launch/train_image_tokenizer.py --out already wrote the tokenizer's weights (config.json + "
            f"model.safetensors) when it finished{f', here: {output}' if found else ''}; point a pretraining "
            "run's data.image_tokenizer at that directory. convert.py converts pretraining checkpoints"
        )
    if kind in FINETUNED_TOOLS:
        best = output / "best"
        raise NotAPretrainingCheckpoint(
            f"{checkpoint.path} is a fine-tuning checkpoint ({kind}), not a pretraining one: the fine-tuning run's "
            f"model directory (OUTPUT/best{f', here: {best}' if (best / weights_io.CONFIG_NAME).is_file() else ''}) "
            f"is its output; use it directly with {FINETUNED_TOOLS[kind]} --model. convert.py converts "
            "pretraining checkpoints"
        )
    raise NotAPretrainingCheckpoint(
        f"{checkpoint.path} is a checkpoint of a {kind}, not of pretraining ({LayoutLMv3ForPretraining.__name__}): "
        "convert.py converts pretraining checkpoints only"
    )


def read_client_state(checkpoint: Checkpoint) -> dict[str, Any]:
    """Our part of DeepSpeed's client state (run config, tokenizer fingerprint), read without unpickling code."""
    for name in MODEL_STATES:
        path = checkpoint.path / name
        if path.is_file():
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as error:  # truncated files raise several types
                raise ValueError(f"cannot read {path} (truncated or corrupt?): {error}") from error
            if "layoutlmv3" not in state:
                raise ValueError(f"{path} holds no layoutlmv3 client state: not written by launch/pretrain.py")
            return state["layoutlmv3"]
    raise ValueError(f"{checkpoint.path} has none of {MODEL_STATES}: not a DeepSpeed checkpoint")


def consolidate(
    checkpoint: Checkpoint, verified: bool = False, allowed_globals: tuple[str, ...] = ()
) -> dict[str, torch.Tensor]:
    """All ranks' fp32 weights as one state dict (DeepSpeed's own consolidation, its chatter kept off stdout).

    DeepSpeed unpickles with `weights_only=False`: the checkpoint is verified first unless the caller just did
    (`verified`)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    if not verified:
        verify_checkpoint(checkpoint, allowed_globals)

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            weights = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.root), tag=checkpoint.tag)
    except Exception as error:  # DeepSpeed raises whatever torch.load or its own checks raise
        raise ValueError(f"cannot consolidate {checkpoint.path} (truncated or corrupt file?): {error}") from error
    return {key: value.float() for key, value in weights.items()}


def _run_model_config(run_config: dict[str, Any], weights: dict[str, torch.Tensor]) -> LayoutLMv3Config:
    """For checkpoints without a recorded model config: what `pretraining.build.build_model` built (flavor +
    overrides, or the init_from directory's config, which must still exist)."""
    section = run_config["model"]
    sizes = {}
    if WORD_EMBEDDINGS in weights:
        sizes["vocab_size"] = weights[WORD_EMBEDDINGS].shape[0]
    if MIM_DECODER in weights:
        sizes["visual_codebook_size"] = weights[MIM_DECODER].shape[0]
    if section.get("init_from"):
        base = _explicit_config(Path(section["init_from"]) / weights_io.CONFIG_NAME).to_dict()
        return LayoutLMv3Config.from_dict({**base, **sizes, **section.get("overrides", {})})
    return LayoutLMv3Config.from_flavor(section["flavor"], **{**sizes, **section.get("overrides", {})})


def _explicit_config(path: Path) -> LayoutLMv3Config:
    """A config.json (or the model directory holding one), ours or transformers'."""
    directory = path if path.is_dir() else path.parent
    values = weights_io.read_config(directory)
    if hf_interop.is_hf_config(values):
        return hf_interop.config_from_hf(values)
    return LayoutLMv3Config.load(directory / weights_io.CONFIG_NAME)


def _build(
    config: LayoutLMv3Config, weights: dict[str, torch.Tensor], backbone_only: bool, source: str
) -> LayoutLMv3ForPretraining | LayoutLMv3Model:
    """The pretraining model with all weights checked, or only its backbone."""
    model = LayoutLMv3ForPretraining(config)
    weights = {key: value for key, value in weights.items() if key not in model.tied_weight_keys}  # shared storage
    model.load_weights(weights, source=source)
    missing = sorted(set(model.state_dict()) - set(weights) - set(model.tied_weight_keys))
    if missing:
        raise ValueError(f"{source} lacks weights of the pretraining model: {missing[:8]}")
    return model.layoutlmv3 if backbone_only else model


def _tokenizer_dir(client: dict[str, Any], given: str | Path | None) -> Path:
    if given:
        path = Path(given)
    else:
        data = (client.get("config") or {}).get("data") or {}
        if not isinstance(data, dict) or not isinstance(data.get("tokenizer"), str):
            raise ValueError(
                "the checkpoint's run config has no data.tokenizer: not a pretraining checkpoint (an image "
                "tokenizer's or a fine-tuning run's?); pass --tokenizer DIR if it is one"
            )
        path = Path(data["tokenizer"])
    if not (path / "vocab.json").is_file():
        raise FileNotFoundError(f"tokenizer directory {path} has no vocab.json: pass --tokenizer DIR")
    return path


def _tags(directory: Path) -> list[str]:
    return [checkpoint.tag for checkpoint in complete_checkpoints(directory)]
