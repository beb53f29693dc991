"""Parity with transformers' LayoutLMv3: same weights, same inputs -> same numbers (fp32, <= 1e-5), both ways."""

from __future__ import annotations

import pytest
import torch
import transformers

from layoutlmv3 import (
    LayoutLMv3Config,
    LayoutLMv3ForQuestionAnswering,
    LayoutLMv3ForSequenceClassification,
    LayoutLMv3ForTokenClassification,
    LayoutLMv3Model,
)
from layoutlmv3.model.hf_interop import config_to_hf
from tests.hf_trainer_runs import token_rows
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


HEADS = {
    "sequence": (LayoutLMv3ForSequenceClassification, "LayoutLMv3ForSequenceClassification", ("logits",)),
    "qa": (LayoutLMv3ForQuestionAnswering, "LayoutLMv3ForQuestionAnswering", ("start_logits", "end_logits")),
}


def _labelled(kind: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inputs with the head's targets: a class per page, or answer start/end positions (one past the
    sequence for the second page: transformers leaves such positions out of the loss, and so must we)."""
    if kind == "sequence":
        return {**inputs, "labels": torch.tensor([1, 4])}
    length = inputs["input_ids"].shape[1] + 197
    return {**inputs, "start_positions": torch.tensor([3, length + 5]), "end_positions": torch.tensor([9, 12])}


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("kind", sorted(HEADS))
def test_heads_transformers_to_ours(tmp_path, kind, implementation):
    """transformers' sequence-classification and question-answering checkpoints load into ours and give the same
    logits and loss (fp32, 1e-5) with every attention implementation."""
    ours_class, name, fields = HEADS[kind]
    hf_model = getattr(transformers, name)(hf_tiny_config(num_labels=5 if kind == "sequence" else 2)).eval()
    scramble(hf_model, seed=6)
    hf_model.save_pretrained(tmp_path)
    ours = ours_class.from_pretrained(tmp_path, attn_implementation=implementation).eval()
    inputs = _labelled(kind, mode_inputs("text+image"))
    with torch.no_grad():
        expected, actual = hf_model(**inputs), ours(**inputs)
    for field in (*fields, "loss"):
        assert max_difference(actual[field], expected[field]) <= TOLERANCE, field


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_heads_ours_to_transformers(tmp_path, kind):
    ours_class, name, fields = HEADS[kind]
    config = LayoutLMv3Config.from_flavor("tiny", hidden_dropout_prob=0.0, num_labels=5 if kind == "sequence" else 2)
    ours = ours_class(config).eval()
    scramble(ours, seed=7)
    ours.save_pretrained(tmp_path, format="hf")
    hf_model = getattr(transformers, name).from_pretrained(tmp_path).eval()
    inputs = _labelled(kind, mode_inputs("text+image"))
    with torch.no_grad():
        expected, actual = hf_model(**inputs), ours(**inputs)
    for field in (*fields, "loss"):
        assert max_difference(actual[field], expected[field]) <= TOLERANCE, field


def test_sequence_classification_losses_follow_the_label_kind():
    """As transformers: one label -> MSE; integer labels -> cross-entropy; float label vectors -> multi-label."""
    inputs = mode_inputs("text+image")
    for num_labels, labels in ((1, torch.tensor([0.5, -1.0])), (3, torch.tensor([[1.0, 0, 1], [0, 0, 1]]))):
        hf_model = transformers.LayoutLMv3ForSequenceClassification(hf_tiny_config(num_labels=num_labels)).eval()
        scramble(hf_model, seed=8)
        ours = LayoutLMv3ForSequenceClassification(LayoutLMv3Config.from_flavor("tiny", num_labels=num_labels))
        ours.load_state_dict(_hf_weights_for(ours, hf_model))
        with torch.no_grad():
            expected, actual = hf_model(**inputs, labels=labels).loss, ours.eval()(**inputs, labels=labels).loss
        assert abs(expected.item() - actual.item()) <= TOLERANCE


def _hf_weights_for(ours: torch.nn.Module, hf_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    from layoutlmv3.model.hf_interop import hf_to_native

    weights = hf_to_native(hf_model.state_dict())
    ours.config = LayoutLMv3Config.from_dict({**ours.config.to_dict(), **_shape_of(hf_model.config)})
    return weights


def _shape_of(hf_config) -> dict:
    from layoutlmv3.model.hf_interop import config_from_hf

    shared = config_from_hf(hf_config.to_dict()).to_dict()
    return {key: value for key, value in shared.items() if key not in ("num_labels", "id2label", "classifier_head")}


def test_question_answering_needs_two_outputs():
    with pytest.raises(ValueError, match="num_labels must be 2"):
        LayoutLMv3ForQuestionAnswering(LayoutLMv3Config.from_flavor("tiny", num_labels=7))


@pytest.mark.parametrize("mode", MODES)
def test_hidden_states_and_attentions_equal_transformers(hf_model_dir, mode):
    """output_hidden_states: the embedding output and every layer's; output_attentions: every layer's
    probabilities (eager); both equal to transformers'. A fused attention refuses output_attentions clearly."""
    hf_model, path = hf_model_dir
    ours = LayoutLMv3Model.from_pretrained(path, attn_implementation="eager").eval()
    inputs = mode_inputs(mode)
    with torch.no_grad():
        expected = hf_model(**inputs, output_hidden_states=True, output_attentions=True)
        actual = ours(**inputs, output_hidden_states=True, output_attentions=True)
    assert len(actual.hidden_states) == len(expected.hidden_states) == 3
    assert len(actual.attentions) == len(expected.attentions) == 2
    for mine, theirs in zip(actual.hidden_states + actual.attentions, expected.hidden_states + expected.attentions):
        assert max_difference(mine, theirs) <= TOLERANCE
    ours.set_attn_implementation("sdpa")
    with torch.no_grad():
        assert ours(**inputs, output_hidden_states=True).attentions is None
        with pytest.raises(ValueError, match="output_attentions needs attn_implementation='eager'"):
            ours(**inputs, output_attentions=True)


def test_outputs_index_like_transformers():
    model = LayoutLMv3ForTokenClassification(LayoutLMv3Config.from_flavor("tiny", num_labels=3)).eval()
    inputs = random_inputs(vocab_size=500)
    labels = torch.zeros_like(inputs["input_ids"])
    with torch.no_grad():
        plain, with_loss = model(**inputs), model(**inputs, labels=labels)
    assert isinstance(plain, transformers.utils.ModelOutput)  # transformers' own type, not a look-alike
    assert list(plain.keys()) == ["logits"] and plain[0] is plain.logits is plain["logits"]
    assert list(with_loss.keys()) == ["loss", "logits"] and with_loss[0] is with_loss.loss
    assert with_loss[1:] == (with_loss.logits,) and with_loss.to_tuple() == (with_loss.loss, with_loss.logits)
    assert "loss" in with_loss and "hidden_states" not in with_loss and dict(with_loss.items())["logits"] is not None
    with pytest.raises(KeyError):
        plain["loss"]


@pytest.mark.slow
def test_transformers_trainer_runs_our_token_classifier(tmp_path):
    """transformers' Trainer indexes outputs (out[0] is the loss, out[1:] the logits): a few steps train and
    evaluate our model unchanged."""
    torch.manual_seed(0)
    model = LayoutLMv3ForTokenClassification(LayoutLMv3Config.from_flavor("tiny", vocab_size=500, num_labels=3))
    rows = token_rows(8, length=32, vocab_size=500)
    arguments = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, per_device_eval_batch_size=4, max_steps=6,
        learning_rate=5e-3, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    trainer = transformers.Trainer(model=model, args=arguments, train_dataset=rows, eval_dataset=rows)
    history = trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert history.global_step == 6 and len(losses) == 6 and losses[-1] < losses[0]
    predictions = trainer.predict(rows)
    assert predictions.predictions.shape == (8, 32, 3) and predictions.metrics["test_loss"] > 0
