"""Model behaviour beyond parity: trainable biases, implementations agreeing, autocast, validation, save/load."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch

from layoutlmv3 import (
    LayoutLMv3Config,
    LayoutLMv3ForMaskedLM,
    LayoutLMv3ForQuestionAnswering,
    LayoutLMv3ForSequenceClassification,
    LayoutLMv3ForTokenClassification,
    LayoutLMv3Model,
)
from layoutlmv3.model import FLAVORS
from layoutlmv3.pretraining.model import LayoutLMv3ForPretraining
from tests.model_inputs import random_inputs


def tiny(**overrides) -> LayoutLMv3Config:
    return LayoutLMv3Config.from_flavor("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **overrides)


def loss_and_grads(model: torch.nn.Module, inputs: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    output = model(**inputs).last_hidden_state
    loss = (output * torch.linspace(-1, 1, output.shape[-1])).sum()  # a loss whose gradient is not trivially zero
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_relative_bias_tables_are_trained(implementation):
    model = LayoutLMv3Model(tiny(attn_implementation=implementation)).train()
    _, grads = loss_and_grads(model, random_inputs(length=40))
    for table in ("pos_1d", "pos_x", "pos_y"):
        grad = grads[f"encoder.relative_bias.{table}.weight"]
        assert grad.abs().sum() > 0, f"{table} got no gradient"


@pytest.mark.parametrize("batch", [1, 3])
def test_bucket_bias_lookup_matches_embedding_values_and_gradients(batch):
    """The CPU lookup with the index_add_ backward computes exactly what nn.Embedding + permute would."""
    from layoutlmv3.model.relative_position import BucketBiasTable

    torch.manual_seed(0)
    table = BucketBiasTable(64, 4)
    reference = torch.nn.Embedding(64, 4)
    reference.weight.data.copy_(table.weight.data)
    bucket = torch.randint(0, 64, (batch, 37, 37))
    upstream = torch.randn(batch, 4, 37, 37)
    ours, theirs = table(bucket), reference(bucket).permute(0, 3, 1, 2)
    assert ours.shape == (batch, 4, 37, 37) and torch.equal(ours, theirs)
    (ours * upstream).sum().backward()
    (theirs * upstream).sum().backward()
    torch.testing.assert_close(table.weight.grad, reference.weight.grad, rtol=1e-5, atol=1e-5)


def test_eager_and_sdpa_agree_on_outputs_and_gradients():
    model = LayoutLMv3Model(tiny(attn_implementation="eager")).train()
    inputs = random_inputs(length=60)
    loss_eager, grads_eager = loss_and_grads(model, inputs)
    model.set_attn_implementation("sdpa")
    loss_sdpa, grads_sdpa = loss_and_grads(model, inputs)
    assert torch.allclose(loss_eager, loss_sdpa, rtol=1e-5, atol=1e-4)
    assert grads_eager.keys() == grads_sdpa.keys()
    for name in grads_eager:
        assert torch.allclose(grads_eager[name], grads_sdpa[name], rtol=1e-4, atol=1e-5), name


@pytest.mark.parametrize("mode", ["text+image", "text"])
def test_flex_forward_agrees_with_sdpa(mode):
    """FlexAttention computes the bias from lookup tables inside the kernel; on CPU it runs forward only."""
    model = LayoutLMv3Model(tiny()).eval()
    inputs = random_inputs(length=50)
    if mode == "text":
        inputs.pop("pixel_values")
    with torch.no_grad():
        expected = model(**inputs).last_hidden_state
        model.set_attn_implementation("flex")
        actual = model(**inputs).last_hidden_state
    assert (actual - expected).abs().max() <= 1e-5


def test_flex_refuses_cpu_training_clearly():
    model = LayoutLMv3Model(tiny(attn_implementation="flex")).train()
    with pytest.raises(RuntimeError, match="no CPU backward"):
        model(**random_inputs(length=20))


def test_flex_requires_no_attention_dropout():
    with pytest.raises(ValueError, match="attention_probs_dropout_prob=0"):
        LayoutLMv3Config.from_flavor("tiny", attn_implementation="flex")


def test_gradient_checkpointing_gives_the_same_gradients():
    inputs = random_inputs(length=40)
    model = LayoutLMv3Model(tiny()).train()
    loss_plain, grads_plain = loss_and_grads(model, inputs)
    model.config.gradient_checkpointing = True
    loss_ckpt, grads_ckpt = loss_and_grads(model, inputs)
    assert torch.equal(loss_plain, loss_ckpt)
    for name, grad in grads_plain.items():
        assert torch.allclose(grad, grads_ckpt[name], atol=1e-6), name


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_bf16_autocast_is_finite_and_close_to_fp32(implementation):
    model = LayoutLMv3Model(tiny(attn_implementation=implementation)).train()
    inputs = random_inputs(length=40)
    reference = model(**inputs).last_hidden_state.detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(**inputs).last_hidden_state
    output.float().sum().backward()
    assert torch.isfinite(output).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert (output.float() - reference).abs().mean() < 0.05


def test_text_only_and_image_only_shapes():
    model = LayoutLMv3Model(tiny()).eval()
    inputs = random_inputs(length=30)
    with torch.no_grad():
        both = model(**inputs).last_hidden_state
        text = model(inputs["input_ids"], inputs["bbox"], inputs["attention_mask"]).last_hidden_state
        image = model(pixel_values=inputs["pixel_values"]).last_hidden_state
    assert both.shape == (2, 30 + 197, 64)
    assert text.shape == (2, 30, 64)
    assert image.shape == (2, 197, 64)


def test_padding_does_not_change_real_tokens():
    """A padded sample gives the same hidden states on its real tokens as the unpadded one."""
    model = LayoutLMv3Model(tiny()).eval()
    inputs = random_inputs(batch=2, length=50)
    used = int(inputs["attention_mask"][1].sum())
    with torch.no_grad():
        padded = model(**inputs).last_hidden_state[1, :used]
        alone = model(
            inputs["input_ids"][1:, :used], inputs["bbox"][1:, :used], pixel_values=inputs["pixel_values"][1:]
        ).last_hidden_state[0, :used]
    assert (padded - alone).abs().max() < 1e-5


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x: x["bbox"].__setitem__((0, 3, 2), 1001), "0..1000"),
        (lambda x: x["bbox"].__setitem__((1, 0, 0), -1), "0..1000"),
        (lambda x: x.__setitem__("pixel_values", torch.zeros(2, 3, 200, 200)), "pixel_values"),
        (lambda x: x.__setitem__("bbox", x["bbox"][:, :5]), "does not match"),
        (lambda x: x.__setitem__("pixel_values", torch.zeros(1, 3, 224, 224)), "batch sizes differ"),
    ],
)
def test_bad_input_raises_clear_errors(change, message):
    model = LayoutLMv3Model(tiny()).eval()
    inputs = random_inputs(length=20)
    change(inputs)
    with pytest.raises(ValueError, match=message):
        model(**inputs)


def test_too_long_sequence_raises():
    model = LayoutLMv3Model(tiny()).eval()
    with pytest.raises(ValueError, match="split long pages into windows"):
        model(torch.full((1, 513), 5))
    with pytest.raises(ValueError, match="input_ids, pixel_values"):
        model()


def test_config_validation():
    with pytest.raises(ValueError, match="coordinate_size"):
        LayoutLMv3Config(hidden_size=64, num_attention_heads=4)
    with pytest.raises(ValueError, match="unknown LayoutLMv3Config fields"):
        LayoutLMv3Config.from_dict({"hiden_size": 3})
    with pytest.raises(ValueError, match="unknown flavor"):
        LayoutLMv3Config.from_flavor("huge")
    for name in FLAVORS:
        LayoutLMv3Config.from_flavor(name)


def test_native_round_trip_and_tied_mlm_head(tmp_path):
    model = LayoutLMv3ForMaskedLM(tiny()).eval()
    model.save_pretrained(tmp_path)
    saved = safetensors.torch.load_file(tmp_path / "model.safetensors")
    assert "mlm_head.decoder.weight" not in saved  # tied: stored once, as the word embeddings
    loaded = LayoutLMv3ForMaskedLM.from_pretrained(tmp_path).eval()
    assert loaded.mlm_head.decoder.weight is loaded.layoutlmv3.text_embeddings.word.weight
    inputs = random_inputs(length=30)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, loaded(**inputs).logits)
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[:, 3:6] = inputs["input_ids"][:, 3:6]
    output = loaded(**inputs, labels=labels)
    assert output.logits.shape == (6, 50265) and torch.isfinite(output.loss)


def test_backbone_moves_between_bare_and_head_models(tmp_path):
    bare = LayoutLMv3Model(tiny()).eval()
    bare.save_pretrained(tmp_path / "bare")
    tagger = LayoutLMv3ForTokenClassification.from_pretrained(tmp_path / "bare", num_labels=7).eval()
    inputs = random_inputs(length=20)
    with torch.no_grad():
        assert torch.equal(tagger.layoutlmv3(**inputs).last_hidden_state, bare(**inputs).last_hidden_state)
        assert tagger(**inputs).logits.shape == (2, 20, 7)
    tagger.save_pretrained(tmp_path / "tagger")
    back = LayoutLMv3Model.from_pretrained(tmp_path / "tagger").eval()
    with torch.no_grad():
        assert torch.equal(back(**inputs).last_hidden_state, bare(**inputs).last_hidden_state)


def test_a_text_only_model_loads_a_multimodal_checkpoint_and_answers_as_its_text_path(tmp_path):
    """visual_embed false over a pretrained multimodal checkpoint (text + layout fine-tuning): the visual weights
    are left out, every other weight is loaded, and the model computes what the full one does without an image."""
    full = LayoutLMv3Model(tiny()).eval()
    full.save_pretrained(tmp_path / "full")
    text_only = LayoutLMv3Model.from_pretrained(tmp_path / "full", visual_embed=False).eval()
    assert not hasattr(text_only, "visual_embeddings") and not hasattr(text_only, "embedding_norm")
    inputs = random_inputs(length=20)
    text = {name: inputs[name] for name in ("input_ids", "bbox", "attention_mask")}
    with torch.no_grad():
        assert torch.equal(text_only(**text).last_hidden_state, full(**text).last_hidden_state)
    with pytest.raises(ValueError, match="visual_embed=False and takes no pixel_values"):
        text_only(**inputs)
    text_only.save_pretrained(tmp_path / "text")
    with pytest.raises(ValueError, match="does not fit this model"):  # the image branch cannot come from nowhere
        LayoutLMv3Model.from_pretrained(tmp_path / "text", visual_embed=True)


def test_prediction_loads_only_a_fine_tuned_head_of_its_own_kind(tmp_path):
    """trained_head (what the prediction tools ask for): a bare backbone or another task's model is refused, since
    its fresh head would answer at random; the right fine-tuned head loads as saved."""
    from layoutlmv3 import LayoutLMv3ForQuestionAnswering, LayoutLMv3ForSequenceClassification

    LayoutLMv3Model(tiny()).save_pretrained(tmp_path / "bare")
    LayoutLMv3ForTokenClassification(tiny(num_labels=3)).save_pretrained(tmp_path / "tagger")
    LayoutLMv3ForQuestionAnswering(tiny(num_labels=2)).save_pretrained(tmp_path / "qa")
    pages = LayoutLMv3ForSequenceClassification(tiny(num_labels=5, classifier_head="mlp"))
    pages.save_pretrained(tmp_path / "pages")  # its head's names and shapes fit an mlp token classifier's
    pages.save_pretrained(tmp_path / "pages-hf", format="hf")
    for head, directory in [
        (LayoutLMv3ForTokenClassification, "pages"),
        (LayoutLMv3ForTokenClassification, "pages-hf"),
        (LayoutLMv3ForTokenClassification, "bare"),
        (LayoutLMv3ForSequenceClassification, "tagger"),
        (LayoutLMv3ForSequenceClassification, "qa"),
        (LayoutLMv3ForQuestionAnswering, "bare"),
    ]:
        with pytest.raises(ValueError, match=f"is not a fine-tuned {head.__name__}"):
            head.from_pretrained(tmp_path / directory, trained_head=True)
        head.from_pretrained(tmp_path / directory)  # fine-tuning starts from any of them
    tagger = LayoutLMv3ForTokenClassification.from_pretrained(tmp_path / "tagger", trained_head=True)
    saved = safetensors.torch.load_file(tmp_path / "tagger" / "model.safetensors")
    assert torch.equal(tagger.state_dict()["classifier.linear.weight"], saved["classifier.linear.weight"])


def test_loading_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        LayoutLMv3Model.from_pretrained(tmp_path / "missing")
    LayoutLMv3Model(tiny()).save_pretrained(tmp_path / "tiny")
    small = LayoutLMv3Model(LayoutLMv3Config.from_flavor("small"))
    weights = safetensors.torch.load_file(tmp_path / "tiny" / "model.safetensors")
    with pytest.raises(ValueError, match="another model size"):
        small.load_weights(weights)
    weights_file = tmp_path / "tiny" / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated"):
        LayoutLMv3Model.from_pretrained(tmp_path / "tiny")


def test_a_sharded_index_from_elsewhere_reads_only_weight_files_beside_it(tmp_path):
    """A model directory's index is data: names leading out of the directory, links, bad JSON and a wrong shape are
    named errors; a plain two-file index loads."""
    import json

    from layoutlmv3.model.weights_io import SAFETENSORS_INDEX_NAME, read_weights

    outside = tmp_path / "outside.safetensors"
    safetensors.torch.save_file({"secret": torch.ones(1)}, outside)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    safetensors.torch.save_file({"a": torch.zeros(2)}, model_dir / "model-1.safetensors")
    safetensors.torch.save_file({"b": torch.ones(2)}, model_dir / "model-2.safetensors")
    (model_dir / "linked.safetensors").symlink_to(outside)
    index = model_dir / SAFETENSORS_INDEX_NAME

    def with_map(weight_map):
        index.write_text(json.dumps({"weight_map": weight_map}))

    with_map({"a": "model-1.safetensors", "b": "model-2.safetensors"})
    assert sorted(read_weights(model_dir)) == ["a", "b"]
    for name in ("../outside.safetensors", str(outside), "linked.safetensors", "model-1.bin"):
        with_map({"a": "model-1.safetensors", "secret": name})
        with pytest.raises(ValueError, match=f"{SAFETENSORS_INDEX_NAME}: .*{name.split('/')[-1]}"):
            read_weights(model_dir)
    for text, reason in (("{", "not valid JSON"), ("[1]", "weight_map"), ('{"weight_map": {}}', "weight_map")):
        index.write_text(text)
        with pytest.raises(ValueError, match=reason) as caught:
            read_weights(model_dir)
        assert SAFETENSORS_INDEX_NAME in str(caught.value)


HEAD_MODELS = (
    LayoutLMv3ForTokenClassification,
    LayoutLMv3ForSequenceClassification,
    LayoutLMv3ForQuestionAnswering,
    LayoutLMv3ForMaskedLM,
    LayoutLMv3ForPretraining,
)


@pytest.mark.parametrize("head_model", HEAD_MODELS, ids=lambda cls: cls.__name__)
def test_a_head_model_draws_each_weight_once(head_model):
    """The backbone initialises itself when it is built and the head model only what it adds: from one seed a head
    model's backbone is the bare model's (not drawn a second time once the head is built), the MLM decoder tied to
    the word embeddings leaves them as drawn (padding row zero), and the head's own weights get the BERT init."""
    config = tiny(num_labels=2, patch_mask_token=True)
    torch.manual_seed(0)
    bare = LayoutLMv3Model(config).state_dict()
    torch.manual_seed(0)
    model = head_model(config)
    backbone = model.layoutlmv3.state_dict()
    assert backbone.keys() == bare.keys()
    assert [name for name, value in bare.items() if not torch.equal(backbone[name], value)] == []
    head = {name: weight for name, weight in model.named_parameters() if not name.startswith("layoutlmv3.")}
    assert head, "every head model adds weights"
    for name, weight in head.items():
        if name.endswith(".bias"):
            assert not weight.any(), name
        elif weight.dim() == 2:  # nn.Linear's own init (uniform, std 1/sqrt(3 * fan_in)) would be 0.07 here
            assert abs(weight.std().item() - config.initializer_range) < 0.006, name
        else:
            assert torch.equal(weight, torch.ones_like(weight)), name  # LayerNorm


def test_masked_lm_loss_is_zero_not_nan_when_nothing_is_masked():
    model = LayoutLMv3ForMaskedLM(tiny(vocab_size=200))
    inputs = random_inputs(length=30, vocab_size=200)
    labels = torch.full_like(inputs["input_ids"], -100)
    loss = model(**inputs, labels=labels).loss
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()
    assert all(torch.count_nonzero(p.grad) == 0 for p in model.parameters() if p.grad is not None)
    labels[0, 3] = 7  # one masked position: the usual mean cross-entropy
    logits = model(**inputs).logits[0, 3]
    expected = torch.nn.functional.cross_entropy(logits[None].float(), torch.tensor([7]))
    assert torch.allclose(model(**inputs, labels=labels).loss, expected, atol=1e-6)


def test_a_model_directory_s_config_from_elsewhere_is_read_as_data(tmp_path):
    """config.json is read like every JSON from data: NaN, a non-object and a FIFO are named errors, not a model
    with a NaN epsilon nor a reader blocked for ever."""
    import os

    from layoutlmv3.json_files import JsonFileError

    model = LayoutLMv3ForMaskedLM(tiny())
    model.save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    text = config_file.read_text()
    config_file.write_text(text.replace('"layer_norm_eps": 1e-05', '"layer_norm_eps": NaN'))
    with pytest.raises(JsonFileError, match="config.json is not valid JSON: NaN"):
        LayoutLMv3ForMaskedLM.from_pretrained(tmp_path)
    config_file.write_text("[1, 2]")
    with pytest.raises(ValueError, match="config.json: expected a JSON object"):
        LayoutLMv3ForMaskedLM.from_pretrained(tmp_path)
    config_file.unlink()
    os.mkfifo(config_file)
    with pytest.raises(ValueError, match="FIFO"):
        LayoutLMv3ForMaskedLM.from_pretrained(tmp_path)
