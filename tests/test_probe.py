"""The pretraining probe: each checkpoint of a run fine-tuned, F1 charted against the step (launch/probe_checkpoints.py)."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from data_prep.synth import write_corpus
from launch.probe_checkpoints import main as probe_main
from layoutlmv3.tokenizer import train_bpe

REPO_ROOT = Path(__file__).resolve().parents[1]
# Two checkpoints (steps 5 and 10) of one tiny pretraining engine, saved the way the training loop saves.
MAKE_CHECKPOINTS = """
import sys
import deepspeed, torch
from layoutlmv3.model import LayoutLMv3Config
from layoutlmv3.pretraining.model import LayoutLMv3ForPretraining
from layoutlmv3.training.checkpointing import save_checkpoint
root, vocab, tokenizer, fingerprint = sys.argv[1], int(sys.argv[2]), *sys.argv[3:5]
deepspeed.init_distributed(dist_backend="gloo")
torch.manual_seed(0)
config = LayoutLMv3Config.from_flavor("tiny", vocab_size=vocab, visual_codebook_size=32)
model = LayoutLMv3ForPretraining(config)
ds = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 1},
      "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}}
engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
run = {"model": {"flavor": "tiny", "overrides": {}, "init_from": None}, "data": {"tokenizer": tokenizer}}
client = {"layoutlmv3": {"config": run, "tokenizer_fingerprint": fingerprint}}
record = {"model_config": config.to_dict(), "tokenizer_fingerprint": fingerprint}
for step in (5, 10):
    save_checkpoint(engine, root, step, client, {}, keep=2, record=record)
"""


def test_every_checkpoint_is_fine_tuned_and_charted(tmp_path: Path) -> None:
    forms = tmp_path / "forms"
    write_corpus(forms / "training_data", 4, seed=0)
    write_corpus(forms / "testing_data", 2, seed=1)
    tokenizer = train_bpe(["Date", "Name", "Total", "Amount", "Signature", "Remarks"] * 5, vocab_size=300)
    tokenizer.save_pretrained(tmp_path / "vocab")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    env.update(MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    command = [sys.executable, "-c", MAKE_CHECKPOINTS, str(tmp_path / "ckpt"), "300", str(tmp_path / "vocab")]
    done = subprocess.run([*command, tokenizer.fingerprint], env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    arguments = ["--checkpoints", str(tmp_path / "ckpt"), "--out", str(tmp_path / "probe"), "--config"]
    arguments += ["configs/finetune/tiny.yaml", "--data", str(forms), "--train.steps", "2", "--logging.val_every", "2"]
    arguments += ["--logging.progress", "false"]
    os.environ["DS_ACCELERATOR"] = "cpu"
    assert probe_main([*arguments, "--index", "1"]) == 0  # a Slurm array task: the step-10 checkpoint only
    assert [p.name for p in (tmp_path / "probe" / "finetune").iterdir()] == ["step00000010"]
    assert probe_main(arguments) == 0  # the loop: step 5 now, step 10 already done; then the chart
    with open(tmp_path / "probe" / "probe.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["step"]) for row in rows] == [5, 10]
    for row in rows:  # the table holds each fine-tune's own scores
        results = json.loads((tmp_path / "probe" / "finetune" / row["tag"] / "results.json").read_text())
        assert row["metric"] == "f1" and float(row["test"]) == results["test"]["f1"]
        assert float(row["dev"]) == results["dev_f1"]
    assert "| 5 |" in (tmp_path / "probe" / "probe.md").read_text()
    assert (tmp_path / "probe" / "probe.png").stat().st_size > 1000
    assert probe_main([*arguments, "--index", "2"]) == 2
