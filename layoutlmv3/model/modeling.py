"""LayoutLMv3: one multimodal Transformer over [text tokens ; visual CLS ; image patches] (arXiv 2204.08387).

Numerically equal to transformers' `LayoutLMv3Model` (tests hold it to 1e-5 in fp32), with three differences
that matter for pretraining: the relative-position tables are trainable, attention can run as SDPA or
FlexAttention, and Q/K/V are one fused projection.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import hf_interop, weights_io
from .config import IGNORE_INDEX, LayoutLMv3Config
from .embeddings import TextEmbeddings, VisualEmbeddings, check_boxes, patch_grid_boxes
from .encoder import Encoder, EncoderLayer
from .heads import ClassificationHead, MaskedLMHead, labelled_cross_entropy
from .outputs import (
    LayoutLMv3ModelOutput,
    MaskedLMOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

logger = logging.getLogger(__name__)


class LayoutLMv3PreTrainedModel(nn.Module):
    """Weight initialisation and `from_pretrained` / `save_pretrained` shared by the model and its heads."""

    base_prefix = ""  # head models keep the backbone under "layoutlmv3."
    tied_weight_keys: tuple[str, ...] = ()
    # Backbone weights a checkpoint may lack without being wrong: the MIM mask token exists only in pretraining.
    optional_suffixes: tuple[str, ...] = ("visual_embeddings.mask_token",)
    hf_architecture = "LayoutLMv3Model"
    supports_gradient_checkpointing = True  # transformers' Trainer asks before enabling it
    main_input_name = "input_ids"

    def __init__(self, config: LayoutLMv3Config) -> None:
        super().__init__()
        self.config = config

    def init_weights(self) -> None:
        """BERT-style init: N(0, initializer_range) for projections and tables, zero biases, unit LayerNorms.

        Each weight is drawn once: a backbone inside a head model initialised itself when it was built, so the head
        model draws only what it adds (from one seed, its backbone is the bare model), and a decoder tied to the
        word embeddings leaves them as drawn."""
        std = self.config.initializer_range
        backbones = [child for child in self.children() if isinstance(child, LayoutLMv3PreTrainedModel)]
        initialised = {module for backbone in backbones for module in backbone.modules()}
        backbone_weights = {id(weight) for backbone in backbones for weight in backbone.parameters()}
        for module in self.modules():
            if module in initialised:
                continue
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                if id(module.weight) not in backbone_weights:  # else a decoder tied to the word embeddings
                    nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
                if module.padding_idx is not None:
                    module.weight.data[module.padding_idx].zero_()
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, VisualEmbeddings):
                nn.init.trunc_normal_(module.cls_token, std=std)
                nn.init.trunc_normal_(module.position, std=std)
                if module.mask_token is not None:
                    nn.init.trunc_normal_(module.mask_token, std=std)

    def set_attn_implementation(self, name: str) -> None:
        """Switch every layer to `eager`, `sdpa` or `flex` (validated like the config)."""
        LayoutLMv3Config.from_dict({**self.config.to_dict(), "attn_implementation": name})
        self.config.attn_implementation = name

    def compile_layers(self, **compile_options: Any) -> None:
        """torch.compile each encoder layer in place (regional compilation): every layer has the same code and
        shapes, so one compiled graph serves all of them and compile time does not grow with depth, while the
        embeddings and the bias construction (data-dependent bucketing) stay eager."""
        for module in self.modules():
            if isinstance(module, EncoderLayer):
                module.compile(**compile_options)

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Parameter count, as transformers' `num_parameters` (its Trainer calls it with exclude_embeddings)."""
        excluded = set()
        if exclude_embeddings:
            excluded = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        return sum(
            p.numel() for p in self.parameters() if id(p) not in excluded and (p.requires_grad or not only_trainable)
        )

    # ---- what transformers users call on a model -------------------------------------------------------------
    def activation_checkpointing_enable(
        self,
        activation_checkpointing_kwargs: dict[str, Any] | None = None,
        every_n_layers: int = 1,
        offload: bool = False,
    ) -> None:
        """Recompute each layer's activations in the backward pass (the config's `gradient_checkpointing`), as
        transformers' Trainer asks with `activation_checkpointing=True`. Every layer is checkpointed, on the device,
        non-reentrantly: `{"use_reentrant": False}` is accepted, any other option is refused by name."""
        options = {
            k: v for k, v in (activation_checkpointing_kwargs or {}).items() if (k, v) != ("use_reentrant", False)
        }
        if every_n_layers != 1:
            options["every_n_layers"] = every_n_layers
        if offload:
            options["offload"] = offload
        if options:
            raise ValueError(
                f"activation checkpointing here covers every layer, non-reentrantly; unsupported: {options}"
            )
        self.config.gradient_checkpointing = True

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict[str, Any] | None = None) -> None:
        """transformers' older name for `activation_checkpointing_enable`."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs)

    def activation_checkpointing_disable(self) -> None:
        self.config.gradient_checkpointing = False

    def gradient_checkpointing_disable(self) -> None:
        self.activation_checkpointing_disable()

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.config.gradient_checkpointing

    def get_input_embeddings(self) -> nn.Embedding:
        """The word-embedding table (the text branch's; a model without one has none to give)."""
        backbone = getattr(self, "layoutlmv3", self)
        if not hasattr(backbone, "text_embeddings"):
            raise ValueError("this model has no text branch (text_embed is false): no input embeddings")
        return backbone.text_embeddings.word

    def set_input_embeddings(self, embeddings: nn.Embedding) -> None:
        """Install a new word-embedding table, re-tying every decoder that shares it; the config follows its size."""
        old = self.get_input_embeddings()
        getattr(self, "layoutlmv3", self).text_embeddings.word = embeddings
        for module in self.modules():
            if isinstance(module, MaskedLMHead) and module.decoder.weight is old.weight:
                module.decoder.weight = embeddings.weight
                if module.decoder.bias is not None and len(module.decoder.bias) != embeddings.num_embeddings:
                    bias = module.decoder.bias.new_zeros(embeddings.num_embeddings)
                    kept = min(len(bias), len(module.decoder.bias))
                    bias[:kept] = module.decoder.bias.detach()[:kept]
                    module.decoder.bias = nn.Parameter(bias)
                module.decoder.out_features = embeddings.num_embeddings
        self.config.vocab_size = embeddings.num_embeddings

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None):
        """Grow or shrink the vocabulary (tokens added to the tokenizer): kept rows keep their vectors, new rows
        are drawn as at initialisation, tied decoders follow. Returns the new table, as transformers does."""
        old = self.get_input_embeddings()
        size = old.num_embeddings if new_num_tokens is None else new_num_tokens
        if pad_to_multiple_of:
            size = -(-size // pad_to_multiple_of) * pad_to_multiple_of
        if size == old.num_embeddings:
            return old
        new = nn.Embedding(size, old.embedding_dim, padding_idx=old.padding_idx)
        new.to(device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            nn.init.normal_(new.weight, std=self.config.initializer_range)
            kept = min(size, old.num_embeddings)
            new.weight[:kept] = old.weight[:kept]
        self.set_input_embeddings(new)
        return new

    # ---- saving -------------------------------------------------------------------------------------------
    def save_pretrained(
        self, directory: str | Path, format: str = "native", state_dict: dict[str, torch.Tensor] | None = None
    ) -> None:
        """Write config.json + model.safetensors. `format="hf"` writes transformers' layout instead, which
        `transformers.LayoutLMv3Model.from_pretrained` loads (heads transformers lacks are left out, with a warning).
        `state_dict`: the weights to write instead of this module's own (as transformers' argument: a trainer that
        shards the model gathers them first)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state_dict = self.state_dict() if state_dict is None else state_dict
        weights = {k: v for k, v in state_dict.items() if k not in self.tied_weight_keys}
        if format == "native":
            self.config.save(directory / weights_io.CONFIG_NAME, self.hf_architecture)
        elif format == "hf":
            weights, dropped = hf_interop.native_to_hf(weights)
            if dropped:
                logger.warning("transformers has no place for %d weights; not saved: %s", len(dropped), dropped[:5])
            hf_config = hf_interop.config_to_hf(self.config, self.hf_architecture)
            weights_io.write_json(hf_config.to_dict(), directory / weights_io.CONFIG_NAME)
        else:
            raise ValueError(f"format must be 'native' or 'hf', got {format!r}")
        weights_io.write_weights(weights, directory / weights_io.SAFETENSORS_NAME)

    # ---- loading ------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        *,
        trained_head: bool = False,
        ignore_mismatched_sizes: bool = False,
        config: LayoutLMv3Config | None = None,
        dtype: torch.dtype | str | None = None,
        torch_dtype: torch.dtype | str | None = None,
        device_map: str | torch.device | None = None,
        return_dict: bool = True,
        **config_overrides: Any,
    ):
        """Load ours or a transformers LayoutLMv3 directory (config.json + model.safetensors / pytorch_model.bin).

        `config_overrides` change execution or head fields, e.g. `num_labels=7, attn_implementation="eager"`.
        Backbone weights must all be present and of the right shape. As in transformers, a head missing from the
        checkpoint is freshly initialised and one the model lacks is ignored (each with a warning), while a head of
        another size (`num_labels=3` on a 7-label model) is an error unless `ignore_mismatched_sizes`; with
        `trained_head` (prediction: a fresh head would answer at random) any of these is refused.

        transformers' usual arguments: `config` replaces config.json (a weights-only directory, as transformers'
        own Trainer saves our models -- `layoutlmv3.hf_trainer.LayoutLMv3Trainer` saves the config too); `dtype` / `torch_dtype` (a dtype,
        its name, or "auto": the saved weights'); `device_map`, one device ("auto": cuda if there is one);
        `return_dict` must stay True (outputs are ModelOutputs, which also index and unpack like tuples). Any other
        name must be a config field, or is refused by name.
        """
        directory = Path(directory)
        cls._check_loading_arguments(config_overrides, return_dict, device_map)
        if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
            raise ValueError(f"dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree: pass one")
        has_config = (directory / weights_io.CONFIG_NAME).exists()
        if config is None and not has_config and directory.is_dir() and any(directory.glob("*.safetensors")):
            raise FileNotFoundError(
                f"{directory} has weights but no {weights_io.CONFIG_NAME} (transformers' Trainer saves only the "
                "weights of a model that is not its PreTrainedModel): pass the model's config, "
                "from_pretrained(directory, config=model.config); train with layoutlmv3.hf_trainer.LayoutLMv3Trainer "
                "to have its saves write the config too"
            )
        saved = weights_io.read_config(directory) if has_config or config is None else {}
        if config is None:
            config, is_hf = cls._saved_config(directory, config_overrides)
        else:
            config = LayoutLMv3Config.from_dict({**config.to_dict(), **config_overrides})
            is_hf = hf_interop.is_hf_config(saved)
        saved_by = saved.get("architectures") or []
        if trained_head and saved_by and cls.hf_architecture not in saved_by:  # e.g. a page classifier whose
            raise ValueError(  # head happens to fit a token classifier's shapes
                f"{directory} is not a fine-tuned {cls.__name__}: it was saved as {', '.join(map(str, saved_by))}"
            )
        weights = weights_io.read_weights(directory)
        if is_hf:
            weights = hf_interop.hf_to_native(weights)
        model = cls(config)
        model.load_weights(
            weights, source=str(directory), trained_head=trained_head, ignore_mismatched_sizes=ignore_mismatched_sizes
        )
        chosen_dtype = _loading_dtype(dtype if dtype is not None else torch_dtype, weights)
        if chosen_dtype is not None:
            model.to(chosen_dtype)
        if device_map == "auto":
            device_map = "cuda" if torch.cuda.is_available() else "cpu"
        if device_map is not None:
            model.to(device_map)
        return model

    @classmethod
    def _check_loading_arguments(cls, overrides: dict[str, Any], return_dict: bool, device_map: Any) -> None:
        """Refuse, by name, what transformers' `from_pretrained` takes and ours does not do."""
        if not return_dict:
            raise ValueError("return_dict=False is not supported: outputs are ModelOutputs, which index and unpack "
                             "like tuples (out[0], out.to_tuple())")  # fmt: skip
        if device_map is not None and not isinstance(device_map, str | torch.device):
            raise ValueError(f"device_map={device_map!r} is not supported: one device only (e.g. 'cuda', 'auto')")
        label2id = overrides.pop("label2id", None)
        if label2id is not None:  # transformers users pass both maps; ours keeps id2label only
            derived = {int(index): label for label, index in label2id.items()}
            given = {int(k): v for k, v in (overrides.get("id2label") or derived).items()}
            if given != derived:
                raise ValueError(f"label2id {label2id} is not the inverse of id2label {overrides['id2label']}")
            overrides["id2label"] = derived
        fields = set(LayoutLMv3Config().to_dict())
        if unknown := sorted(set(overrides) - fields):
            raise ValueError(
                f"{cls.__name__}.from_pretrained does not support {', '.join(unknown)}: neither one of its arguments "
                "(trained_head, ignore_mismatched_sizes, config, dtype/torch_dtype, device_map, return_dict) nor a "
                "LayoutLMv3Config field"
            )

    @classmethod
    def from_config_of(cls, directory: str | Path, **config_overrides: Any):
        """The architecture of a saved model (ours or transformers'), freshly initialised: the from-scratch
        baseline that isolates what pretraining contributes (same shape, same vocabulary, no learned weights)."""
        config, _ = cls._saved_config(Path(directory), config_overrides)
        return cls(config)

    @staticmethod
    def _saved_config(directory: Path, overrides: dict[str, Any]) -> tuple[LayoutLMv3Config, bool]:
        values = weights_io.read_config(directory)
        is_hf = hf_interop.is_hf_config(values)
        config = hf_interop.config_from_hf(values) if is_hf else LayoutLMv3Config.load(directory / "config.json")
        if overrides:
            config = LayoutLMv3Config.from_dict({**config.to_dict(), **overrides})
        return config, is_hf

    def load_weights(
        self,
        weights: dict[str, torch.Tensor],
        source: str = "checkpoint",
        trained_head: bool = False,
        ignore_mismatched_sizes: bool = False,
    ) -> None:
        """Load backbone (+ head) weights saved from this class, the bare model, or another head model (not with
        `trained_head`: then every weight of this class's head must be there, as fine-tuned). A head weight of
        another shape is an error unless `ignore_mismatched_sizes` (then it is initialised afresh)."""
        weights = self._align_prefix(weights)
        own = {k: v for k, v in self.state_dict().items() if k not in self.tied_weight_keys}
        backbone = self.base_prefix
        branches_off = tuple(backbone + prefix for prefix in self._switched_off_prefixes())
        unused = {k for k in weights if k.startswith(branches_off) and k not in own}
        if unused:  # e.g. fine-tuning text + layout only (visual_embed false) from a multimodal checkpoint
            logger.info("not loading %d weights of %s: this config turns their branch off", len(unused), source)
            weights = {k: v for k, v in weights.items() if k not in unused}
        missing = sorted(set(own) - set(weights))
        unexpected = sorted(set(weights) - set(own))
        mismatched = sorted(k for k in set(own) & set(weights) if own[k].shape != weights[k].shape)
        fatal_missing = [
            k for k in missing if (not backbone or k.startswith(backbone)) and not k.endswith(self.optional_suffixes)
        ]
        fatal_mismatch = [k for k in mismatched if not backbone or k.startswith(backbone)]
        if fatal_missing or fatal_mismatch:
            details = [
                f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(own[k].shape)}" for k in fatal_mismatch
            ]
            raise ValueError(
                f"{source} does not fit this model (another model size or config?): "
                f"missing {fatal_missing[:8]}, shape mismatches {details[:8]}"
            )
        head_unexpected = [
            k for k in unexpected if (backbone and not k.startswith(backbone)) or k.endswith(self.optional_suffixes)
        ]
        if len(head_unexpected) != len(unexpected):
            raise ValueError(
                f"{source} has backbone weights this model lacks: {sorted(set(unexpected) - set(head_unexpected))[:8]}"
            )
        if trained_head and (missing or mismatched):
            raise ValueError(
                f"{source} is not a fine-tuned {type(self).__name__}: its head lacks or misfits "
                f"{(missing + mismatched)[:4]} (a model fine-tuned for another task, or not fine-tuned?)"
            )
        if mismatched and not ignore_mismatched_sizes:
            details = [f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(own[k].shape)}" for k in mismatched]
            raise ValueError(
                f"{source}: head weights of another size ({'; '.join(details[:4])}), e.g. another num_labels; pass "
                "ignore_mismatched_sizes=True to initialise that head afresh (fine-tuning: --model.overrides "
                "'{ignore_mismatched_sizes: true}')"
            )
        if missing or mismatched:
            logger.warning(
                "%s weights were newly initialised, not loaded from %s (train them on your task): %s",
                type(self).__name__, source, missing + mismatched,
            )  # fmt: skip
        if head_unexpected:
            logger.warning("ignoring head weights of %s this model has no place for: %s", source, head_unexpected)
        loadable = {k: v for k, v in weights.items() if k in own and k not in mismatched}
        self.load_state_dict(loadable, strict=False)

    def _switched_off_prefixes(self) -> tuple[str, ...]:
        """Backbone weight-name prefixes of the modality branches this config turns off (their weights unused)."""
        config = self.config
        visual = () if config.visual_embed else ("visual_embeddings.", "embedding_norm.")
        return visual + (() if config.text_embed else ("text_embeddings.",))

    def _align_prefix(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Add or strip the backbone prefix so bare-model and head-model checkpoints load into either."""
        prefix = hf_interop.BASE_PREFIX
        has_prefix = any(k.startswith(prefix) for k in weights)
        if self.base_prefix and not has_prefix:
            return {prefix + k: v for k, v in weights.items()}
        if not self.base_prefix and has_prefix:
            return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
        return weights


def _loading_dtype(requested: torch.dtype | str | None, weights: dict[str, torch.Tensor]) -> torch.dtype | None:
    """The dtype `from_pretrained` casts to: a dtype, its name ("bfloat16"), or "auto" (the saved weights')."""
    if requested is None or isinstance(requested, torch.dtype):
        return requested
    if requested == "auto":
        return next((w.dtype for w in weights.values() if w.is_floating_point()), None)
    chosen = getattr(torch, requested, None)
    if not isinstance(chosen, torch.dtype):
        raise ValueError(f"dtype {requested!r} is not a torch dtype name (e.g. 'float32', 'bfloat16') or 'auto'")
    return chosen


class LayoutLMv3Model(LayoutLMv3PreTrainedModel):
    """The encoder. Accepts text + image, text only, or image only."""

    def __init__(self, config: LayoutLMv3Config) -> None:
        super().__init__(config)
        if config.text_embed:
            self.text_embeddings = TextEmbeddings(config)
        if config.visual_embed:
            self.visual_embeddings = VisualEmbeddings(config)
            # transformers normalises the concatenated sequence once more when an image is present.
            self.embedding_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            self.embedding_dropout = nn.Dropout(config.hidden_dropout_prob)
            self.register_buffer("visual_bbox", patch_grid_boxes(config.patches_per_side), persistent=False)
        self.encoder = Encoder(config)
        self.init_weights()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        bbox: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        patch_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> LayoutLMv3ModelOutput:
        """input_ids/bbox/attention_mask: [batch, T] / [batch, T, 4] (0..1000) / [batch, T];
        pixel_values: [batch, 3, 224, 224]; patch_mask: [batch, 196] bool (MIM). Either or both modalities.
        `output_attentions` needs the eager attention (the fused ones never form the probabilities)."""
        if input_ids is None and pixel_values is None:
            raise ValueError("give input_ids, pixel_values, or both")
        pieces, boxes, key_valid, positions = [], [], [], []
        if input_ids is not None:
            if not self.config.text_embed:
                raise ValueError("this model was built with text_embed=False and takes no input_ids")
            batch, length = input_ids.shape
            if bbox is None:
                bbox = torch.zeros(batch, length, 4, dtype=torch.long, device=input_ids.device)
            elif bbox.shape[:2] != input_ids.shape:
                raise ValueError(f"bbox {tuple(bbox.shape)} does not match input_ids {tuple(input_ids.shape)}")
            check_boxes(bbox)
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            pieces.append(self.text_embeddings(input_ids, bbox, token_type_ids, position_ids))
            boxes.append(bbox)
            key_valid.append(attention_mask.bool())
            positions.append(torch.arange(length, device=input_ids.device))
        if pixel_values is not None:
            if not self.config.visual_embed:
                raise ValueError("this model was built with visual_embed=False and takes no pixel_values")
            visual = self.visual_embeddings(pixel_values, patch_mask)
            batch, length = visual.shape[:2]
            if pieces and pieces[0].shape[0] != batch:
                raise ValueError(f"batch sizes differ: {pieces[0].shape[0]} texts, {batch} images")
            pieces.append(visual)
            boxes.append(self.visual_bbox.expand(batch, -1, -1))
            key_valid.append(torch.ones(batch, length, dtype=torch.bool, device=visual.device))
            positions.append(torch.arange(length, device=visual.device))
        hidden = torch.cat(pieces, dim=1)
        if pixel_values is not None:
            hidden = self.embedding_dropout(self.embedding_norm(hidden))
        # The 1D bias uses plain token order (0..T-1 for text, 0..196 for the image), as transformers does.
        hidden, states, attentions = self.encoder(
            hidden,
            position_ids=torch.cat(positions)[None],
            bbox=torch.cat(boxes, dim=1),
            key_valid=torch.cat(key_valid, dim=1),
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        return LayoutLMv3ModelOutput(last_hidden_state=hidden, hidden_states=states, attentions=attentions)


class LayoutLMv3ForTokenClassification(LayoutLMv3PreTrainedModel):
    """A classifier over the text positions (FUNSD entity tagging)."""

    base_prefix = hf_interop.BASE_PREFIX
    hf_architecture = "LayoutLMv3ForTokenClassification"

    def __init__(self, config: LayoutLMv3Config) -> None:
        super().__init__(config)
        self.layoutlmv3 = LayoutLMv3Model(config)
        self.classifier = ClassificationHead(config)
        self.init_weights()

    def forward(
        self,
        input_ids: torch.Tensor,
        bbox: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> TokenClassifierOutput:
        """labels: [batch, T] with -100 where no loss is taken (specials, padding, later sub-tokens)."""
        hidden = self.layoutlmv3(
            input_ids, bbox, attention_mask, token_type_ids, position_ids, pixel_values,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions,
        )  # fmt: skip
        logits = self.classifier(hidden.last_hidden_state[:, : input_ids.shape[1]])
        loss = None
        if labels is not None:
            loss = labelled_cross_entropy(logits.flatten(0, 1), labels.flatten(), IGNORE_INDEX)
        return TokenClassifierOutput(loss, logits, hidden.hidden_states, hidden.attentions)


class LayoutLMv3ForSequenceClassification(LayoutLMv3PreTrainedModel):
    """A classifier of the whole page from the first text token's state (<s>), transformers' head: document
    classification (RVL-CDIP). Loss as transformers infers it: one label -> regression (MSE); integer labels ->
    cross-entropy; float labels [batch, labels] -> multi-label binary cross-entropy."""

    base_prefix = hf_interop.BASE_PREFIX
    hf_architecture = "LayoutLMv3ForSequenceClassification"

    def __init__(self, config: LayoutLMv3Config) -> None:
        super().__init__(config)
        self.layoutlmv3 = LayoutLMv3Model(config)
        self.classifier = ClassificationHead(config, kind="mlp")
        self.init_weights()

    def forward(
        self,
        input_ids: torch.Tensor,
        bbox: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> SequenceClassifierOutput:
        hidden = self.layoutlmv3(
            input_ids, bbox, attention_mask, token_type_ids, position_ids, pixel_values,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions,
        )  # fmt: skip
        logits = self.classifier(hidden.last_hidden_state[:, 0])
        loss = None
        if labels is not None:
            if self.config.num_labels == 1:
                loss = nn.functional.mse_loss(logits.squeeze().float(), labels.squeeze().float())
            elif not labels.is_floating_point():
                loss = nn.functional.cross_entropy(logits.float(), labels.view(-1))
            else:
                loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())
        return SequenceClassifierOutput(loss, logits, hidden.hidden_states, hidden.attentions)


class LayoutLMv3ForQuestionAnswering(LayoutLMv3PreTrainedModel):
    """Extractive question answering (DocVQA): start and end logits over every position, transformers' head.
    Positions outside the sequence (>= T, e.g. an answer cut off by the window) are left out of the loss."""

    base_prefix = hf_interop.BASE_PREFIX
    hf_architecture = "LayoutLMv3ForQuestionAnswering"

    def __init__(self, config: LayoutLMv3Config) -> None:
        if config.num_labels != 2:
            raise ValueError(
                f"question answering predicts a start and an end: num_labels must be 2, got {config.num_labels}"
            )
        super().__init__(config)
        self.layoutlmv3 = LayoutLMv3Model(config)
        self.qa_outputs = ClassificationHead(config, kind="mlp", outputs=2)
        self.init_weights()

    def forward(
        self,
        input_ids: torch.Tensor,
        bbox: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> QuestionAnsweringModelOutput:
        hidden = self.layoutlmv3(
            input_ids, bbox, attention_mask, token_type_ids, position_ids, pixel_values,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions,
        )  # fmt: skip
        start_logits, end_logits = self.qa_outputs(hidden.last_hidden_state).unbind(-1)
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored = start_logits.shape[1]
            losses = [
                labelled_cross_entropy(logits, positions.reshape(-1).clamp(0, ignored), ignored)
                for logits, positions in ((start_logits, start_positions), (end_logits, end_positions))
            ]
            loss = (losses[0] + losses[1]) / 2
        return QuestionAnsweringModelOutput(
            loss, start_logits.contiguous(), end_logits.contiguous(), hidden.hidden_states, hidden.attentions
        )


class LayoutLMv3ForMaskedLM(LayoutLMv3PreTrainedModel):
    """The encoder with the MLM head tied to the word embeddings (the pretraining objectives build on this)."""

    base_prefix = hf_interop.BASE_PREFIX
    tied_weight_keys = ("mlm_head.decoder.weight",)

    def __init__(self, config: LayoutLMv3Config) -> None:
        super().__init__(config)
        self.layoutlmv3 = LayoutLMv3Model(config)
        self.mlm_head = MaskedLMHead(config, self.layoutlmv3.text_embeddings.word)
        self.init_weights()

    def forward(
        self,
        input_ids: torch.Tensor,
        bbox: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> MaskedLMOutput:
        """labels: [batch, T], the original token id where masked and -100 elsewhere."""
        hidden = self.layoutlmv3(input_ids, bbox, attention_mask, pixel_values=pixel_values).last_hidden_state
        text = hidden[:, : input_ids.shape[1]]
        if labels is None:
            return MaskedLMOutput(logits=self.mlm_head(text), last_hidden_state=hidden)
        selected = labels != IGNORE_INDEX
        logits = self.mlm_head(text[selected])
        loss = labelled_cross_entropy(logits, labels[selected], IGNORE_INDEX)  # 0, not NaN, when none is masked
        return MaskedLMOutput(logits=logits, loss=loss, last_hidden_state=hidden)
