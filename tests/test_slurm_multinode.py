"""Pretraining across hosts on the local 3-node Slurm cluster (tests/slurm_cluster.py): CPU, gloo over each
node's own network interface, the tiny pretraining world (conftest.py's `world`).

What runs here: `sbatch --nodes=2 --ntasks-per-node=2 slurm/pretrain.sbatch` (4 ranks on 2 hosts) against the same
run on one node; `deepspeed --launcher slurm` inside a 2-node allocation; USR1 preemption across hosts; a node
that dies mid-run (its link down, its processes killed) and the job resuming on the healthy nodes; the run
shrinking to one node through the universal checkpoint with its global batch kept.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from layoutlmv3.training.checkpointing import find_resume_checkpoint, read_checkpoint, tag_for
from layoutlmv3.training.metrics import METRICS_FILE
from layoutlmv3.training.slurm_env import expand_hostlist
from tests.slurm_cluster import (
    NODES,
    REPO_ROOT,
    SETUP,
    attempt_log,
    cpu_job,
    job_fields,
    log_time,
    placements,
    pretrain_env,
    requires_slurm,
    sbatch,
    wait_for_job,
    wait_until,
)

pytestmark = [requires_slurm, pytest.mark.slow]  # a real cluster, launched ranks

STEPS = 40  # long enough for a signal or a node failure to land mid-run; ~0.3 s a step with 4 ranks
RUN = ["--train.steps", str(STEPS), "--logging.every", "1", "--logging.val_every", "0", "--checkpoint.every", "10"]
# The collective timeout of the node-failure test: short, so the test is quick. Production default: 300 s.
TEST_COLLECTIVE_TIMEOUT_S = 8
EXIT_WAIT_S = 5  # srun --wait: seconds srun gives the remaining ranks once the first has exited


def losses(out: Path) -> dict[int, float]:
    """Per-step training loss from rank 0's metrics.jsonl; a step logged twice (before a crash and after the
    resume) keeps its last value."""
    path = out / "runs" / METRICS_FILE
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


def assert_same_losses(got: dict[int, float], expected: dict[int, float], steps: range, tolerance: float) -> None:
    assert sorted(got) == list(steps), sorted(got)
    worst = max(abs(got[step] - expected[step]) for step in steps)
    assert worst <= tolerance, {step: (got[step], expected[step]) for step in steps}


def submit_run(env: dict[str, str], out: Path, nodes: int, ranks_per_node: int, *overrides: str) -> str:
    return sbatch(env, out, *cpu_job(nodes, ranks_per_node), "--time=10", "slurm/pretrain.sbatch", *RUN, *overrides)


def finished_run(env: dict[str, str], out: Path, job: str, restarts: int = 0) -> list[str]:
    """Wait for `job`; the logs of its attempts. Fails unless it COMPLETED after `restarts` requeues."""
    fields = wait_for_job(env, job, out / "slurm-logs", restarts=restarts)
    logs = [attempt_log(out, job, n) for n in range(restarts + 1)]
    assert fields["JobState"] == "COMPLETED" and fields["Restarts"] == str(restarts), (fields, logs[-1][-5000:])
    return logs


@pytest.fixture(scope="module")
def two_nodes(slurm_env: dict[str, str], world: Path, tmp_path_factory: pytest.TempPathFactory):
    """The reference: STEPS steps, 2 nodes x 2 ranks, uninterrupted. (output dir, attempt-0 log)."""
    out = tmp_path_factory.mktemp("two_nodes")
    env = pretrain_env(slurm_env, world, out)
    (log,) = finished_run(env, out, submit_run(env, out, 2, 2))
    return out, log


def test_four_ranks_on_two_hosts_equal_four_ranks_on_one(
    slurm_env: dict[str, str],
    world: Path,
    two_nodes: tuple[Path, str],
    tmp_path: Path,
) -> None:
    """4 ranks on 2 hosts: two hosts with their own addresses, talking over eth0; the per-step losses equal those
    of 4 ranks on one host to 1e-6. Measured: bit-identical over all 40 steps. The tolerance leaves room for the
    one thing that differs, the gradient all-reduce (on one host DeepSpeed may sum through shared memory, across
    hosts gloo's ring does), whose fp32 summation order another DeepSpeed or gloo version may change."""
    out, log = two_nodes
    placed = placements(log)
    assert sorted(placed) == [0, 1, 2, 3], log[-5000:]
    hosts = {rank: host for rank, (host, _, _) in placed.items()}
    addresses = {host: address for host, address, _ in placed.values()}
    assert hosts[0] == hosts[1] != hosts[2] == hosts[3]  # srun's block distribution: 2 ranks per node
    assert len(addresses) == 2 and len(set(addresses.values())) == 2
    assert all(address.startswith("10.213.77.") for address in addresses.values())
    assert {interface for _, _, interface in placed.values()} == {"eth0"}
    assert "4 ranks, master node" in log and "collective interface eth0 (rank variables from Slurm)" in log
    assert "micro-batch 1 x accumulation 2 x 4 ranks = global batch 8" in log
    checkpoint = read_checkpoint(out / "checkpoints" / tag_for(STEPS))
    assert checkpoint.world_size == 4
    assert len(list((checkpoint.path / "rank_state").iterdir())) == 4

    one = tmp_path / "one_node"
    env = pretrain_env(slurm_env, world, one)
    (one_log,) = finished_run(env, one, submit_run(env, one, 1, 4))
    assert len({host for host, _, _ in placements(one_log).values()}) == 1
    reference = losses(out)
    assert_same_losses(losses(one), reference, range(1, STEPS + 1), tolerance=1e-6)
    assert all(math.isfinite(loss) for loss in reference.values()) and reference[STEPS] < reference[1]


def test_deepspeed_launcher_slurm_in_a_two_node_allocation(
    slurm_env: dict[str, str],
    world: Path,
    two_nodes: tuple[Path, str],
    tmp_path: Path,
) -> None:
    """`deepspeed --launcher slurm --hostfile H launch/pretrain.py` inside `sbatch --nodes=2`: no mpi4py, no ssh
    (launch/pretrain.py takes its rank from Slurm's variables); the same losses as the srun path."""
    pytest.importorskip("deepspeed")
    assert subprocess.run([sys.executable, "-c", "import mpi4py"], capture_output=True).returncode != 0
    hostfile = tmp_path / "hostfile"
    deepspeed = Path(sys.executable).parent / "deepspeed"
    helper = f"{sys.executable} -m layoutlmv3.training.slurm_env"
    dirs = f"--checkpoint.dir {tmp_path / 'checkpoints'} --logging.dir {tmp_path / 'runs'}"
    script = (
        f"set -e; {helper} hostfile --out {hostfile}; "
        f"{deepspeed} --launcher slurm --hostfile {hostfile} --no_ssh_check --master_addr $({helper} master-addr) "
        f"launch/pretrain.py --config {world / 'run.yaml'} {dirs} {' '.join(RUN)} --train.stop_at_step 4"
    )
    env = pretrain_env(slurm_env, world, tmp_path)
    job = sbatch(env, tmp_path, *cpu_job(2, 2), "--time=10", f"--wrap={script}")
    fields = wait_for_job(env, job)
    log = (tmp_path / f"slurm-{job}.out").read_text()
    assert fields["JobState"] == "COMPLETED", log[-5000:]
    nodes = expand_hostlist(fields["NodeList"])
    assert hostfile.read_text() == "".join(f"{node} slots=2\n" for node in nodes)
    placed = placements(log)
    assert sorted(placed) == [0, 1, 2, 3] and len({host for host, _, _ in placed.values()}) == 2, log[-5000:]
    assert log.count("(rank variables from Slurm)") == 4
    assert_same_losses(losses(tmp_path), losses(two_nodes[0]), range(1, 5), tolerance=1e-6)


def test_usr1_across_hosts_checkpoints_requeues_and_resumes_exactly(
    slurm_env: dict[str, str],
    world: Path,
    two_nodes: tuple[Path, str],
    tmp_path: Path,
) -> None:
    """USR1 to the batch shell (what --signal=B:USR1@120 sends) reaches every rank on both hosts: one complete
    checkpoint, exit 42, requeue; the next attempt resumes and the per-step losses equal the uninterrupted run."""
    env = pretrain_env(slurm_env, world, tmp_path)
    job = submit_run(env, tmp_path, 2, 2, "--checkpoint.every", "1000")
    metrics = tmp_path / "runs" / METRICS_FILE
    wait_until(lambda: metrics.exists() and metrics.read_text().strip(), "a first training step")
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], env=env, check=True)
    first, second = finished_run(env, tmp_path, job, restarts=1)
    assert "received USR1" in first and "ranks exited with 42" in first and "requeueing" in first, first[-5000:]
    assert len({host for host, _, _ in placements(first).values()}) == 2
    # Every rank on both hosts saw the stop request and saved its part of the one checkpoint.
    resumed = re.search(r"resumed from (\S+) at step (\d+)", second)
    assert resumed is not None, second[-5000:]
    step = int(resumed.group(2))
    assert 1 <= step < STEPS and f"checkpoint {resumed.group(1)} complete" in first
    checkpoint = read_checkpoint(Path(resumed.group(1)))
    assert checkpoint.world_size == 4 and len(list((checkpoint.path / "rank_state").iterdir())) == 4
    assert len(list(checkpoint.path.glob("*optim_states.pt"))) == 4
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step*")) == [tag_for(step), tag_for(STEPS)]
    assert_same_losses(losses(tmp_path), losses(two_nodes[0]), range(1, STEPS + 1), tolerance=1e-6)


def test_a_dead_node_ends_the_attempt_and_the_job_resumes_on_the_healthy_nodes(
    slurm_env: dict[str, str],
    world: Path,
    two_nodes: tuple[Path, str],
    tmp_path: Path,
) -> None:
    """The second node of a running 2-node job dies (link down, then every process on it SIGKILLed: its peers see
    silence, not a closed connection). The surviving ranks give up after the collective timeout instead of
    waiting forever, srun ends the step, the job is requeued and placed on the two healthy nodes, and it resumes
    from the newest complete checkpoint: the per-step losses equal the uninterrupted run's."""
    env = {**pretrain_env(slurm_env, world, tmp_path), "EXIT_WAIT": str(EXIT_WAIT_S)}
    job = submit_run(env, tmp_path, 2, 2, "--train.collective_timeout_s", str(TEST_COLLECTIVE_TIMEOUT_S))
    wait_until(lambda: max(losses(tmp_path), default=0) >= 12, "step 12 (past the step-10 checkpoint)")
    victim = expand_hostlist(job_fields(env, job)["NodeList"])[-1]  # not the first: the batch script runs there
    killed_at = time.time()
    try:
        subprocess.run([str(SETUP), "kill-node", victim], env=env, check=True, capture_output=True)
        last_before = max(losses(tmp_path))
        first, second = finished_run(env, tmp_path, job, restarts=1)
    finally:
        subprocess.run([str(SETUP), "revive-node", victim], env=env, capture_output=True)
    failures = re.findall(r"^(\S+ \S+) \[rank (\d)\] ERROR .*a collective failed", first, re.MULTILINE)
    assert failures, first[-5000:]
    detected = min(log_time(stamp) for stamp, _ in failures) - killed_at
    assert detected <= TEST_COLLECTIVE_TIMEOUT_S + 30, detected
    ended = re.search(r"^(\S+Z) ranks exited with (\d+)", first, re.MULTILINE)
    assert ended is not None and ended.group(2) != "0", first[-5000:]
    attempt_over = datetime.fromisoformat(ended.group(1).replace("Z", "+00:00")).timestamp() - killed_at
    assert "crashed: requeueing" in first or "stopped by SIGTERM" in first, first[-3000:]

    hosts = {host for host, _, _ in placements(second).values()}
    assert len(hosts) == 2 and victim not in hosts, hosts
    resumed = re.search(r"^(\S+ \S+) .*resumed from (\S+) at step (\d+)", second, re.MULTILINE)
    assert resumed is not None, second[-5000:]
    step = int(resumed.group(3))
    assert step == 10 * (last_before // 10) or step == 10 * (last_before // 10 + 1), (step, last_before)
    assert_same_losses(losses(tmp_path), losses(two_nodes[0]), range(1, STEPS + 1), tolerance=1e-6)
    figures = {
        "collective_timeout_s": TEST_COLLECTIVE_TIMEOUT_S,
        "detection_s": round(detected, 1),
        "attempt_over_s": round(attempt_over, 1),
        "resumed_s": round(log_time(resumed.group(1)) - killed_at, 1),
        "last_step_before_kill": last_before,
        "resumed_at_step": step,
        "steps_lost": last_before - step,
        "requeued_by": "script (crash)" if "crashed: requeueing" in first else "Slurm (node failure)",
    }
    print(f"node failure: {json.dumps(figures)}")
    wait_until(
        lambda: (
            subprocess.run(["sinfo", "-h", "-n", victim, "-o", "%T"], env=env, capture_output=True, text=True)
            .stdout.strip()
            .startswith("idle")
        ),
        f"{victim} back in service",
        timeout=120,
    )


def test_shrinking_to_one_node_keeps_the_global_batch(
    slurm_env: dict[str, str],
    world: Path,
    two_nodes: tuple[Path, str],
    tmp_path: Path,
) -> None:
    """The 4-rank run's step-20 checkpoint resumes on 1 node x 2 ranks through DeepSpeed's universal checkpoint;
    train.global_batch_size keeps the global batch at 8 by doubling the gradient accumulation."""
    shutil.copytree(two_nodes[0] / "checkpoints" / tag_for(20), tmp_path / "checkpoints" / tag_for(20))
    env = pretrain_env(slurm_env, world, tmp_path)
    overrides = ("--train.global_batch_size", "8", "--train.stop_at_step", "23")
    (log,) = finished_run(env, tmp_path, submit_run(env, tmp_path, 1, 2, *overrides))
    assert "via a universal checkpoint" in log and "resumed from" in log, log[-5000:]
    assert "micro-batch 1 x accumulation 4 x 2 ranks = global batch 8" in log
    assert "GLOBAL BATCH CHANGED" not in log
    assert len({host for host, _, _ in placements(log).values()}) == 1
    got = losses(tmp_path)
    assert sorted(got) == [21, 22, 23] and all(math.isfinite(v) for v in got.values())
    newest = find_resume_checkpoint(tmp_path / "checkpoints")
    assert newest is not None and (newest.step, newest.world_size) == (23, 2)


def test_cluster_nodes_are_separate_hosts(slurm_env: dict[str, str]) -> None:
    """Each node has its own host name and address, and reaches the others by name over the bridge."""
    result = subprocess.run(
        ["srun", f"--nodes={len(NODES)}", f"--ntasks={len(NODES)}", "bash", "-c",
         "echo $(hostname) $(hostname -I) $(getent hosts node1 | cut -d' ' -f1)"],
        env=slurm_env, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = sorted(line.split() for line in result.stdout.splitlines())
    assert [row[0] for row in rows] == list(NODES)
    assert [row[1] for row in rows] == [f"10.213.77.{11 + i}" for i in range(len(NODES))]
    assert {row[2] for row in rows} == {"10.213.77.11"}
