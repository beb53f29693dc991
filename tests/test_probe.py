"""The pretraining probe: each checkpoint of a run fine-tuned, F1 charted against the step (launch/probe_checkpoints.py),
as a local loop and as a Slurm array (slurm/finetune_sweep.sbatch)."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from data_prep.synth import write_corpus
from launch.probe_checkpoints import main as probe_main
from layoutlmv3.tokenizer import train_bpe
from tests.slurm_cluster import requires_slurm, sbatch, wait_for_job

pytestmark = pytest.mark.slow  # every test fine-tunes checkpoints of a launched engine
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


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Forms, a vocabulary and two pretraining checkpoints (steps 5 and 10) under one root."""
    root = tmp_path_factory.mktemp("probe")
    forms = root / "forms"
    write_corpus(forms / "training_data", 4, seed=0)
    write_corpus(forms / "testing_data", 2, seed=1)
    tokenizer = train_bpe(["Date", "Name", "Total", "Amount", "Signature", "Remarks"] * 5, vocab_size=300)
    tokenizer.save_pretrained(root / "vocab")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    env.update(MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    command = [sys.executable, "-c", MAKE_CHECKPOINTS, str(root / "ckpt"), "300", str(root / "vocab")]
    done = subprocess.run([*command, tokenizer.fingerprint], env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def probe_arguments(root: Path, out: Path) -> list[str]:
    arguments = ["--checkpoints", str(root / "ckpt"), "--out", str(out), "--config", "configs/finetune/tiny.yaml"]
    return [*arguments, "--data", str(root / "forms"), "--train.steps", "2", "--logging.val_every", "2"]


def assert_charted(out: Path) -> None:
    """probe.csv holds each checkpoint's step and its fine-tune's own scores; the table and chart exist."""
    with open(out / "probe.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["step"]) for row in rows] == [5, 10]
    for row in rows:
        results = json.loads((out / "finetune" / row["tag"] / "results.json").read_text())
        assert row["metric"] == "f1" and float(row["test"]) == results["test"]["f1"]
        assert float(row["dev"]) == results["dev_f1"]
    assert "| 5 |" in (out / "probe.md").read_text()
    assert (out / "probe.png").stat().st_size > 1000


def test_every_checkpoint_is_fine_tuned_and_charted(
    probed: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "probe"
    arguments = [*probe_arguments(probed, out), "--logging.progress", "false"]
    os.environ["DS_ACCELERATOR"] = "cpu"
    assert probe_main([*arguments, "--index", "1"]) == 0  # a Slurm array task: the step-10 checkpoint only
    assert [p.name for p in (out / "finetune").iterdir()] == ["step00000010"]
    assert capfd.readouterr().out == ""  # the fine-tune's results JSON went to stderr with its logs
    assert probe_main(arguments) == 0  # the loop: step 5 now, step 10 already done; then the chart
    assert_charted(out)
    assert capfd.readouterr().out == (out / "probe.md").read_text()  # stdout: the table, nothing else
    assert probe_main([*arguments, "--index", "2"]) == 2


def test_a_bad_checkpoint_does_not_stop_the_others_and_a_typo_stops_before_any_work(
    probed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A corrupt checkpoint among good ones is named and left out (exit 1) while the next is probed and charted;
    a mistyped fine-tuning setting is one line (exit 2) before any checkpoint is converted."""
    shutil.copytree(probed / "ckpt", tmp_path / "ckpt")
    for state in (tmp_path / "ckpt" / "step00000005").glob("*model_states.pt"):
        state.write_bytes(state.read_bytes()[:500])
    out = tmp_path / "probe"
    arguments = [
        "--checkpoints",
        str(tmp_path / "ckpt"),
        *probe_arguments(probed, out)[2:],
        "--logging.progress",
        "false",
    ]
    os.environ["DS_ACCELERATOR"] = "cpu"
    assert probe_main([*arguments, "--train.stepz", "3"]) == 2
    assert "'stepz'" in capsys.readouterr().err and not out.exists()
    assert probe_main(arguments) == 1
    assert "not probed: step00000005" in capsys.readouterr().err
    with open(out / "probe.csv") as handle:
        assert [row["tag"] for row in csv.DictReader(handle)] == ["step00000010"]


@requires_slurm
def test_the_sweep_runs_as_a_slurm_array_and_collects(probed: Path, slurm_env: dict[str, str], tmp_path: Path) -> None:
    """slurm/finetune_sweep.sbatch on the local cluster: one array task per checkpoint, then the collecting job
    its first task submitted (afterany) writes the chart."""
    out = tmp_path / "probe"
    env = {**slurm_env, "PYTHON": sys.executable, "LOG_DIR": str(tmp_path / "logs"), "DS_ACCELERATOR": "cpu"}
    env["OMP_NUM_THREADS"] = "1"
    array = sbatch(env, tmp_path, "--array=0-1", "--gpus=0", "--cpus-per-task=1", "slurm/finetune_sweep.sbatch",
                   *probe_arguments(probed, out), "--logging.progress", "false", log="slurm-%A_%a.out")  # fmt: skip
    for task in (f"{array}_0", f"{array}_1"):
        fields = wait_for_job(env, task)
        assert fields["JobState"] == "COMPLETED", (tmp_path / f"slurm-{task}.out").read_text()[-4000:]
    announced = re.search(r"collecting job (\d+) runs after", (tmp_path / f"slurm-{array}_0.out").read_text())
    assert announced is not None
    collected = wait_for_job(env, announced.group(1))
    log = next((tmp_path / "logs").glob("probe-collect-*.out")).read_text()
    assert collected["JobState"] == "COMPLETED", log[-4000:]
    assert_charted(out)
