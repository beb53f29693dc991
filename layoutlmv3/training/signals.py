"""Preemption: SIGUSR1 / SIGTERM (and a first Ctrl-C, SIGINT) ask the run to stop at the end of its current step,
with a checkpoint; a second Ctrl-C (more than CTRL_C_REPEAT_S later: launchers such as torchrun pass the first one
on again) aborts at once, as Ctrl-C usually does.

The handler only records the signal; the loop folds the flag into the all-reduce it does every micro-batch, so
all ranks see a request that reached any one of them and stop after the same step. A rank waiting for its next
batch (a stalled shard server) looks at the flag while it waits: after `loop.BATCH_WAIT_AFTER_STOP_S` without the
batch it gives up, every rank drops the step under way, and they save the checkpoint of the last completed step.
The process then exits with `EXIT_PREEMPTED`, which a Slurm script turns into a requeue; the requeued job resumes
with `--resume auto`. The shipped `slurm/pretrain.sbatch` does it this way:

    #SBATCH --signal=B:USR1@120      # USR1 to the batch shell 2 minutes before the time limit
    trap 'kill -s USR1 "$SRUN_PID"' USR1   # the shell passes it on to srun, srun to every rank
    srun python launch/pretrain.py --resume auto ... & SRUN_PID=$!
    wait "$SRUN_PID"; ...            # 42 after USR1: scontrol requeue "$SLURM_JOB_ID"

Send the signal to the training processes themselves: DeepSpeed's `deepspeed` launcher kills its children on
SIGTERM (after 30 s) and exits 1, and dies on SIGUSR1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from types import FrameType

EXIT_OK = 0
EXIT_BAD_CONFIG = 2  # the run config, DeepSpeed JSON or inputs are unusable (reported before training starts)
EXIT_TOO_MANY_BAD_STEPS = 3  # NaN/inf losses beyond train.max_bad_steps: requeueing would not help
EXIT_CHECKPOINT_NOT_SAVED = 4  # a checkpoint could not be written (disk full, quota): fix storage, then resume
# checkpoint.dir is locked by another run (training/run_lock.py). Requeued like a crash: the lock of a dead node's
# attempt lapses when the file server's lease ends; a live second run is stopped after MAX_CRASHES attempts.
EXIT_CHECKPOINT_DIR_IN_USE = 5
EXIT_PREEMPTED = 42  # stopped on a signal after a complete checkpoint: requeue and resume

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
CTRL_C_REPEAT_S = 2.0  # a SIGINT this soon after the first is the same Ctrl-C, passed on by a launcher (torchrun)
CTRL_C_NOTICE = b"\nCtrl-C: stopping after this step with a checkpoint (exit 42); Ctrl-C again aborts without one\n"


class StopRequest:
    """Records SIGUSR1/SIGTERM/SIGINT while installed (as a context manager); previous handlers come back on exit."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.requested_at: float | None = None  # time.monotonic() of the request
        self._previous: dict[int, object] = {}
        self._first_ctrl_c: float | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def __enter__(self) -> StopRequest:
        for number in STOP_SIGNALS:
            if number == signal.SIGINT and signal.getsignal(number) == signal.SIG_IGN:
                continue  # started with Ctrl-C ignored (a background job of a script): it stays ignored
            self._previous[number] = signal.signal(number, self._record)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _record(self, number: int, frame: FrameType | None) -> None:
        # Little else here: a handler may run between any two bytecodes.
        if number == signal.SIGINT and self._first_ctrl_c is not None:
            if time.monotonic() - self._first_ctrl_c > CTRL_C_REPEAT_S:
                raise KeyboardInterrupt  # a second Ctrl-C: abort now, as Python's own handler would
            return  # the same Ctrl-C again: the terminal's and a launcher's copy
        self.signal = number
        if self.requested_at is None:
            self.requested_at = time.monotonic()
        if number == signal.SIGINT:
            self._first_ctrl_c = time.monotonic()
            with contextlib.suppress(OSError):  # stderr piped to a `tee` the same Ctrl-C ended: the stop stands
                os.write(2, CTRL_C_NOTICE)
