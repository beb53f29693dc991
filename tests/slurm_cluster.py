"""The local multi-host Slurm cluster the Slurm tests share, and helpers to submit jobs and read their logs.

`slurm/local/setup_local_slurm.sh` starts 3 nodes, each in its own network and UTS namespace on a private bridge
(see the script); tests submit the real sbatch scripts to it. Skipped where Slurm's daemons, the namespace
tools or root are missing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SETUP = REPO_ROOT / "slurm" / "local" / "setup_local_slurm.sh"
JOB_TIMEOUT = 300  # seconds per wait; a tiny job takes 20-60 s on an idle machine, more on a busy one
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
NODES = ("node1", "node2", "node3")

requires_slurm = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("sbatch", "slurmctld", "slurmd", "munged", "ip", "unshare", "nsenter"))
    or os.geteuid() != 0,
    reason="needs Slurm (apt-get install slurmctld slurmd munge slurm-client), iproute2, util-linux and root",
)


@pytest.fixture(scope="session")
def slurm_env() -> Iterator[dict[str, str]]:
    """Start the 3-node cluster; the environment that points Slurm's clients at it. Stopped at the end."""
    env = {**os.environ, "SLURM_LOCAL_NODES": str(len(NODES))}
    started = subprocess.run([str(SETUP), "start"], capture_output=True, text=True, timeout=120, env=env)
    if started.returncode != 0:
        subprocess.run([str(SETUP), "stop"], capture_output=True, timeout=60)
        pytest.fail(f"local Slurm did not start:\n{started.stdout}\n{started.stderr}")
    conf = re.search(r"SLURM_CONF=(\S+)", started.stdout)
    assert conf is not None, started.stdout
    yield {**os.environ, "SLURM_CONF": conf.group(1)}
    subprocess.run([str(SETUP), "stop"], capture_output=True, timeout=120)


def sbatch(env: dict[str, str], out: Path, *args: str, log: str = "slurm-%j.out") -> str:
    """Submit from the repository root, Slurm's own output file `log` in `out`; returns the job id."""
    out.mkdir(parents=True, exist_ok=True)  # Slurm cannot start a job whose output file it cannot open
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


def pretrain_env(env: dict[str, str], world: Path, out: Path) -> dict[str, str]:
    """What pretrain.sbatch reads: the tiny world's config, outputs in `out`, this interpreter, CPU ranks whose
    collectives go over each node's eth0 (the namespace's interface on the bridge)."""
    return {
        **env,
        "CONFIG": str(world / "run.yaml"),
        "OUTPUT_DIR": str(out),
        "PYTHON": sys.executable,
        "DS_ACCELERATOR": "cpu",
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "eth0",
    }


def cpu_job(nodes: int, ranks_per_node: int) -> list[str]:
    """sbatch options for a CPU job: the script's header asks for 8 GPUs and 8 CPUs per task."""
    return [f"--nodes={nodes}", f"--ntasks-per-node={ranks_per_node}", "--gpus-per-node=0", "--cpus-per-task=1"]


def attempt_log(out: Path, job: str, attempt: int) -> str:
    path = out / "slurm-logs" / f"pretrain-{job}-attempt{attempt}.log"
    if not path.exists():
        first = out / "slurm-logs" / f"pretrain-{job}-attempt0.log"
        ending = first.read_text()[-5000:] if first.exists() else ""
        pytest.fail(f"no {path.name}; the first attempt's log ends:\n{ending}")
    return path.read_text()


PLACEMENT = re.compile(r"rank (\d+)/(\d+) \(local (\d+)\) on host (\S+) address (\S+) \((\S+)\)")


def placements(log: str) -> dict[int, tuple[str, str, str]]:
    """rank -> (host, address, interface), from the line every rank logs after joining the process group."""
    return {int(m.group(1)): (m.group(4), m.group(5), m.group(6)) for m in PLACEMENT.finditer(log)}


def log_time(line_start: str) -> float:
    """Epoch seconds of a Python logging timestamp ("2026-11-30 12:35:02,439"), local time."""
    return datetime.strptime(line_start, "%Y-%m-%d %H:%M:%S,%f").timestamp()
