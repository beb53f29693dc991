"""slurm/pretrain.sbatch's signal handling under a storm of signals, without Slurm: `srun` and `scontrol` are stubs
on PATH, and the script's whole process group is sent SIGTERM again and again, as slurmstepd does when it ends a job
whose node failed (SIGCONT, SIGTERM to every process of the batch step, SIGKILL after KillWait).

Why: bash 5.2 corrupts its parser when a trap runs while it is parsing or expanding a command substitution, and the
shell then dies with "unexpected EOF while looking for matching `)'" before it logs how the ranks ended (seen on CI
in the dead-node test). The script must still log the ranks' status and decide as documented.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "slurm" / "pretrain.sbatch"
STEP_SECONDS = 3.0  # how long the stub step runs while the signals rain


def _stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)


def _run_under_signal_storm(tmp_path: Path, step_exit: int, signum: int = signal.SIGTERM) -> tuple[int, str, int]:
    """Run the batch script with a stub step that ignores signals and exits `step_exit` after STEP_SECONDS, while
    `signum` hits it about a thousand times a second; (exit status, log, signals sent).
    The stub scontrol writes its requeue requests to tmp_path/requeued."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # The stub ranks ignore the forwarded signals, as ranks busy in a collective do until their timeout.
    started = tmp_path / "step-started"
    _stub(bin_dir, "srun", f"trap '' TERM USR1\ntouch {started}\nsleep {STEP_SECONDS}\nexit {step_exit}\n")
    _stub(
        bin_dir,
        "scontrol",
        f'if [ "$1 $2" = "show hostnames" ]; then echo node1; else echo "$*" >>{tmp_path}/requeued; fi\n',
    )
    log_dir = tmp_path / "logs"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_ID": "7",
        "SLURM_JOB_NODELIST": "node1",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_NTASKS": "1",
        "LOG_DIR": str(log_dir),
        "REPO_DIR": str(REPO_ROOT),
    }
    process = subprocess.Popen(["bash", str(SCRIPT)], env=env, cwd=tmp_path, start_new_session=True)
    log = log_dir / "pretrain-7-attempt0.log"
    deadline = time.monotonic() + 30
    while not started.exists():  # the traps are set before the step starts
        assert process.poll() is None and time.monotonic() < deadline, "the script did not start its step"
        time.sleep(0.01)
    # Slurm's USR1 (--signal=B:USR1) goes to the batch shell alone; its SIGTERM to every process of the step.
    send = os.kill if signum == signal.SIGUSR1 else os.killpg
    sent = 0
    storm_end = time.monotonic() + STEP_SECONDS + 1.0  # past the step's end: the script's last lines too
    try:
        while process.poll() is None and time.monotonic() < storm_end:
            try:
                send(process.pid, signum)
            except ProcessLookupError:
                break
            sent += 1
            time.sleep(0.0005)  # enough to land in a command substitution of the old script every time
        status = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return status, log.read_text(), sent


def test_a_sigterm_storm_does_not_break_the_script_and_it_still_logs_how_the_ranks_ended(tmp_path: Path) -> None:
    status, log, sent = _run_under_signal_storm(tmp_path, step_exit=9)
    assert "unexpected EOF" not in log and "syntax error" not in log, log[-3000:]
    assert "received TERM: asking the ranks to checkpoint and stop" in log, log[-3000:]
    # bash itself may lose the status when a signal lands just as the step ends; the script then says so.
    assert "ranks exited with 9\n" in log or "ranks exited with 1 (srun's status was lost" in log, log[-3000:]
    # SIGTERM means scancel, preemption or a lost node: Slurm requeues the last two itself, so the script must not.
    assert "stopped by SIGTERM: not requeueing" in log, log[-3000:]
    assert "requeueing (attempt" not in log and not (tmp_path / "requeued").exists(), log[-3000:]
    assert status in (9, 1), (status, log[-3000:])
    assert sent > 300, sent  # the storm lasted the whole step


def test_a_usr1_storm_still_requeues_the_preempted_job_and_never_counts_a_crash(tmp_path: Path) -> None:
    """USR1 (the time limit's warning) is forwarded and the ranks' exit 42 requeues the job, even when bash loses
    srun's status to a signal: a lost status after USR1 is not written down as a crash (crashes count against
    MAX_CRASHES, and a clean preemption must not end the run)."""
    status, log, sent = _run_under_signal_storm(tmp_path, step_exit=42, signum=signal.SIGUSR1)
    assert "unexpected EOF" not in log and "syntax error" not in log, log[-3000:]
    assert "received USR1: asking the ranks to checkpoint and stop" in log, log[-3000:]
    assert "ranks exited with 42" in log, log[-3000:]
    assert "preempted after a checkpoint: requeueing (attempt 1 resumes" in log, log[-3000:]
    assert "crashed" not in log, log[-3000:]
    assert (tmp_path / "requeued").read_text() == "requeue 7\n"
    assert status == 0, (status, log[-3000:])
    assert sent > 300, sent
