"""A job's model in the DeepSpeed engine: its optimizer (parameter groups, weight decay) and the engine around both.

We build the optimizer ourselves and hand it to `deepspeed.initialize`, so the optimizer settings stay in the
run config (YAML) while micro-batch, accumulation, precision and ZeRO stay in the DeepSpeed JSON; `Training`
reads the latter back from the engine and never from a second copy.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import deepspeed
import torch
from deepspeed.accelerator import get_accelerator
from deepspeed.checkpoint.constants import (
    UNIVERSAL_CHECKPOINT_INFO,
    UNIVERSAL_CHECKPOINT_VERSION_KEY,
    UNIVERSAL_CHECKPOINT_VERSION_VALUE,
)
from torch import nn

from .ds_config import offloads_optimizer
from .sections import TrainSection

logger = logging.getLogger(__name__)

# Parameters that act as embeddings of a single token or position rather than weights of a map: BEiT and
# LayoutLMv3 exempt them from weight decay, like biases and LayerNorm gains.
NO_DECAY_SUFFIXES = ("visual_embeddings.cls_token", "visual_embeddings.mask_token", "visual_embeddings.position")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: decayed weights, and biases, norm gains and token/position embeddings without decay."""
    norm_params = {id(p) for module in model.modules() if isinstance(module, nn.LayerNorm) for p in module.parameters()}
    decay, no_decay = [], []
    for name, param in model.named_parameters():  # tied weights appear once
        if not param.requires_grad:
            continue
        exempt = param.ndim <= 1 or id(param) in norm_params or name.endswith(NO_DECAY_SUFFIXES)
        (no_decay if exempt else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def non_embedding_parameters(model: nn.Module) -> int:
    """Parameters that take part in per-token matrix products (for FLOP estimates): all but lookup tables."""
    lookups = {id(p) for module in model.modules() if isinstance(module, nn.Embedding) for p in module.parameters()}
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if id(p) not in lookups and not name.endswith(NO_DECAY_SUFFIXES)
    )


def build_optimizer(model: nn.Module, train: TrainSection, ds_values: dict[str, Any]) -> torch.optim.Optimizer:
    """AdamW: DeepSpeed's CPU Adam under optimizer offload, its FusedAdam on GPU, torch's AdamW on CPU."""
    groups = parameter_groups(model, train.weight_decay)
    settings = {"lr": train.lr, "betas": train.betas, "eps": train.eps}
    if offloads_optimizer(ds_values):
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, adamw_mode=True, **settings)
    if get_accelerator().device_name() == "cuda":
        from deepspeed.ops.adam import FusedAdam

        try:
            return FusedAdam(groups, adam_w_mode=True, **settings)
        except Exception as error:  # the op is compiled on first use and needs the CUDA toolkit (nvcc)
            logger.warning("DeepSpeed FusedAdam unavailable (%s); using torch's fused AdamW", error)
            return torch.optim.AdamW(groups, fused=True, **settings)
    return torch.optim.AdamW(groups, **settings)


@dataclass
class Training:
    """The engine plus the settings read back from it (the DeepSpeed JSON is their only source)."""

    engine: deepspeed.DeepSpeedEngine
    optimizer: torch.optim.Optimizer  # ours: the engine steps it; we set its learning rate
    micro_batch_size: int
    accumulation_steps: int
    precision: str  # "bf16", "fp16" or "fp32"
    zero_stage: int
    rank: int
    world_size: int

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step over all ranks."""
        return self.micro_batch_size * self.accumulation_steps * self.world_size

    @property
    def device(self) -> torch.device:
        return self.engine.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the model's floating inputs (pixel values): the engine casts the weights to it."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.precision]

    def set_learning_rate(self, lr: float) -> None:
        for group in self.optimizer.param_groups:  # ZeRO keeps our group dicts; it only swaps their params
            group["lr"] = lr

    def loss_scale(self) -> float | None:
        """fp16's current dynamic loss scale; None in bf16/fp32."""
        if not self.engine.fp16_enabled():
            return None
        optimizer = self.engine.optimizer
        config = getattr(optimizer, "loss_scale_config", None)
        return float(config.cur_scale if config is not None else optimizer.cur_scale)

    def grad_norm(self) -> float | None:
        """Global gradient norm of the last optimizer step (before clipping), as DeepSpeed computed it."""
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)


def initialize(
    model: nn.Module, train: TrainSection, ds_values: dict[str, Any], load_universal: bool = False
) -> Training:
    """`deepspeed.initialize` with our optimizer; `load_universal` for resuming on another world size."""
    # Lets DeepSpeed's ds_to_universal convert the checkpoints of every job (resuming on another number of ranks).
    setattr(model, UNIVERSAL_CHECKPOINT_INFO, {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE})
    optimizer = build_optimizer(model, train, ds_values)
    values = copy.deepcopy(ds_values)
    if load_universal:
        values.setdefault("checkpoint", {})["load_universal"] = True
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=values)
    precision = "bf16" if engine.bfloat16_enabled() else "fp16" if engine.fp16_enabled() else "fp32"
    return Training(
        engine=engine,
        optimizer=optimizer,
        micro_batch_size=engine.train_micro_batch_size_per_gpu(),
        accumulation_steps=engine.gradient_accumulation_steps(),
        precision=precision,
        zero_stage=engine.zero_optimization_stage(),
        rank=engine.global_rank,
        world_size=engine.dp_world_size,
    )
