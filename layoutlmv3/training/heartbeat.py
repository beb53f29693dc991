"""Who is late: every rank posts each point of the loop it arrives at (before the loss all-reduce and the
backward of every micro-batch, before a save or a validation) to the rendezvous store; a rank kept waiting at a
point longer than `train.heartbeat_s` logs which ranks have not arrived there, and which have stopped
responding altogether (each rank's watcher thread also advances a beat counter in the store every interval: a
rank stopped by SIGSTOP, hung, or on a dead node stops beating, even if it had arrived at the same point).

A rank that stops responding (SIGSTOP, a stuck filesystem, a dead node) leaves the others blocked inside a
collective, which by itself says nothing until the collective timeout ends the attempt. The store (torch's
TCPStore at MASTER_ADDR:MASTER_PORT, the one the process group was made with) is a separate channel, so a
waiting rank can still read its peers' last posted steps and name the laggards:

    waited 62 s at the loss all-reduce of step 41 (micro-batch 81): rank(s) [3] have not arrived (last at:
    the backward of step 41 (micro-batch 80)); the collective timeout (train.collective_timeout_s=300 s) ends the
    attempt if they do not come

Ranks run the loop in lockstep, so the n-th arrival means the same point on every rank and a smaller count is a
rank behind. Only the lowest-numbered healthy rank logs, once per `heartbeat_s`. Costs: two small store writes
per micro-batch and one per interval; peers' keys are read only by a rank that has waited an interval.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import torch.distributed as dist

logger = logging.getLogger(__name__)

ARRIVAL_KEY = "layoutlmv3/arrival/{rank}"  # "<count> <where>": the last point of the loop this rank reached
BEAT_KEY = "layoutlmv3/beat/{rank}"  # a counter this rank's watcher thread advances every heartbeat_s
SILENT_BEATS = 2  # a rank whose beat has not advanced for this many intervals is not responding


class Heartbeat:
    """Posts this rank's arrivals and beats and, from a daemon thread, reports ranks that lag or fell silent (a
    context manager)."""

    def __init__(self, every_s: float, collective_timeout_s: float) -> None:
        self.every_s = every_s
        self.collective_timeout_s = collective_timeout_s
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.enabled = every_s > 0 and self.world_size > 1
        self._store = dist.distributed_c10d._get_default_store() if self.enabled else None
        self._arrivals, self._where, self._since = 0, "the start", time.monotonic()
        self._beats: dict[int, tuple[str, float]] = {}  # rank -> (last beat seen, when it last changed)
        self._store_failed = False
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopped.set()

    def arrive(self, where: str) -> None:
        """This rank arrives at the next point of the loop, `where` saying which (posted for the others)."""
        self._arrivals, self._where, self._since = self._arrivals + 1, where, time.monotonic()
        if self.enabled:
            try:
                self._store.set(ARRIVAL_KEY.format(rank=self.rank), f"{self._arrivals} {where}")
            except Exception as error:  # the heartbeat is a diagnosis: it must never be what stops training
                if not self._store_failed:
                    logger.warning("heartbeat: cannot post to the rendezvous store (%s); peers may misreport", error)
                self._store_failed = True

    def late_ranks(self) -> tuple[dict[int, str], list[int]]:
        """(ranks that arrived at fewer points than this one -> where they were last seen, ranks whose beat has
        not advanced for SILENT_BEATS intervals: stopped, hung with the GIL held, or on a dead node)."""
        arrivals = self._read(ARRIVAL_KEY)
        behind = {}
        for rank in range(self.world_size):
            count, where = arrivals.get(rank, "0 the start").split(" ", 1)
            if int(count) < self._arrivals:
                behind[rank] = where
        now = time.monotonic()
        beats = self._read(BEAT_KEY)
        for rank in range(self.world_size):
            beat = beats.get(rank, "none yet")  # a rank stopped before its first beat is as silent as any
            if rank not in self._beats or self._beats[rank][0] != beat:
                self._beats[rank] = (beat, now)
        silent = [
            rank
            for rank, (_, changed) in self._beats.items()
            if rank != self.rank and now - changed >= SILENT_BEATS * self.every_s
        ]
        return behind, sorted(silent)

    def _read(self, key: str) -> dict[int, str]:
        keys = {rank: key.format(rank=rank) for rank in range(self.world_size)}
        present = [rank for rank, name in keys.items() if self._store.check([name])]  # a missing key would block
        values = self._store.multi_get([keys[rank] for rank in present]) if present else []
        return {rank: value.decode() for rank, value in zip(present, values, strict=True)}

    def _watch(self) -> None:
        beat = 0
        with contextlib.suppress(Exception):
            self._store.set(BEAT_KEY.format(rank=self.rank), str(beat))  # at once: peers see this rank alive
        while not self._stopped.wait(self.every_s):
            try:
                beat += 1
                self._store.set(BEAT_KEY.format(rank=self.rank), str(beat))
                where, waited = self._where, time.monotonic() - self._since
                if waited < self.every_s:
                    self._beats.clear()  # peers are read only while this rank waits: no load on the store else
                    continue
                behind, silent = self.late_ranks()
            except Exception as error:  # the store's host may be the node that died
                logger.warning("heartbeat: the rendezvous store is unreachable: %s", error)
                continue
            if not (behind or silent):
                continue
            healthy = set(range(self.world_size)) - set(behind) - set(silent)
            if self.rank != min(healthy, default=self.rank):
                continue
            details = []
            if silent:
                details.append(f"rank(s) {silent} not responding (no heartbeat for {SILENT_BEATS * self.every_s:g} s)")
            if behind:
                last = "; ".join(sorted(set(behind.values())))
                details.append(f"rank(s) {sorted(behind)} have not arrived (last at: {last})")
            logger.warning(
                "waited %.0f s at %s: %s; the collective timeout (train.collective_timeout_s=%g s) ends the "
                "attempt if they do not come",
                waited,
                where,
                "; ".join(details),
                self.collective_timeout_s,
            )
