"""Preemption: SIGUSR1 / SIGTERM (and a first Ctrl-C, SIGINT) ask the run to stop at the end of its current step,
with a checkpoint; a second Ctrl-C aborts at once, as Ctrl-C usually does.

The handler only records the signal; the loop folds the flag into the all-reduce it does every micro-batch, so
all ranks see a request that reached any one of them and stop after the same step. The process then exits with
`EXIT_PREEMPTED`, which a Slurm script turns into a requeue; the requeued job resumes with `--resume auto`:

    #SBATCH --signal=USR1@300        # USR1 to the job's tasks 5 minutes before the time limit
    srun python launch/pretrain.py --config ... ; [ $? -eq 42 ] && scontrol requeue "$SLURM_JOB_ID"

Send the signal to the training processes themselves: DeepSpeed's `deepspeed` launcher kills its children on
SIGTERM (after 30 s) and exits 1, and dies on SIGUSR1.
"""

from __future__ import annotations

import os
import signal
from types import FrameType

EXIT_OK = 0
EXIT_BAD_CONFIG = 2  # the run config, DeepSpeed JSON or inputs are unusable (reported before training starts)
EXIT_TOO_MANY_BAD_STEPS = 3  # NaN/inf losses beyond train.max_bad_steps: requeueing would not help
EXIT_CHECKPOINT_NOT_SAVED = 4  # a checkpoint could not be written (disk full, quota): fix storage, then resume
EXIT_PREEMPTED = 42  # stopped on a signal after a complete checkpoint: requeue and resume

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
CTRL_C_NOTICE = b"\nCtrl-C: stopping after this step with a checkpoint (exit 42); Ctrl-C again aborts without one\n"


class StopRequest:
    """Records SIGUSR1/SIGTERM/SIGINT while installed (as a context manager); previous handlers come back on exit."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def __enter__(self) -> StopRequest:
        for number in STOP_SIGNALS:
            self._previous[number] = signal.signal(number, self._record)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _record(self, number: int, frame: FrameType | None) -> None:
        self.signal = number  # little else here: a handler may run between any two bytecodes
        if number == signal.SIGINT:  # the next Ctrl-C raises KeyboardInterrupt (Python's own handler)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            os.write(2, CTRL_C_NOTICE)
