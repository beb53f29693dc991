"""transformers' `Trainer`, saving our models the way it saves its own.

`transformers.Trainer` writes a model through `save_pretrained` only when it is transformers' `PreTrainedModel`; of
any other module it writes the bare weights, with no config.json, so neither `save_model()` nor its checkpoints
reload without the config given by hand. Our classes stay plain modules (README, "transformers"), and this subclass
closes the gap: every save the Trainer makes -- `save_model()` and each `checkpoint-N/` (the best model it keeps is one) --
goes through our `save_pretrained` (config.json with the architecture, model.safetensors), with the processing class
(our processor: its tokenizer and windows, as a fine-tuned model's processing.json), so the directory reloads
with `from_pretrained(dir)` and converts with `launch/convert.py --model DIR --to hf`. Resuming
(`train(resume_from_checkpoint=...)`) reads those weights back through the Trainer's own path; the weights a model
ties to others (`tied_weight_keys`, the masked LM's decoder) are not in the files and are not missing (the Trainer
would look for transformers' own `_keys_to_ignore_on_save` on our module and crash). A model that is not ours is
saved exactly as the parent class saves it.

This module is the one place that imports `transformers.Trainer`; nothing else in the package needs it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
import transformers
from transformers.trainer import TRAINING_ARGS_NAME  # the arguments saved beside a model

from .model.modeling import LayoutLMv3PreTrainedModel
from .processing import LayoutLMv3Processor, write_processing_settings

logger = logging.getLogger(__name__)


class LayoutLMv3Trainer(transformers.Trainer):
    """A `transformers.Trainer` whose saves of our models write a directory `from_pretrained` reloads."""

    def _save(self, output_dir: str | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if not isinstance(model, LayoutLMv3PreTrainedModel):
            return super()._save(output_dir, state_dict=state_dict)
        if not self.args.should_save:  # another rank writes; the gather (if any) happened in save_model
            return None
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        model.save_pretrained(output_dir, state_dict=state_dict)
        if isinstance(self.processing_class, LayoutLMv3Processor):  # no save_pretrained: its tokenizer and windows
            self.processing_class.tokenizer.save_pretrained(output_dir)
            windows = {"max_length": self.processing_class.max_length, "stride": self.processing_class.stride}
            write_processing_settings(output_dir, windows)
        elif self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
        return None

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        """After the Trainer loads a checkpoint (resuming, or the best model at the end) into one of our models:
        warn of the weights missing from it or unknown to the model, the tied ones not counted as missing."""
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if not isinstance(model, LayoutLMv3PreTrainedModel):
            return super()._issue_warnings_after_load(load_result)
        missing = [key for key in load_result.missing_keys if key not in model.tied_weight_keys]
        if missing:
            logger.warning("weights missing from the checkpoint, left as they were: %s", missing)
        if load_result.unexpected_keys:
            logger.warning("weights in the checkpoint the model has no place for: %s", load_result.unexpected_keys)
        return None
