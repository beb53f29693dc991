"""The pretraining model as the run config says, and the start-up checks that it fits both tokenizers."""

from __future__ import annotations

from layoutlmv3.model import LayoutLMv3Config
from layoutlmv3.model.roberta_init import init_text_from_roberta
from layoutlmv3.pretraining.model import LayoutLMv3ForPretraining, LossWeights
from layoutlmv3.pretraining.run_config import RunConfig
from layoutlmv3.training.model_checks import check_max_length, check_special_ids


def build_model(config: RunConfig, vocab_size: int, codebook_size: int) -> LayoutLMv3ForPretraining:
    """The pretraining model from a flavor (+ overrides) or, with `model.init_from`, from a model directory.

    The text vocabulary and the MIM head's classes follow the tokenizers unless the overrides say otherwise;
    a model too small for them is refused here rather than failing inside an embedding lookup.
    """
    section = config.model
    weights = LossWeights(config.objectives.mlm_weight, config.objectives.mim_weight, config.objectives.wpa_weight)
    if section.init_from:
        overrides = {"visual_codebook_size": codebook_size, **section.overrides}
        # Another image tokenizer's codebook: its MIM head starts afresh (a warning), as it did before.
        model = LayoutLMv3ForPretraining.from_pretrained(section.init_from, ignore_mismatched_sizes=True, **overrides)
        model.loss_weights = weights
    else:
        shape = {"vocab_size": vocab_size, "visual_codebook_size": codebook_size, **section.overrides}
        model = LayoutLMv3ForPretraining(LayoutLMv3Config.from_flavor(section.flavor, **shape), weights)
    if section.init_text_from:
        if section.init_from:
            raise ValueError("model.init_text_from starts a fresh model from RoBERTa; model.init_from continues one")
        init_text_from_roberta(model.layoutlmv3, section.init_text_from, section.init_text_parts)
    if model.config.vocab_size < vocab_size:
        raise ValueError(f"the model has {model.config.vocab_size} token ids, the tokenizer {vocab_size}")
    if model.config.visual_codebook_size != codebook_size:
        raise ValueError(
            f"the MIM head predicts {model.config.visual_codebook_size} classes, "
            f"the image tokenizer has {codebook_size} codes"
        )
    if section.compile_layers:
        model.compile_layers()
    return model


def check_inputs_fit(
    model_config: LayoutLMv3Config, special_ids: dict[str, int], image_grid: int, max_length: int | None = None
) -> None:
    """`check_special_ids`, `check_max_length`, and refuse a patch grid that differs from the image tokenizer's code
    grid (the MIM labels would address other patches)."""
    check_special_ids(model_config, special_ids)
    if max_length is not None:
        check_max_length(model_config, max_length)
    if model_config.patches_per_side != image_grid:
        raise ValueError(
            f"the model cuts {model_config.input_size} px pages into a {model_config.patches_per_side}x"
            f"{model_config.patches_per_side} patch grid, the image tokenizer codes a {image_grid}x{image_grid} grid: "
            "MIM labels would not match the patches (change model.overrides input_size/patch_size or the image "
            "tokenizer)"
        )
