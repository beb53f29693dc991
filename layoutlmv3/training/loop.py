"""The one train loop (pretraining, the image tokenizer, fine-tuning): optimizer steps of `accumulation_steps`
good micro-batches, validation, checkpoints, signals.

A step is one optimizer step. DeepSpeed accumulates: every good micro-batch gets `engine.backward` and
`engine.step()`, and the engine updates the weights on every `accumulation_steps`-th. Checkpoints are taken
between steps, so the saved loader position always sits on a step boundary.

Non-finite losses. After each forward pass one all-reduce carries the loss's finiteness (with the stop flag and
the logged figures), so every rank learns that some rank's loss is NaN/inf at the same micro-batch. Then all
ranks skip that micro-batch: no backward, no `engine.step()`. Nothing reaches the gradients (masking the loss
with zero would not help: 0 * NaN is NaN in the backward pass), no collective is left half-done under ZeRO, and
the step is completed by the next micro-batch. Skips are counted (`bad_steps`, kept in checkpoints); past
`train.max_bad_steps` the run stops with EXIT_TOO_MANY_BAD_STEPS.

Stopping while data is awaited. Batches come from a reading thread (training.prefetch), so a rank whose next
batch does not come (a shard server that stopped answering) still sees a stop request: after
BATCH_WAIT_AFTER_STOP_S it gives up waiting. Before each forward pass one small all-reduce says whether every
rank holds its micro-batch (ZeRO-3's forward has collectives of its own, which a rank without a batch would never
join); if one gave up, every rank drops the step under way (nothing of it was applied: weights change only at its
last micro-batch), rolls its counters, loader position and RNG back to the last completed step and saves that
step's checkpoint, then exits 42. A request that reaches only ranks that have their batch is folded into the
all-reduce as before, but reaches the waiting rank only once it has its batch (Slurm and Ctrl-C signal every rank).

Determinism (what makes a resumed run repeat the uninterrupted one): dropout is reseeded before every
micro-batch from (seed, rank, micro-batches drawn), the loader resumes its exact position, the task's own state
(e.g. the best dev score) comes back with it, pretraining's collator seeds masks by (seed, epoch, sample key),
and the learning rate is a function of the step.

What differs between jobs is the `Task` (training.task): its batches, forward pass, validation and finish.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from .checkpointing import CheckpointNotSaved, rng_state, save_checkpoint
from .engine import Training
from .heartbeat import Heartbeat
from .metrics import MetricsLogger, estimate_mfu
from .prefetch import PrefetchedBatches
from .schedule import learning_rate
from .signals import EXIT_CHECKPOINT_NOT_SAVED, EXIT_OK, EXIT_PREEMPTED, EXIT_TOO_MANY_BAD_STEPS, StopRequest
from .task import JobConfig, Task

logger = logging.getLogger(__name__)

# Layout of the tensor all-reduced after every forward pass: counters, then the task's metrics.
BAD, STOP, SAMPLES, TOKENS, FLOPS = range(5)
FIRST_METRIC = 5
# After a stop request, how long a rank waits for its next batch before the step under way is dropped.
BATCH_WAIT_AFTER_STOP_S = 10.0


@dataclass
class TrainState:
    """What a checkpoint must restore besides weights, optimizer and loader (saved as client state)."""

    step: int = 0  # optimizer steps done
    samples: int = 0  # samples drawn by all ranks, skipped micro-batches included
    batches: int = 0  # micro-batches drawn per rank (ranks draw in lockstep): seeds dropout, numbers debug NaNs
    bad_steps: int = 0  # micro-batches skipped for a non-finite loss


@dataclass
class Boundary:
    """The last completed step as a checkpoint records it besides the engine: counters, loader position, RNG."""

    state: TrainState
    loader: dict
    rng: dict


@dataclass
class Run:
    """Everything the loop needs, assembled by `runner.run_job`."""

    config: JobConfig
    training: Training
    task: Task
    state: TrainState
    tokenizer_fingerprint: str
    peak_tflops: float | None
    resumed_in_place: bool = False  # resumed from a checkpoint in its own checkpoint.dir (the same run going on)

    def client_state(self) -> dict:
        """The checkpoint's global state (DeepSpeed stores it with the model states)."""
        return {
            "layoutlmv3": {
                "train_state": dataclasses.asdict(self.state),
                "world_size": self.training.world_size,
                "global_batch": self.training.global_batch,
                "config": self.config.to_dict(),
                "tokenizer_fingerprint": self.tokenizer_fingerprint,
                "task": self.task.state_dict(),
            }
        }


def train(run: Run, stop: StopRequest, metrics: MetricsLogger) -> int:
    """Train from `run.state` to train.steps (or train.stop_at_step); returns the process exit code."""
    try:
        with Heartbeat(run.config.train.heartbeat_s, run.config.train.collective_timeout_s) as heartbeat:
            return _train(run, stop, metrics, heartbeat)
    except CheckpointNotSaved as error:
        if run.training.rank == 0:
            logger.error("%s. Stopping: free space (or fix the storage), then resume with --resume auto", error)
        return EXIT_CHECKPOINT_NOT_SAVED


def _train(run: Run, stop: StopRequest, metrics: MetricsLogger, heartbeat: Heartbeat) -> int:
    settings, state = run.config.train, run.state
    last_step = settings.stop_at_step or settings.steps
    if state.step >= last_step:
        logger.info("nothing to do: the run is at step %d of %d", state.step, last_step)
        if state.step >= settings.steps:
            run.task.finish()
        return EXIT_OK
    with PrefetchedBatches(run.task.loader) as batches:
        boundary = _boundary(run, batches)
        saved_step = state.step  # resumed from a checkpoint of this step (0: none needed)
        run.training.engine.train()
        started = time.perf_counter()
        while state.step < last_step:
            lr = learning_rate(
                state.step + 1,
                settings.steps,
                settings.lr,
                settings.warmup_ratio,
                settings.min_lr_ratio,
                settings.decay,
            )
            run.training.set_learning_rate(lr)
            try:
                totals, stop_requested = train_step(run, batches, stop, heartbeat)
            except _TooManyBadSteps:
                return EXIT_TOO_MANY_BAD_STEPS
            except _StepDropped:
                return _stop_at_boundary(run, boundary, saved_step, heartbeat)
            state.step += 1
            metrics.log_step(state.step, _step_values(run, totals, lr, time.perf_counter() - started))
            val_every = run.config.logging.val_every
            if _due(state.step, val_every) or (val_every and state.step == settings.steps):
                heartbeat.arrive(f"the validation after step {state.step}")
                values = run.task.validate(state.step)
                if values:
                    metrics.log_validation(state.step, values)
            boundary = _boundary(run, batches)
            if stop_requested:
                if run.training.rank == 0:
                    logger.warning("stop requested by a signal: saving a checkpoint at step %d and exiting", state.step)
                heartbeat.arrive(f"the checkpoint of step {state.step}")
                save(run, boundary)
                return EXIT_PREEMPTED
            if _due(state.step, run.config.checkpoint.every):
                heartbeat.arrive(f"the checkpoint of step {state.step}")
                save(run, boundary)
                saved_step = state.step
            started = time.perf_counter()  # validation and checkpoints are not part of the next step's throughput
    if saved_step != state.step:
        heartbeat.arrive(f"the checkpoint of step {state.step}")
        save(run, boundary)
    if state.step >= settings.steps:
        heartbeat.arrive("the task's finish")
        run.task.finish()
    return EXIT_OK


def _boundary(run: Run, batches: PrefetchedBatches) -> Boundary:
    return Boundary(dataclasses.replace(run.state), batches.position, rng_state())


def _stop_at_boundary(run: Run, boundary: Boundary, saved_step: int, heartbeat: Heartbeat) -> int:
    """A rank gave up waiting for data after a stop request: every rank drops the step under way and saves the
    last completed one (unless its checkpoint exists already), then the run exits 42."""
    run.state.__dict__.update(dataclasses.asdict(boundary.state))
    step = run.state.step
    if run.training.rank == 0:
        logger.warning(
            "stop requested while a rank waited for its next batch (%g s after the request): step %d dropped; %s",
            BATCH_WAIT_AFTER_STOP_S,
            step + 1,
            f"saving a checkpoint at step {step} and exiting" if step != saved_step else "exiting",
        )
    if step != saved_step:
        heartbeat.arrive(f"the checkpoint of step {step}")
        save(run, boundary)
    return EXIT_PREEMPTED


class _StepDropped(Exception):
    """Some rank gave up waiting for its micro-batch after a stop request."""


class _TooManyBadSteps(Exception):
    pass


def train_step(
    run: Run, batches: PrefetchedBatches, stop: StopRequest, heartbeat: Heartbeat
) -> tuple[torch.Tensor, bool]:
    """`accumulation_steps` good micro-batches through the engine, non-finite ones skipped on every rank.

    Returns the all-reduced figures summed over the good micro-batches, and whether any rank was asked to stop.
    Raises _StepDropped on every rank when a rank gave up waiting for its micro-batch after a stop request.
    """
    settings, state, training = run.config.train, run.state, run.training
    totals = torch.zeros(FIRST_METRIC + len(run.task.metric_names), dtype=torch.float64)
    stop_requested, good = False, 0
    stop_seen: list[float] = []  # when this rank learned of a request from a peer (through the all-reduce)

    def give_up() -> bool:
        since = [moment for moment in (stop.requested_at, *stop_seen) if moment is not None]
        return bool(since) and time.monotonic() - min(since) >= BATCH_WAIT_AFTER_STOP_S

    while good < training.accumulation_steps:
        batch = batches.next(give_up)
        point = f"step {state.step + 1} (micro-batch {state.batches + 1})"
        heartbeat.arrive(f"the batch check of {point}")
        if _any_rank_without_a_batch(run, batch is None):
            raise _StepDropped
        state.batches += 1
        torch.manual_seed(_derive_seed(settings.seed, training.rank, state.batches))
        metrics = run.task.forward(batch)
        loss = metrics[0]
        if training.rank == 0 and state.batches in settings.debug_nan_batches:
            loss = loss * float("nan")
        heartbeat.arrive(f"the loss all-reduce of {point}")
        reduced = _reduce_micro_batch(run, batch, loss, metrics[1:], stop.requested)
        state.samples += int(reduced[SAMPLES])
        if reduced[STOP] > 0 and not stop_requested:
            stop_requested = True
            stop_seen.append(time.monotonic())
        if reduced[BAD] > 0:
            state.bad_steps += 1
            _log_bad_step(training.rank, state, int(reduced[BAD]), settings.max_bad_steps)
            if state.bad_steps > settings.max_bad_steps:
                raise _TooManyBadSteps
            continue
        heartbeat.arrive(f"the backward of {point}")
        training.engine.backward(loss)
        training.engine.step()
        totals += reduced
        good += 1
    return totals, stop_requested


def _any_rank_without_a_batch(run: Run, without: bool) -> bool:
    """One small all-reduce before the forward pass: did any rank give up waiting for its micro-batch?"""
    flag = torch.tensor([float(without)], dtype=torch.float64, device=run.training.device)
    dist.all_reduce(flag)
    return bool(flag.item() > 0)


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def save(run: Run, boundary: Boundary) -> None:
    """A complete checkpoint of the step `boundary` ends (collective); `run.state` is that step's."""
    rank_state = {"loader": boundary.loader, "rng": boundary.rng}
    section = run.config.checkpoint
    record = {
        "model_config": run.training.engine.module.config.to_dict(),
        "tokenizer_fingerprint": run.tokenizer_fingerprint,
        "model_class": type(run.training.engine.module).__name__,
    }
    save_checkpoint(
        run.training.engine, section.dir, run.state.step, run.client_state(), rank_state, section.keep, record
    )


def _log_bad_step(rank: int, state: TrainState, ranks: int, limit: int) -> None:
    if rank != 0:
        return
    logger.warning(
        "non-finite loss at step %d (micro-batch %d) on %d rank(s): micro-batch skipped (%d of at most %d)",
        state.step + 1,
        state.batches,
        ranks,
        state.bad_steps,
        limit,
    )
    if state.bad_steps > limit:
        logger.error(
            "stopping: %d non-finite losses exceed train.max_bad_steps=%d. The run diverged or its data is bad: "
            "resume from the last checkpoint with a lower train.lr, or raise train.max_bad_steps",
            state.bad_steps,
            limit,
        )


def _reduce_micro_batch(
    run: Run, batch: dict, loss: torch.Tensor, others: Sequence[torch.Tensor], stop: bool
) -> torch.Tensor:
    """One all-reduce (sum over ranks) of: non-finite flag, stop flag, samples, tokens, FLOPs, metrics."""
    samples, tokens, flops = run.task.work(batch)
    device = run.training.device
    counters = torch.tensor([float(stop), samples, tokens, flops], dtype=torch.float64, device=device)
    loss = loss.detach()
    bad = (~torch.isfinite(loss)).double().reshape(1)
    metrics = [loss.double(), *(value.detach().double().to(device) for value in others)]
    packed = torch.cat([bad, counters, torch.stack(metrics)])
    dist.all_reduce(packed)
    return packed.cpu()


def _step_values(run: Run, totals: torch.Tensor, lr: float, seconds: float) -> dict[str, float]:
    """The step's logged figures: metrics averaged over its micro-batches and ranks, optimisation, throughput."""
    training = run.training
    contributions = training.accumulation_steps * training.world_size
    values = {
        f"train/{name}": totals[FIRST_METRIC + index].item() / contributions
        for index, name in enumerate(run.task.metric_names)
    }
    values["train/lr"] = lr
    values["train/samples"] = float(run.state.samples)
    values["train/bad_steps"] = float(run.state.bad_steps)
    grad_norm, loss_scale = training.grad_norm(), training.loss_scale()
    if grad_norm is not None:
        values["train/grad_norm"] = grad_norm
    if loss_scale is not None:
        values["train/loss_scale"] = loss_scale
    values["perf/samples_per_s"] = totals[SAMPLES].item() / seconds
    values["perf/tokens_per_s"] = totals[TOKENS].item() / seconds
    if run.peak_tflops is not None and totals[FLOPS].item() > 0:  # a task that counts no FLOPs has no MFU
        values["perf/mfu"] = estimate_mfu(totals[FLOPS].item(), seconds, training.world_size, run.peak_tflops)
    if training.device.type == "cuda":
        values["perf/gpu_memory_gb"] = torch.cuda.max_memory_allocated(training.device) / 2**30
        torch.cuda.reset_peak_memory_stats(training.device)
    return values


def _derive_seed(*numbers: int) -> int:
    return int(np.random.SeedSequence(numbers).generate_state(1)[0])
