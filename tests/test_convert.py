"""launch/convert.py: DeepSpeed checkpoints (ZeRO 1-3) and transformers directories -> model directories."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

from launch.convert import main as convert_main
from layoutlmv3.convert import convert_checkpoint, resolve_tag
from layoutlmv3.convert.checkpoint import consolidate
from layoutlmv3.convert.hf import convert_from_hf
from layoutlmv3.model import LayoutLMv3Config, LayoutLMv3ForTokenClassification, LayoutLMv3Model
from layoutlmv3.model.hf_interop import config_to_hf
from layoutlmv3.tokenizer import LayoutLMv3Tokenizer, train_bpe
from layoutlmv3.training.checkpointing import DamagedCheckpoint, tag_for
from tests.model_inputs import random_inputs

REPO_ROOT = Path(__file__).resolve().parents[1]
VOCAB = 300
CODEBOOK = 32
# One process, one rank: a tiny pretraining model under each ZeRO stage, saved the way the training loop saves.
MAKE_CHECKPOINTS = """
import sys
import deepspeed, torch
from layoutlmv3.model import LayoutLMv3Config
from layoutlmv3.pretraining.model import LayoutLMv3ForPretraining
from layoutlmv3.training.checkpointing import save_checkpoint
root, vocab, codebook, tokenizer, fingerprint = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:6]
deepspeed.init_distributed(dist_backend="gloo")
for stage in (1, 2, 3):
    torch.manual_seed(stage)
    config = LayoutLMv3Config.from_flavor("tiny", vocab_size=vocab, visual_codebook_size=codebook)
    model = LayoutLMv3ForPretraining(config)
    ds = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": stage},
          "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
    run = {"model": {"flavor": "tiny", "overrides": {}, "init_from": None}, "data": {"tokenizer": tokenizer}}
    client = {"layoutlmv3": {"config": run, "tokenizer_fingerprint": fingerprint}}
    record = {"model_config": config.to_dict(), "tokenizer_fingerprint": fingerprint}
    save_checkpoint(engine, f"{root}/zero{stage}", 5, client, {}, keep=1, record=record)
    if stage == 1:  # a run that started from a model directory since deleted (the shape lives in the record)
        run = {"model": {"flavor": "base", "overrides": {}, "init_from": f"{root}/gone"}, "data": run["data"]}
        client = {"layoutlmv3": {"config": run, "tokenizer_fingerprint": fingerprint}}
        save_checkpoint(engine, f"{root}/init_from_gone", 5, client, {}, keep=1, record=record)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """zero1/, zero2/, zero3/ checkpoint dirs (tag step00000005) and the tokenizer they record."""
    root = tmp_path_factory.mktemp("ds_checkpoints")
    tokenizer = train_bpe(["alpha", "beta", "gamma", "total", "date", "name"] * 5, vocab_size=VOCAB)
    tokenizer.save_pretrained(root / "vocab")
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    env.update(MASTER_PORT=str(_free_port()), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", PYTHONPATH=str(REPO_ROOT))
    command = [sys.executable, "-c", MAKE_CHECKPOINTS, str(root), str(VOCAB), str(CODEBOOK)]
    command += [str(root / "vocab"), tokenizer.fingerprint]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-5000:]
    return root


def _inputs() -> dict[str, torch.Tensor]:
    return random_inputs(batch=2, length=40, vocab_size=VOCAB)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_every_zero_stage_converts_to_a_loadable_model(checkpoints: Path, tmp_path: Path, stage: int) -> None:
    checkpoint = resolve_tag(checkpoints / f"zero{stage}")
    assert checkpoint.tag == tag_for(5)
    out = convert_checkpoint(checkpoint, tmp_path / "model")
    weights = consolidate(checkpoint)
    model = LayoutLMv3ForTokenClassification.from_pretrained(out, num_labels=7)
    assert model.config.vocab_size == VOCAB
    for key, value in model.layoutlmv3.state_dict().items():
        if key != "visual_bbox":
            assert torch.equal(value, weights["layoutlmv3." + key]), key
    saved = load_file(out / "model.safetensors")
    assert any(key.startswith("mim_head.") for key in saved)  # the pretraining heads are kept by default
    tokenizer = LayoutLMv3Tokenizer.from_pretrained(out)
    assert tokenizer.fingerprint == LayoutLMv3Tokenizer.from_pretrained(checkpoints / "vocab").fingerprint


@pytest.mark.slow
def test_a_checkpoint_converts_after_its_init_from_directory_is_gone(checkpoints: Path, tmp_path: Path) -> None:
    """The model shape comes from the model config recorded in the checkpoint, not from re-reading the run's
    `model.init_from` directory (which may have moved since) or re-deriving it from flavor and overrides."""
    assert not (checkpoints / "gone").exists()
    out = convert_checkpoint(resolve_tag(checkpoints / "init_from_gone"), tmp_path / "model")
    assert LayoutLMv3Config.load(out / "config.json").hidden_size == LayoutLMv3Config.from_flavor("tiny").hidden_size


@pytest.mark.slow
def test_drop_pretraining_heads_keeps_only_the_backbone(checkpoints: Path, tmp_path: Path) -> None:
    out = convert_checkpoint(resolve_tag(checkpoints / "zero2"), tmp_path / "model", drop_pretraining_heads=True)
    keys = load_file(out / "model.safetensors")
    assert keys and not any(key.startswith(("mlm_head", "mim_head", "wpa_head", "layoutlmv3.")) for key in keys)
    LayoutLMv3Model.from_pretrained(out)


@pytest.mark.slow
def test_hf_output_matches_ours_in_transformers(checkpoints: Path, tmp_path: Path) -> None:
    """--to hf: transformers' LayoutLMv3Model and ForTokenClassification load it and compute what ours do."""
    checkpoint = resolve_tag(checkpoints / "zero3")
    ours_dir = convert_checkpoint(checkpoint, tmp_path / "ours")
    hf_dir = convert_checkpoint(checkpoint, tmp_path / "hf", to="hf")
    inputs = _inputs()
    ours = LayoutLMv3Model.from_pretrained(ours_dir, attn_implementation="eager").eval()
    theirs = transformers.LayoutLMv3Model.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        expected = ours(**inputs).last_hidden_state
        got = theirs(**inputs).last_hidden_state
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)

    classifier = transformers.LayoutLMv3ForTokenClassification.from_pretrained(hf_dir, num_labels=7).eval()
    classifier.save_pretrained(tmp_path / "hf_classifier")
    ours_classifier = LayoutLMv3ForTokenClassification.from_pretrained(tmp_path / "hf_classifier").eval()
    with torch.no_grad():
        torch.testing.assert_close(ours_classifier(**inputs).logits, classifier(**inputs).logits, atol=1e-5, rtol=0)
    assert (
        LayoutLMv3Tokenizer.from_pretrained(hf_dir).fingerprint
        == LayoutLMv3Tokenizer.from_pretrained(checkpoints / "vocab").fingerprint
    )


def test_from_hf_gives_our_format(tmp_path: Path) -> None:
    config = LayoutLMv3Config.from_flavor("tiny", vocab_size=VOCAB)
    hf_model = transformers.LayoutLMv3Model(config_to_hf(config, "LayoutLMv3Model")).eval()
    hf_model.save_pretrained(tmp_path / "hf")
    train_bpe(["alpha", "beta"] * 5, vocab_size=VOCAB).save_pretrained(tmp_path / "hf")
    assert convert_main(["--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ours")]) == 0
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["model_type"] == "layoutlmv3-native"
    assert (tmp_path / "ours" / "vocab.json").is_file()
    ours = LayoutLMv3Model.from_pretrained(tmp_path / "ours", attn_implementation="eager").eval()
    inputs = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            ours(**inputs).last_hidden_state, hf_model(**inputs).last_hidden_state, atol=1e-5, rtol=0
        )


@pytest.mark.slow
def test_cli_converts_a_chosen_tag(checkpoints: Path, tmp_path: Path) -> None:
    argv = ["--checkpoint", str(checkpoints / "zero1"), "--tag", tag_for(5), "--out", str(tmp_path / "m")]
    assert convert_main(argv) == 0
    LayoutLMv3ForTokenClassification.from_pretrained(tmp_path / "m", num_labels=7)


@pytest.mark.slow
def test_missing_tag_is_refused(checkpoints: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--checkpoint", str(checkpoints / "zero2"), "--tag", "step00000099", "--out", str(tmp_path / "m")]
    assert convert_main(argv) == 2
    assert "no checkpoint tag 'step00000099'; complete tags: ['step00000005']" in capsys.readouterr().err


@pytest.mark.slow
def test_checkpoint_of_another_size_is_refused(checkpoints: Path, tmp_path: Path) -> None:
    LayoutLMv3Config.from_flavor("small", vocab_size=VOCAB, visual_codebook_size=CODEBOOK).save(
        tmp_path / "config.json"
    )
    with pytest.raises(ValueError, match="does not fit this model"):
        convert_checkpoint(resolve_tag(checkpoints / "zero2"), tmp_path / "m", config_path=tmp_path / "config.json")


@pytest.mark.slow
def test_truncated_checkpoint_is_refused(checkpoints: Path, tmp_path: Path) -> None:
    shutil.copytree(checkpoints / "zero2", tmp_path / "ckpt")
    optim = next((tmp_path / "ckpt" / tag_for(5)).glob("*optim_states.pt"))
    optim.write_bytes(optim.read_bytes()[:1000])
    with pytest.raises(DamagedCheckpoint, match=f"{re.escape(str(optim))} is not a readable torch checkpoint"):
        convert_checkpoint(resolve_tag(tmp_path / "ckpt"), tmp_path / "m")  # verified before DeepSpeed reads it


def test_help() -> None:
    with pytest.raises(SystemExit) as exit_info:
        convert_main(["--help"])
    assert exit_info.value.code == 0


@pytest.mark.slow
def test_non_finite_weights_are_refused_and_the_old_output_is_kept(
    checkpoints: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A corrupt optimizer file of the right size (or a diverged run) consolidates to NaN weights: refused, naming
    them, and the model an earlier conversion wrote to --out is left as it was."""
    import layoutlmv3.convert.checkpoint as checkpoint_module

    out = tmp_path / "m"
    convert_checkpoint(resolve_tag(checkpoints / "zero2"), out)
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    real = checkpoint_module.consolidate

    def with_a_nan(checkpoint, **options):
        weights = real(checkpoint, **options)
        next(iter(weights.values())).view(-1)[0] = float("nan")
        return weights

    monkeypatch.setattr(checkpoint_module, "consolidate", with_a_nan)
    with pytest.raises(ValueError, match="non-finite values in .* weights"):
        convert_checkpoint(resolve_tag(checkpoints / "zero2"), out)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before


@pytest.mark.slow
def test_an_out_holding_another_model_is_not_written_over(checkpoints: Path, tmp_path: Path, capsys) -> None:
    """--out naming a fine-tuned model (files a conversion does not write) is refused; an earlier conversion
    there is replaced whole, with nothing of it left beside the new files."""
    out = tmp_path / "m"
    out.mkdir()
    (out / "selection.json").write_text("{}")
    argv = ["--checkpoint", str(checkpoints / "zero1"), "--out", str(out)]
    assert convert_main(argv) == 2
    assert "holds files a conversion does not write (selection.json)" in capsys.readouterr().err
    (out / "selection.json").unlink()
    assert convert_main(argv) == 0 and convert_main(argv) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["m"]  # no staging directory left beside it


def test_from_hf_without_tokenizer_files_is_refused(tmp_path: Path) -> None:
    config = LayoutLMv3Config.from_flavor("tiny", vocab_size=VOCAB)
    transformers.LayoutLMv3Model(config_to_hf(config, "LayoutLMv3Model")).save_pretrained(tmp_path / "hf")
    with pytest.raises(ValueError, match="has no vocab.json or merges.txt"):
        convert_from_hf(tmp_path / "hf", tmp_path / "ours")
    assert not (tmp_path / "ours").exists()
