"""slurm/*.sbatch against the local multi-host Slurm (tests/slurm_cluster.py): crash and requeue limits, the
data-preparation array spread over several nodes, and the one-node mode of the cluster script. The pretraining
runs across hosts are in test_slurm_multinode.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.file_digests import digests
from tests.slurm_cluster import (
    SETUP,
    attempt_log,
    cpu_job,
    pretrain_env,
    requires_slurm,
    sbatch,
    wait_for_job,
)

pytestmark = [requires_slurm, pytest.mark.slow]  # a real cluster, launched ranks
REPO_ROOT = Path(__file__).resolve().parents[1]
CPU_JOB = [*cpu_job(1, 2), "--time=10"]


def test_requeueing_stops_after_max_crashes_or_requeues(
    slurm_env: dict[str, str],
    world: Path,
    tmp_path: Path,
) -> None:
    """A run that keeps crashing is not requeued forever (here: ranks that exit 1 at once, MAX_CRASHES=1)."""
    env = {**pretrain_env(slurm_env, world, tmp_path), "PYTHON": "/bin/false", "MAX_CRASHES": "1"}
    job = sbatch(env, tmp_path, *CPU_JOB, "slurm/pretrain.sbatch")
    fields = wait_for_job(env, job, tmp_path / "slurm-logs", restarts=1)
    first, second = attempt_log(tmp_path, job, 0), attempt_log(tmp_path, job, 1)
    assert fields["JobState"] == "FAILED" and fields["Restarts"] == "1", fields
    assert "crashed: requeueing" in first
    assert "1 earlier attempt(s) crashed too (MAX_CRASHES=1): not requeueing" in second

    env["MAX_REQUEUES"] = "0"  # whatever ended the attempt
    job = sbatch(env, tmp_path, *CPU_JOB, "slurm/pretrain.sbatch")
    fields = wait_for_job(env, job, tmp_path / "slurm-logs")
    log = (tmp_path / "slurm-logs" / f"pretrain-{job}-attempt0.log").read_text()
    assert fields["JobState"] == "FAILED" and fields["Restarts"] == "0", fields
    assert "reached MAX_REQUEUES=0: not requeueing" in log


def test_prep_array_over_three_nodes_reads_one_file_list_and_merge_equals_one_task(
    slurm_env: dict[str, str],
    world: Path,
    tmp_path: Path,
) -> None:
    """slurm/submit_prep.sh: one job lists the input, then a 3-task prep array, one task per node (--exclusive),
    reads that list, and its merge job writes the shards and manifest of a single-task build that walked the same
    input, byte for byte (the manifest adds the list's digest). A page added to --input after the list was written
    (while the array is held) is in no shard: the tasks did not walk."""
    pages = tmp_path / "input"
    shutil.copytree(world / "synth_train", pages)  # a copy: this test adds a page to it
    build_args = ["--input", str(pages), "--ocr", "funsd", "--tokenizer", str(world / "vocab")]
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

    three = tmp_path / "three"
    env = {**slurm_env, "PYTHON": sys.executable, "LOG_DIR": str(tmp_path / "logs")}
    array_options = [f"--output={tmp_path / 'slurm-%A_%a.out'}", "--array=0-2", "--hold"]
    array_options += ["--exclusive", "--cpus-per-task=1"]  # a whole node per task; the header's 16 exceed a node
    submitted = subprocess.run(
        ["slurm/submit_prep.sh", *array_options, "--", *build_args, "--out", str(three)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    jobs = re.search(r"list job (\d+) writes (\S+) .*\narray job (\d+) builds from \2", submitted.stdout)
    assert jobs is not None, submitted.stdout
    listing, array = Path(jobs.group(2)), jobs.group(3)
    assert listing == three / "file-list.txt"
    listed = wait_for_job(env, jobs.group(1))
    list_log = (tmp_path / "logs" / f"prep-list-{jobs.group(1)}.out").read_text()
    assert listed["JobState"] == "COMPLETED" and f"listed 24 page files under {pages}" in list_log, list_log
    for folder, suffix in (("images", ".png"), ("annotations", ".json")):  # a page any walk would build
        first = sorted((pages / folder).glob(f"*{suffix}"))[0]
        shutil.copy(first, pages / folder / f"zz_added{suffix}")
    subprocess.run(["scontrol", "release", array], env=env, check=True, capture_output=True)

    ends, hosts = [], set()
    for task in (f"{array}_0", f"{array}_1", f"{array}_2"):
        fields = wait_for_job(env, task)
        output = (tmp_path / f"slurm-{task}.out").read_text()
        assert fields["JobState"] == "COMPLETED", output
        ends.append(fields["EndTime"])
        ran_on = re.search(r"task \d+ \(of 3\) on (\S+):", output)
        assert ran_on is not None and ran_on.group(1) == fields["NodeList"], output
        assert f"(pages from --file-list {listing}, sha256 " in output, output  # the log names the list
        hosts.add(ran_on.group(1))
    assert len(hosts) >= 2, hosts  # spread over nodes, each writing to the shared output directory
    announced = re.search(r"merge job (\d+) runs after", (tmp_path / f"slurm-{array}_0.out").read_text())
    assert announced is not None
    merge = announced.group(1)
    merged = wait_for_job(env, merge)
    merge_log = (tmp_path / "logs" / f"prep-merge-{merge}.out").read_text()
    assert merged["JobState"] == "COMPLETED" and "merged: " in merge_log, merge_log
    assert merged["StartTime"] >= max(ends)  # ISO times: the merge waited for both tasks

    def outputs(directory: Path) -> dict[str, str]:
        names = [p for p in directory.iterdir() if p.suffix == ".tar" or p.name == "rejects.jsonl"]
        return digests(names, directory)

    expected, got = outputs(one), outputs(three)
    assert len([n for n in expected if n.endswith(".tar")]) > 2
    assert sorted(got) == sorted(expected)
    assert got == expected  # the added page is in no shard
    manifest = json.loads((three / "manifest.json").read_text())
    sha256 = hashlib.sha256(listing.read_bytes()).hexdigest()
    assert manifest.pop("file_list") == {"sha256": sha256, "files": 24}
    assert manifest == json.loads((one / "manifest.json").read_text())


def test_one_node_mode_still_starts(tmp_path: Path) -> None:
    """SLURM_LOCAL_NODES=1: the node `localhost` on loopback, beside the multi-host cluster (own ports and dir).
    pytest's tmp_path (under an xdist worker's folder) is too long for slurmd's step sockets: refused by name."""
    env = {**os.environ, "SLURM_LOCAL_NODES": "1", "SLURM_LOCAL_CTLD_PORT": "6917", "SLURM_LOCAL_SLURMD_PORT": "6918"}
    deep = tmp_path / ("x" * 64)
    refused = subprocess.run([str(SETUP), "start"], env={**env, "SLURM_LOCAL_DIR": str(deep)}, capture_output=True,
                             text=True, timeout=60)  # fmt: skip
    assert refused.returncode == 2 and "at most 64" in refused.stderr and not deep.exists()
    short = Path(tempfile.mkdtemp(prefix="one-node-", dir="/tmp"))
    env["SLURM_LOCAL_DIR"] = str(short)
    try:
        started = subprocess.run([str(SETUP), "start"], env=env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stderr
        env["SLURM_CONF"] = str(short / "slurm.conf")
        nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], env=env, capture_output=True, text=True)
        assert nodes.stdout.split() == ["localhost", "idle"], nodes.stdout
        ran = subprocess.run(["srun", "-n", "2", "printenv", "SLURM_PROCID"], env=env, capture_output=True, text=True)
        assert sorted(ran.stdout.split()) == ["0", "1"], ran.stderr
    finally:
        subprocess.run([str(SETUP), "stop"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(short, ignore_errors=True)
