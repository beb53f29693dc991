"""slurm/*.sbatch against a real one-node Slurm (slurm/local/setup_local_slurm.sh): CPU, gloo, 2 ranks.

Skipped where Slurm's daemons are not installed or the tests do not run as root (slurmd starts jobs as their
users). The pretraining jobs run two tasks under srun, the path a multi-node job takes, on the tiny world of
test_pretrain_launcher.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from layoutlmv3.training.checkpointing import LATEST_FILE, find_resume_checkpoint, read_checkpoint, tag_for
from layoutlmv3.training.metrics import METRICS_FILE
from tests.test_pretrain_launcher import STEPS, world  # noqa: F401  (the session fixture)

REPO_ROOT = Path(__file__).resolve().parents[1]
SETUP = REPO_ROOT / "slurm" / "local" / "setup_local_slurm.sh"
JOB_TIMEOUT = 300  # seconds per wait; a tiny job takes 20-60 s on an idle machine, more on a busy one
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("sbatch", "slurmctld", "slurmd", "munged")) or os.geteuid() != 0,
    reason="needs Slurm (apt-get install slurmctld slurmd munge slurm-client) and root",
)


@pytest.fixture(scope="session")
def slurm_env() -> Iterator[dict[str, str]]:
    """Start the local cluster; the environment that points Slurm's clients at it. Stopped at the end."""
    started = subprocess.run([str(SETUP), "start"], capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        pytest.fail(f"local Slurm did not start:\n{started.stdout}\n{started.stderr}")
    conf = re.search(r"SLURM_CONF=(\S+)", started.stdout)
    assert conf is not None, started.stdout
    env = {**os.environ, "SLURM_CONF": conf.group(1)}
    yield env
    subprocess.run([str(SETUP), "stop"], capture_output=True, timeout=60)


def sbatch(env: dict[str, str], out: Path, *args: str, log: str = "slurm-%j.out") -> str:
    """Submit from the repository root, Slurm's own output file `log` in `out`; returns the job id."""
    result = subprocess.run(
        ["sbatch", "--parsable", f"--output={out / log}", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip().split(";")[0]


def job_fields(env: dict[str, str], job: str) -> dict[str, str]:
    """`scontrol show job` as key -> value (the cluster keeps finished jobs for MinJobAge)."""
    result = subprocess.run(["scontrol", "-o", "show", "job", job], env=env, capture_output=True, text=True)
    fields = {}
    for token in result.stdout.split("\n")[0].split():
        key, _, value = token.partition("=")
        fields[key] = value
    return fields


def wait_until(
    predicate: Callable[[], object], what: str, timeout: float = JOB_TIMEOUT, explain: Callable[[], str] = str
) -> None:
    """Poll `predicate` until it is true; fail with `explain()` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen in {timeout} s\n{explain()}")
        time.sleep(0.2)


def wait_for_job(env: dict[str, str], job: str, logs: Path | None = None, restarts: int = 0) -> dict[str, str]:
    """Wait until `job` has finished after `restarts` requeues (cancelling it on a timeout); its final
    `scontrol show job` fields. Waiting for the restart count matters: around `scontrol requeue` a poll can see
    the ending attempt as finished before the job is pending again."""

    def explain() -> str:
        text = [f"{job_fields(env, job)}"]
        if logs is not None:
            text += [f"--- {p}\n{p.read_text()[-4000:]}" for p in sorted(logs.glob("*.log"))]
        return "\n".join(text)

    shortened: set[str] = set()  # restart counts whose hold was already shortened (once: each update restarts it)

    def finished() -> bool:
        fields = job_fields(env, job)
        restart = fields.get("Restarts", "0")
        if fields.get("JobState") == "PENDING" and fields.get("Reason") == "BeginTime" and restart not in shortened:
            shortened.add(restart)
            # Slurm holds a requeued job for a while (about 2 minutes) before it may start again; shorten the wait,
            # but not to zero: slurmd revokes the old attempt's credential with one-second resolution, and a new
            # attempt allocated within that second is killed ("Job credential revoked").
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now+5"], env=env, capture_output=True)
        return fields.get("JobState") in FINISHED and int(restart) >= restarts

    try:
        wait_until(finished, f"job {job} finishing", explain=explain)
    except BaseException:
        subprocess.run(["scancel", job], env=env)
        raise
    return job_fields(env, job)


def pretrain_env(env: dict[str, str], world: Path, out: Path) -> dict[str, str]:  # noqa: F811
    """What pretrain.sbatch reads: the tiny world's config, outputs in `out`, this interpreter, CPU ranks."""
    return {
        **env,
        "CONFIG": str(world / "run.yaml"),
        "OUTPUT_DIR": str(out),
        "PYTHON": sys.executable,
        "DS_ACCELERATOR": "cpu",
        "OMP_NUM_THREADS": "1",
    }


# One node x 2 tasks, no GPU: the sbatch header's 8 GPUs and CPUs per task do not exist here.
CPU_JOB = ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=10"]


def attempt_logs(out: Path, job: str) -> list[str]:
    paths = [out / "slurm-logs" / f"pretrain-{job}-attempt{n}.log" for n in range(2)]
    missing = [path.name for path in paths if not path.exists()]
    first = paths[0].read_text()[-5000:] if paths[0].exists() else ""
    assert not missing, f"no {missing}; the first attempt's log ends:\n{first}"
    return [path.read_text() for path in paths]


def test_pretrain_job_runs_two_ranks_and_checkpoints(
    slurm_env: dict[str, str],
    world: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    env = pretrain_env(slurm_env, world, tmp_path)
    job = sbatch(
        env, tmp_path, *CPU_JOB, "slurm/pretrain.sbatch", "--train.stop_at_step", "4", "--checkpoint.every", "2"
    )
    fields = wait_for_job(env, job, tmp_path / "slurm-logs")
    log = (tmp_path / "slurm-logs" / f"pretrain-{job}-attempt0.log").read_text()
    assert fields["JobState"] == "COMPLETED", log[-5000:]
    assert "2 ranks, master localhost:" in log and "ranks exited with 0" in log
    assert "micro-batch 1 x accumulation 2 x 2 ranks = global batch 4" in log
    checkpoint = read_checkpoint(tmp_path / "checkpoints" / tag_for(4))
    assert (checkpoint.step, checkpoint.world_size) == (4, 2)
    assert sorted(p.name for p in (checkpoint.path / "rank_state").iterdir()) == ["rank00000.pt", "rank00001.pt"]
    assert (tmp_path / "checkpoints" / LATEST_FILE).read_text() == tag_for(4)


def test_usr1_checkpoints_requeues_and_resumes(
    slurm_env: dict[str, str],
    world: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """USR1 to the batch shell (what --signal=B:USR1@120 sends): exit 42, requeue, attempt 1 resumes."""
    env = pretrain_env(slurm_env, world, tmp_path)
    steps = 5 * STEPS  # long enough that the signal lands mid-run on an idle machine, not after the last step
    job = sbatch(
        env, tmp_path, *CPU_JOB, "slurm/pretrain.sbatch", "--logging.every", "1", "--checkpoint.every", "1000",
        "--train.steps", str(steps),
    )  # fmt: skip
    metrics = tmp_path / "runs" / METRICS_FILE
    wait_until(lambda: metrics.exists() and metrics.read_text().strip(), "a first training step")
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], env=env, check=True)
    fields = wait_for_job(env, job, tmp_path / "slurm-logs", restarts=1)
    first, second = attempt_logs(tmp_path, job)
    assert fields["JobState"] == "COMPLETED" and fields["Restarts"] == "1", second[-5000:]
    assert "received USR1" in first and "ranks exited with 42" in first and "requeueing" in first, first[-5000:]
    stopped = re.search(r"resumed from (\S+) at step (\d+)", second)
    assert stopped is not None, second[-5000:]
    step = int(stopped.group(2))
    assert 1 <= step < steps and stopped.group(1) == str(tmp_path / "checkpoints" / tag_for(step))
    assert f"checkpoint {stopped.group(1)} complete" in first  # the first attempt's checkpoint, the newest then
    assert f"step {steps}/{steps} | loss" in second and "ranks exited with 0" in second
    newest = find_resume_checkpoint(tmp_path / "checkpoints")
    assert newest is not None and newest.step == steps


def test_requeueing_stops_after_max_crashes_or_requeues(
    slurm_env: dict[str, str],
    world: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A run that keeps crashing is not requeued forever (here: a missing interpreter, MAX_CRASHES=1)."""
    env = {**pretrain_env(slurm_env, world, tmp_path), "PYTHON": "/nonexistent/python", "MAX_CRASHES": "1"}
    job = sbatch(env, tmp_path, *CPU_JOB, "slurm/pretrain.sbatch")
    fields = wait_for_job(env, job, tmp_path / "slurm-logs", restarts=1)
    first, second = attempt_logs(tmp_path, job)
    assert fields["JobState"] == "FAILED" and fields["Restarts"] == "1", fields
    assert "crashed: requeueing" in first
    assert "1 earlier attempt(s) crashed too (MAX_CRASHES=1): not requeueing" in second

    env["MAX_REQUEUES"] = "0"  # whatever ended the attempt
    job = sbatch(env, tmp_path, *CPU_JOB, "slurm/pretrain.sbatch")
    fields = wait_for_job(env, job, tmp_path / "slurm-logs")
    log = (tmp_path / "slurm-logs" / f"pretrain-{job}-attempt0.log").read_text()
    assert fields["JobState"] == "FAILED" and fields["Restarts"] == "0", fields
    assert "reached MAX_REQUEUES=0: not requeueing" in log


def test_prep_array_and_merge_equal_one_task(
    slurm_env: dict[str, str],
    world: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A 2-task prep array plus its merge job write the shards and manifest of a single-task build."""
    build_args = ["--input", str(world / "synth_train"), "--ocr", "funsd", "--tokenizer", str(world / "vocab")]
    build_args += ["--files-per-chunk", "4", "--max-samples-per-shard", "3", "--workers", "1", "--quiet"]
    plain = {k: v for k, v in slurm_env.items() if not k.startswith("SLURM_ARRAY")}
    one = tmp_path / "one"
    subprocess.run(
        [sys.executable, "-m", "data_prep.build_shards", *build_args, "--out", str(one)],
        cwd=REPO_ROOT,
        env=plain,
        check=True,
        capture_output=True,
    )

    two = tmp_path / "two"
    env = {**slurm_env, "PYTHON": sys.executable, "LOG_DIR": str(tmp_path / "logs")}
    array = sbatch(
        env,
        tmp_path,
        "--array=0-1",
        "--cpus-per-task=1",
        "slurm/prep.sbatch",
        *build_args,
        "--out",
        str(two),
        log="slurm-%A_%a.out",
    )
    ends = []
    for task in (f"{array}_0", f"{array}_1"):
        fields = wait_for_job(env, task)
        assert fields["JobState"] == "COMPLETED", (tmp_path / f"slurm-{task}.out").read_text()
        ends.append(fields["EndTime"])
    announced = re.search(r"merge job (\d+) runs after", (tmp_path / f"slurm-{array}_0.out").read_text())
    assert announced is not None
    merge = announced.group(1)
    merged = wait_for_job(env, merge)
    merge_log = (tmp_path / "logs" / f"prep-merge-{merge}.out").read_text()
    assert merged["JobState"] == "COMPLETED" and "merged: " in merge_log, merge_log
    assert merged["StartTime"] >= max(ends)  # ISO times: the merge waited for both tasks

    def outputs(directory: Path) -> dict[str, bytes]:
        names = [p for p in directory.iterdir() if p.suffix == ".tar" or p.name in ("manifest.json", "rejects.jsonl")]
        return {p.name: p.read_bytes() for p in names}

    expected, got = outputs(one), outputs(two)
    assert "manifest.json" in expected and len([n for n in expected if n.endswith(".tar")]) > 2
    assert sorted(got) == sorted(expected)
    assert got == expected
