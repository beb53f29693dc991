"""The paper's initialisation from RoBERTa (`model.init_text_from`): tested on a small random RobertaModel saved
locally with transformers (nothing downloaded), with the vocabulary the shards would be tokenized with."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from layoutlmv3.model import LayoutLMv3Config
from layoutlmv3.model.hf_interop import hf_to_native
from layoutlmv3.pretraining.build import build_model
from layoutlmv3.pretraining.job import _check_roberta_vocabulary
from layoutlmv3.pretraining.run_config import RunConfig, load_run_config
from layoutlmv3.tokenizer import train_bpe

WORDS = ["Invoice", "Total", "Date", "Name", "Amount", "paid", "received", "2024", "Street", "City"] * 20


@pytest.fixture(scope="module")
def roberta(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, transformers.RobertaModel]:
    """A 2-layer RoBERTa as wide as the tiny flavor, over a BPE vocabulary saved beside it (as roberta-base ships
    vocab.json + merges.txt); initialised from RobertaForMaskedLM, so its weights sit under `roberta.`."""
    directory = tmp_path_factory.mktemp("roberta")
    tokenizer = train_bpe(WORDS, vocab_size=300)
    tiny = LayoutLMv3Config.from_flavor("tiny", vocab_size=tokenizer.vocab_size)
    config = transformers.RobertaConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=tiny.hidden_size, num_hidden_layers=2,
        num_attention_heads=tiny.num_attention_heads, intermediate_size=tiny.intermediate_size,
        max_position_embeddings=tiny.max_position_embeddings, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(3)
    model = transformers.RobertaForMaskedLM(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory, model.roberta


def _config(roberta_dir: Path, *overrides: str) -> RunConfig:
    required = ["--data.train_shards", "s", "--data.tokenizer", str(roberta_dir), "--objectives.image_tokenizer", "i"]
    return load_run_config(
        None, [*required, "--model.flavor", "tiny", "--model.init_text_from", str(roberta_dir), *overrides]
    )


def test_word_embeddings_come_from_roberta_and_the_rest_stays_fresh(roberta) -> None:
    directory, reference = roberta
    model = build_model(_config(directory), reference.config.vocab_size, 512)
    words = model.layoutlmv3.text_embeddings.word.weight
    assert torch.equal(words, reference.embeddings.word_embeddings.weight)
    assert not torch.equal(
        model.layoutlmv3.text_embeddings.position.weight, reference.embeddings.position_embeddings.weight
    )
    assert model.mlm_head.decoder.weight is words  # the tied MLM decoder predicts over RoBERTa's rows too


def test_positions_and_layers_too_when_asked(roberta) -> None:
    directory, reference = roberta
    config = _config(directory, "--model.init_text_parts", "[words, positions, layers]")
    model = build_model(config, reference.config.vocab_size, 512)
    expected = hf_to_native(
        {k: v for k, v in reference.state_dict().items() if k.startswith(("embeddings.", "encoder."))}
    )
    ours = model.layoutlmv3.state_dict()
    copied = [key for key in expected if not key.startswith("text_embeddings.token_type")]
    assert len(copied) > 20
    for key in copied:
        assert torch.equal(ours[key], expected[key]), key
    assert "encoder.layers.1.attention.qkv.weight" in copied


def test_another_vocabulary_is_refused(roberta, tmp_path: Path) -> None:
    directory, reference = roberta
    with pytest.raises(ValueError, match="token ids, this model"):
        build_model(_config(directory), reference.config.vocab_size + 10, 512)
    other = train_bpe(list(reversed(WORDS)) + ["Receipt"] * 5, vocab_size=300)
    with pytest.raises(ValueError, match="has another vocabulary"):
        _check_roberta_vocabulary(str(directory), other)
    with pytest.raises(ValueError, match="init_text_parts must name some of"):
        build_model(_config(directory, "--model.init_text_parts", "[embeddings]"), reference.config.vocab_size, 512)
    (tmp_path / "config.json").write_text('{"model_type": "bert", "vocab_size": 300}')
    with pytest.raises(ValueError, match="not a RoBERTa model"):
        build_model(_config(tmp_path), 300, 512)
