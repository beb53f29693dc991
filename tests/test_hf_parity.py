"""Parity with transformers' LayoutLMv3: same weights, same inputs -> same numbers (fp32, <= 1e-5), both ways."""

from __future__ import annotations

import pytest
import torch
import transformers

from layoutlmv3 import LayoutLMv3Config, LayoutLMv3ForTokenClassification, LayoutLMv3Model
from layoutlmv3.model.hf_interop import config_to_hf
from tests.model_inputs import random_inputs

TOLERANCE = 1e-5
MODES = ("text+image", "text", "image")
IMPLEMENTATIONS = ("eager", "sdpa", "flex")


def hf_tiny_config(**overrides) -> transformers.LayoutLMv3Config:
    """A transformers config built directly (not through our conversion), shaped like layoutlmv3-base but tiny."""
    values = dict(
        vocab_size=50265, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        coordinate_size=12, shape_size=8, max_position_embeddings=514, type_vocab_size=1,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    values.update(overrides)
    return transformers.LayoutLMv3Config(**values)


def scramble(model: torch.nn.Module, seed: int) -> None:
    """Replace every parameter with random values big enough that any mis-mapped weight shows in the outputs
    (transformers initialises cls_token/pos_embed to zero and the bias tables near zero, hiding mistakes)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            std = 1.0 if ("rel_pos" in name or "relative_bias" in name) else 0.2
            noise = torch.randn(param.shape, generator=generator) * std
            param.copy_(1.0 + noise if "norm" in name.lower() and name.endswith("weight") else noise)


def mode_inputs(mode: str, **kwargs) -> dict[str, torch.Tensor]:
    inputs = random_inputs(**kwargs)
    if mode == "text":
        inputs.pop("pixel_values")
    if mode == "image":
        inputs = {"pixel_values": inputs["pixel_values"]}
    return inputs


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def hf_model_dir(tmp_path_factory):
    model = transformers.LayoutLMv3Model(hf_tiny_config()).eval()
    scramble(model, seed=1)
    path = tmp_path_factory.mktemp("hf_model")
    model.save_pretrained(path)
    return model, path


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("mode", MODES)
def test_transformers_to_ours(hf_model_dir, mode, implementation):
    hf_model, path = hf_model_dir
    ours = LayoutLMv3Model.from_pretrained(path, attn_implementation=implementation).eval()
    inputs = mode_inputs(mode)
    with torch.no_grad():
        expected = hf_model(**inputs).last_hidden_state
        actual = ours(**inputs).last_hidden_state
    assert max_difference(actual, expected) <= TOLERANCE


def test_pickled_transformers_checkpoint_loads(tmp_path):
    """Older transformers checkpoints (microsoft/layoutlmv3-base among them) ship pytorch_model.bin."""
    hf_model = transformers.LayoutLMv3Model(hf_tiny_config()).eval()
    scramble(hf_model, seed=2)
    state = hf_model.state_dict()
    hf_model.config.save_pretrained(tmp_path)
    torch.save(state, tmp_path / "pytorch_model.bin")
    ours = LayoutLMv3Model.from_pretrained(tmp_path).eval()
    inputs = mode_inputs("text+image")
    with torch.no_grad():
        assert max_difference(ours(**inputs).last_hidden_state, hf_model(**inputs).last_hidden_state) <= TOLERANCE


@pytest.mark.parametrize("num_labels", [7, 13])  # transformers uses a linear head below 10 labels, an MLP above
def test_token_classification_transformers_to_ours(tmp_path, num_labels):
    hf_model = transformers.LayoutLMv3ForTokenClassification(hf_tiny_config(num_labels=num_labels)).eval()
    scramble(hf_model, seed=3)
    hf_model.save_pretrained(tmp_path)
    ours = LayoutLMv3ForTokenClassification.from_pretrained(tmp_path).eval()
    assert ours.config.num_labels == num_labels
    inputs = mode_inputs("text+image")
    with torch.no_grad():
        assert max_difference(ours(**inputs).logits, hf_model(**inputs).logits) <= TOLERANCE


@pytest.mark.parametrize("mode", MODES)
def test_ours_to_transformers(tmp_path, mode):
    ours = LayoutLMv3Model(LayoutLMv3Config.from_flavor("tiny", hidden_dropout_prob=0.0)).eval()
    scramble(ours, seed=4)
    ours.save_pretrained(tmp_path, format="hf")
    hf_model = transformers.LayoutLMv3Model.from_pretrained(tmp_path).eval()
    inputs = mode_inputs(mode)
    with torch.no_grad():
        assert max_difference(hf_model(**inputs).last_hidden_state, ours(**inputs).last_hidden_state) <= TOLERANCE


def test_token_classification_ours_to_transformers(tmp_path):
    config = LayoutLMv3Config.from_flavor("tiny", hidden_dropout_prob=0.0, num_labels=7)
    ours = LayoutLMv3ForTokenClassification(config).eval()
    scramble(ours, seed=5)
    ours.save_pretrained(tmp_path, format="hf")
    hf_model = transformers.LayoutLMv3ForTokenClassification.from_pretrained(tmp_path).eval()
    inputs = mode_inputs("text+image")
    with torch.no_grad():
        assert max_difference(hf_model(**inputs).logits, ours(**inputs).logits) <= TOLERANCE


@pytest.mark.parametrize("flavor", ["base", "large"])
def test_parameter_count_equals_transformers(flavor):
    config = LayoutLMv3Config.from_flavor(flavor)
    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        ours = LayoutLMv3Model(config).num_parameters()
        theirs = transformers.LayoutLMv3Model(config_to_hf(config, "LayoutLMv3Model")).num_parameters()
    assert ours == theirs
    if flavor == "base":
        assert 125_000_000 < ours < 126_000_000
