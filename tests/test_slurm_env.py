"""Slurm's variables -> the env:// rendezvous; hostfiles; the global batch kept across world sizes (no cluster)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from layoutlmv3.pretraining.run_config import load_run_config
from layoutlmv3.training.ds_config import with_global_batch
from layoutlmv3.training.slurm_env import (
    expand_hostlist,
    expand_tasks_per_node,
    hostfile_text,
    rendezvous_from_slurm,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

# What srun gives task 3 of `sbatch --nodes=2 --ntasks-per-node=2` (read off the local cluster).
STEP_TASK = {
    "SLURM_JOB_ID": "17",
    "SLURM_JOB_NODELIST": "node[1-2]",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_NODEID": "1",
    "SLURM_NTASKS": "4",
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "1",
    "SLURM_STEP_ID": "0",
    "SLURM_STEP_NODELIST": "node[1-2]",
    "SLURM_STEP_NUM_NODES": "2",
    "SLURM_STEP_NUM_TASKS": "4",
    "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
    "SLURM_TASKS_PER_NODE": "2(x2)",
}


@pytest.mark.parametrize(
    ("hostlist", "hosts"),
    [
        ("node1", ["node1"]),
        ("node[1-3]", ["node1", "node2", "node3"]),
        ("gpu[08-10,12],login", ["gpu08", "gpu09", "gpu10", "gpu12", "login"]),
        ("r[1-2]n[1,3]", ["r1n1", "r1n3", "r2n1", "r2n3"]),
        ("a[1-2]-ib,b3", ["a1-ib", "a2-ib", "b3"]),
    ],
)
def test_hostlists_expand_like_scontrol(hostlist: str, hosts: list[str]) -> None:
    assert expand_hostlist(hostlist) == hosts


@pytest.mark.parametrize("bad", ["node[1-3", "node1]", "node[a-b]"])
def test_bad_hostlists_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        expand_hostlist(bad)


def test_tasks_per_node() -> None:
    assert expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert expand_tasks_per_node("8") == [8]
    with pytest.raises(ValueError, match="cannot read"):
        expand_tasks_per_node("2x3")


def test_an_srun_task_gets_the_rendezvous_from_slurm() -> None:
    env = dict(STEP_TASK)
    changed = rendezvous_from_slurm(env)
    assert changed == {
        "RANK": "3",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "4",
        "MASTER_ADDR": "node1",
        "MASTER_PORT": "20017",
        "LOCAL_SIZE": "2",  # not the world size: DeepSpeed's shared-memory all-reduce must stay off
        "CROSS_RANK": "1",
        "CROSS_SIZE": "2",
    }
    assert env["RANK"] == "3"


def test_what_a_launcher_or_the_batch_script_set_is_kept() -> None:
    env = {**STEP_TASK, "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29500"}
    rendezvous_from_slurm(env)
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("10.0.0.5", "29500")
    launched = {**STEP_TASK, "RANK": "0", "WORLD_SIZE": "8"}  # torchrun / deepspeed's local launcher
    assert rendezvous_from_slurm(launched) == {} and launched["WORLD_SIZE"] == "8"
    # The batch script itself (no step): SLURM_PROCID=0 and the allocation's task count, but one process.
    batch = {k: v for k, v in STEP_TASK.items() if not k.startswith("SLURM_STEP") and k != "SLURM_LOCALID"}
    batch["SLURM_PROCID"] = "0"
    assert rendezvous_from_slurm(batch) == {} and "RANK" not in batch
    assert rendezvous_from_slurm({}) == {}


def test_a_broken_srun_environment_is_refused() -> None:
    env = {k: v for k, v in STEP_TASK.items() if k != "SLURM_LOCALID"}
    with pytest.raises(ValueError, match="SLURM_LOCALID"):
        rendezvous_from_slurm(env)


def test_hostfile_from_the_allocation() -> None:
    env = {"SLURM_JOB_NODELIST": "node[1-2],gpu7", "SLURM_TASKS_PER_NODE": "2(x2),1"}
    assert hostfile_text(env) == "node1 slots=2\nnode2 slots=2\ngpu7 slots=1\n"
    assert hostfile_text(env, slots=8) == "node1 slots=8\nnode2 slots=8\ngpu7 slots=8\n"
    with pytest.raises(ValueError, match="inside a Slurm allocation"):
        hostfile_text({})
    with pytest.raises(ValueError, match="3 nodes but tasks per node"):
        hostfile_text({**env, "SLURM_TASKS_PER_NODE": "2"})


def test_hostfile_command_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "SLURM_JOB_NODELIST": "node[3-4]", "SLURM_TASKS_PER_NODE": "4(x2)"}
    command = [sys.executable, "-m", "layoutlmv3.training.slurm_env"]
    out = tmp_path / "hostfile"
    done = subprocess.run([*command, "hostfile", "--out", str(out)], env=env, cwd=REPO_ROOT, capture_output=True)
    assert done.returncode == 0 and out.read_text() == "node3 slots=4\nnode4 slots=4\n"
    master = subprocess.run([*command, "master-addr"], env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    assert master.stdout == "node3\n"
    outside = subprocess.run([*command, "hostfile"], env={"PATH": "/usr/bin"}, cwd=REPO_ROOT, capture_output=True)
    assert outside.returncode == 2 and b"inside a Slurm allocation" in outside.stderr


def test_global_batch_sets_the_accumulation_for_the_world_size() -> None:
    values = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0}
    assert with_global_batch(values, None, 4) is values
    assert with_global_batch(values, 64, 4)["gradient_accumulation_steps"] == 8
    assert with_global_batch(values, 64, 32)["gradient_accumulation_steps"] == 1
    assert values["gradient_accumulation_steps"] == 1  # a copy
    with pytest.raises(ValueError, match="not a multiple of micro-batch 2 x 3 ranks = 6"):
        with_global_batch(values, 64, 3)


def test_run_config_checks_the_new_train_settings() -> None:
    config = load_run_config(REPO_ROOT / "configs" / "pretrain" / "tiny.yaml")
    assert config.train.collective_timeout_s == 300.0 and config.train.global_batch_size == 4  # pinned, any rank count
    with pytest.raises(ValueError, match="train.collective_timeout_s must be > 0"):
        load_run_config(REPO_ROOT / "configs" / "pretrain" / "tiny.yaml", ["--train.collective_timeout_s", "0"])
    with pytest.raises(ValueError, match="train.global_batch_size must be >= 1"):
        load_run_config(REPO_ROOT / "configs" / "pretrain" / "tiny.yaml", ["--train.global_batch_size", "0"])


def test_a_changed_global_batch_is_logged_loudly(caplog: pytest.LogCaptureFixture) -> None:
    from layoutlmv3.training.runner import _check_global_batch

    training = SimpleNamespace(global_batch=4, micro_batch_size=1, accumulation_steps=2, world_size=2)
    checkpoint = SimpleNamespace(path=Path("ckpt/step00000020"), world_size=4)
    with caplog.at_level(logging.WARNING):
        _check_global_batch(8, training, checkpoint)
    assert "GLOBAL BATCH CHANGED: ckpt/step00000020 was trained with a global batch of 8 (world size 4)" in caplog.text
    assert "train.global_batch_size: 8" in caplog.text
    caplog.clear()
    _check_global_batch(4, training, checkpoint)
    _check_global_batch(None, training, checkpoint)  # a checkpoint from before the global batch was recorded
    assert caplog.text == ""


def test_every_new_process_group_gets_the_collective_timeout() -> None:
    """DeepSpeed's own groups (gradient reduction) must not keep torch's 30-minute default."""
    from datetime import timedelta

    from torch.distributed import distributed_c10d

    from layoutlmv3.training.distributed import set_default_group_timeout

    saved = distributed_c10d.default_pg_timeout, distributed_c10d.default_pg_nccl_timeout
    try:
        set_default_group_timeout(timedelta(seconds=42))
        for backend in (distributed_c10d.Backend.GLOO, distributed_c10d.Backend.NCCL):
            assert distributed_c10d._get_default_timeout(backend) == timedelta(seconds=42)
    finally:
        distributed_c10d.default_pg_timeout, distributed_c10d.default_pg_nccl_timeout = saved
