"""LayoutLMv3ForPretraining: the three losses, their accuracies, the patch mask token, saving and conversion."""

from __future__ import annotations

import pytest
import torch

from layoutlmv3 import LayoutLMv3Config, LayoutLMv3ForTokenClassification
from layoutlmv3.pretraining.model import LayoutLMv3ForPretraining, LossWeights
from tests.model_inputs import random_inputs

CODEBOOK = 64


def pretraining_inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    inputs = random_inputs(length=40, seed=seed)
    attention = inputs["attention_mask"].bool()
    inputs["mlm_labels"] = torch.where(
        attention & (torch.rand(attention.shape, generator=generator) < 0.3), inputs["input_ids"], -100
    )
    inputs["patch_mask"] = torch.rand(2, 196, generator=generator) < 0.4
    inputs["mim_targets"] = torch.randint(0, CODEBOOK, (2, 196), generator=generator)
    inputs["wpa_labels"] = torch.where(
        attention & (inputs["mlm_labels"] == -100), torch.randint(0, 2, attention.shape, generator=generator), -100
    )
    return inputs


def tiny_pretraining_model(**weights) -> LayoutLMv3ForPretraining:
    config = LayoutLMv3Config.from_flavor("tiny", visual_codebook_size=CODEBOOK)
    return LayoutLMv3ForPretraining(config, LossWeights(**weights))


def test_losses_accuracies_and_gradients():
    model = tiny_pretraining_model()
    output = model(**pretraining_inputs())
    for name in ("mlm", "mim", "wpa"):
        assert torch.isfinite(getattr(output, f"{name}_loss")) and getattr(output, f"{name}_loss") > 0
        assert 0 <= getattr(output, f"{name}_accuracy") <= 1
    assert torch.allclose(output.loss, output.mlm_loss + output.mim_loss + output.wpa_loss)
    output.loss.backward()
    assert model.layoutlmv3.visual_embeddings.mask_token.grad.abs().sum() > 0
    assert model.wpa_head.out.weight.grad.abs().sum() > 0
    assert model.mim_head.decoder.weight.grad.abs().sum() > 0
    assert set(output.metrics()) >= {"loss", "mlm_loss", "mim_accuracy"}


def test_loss_weights_and_empty_objectives():
    inputs = pretraining_inputs()
    inputs["wpa_labels"][:] = -100  # nothing to align: a zero loss, not NaN
    output = tiny_pretraining_model(mim=0.0, wpa=2.0)(**inputs)
    assert output.wpa_loss == 0 and torch.isfinite(output.loss)
    assert torch.allclose(output.loss, output.mlm_loss)


def test_masked_patches_use_the_mask_token():
    model = tiny_pretraining_model().eval()
    inputs = pretraining_inputs()
    embeddings = model.layoutlmv3.visual_embeddings
    pixels = inputs["pixel_values"]
    changed = pixels.clone()
    changed[:, :, :16, :16] += 5.0  # patch 0 only
    mask = torch.zeros(2, 196, dtype=torch.bool)
    mask[:, 0] = True
    with torch.no_grad():
        assert torch.equal(embeddings(pixels, mask), embeddings(changed, mask))  # masked: pixels are not seen
        assert not torch.equal(embeddings(pixels), embeddings(changed))


def test_pretraining_checkpoint_feeds_fine_tuning(tmp_path):
    model = tiny_pretraining_model()
    model.save_pretrained(tmp_path / "pretrained")
    tagger = LayoutLMv3ForTokenClassification.from_pretrained(tmp_path / "pretrained", num_labels=7)
    assert torch.equal(tagger.layoutlmv3.text_embeddings.word.weight, model.layoutlmv3.text_embeddings.word.weight)
    model.save_pretrained(tmp_path / "hf", format="hf")  # heads and mask token have no place there: dropped
    import transformers

    transformers.LayoutLMv3Model.from_pretrained(tmp_path / "hf")
    again = LayoutLMv3ForPretraining.from_pretrained(tmp_path / "pretrained")
    with torch.no_grad():
        inputs = pretraining_inputs(seed=1)
        assert torch.equal(again.eval()(**inputs).loss, model.eval()(**inputs).loss)


def test_patch_mask_needs_a_mask_token():
    from layoutlmv3 import LayoutLMv3Model

    model = LayoutLMv3Model(LayoutLMv3Config.from_flavor("tiny"))
    with pytest.raises(ValueError, match="patch_mask_token"):
        model(pixel_values=torch.zeros(1, 3, 224, 224), patch_mask=torch.zeros(1, 196, dtype=torch.bool))
