"""Pretraining as a job of the one trainer: MLM + MIM + WPA on webdataset shards, visual-token targets from a
frozen image tokenizer. `launch/pretrain.py` calls `run` and exits with what it returns (see `signals`)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from layoutlmv3.data import ShardLoader
from layoutlmv3.pretraining.image_tokenizer import ImageTokenizer
from layoutlmv3.pretraining.model import LayoutLMv3ForPretraining, PretrainingOutput
from layoutlmv3.pretraining.step import batch_to_device, pretraining_forward
from layoutlmv3.tokenizer import LayoutLMv3Tokenizer
from layoutlmv3.training.engine import Training, non_embedding_parameters
from layoutlmv3.training.metrics import encoder_work
from layoutlmv3.training.runner import run_job

from .build import build_model, check_inputs_fit
from .inputs import LOADER_SETTINGS, build_loaders, check_train_shards_tokenizer
from .run_config import RunConfig, load_run_config

logger = logging.getLogger(__name__)

OBJECTIVE_METRICS = tuple(field.name for field in dataclasses.fields(PretrainingOutput))  # loss first


def run(config: RunConfig | str | Path, overrides: list[str] | None = None, resume: str = "auto") -> int:
    """Pretrain as the run config (a loaded one, or its YAML file + overrides) says; `resume` is "auto" (newest
    complete checkpoint), "none" or a tag directory. Returns the exit code."""
    if isinstance(config, RunConfig):
        return run_job(lambda: PretrainingJob(config), resume)
    return run_job(lambda: PretrainingJob(load_run_config(config, overrides)), resume)


class PretrainingJob:
    """The tokenizers (checked against the shards), the model (checked against both tokenizers)."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.tokenizer = LayoutLMv3Tokenizer.from_pretrained(config.data.tokenizer)
        check_train_shards_tokenizer(config, self.tokenizer)
        _check_roberta_vocabulary(config.model.init_text_from, self.tokenizer)
        self.image_tokenizer = ImageTokenizer.from_pretrained(config.objectives.image_tokenizer)
        torch.manual_seed(config.train.seed)  # the same initial weights on every rank
        self.model = build_model(config, self.tokenizer.vocab_size, self.image_tokenizer.codebook_size)
        special_ids = {
            "pad": self.tokenizer.pad_token_id,
            "cls": self.tokenizer.cls_token_id,
            "sep": self.tokenizer.sep_token_id,
        }
        check_inputs_fit(self.model.config, special_ids, self.image_tokenizer.config.grid_size, config.data.max_length)
        self.non_embedding = non_embedding_parameters(self.model)  # before ZeRO-3 partitions the weights
        self.tokenizer_fingerprint = self.tokenizer.fingerprint
        self.description = config.model.init_from or config.model.flavor

    def make_task(self, training: Training) -> PretrainingTask:
        self.image_tokenizer.to(training.device).eval().requires_grad_(False)
        loader, val_loader = build_loaders(
            self.config,
            self.tokenizer,
            self.model.config.patches_per_side,
            training.micro_batch_size,
            training.rank,
            training.world_size,
            pin_memory=training.device.type == "cuda",
        )
        return PretrainingTask(self.config, training, self.image_tokenizer, loader, val_loader, self.non_embedding)


class PretrainingTask:
    """The three objectives' forward pass; validation on the held-out shards."""

    metric_names = OBJECTIVE_METRICS
    loader_settings = LOADER_SETTINGS  # names a loader argument that changed since the checkpoint by its setting

    def __init__(
        self,
        config: RunConfig,
        training: Training,
        image_tokenizer: ImageTokenizer,
        loader: ShardLoader,
        val_loader: ShardLoader | None,
        non_embedding: int,
    ) -> None:
        self.config, self.training, self.image_tokenizer = config, training, image_tokenizer
        self.loader, self.val_loader, self.non_embedding = loader, val_loader, non_embedding
        # Every validation reads the same batches from the start of the held-out shards.
        self.val_start = val_loader.state_dict() if val_loader is not None else None

    def forward(self, batch: dict) -> list[torch.Tensor]:
        output = self._forward(batch)
        return [getattr(output, name) for name in OBJECTIVE_METRICS]

    def _forward(self, batch: dict) -> PretrainingOutput:
        """The pretraining forward pass of a collated batch on the engine's device (inputs in its dtype)."""
        inputs = batch_to_device(batch, self.training.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.training.dtype)
        return pretraining_forward(self.training.engine, self.image_tokenizer, inputs)

    def work(self, batch: dict) -> tuple[float, float, float]:
        return encoder_work(self.model_config, self.non_embedding, batch)

    @property
    def model_config(self):
        model: LayoutLMv3ForPretraining = self.training.engine.module
        return model.config

    def validate(self, step: int) -> dict[str, float] | None:
        """Mean metrics over up to data.val_batches held-out micro-batches per rank (the same ones every time).

        Ranks stop together as soon as one runs out of batches: under ZeRO-3 a forward pass is a collective.
        """
        if self.val_loader is None:
            return None
        engine, device = self.training.engine, self.training.device
        engine.eval()
        self.val_loader.load_state_dict(self.val_start)
        sums = torch.zeros(len(OBJECTIVE_METRICS) + 1, dtype=torch.float64, device=device)
        batches = iter(self.val_loader)
        with torch.no_grad():
            for _ in range(self.config.data.val_batches):
                batch = next(batches, None)
                present = torch.tensor([float(batch is not None)], device=device)
                dist.all_reduce(present, op=dist.ReduceOp.MIN)
                if not present.item():
                    break
                output = self._forward(batch)
                values = [getattr(output, name).detach().double() for name in OBJECTIVE_METRICS]
                sums += torch.stack([*values, torch.ones((), dtype=torch.float64, device=device)])
        dist.all_reduce(sums)
        engine.train()
        count = sums[-1].item()
        if not count:
            logger.warning("validation found no held-out batches")
            return None
        return {f"val/{name}": sums[index].item() / count for index, name in enumerate(OBJECTIVE_METRICS)}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def finish(self) -> None:
        pass


def _check_roberta_vocabulary(directory: str | None, tokenizer: LayoutLMv3Tokenizer) -> None:
    """The RoBERTa directory's own vocab.json + merges.txt, when it has them, must be data.tokenizer's: same size
    is not enough (another BPE of 50265 tokens would give every copied row another word)."""
    if not directory or not (Path(directory) / "vocab.json").is_file():
        return
    theirs = LayoutLMv3Tokenizer.from_pretrained(directory).fingerprint
    if theirs != tokenizer.fingerprint:
        raise ValueError(
            f"{directory} has another vocabulary (tokenizer {theirs}) than data.tokenizer ({tokenizer.fingerprint}): "
            "its word embeddings would not match the token ids; tokenize the shards with RoBERTa's vocabulary"
        )
