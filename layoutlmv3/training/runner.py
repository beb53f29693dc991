"""One training run of any job, assembled: the job (config, tokenizers, data, model) -> distributed set-up ->
engine -> the job's task -> resume -> the train loop. Pretraining (`pretraining.job.run`), the image tokenizer
(`pretraining.image_tokenizer_job.run`) and fine-tuning (`finetune.train.finetune`) all call `run_job`, which
returns the exit code (see `signals`).

Resuming on another world size goes through DeepSpeed's universal checkpoint: weights and optimizer state carry
over exactly, but a loader position belongs to one (rank, world size) split and cannot be mapped onto another;
the data then starts the epoch after the one each old rank was in (no sample of the interrupted epoch's
remainder is replayed in order, and none is known to be skipped either: resampled epochs draw with
replacement). Step, samples seen and the skip count carry over.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch.distributed as dist
import yaml
from deepspeed.accelerator import get_accelerator

from layoutlmv3.data.loader import LoaderLayoutChanged

from .checkpointing import (
    Checkpoint,
    check_compatible,
    check_writable,
    has_partitioned_optimizer,
    load_checkpoint,
    load_rank_state,
    prepare_universal,
    resolve_resume,
    set_rng_state,
    warn_if_short_of_space,
)
from .distributed import describe_placement, init_distributed, placement_logger
from .ds_config import load_ds_config, with_global_batch
from .engine import Training, initialize, non_embedding_parameters
from .extensions import announce_op_builds, check_build_locks, use_virtualenv_cache
from .loop import Run, TrainState, train
from .metrics import MetricsLogger, device_peak_tflops
from .run_lock import CheckpointDirInUse, hold_run_lock
from .signals import EXIT_BAD_CONFIG, EXIT_CHECKPOINT_DIR_IN_USE, StopRequest
from .task import Job, JobConfig, ResumableBatches, Task

logger = logging.getLogger(__name__)

RESOLVED_CONFIG_FILE = "run_config.yaml"


def run_job(prepare: Callable[[], Job], resume: str = "auto") -> int:
    """Prepare the job, then train it; `resume` is "auto" (newest complete checkpoint), "none" or a tag directory.

    Returns the exit code. Problems found before training (bad values, missing files, a tokenizer that does not
    match the data or the checkpoint, a stale op build lock) are logged as one clear line and give
    EXIT_BAD_CONFIG. `prepare` runs before the process group exists, so its errors cost no rendezvous.
    """
    try:
        job = prepare()
        config = job.config
        ds_values = load_ds_config(config.deepspeed)
        use_virtualenv_cache()  # before DeepSpeed looks for its ops: one cache per virtualenv unless set
        check_build_locks()  # a lock left by a killed op build would hang init_distributed without a word
        if os.environ.get("LOCAL_RANK", "0") == "0":
            announce_op_builds()
    except (OSError, ValueError) as error:
        logging.basicConfig(level=logging.INFO)
        logger.error("%s", error)
        return EXIT_BAD_CONFIG
    _configure_logging(int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))))  # the set-up's own lines
    from_slurm = init_distributed(config.train.collective_timeout_s)
    # Before any collective of ours: NCCL puts object collectives' tensors on the current device, which must be
    # this rank's (DeepSpeed binds it only later, in initialize).
    get_accelerator().set_device(int(os.environ.get("LOCAL_RANK", "0")))
    _configure_logging(dist.get_rank())
    placement_logger.info("%s%s", describe_placement(), " (rank variables from Slurm)" if from_slurm else "")
    try:
        assembled = _assemble(job, ds_values, resume)
    except CheckpointDirInUse as error:
        logger.error("%s", error)
        dist.destroy_process_group()
        return EXIT_CHECKPOINT_DIR_IN_USE
    except (OSError, ValueError) as error:
        logger.error("%s", error)
        dist.destroy_process_group()  # exiting with a live group aborts the interpreter ("terminate called ...")
        return EXIT_BAD_CONFIG
    logging_section = config.logging
    with (
        StopRequest() as stop,
        MetricsLogger(
            logging_section.dir,
            enabled=assembled.training.rank == 0,
            every=logging_section.every,
            total_steps=config.train.stop_at_step or config.train.steps,
            start_step=assembled.state.step,
            tensorboard=logging_section.tensorboard,
            progress=logging_section.progress,
            resumed_in_place=assembled.resumed_in_place,
        ) as metrics,
    ):
        plain = json.loads(json.dumps(config.to_dict()))  # tuples -> lists for YAML
        metrics.write_text(RESOLVED_CONFIG_FILE, yaml.safe_dump(plain, sort_keys=False))  # beside the metrics
        try:
            code = train(assembled, stop, metrics)
        except Exception as error:
            _log_failure(error, config.train.collective_timeout_s)
            raise
    dist.destroy_process_group()  # every rank is past the last collective (the final save ends in a barrier)
    return code


def _log_failure(error: Exception, timeout_s: float) -> None:
    """One timestamped line per rank on why the attempt ends (the traceback follows from Python)."""
    message = " ".join(str(error).split())[:500]
    if "Timed out" in message or "Connection reset" in message or "Connection closed" in message:
        logger.error(
            "a collective failed (peers wait at most train.collective_timeout_s=%g s): a rank died or its node is "
            "unreachable; this attempt ends and resumes from the newest complete checkpoint: %s",
            timeout_s,
            message,
        )
    else:
        logger.error("training failed: %s: %s", type(error).__name__, message)


def _assemble(job: Job, ds_values: dict, resume: str) -> Run:
    """Everything the loop needs, the checkpoint (if any) loaded."""
    config, model = job.config, job.model
    rank, world_size = dist.get_rank(), dist.get_world_size()
    ds_values = with_global_batch(ds_values, config.train.global_batch_size, world_size)
    _agreed(lambda: check_writable(config.checkpoint.dir, rank))
    _agreed(lambda: _check_logging_dir(config.logging.dir) if rank == 0 else None)  # rank 0 logs
    _lock_checkpoint_dir(config, rank)
    checkpoint = _choose_checkpoint(resume, config)
    parameters = sum(parameter.numel() for parameter in model.parameters())  # before ZeRO-3 partitions them
    non_embedding = non_embedding_parameters(model)
    if checkpoint is not None:
        check_compatible(checkpoint, model.config.to_dict(), job.tokenizer_fingerprint, type(model).__name__)
    resized = checkpoint is not None and checkpoint.world_size != world_size
    universal = resized and has_partitioned_optimizer(checkpoint)
    if universal:
        prepare_universal(checkpoint, rank)
    if rank == 0:
        warn_if_short_of_space(config.checkpoint.dir, parameters, config.checkpoint.keep)
    training = initialize(model, config.train, ds_values, load_universal=universal)
    task = job.make_task(training)
    state = TrainState()
    if checkpoint is not None:
        state = _resume(training, checkpoint, universal, resized, task, job.tokenizer_fingerprint, config)
    if rank == 0:
        _describe(job.description, config, training, parameters, non_embedding)
    return Run(
        config=config,
        training=training,
        task=task,
        state=state,
        tokenizer_fingerprint=job.tokenizer_fingerprint,
        peak_tflops=device_peak_tflops(training.precision, config.logging.peak_tflops),
        resumed_in_place=checkpoint is not None and checkpoint.root.resolve() == Path(config.checkpoint.dir).resolve(),
    )


def _check_logging_dir(directory: str) -> None:
    """logging.dir must be a directory this run can write (a mistake in the config: exit 2 before training). A full
    one (no space, quota) is no reason not to train: metrics are not the run; MetricsLogger says so once."""
    path = Path(directory)
    probe = path / ".write_probe.logging"
    try:
        path.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as handle:
            handle.write(b"probe")
            handle.flush()
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise ValueError(f"logging.dir {path} is not writable: {error.strerror or error}") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)


def _lock_checkpoint_dir(config: JobConfig, rank: int) -> None:
    """Rank 0 locks checkpoint.dir before a checkpoint is chosen (another run may be writing a newer one); the
    others wait in the broadcast, so the wait ends 30 s before the collective timeout would."""
    wait_s = min(config.checkpoint.lock_wait_s, max(0.0, config.train.collective_timeout_s - 30))
    verdict = [""]
    if rank == 0:
        try:
            hold_run_lock(config.checkpoint.dir, wait_s)
        except CheckpointDirInUse as error:
            verdict[0] = str(error)
    dist.broadcast_object_list(verdict, src=0)
    if verdict[0]:
        raise CheckpointDirInUse(verdict[0])


def _agreed(check) -> None:
    """Run a start-up check on every rank and raise on all of them if it failed on any (a rank that returned alone
    would leave the others waiting in the next collective until the timeout)."""
    try:
        check()
        problem = ""
    except (OSError, ValueError) as error:
        problem = str(error)
    problems: list[str] = [""] * dist.get_world_size()
    dist.all_gather_object(problems, problem)
    failed = [(rank, text) for rank, text in enumerate(problems) if text]
    if failed:
        rank, text = failed[0]
        raise ValueError(f"{text} (on rank {rank}{f' and {len(failed) - 1} more' if len(failed) > 1 else ''})")


def _choose_checkpoint(resume: str, config: JobConfig) -> Checkpoint | None:
    """The checkpoint to resume from, chosen and verified by rank 0 (verification reads every file's pickle:
    once, not once per rank); the other ranks receive the verdict, an error included."""
    outcome: list[Checkpoint | Exception | None] = [None]
    if dist.get_rank() == 0:
        try:
            outcome[0] = resolve_resume(resume, config.checkpoint.dir, tuple(config.checkpoint.allowed_globals))
        except Exception as error:  # any error: the other ranks are waiting for the verdict
            outcome[0] = ValueError(str(error) if isinstance(error, OSError | ValueError) else repr(error))
    dist.broadcast_object_list(outcome, src=0)
    if isinstance(outcome[0], Exception):
        raise outcome[0]
    return outcome[0]


def _resume(
    training: Training,
    checkpoint: Checkpoint,
    universal: bool,
    resized: bool,
    task: Task,
    fingerprint: str,
    config: JobConfig,
) -> TrainState:
    """Load `checkpoint` into the engine and loader; returns the restored train state."""
    saved = load_checkpoint(training.engine, checkpoint, universal).get("layoutlmv3")
    if saved is None:
        raise ValueError(f"{checkpoint.path} was not written by this trainer (no layoutlmv3 client state)")
    if saved["tokenizer_fingerprint"] != fingerprint:
        raise ValueError(
            f"{checkpoint.path} was trained with tokenizer {saved['tokenizer_fingerprint']}, data.tokenizer is "
            f"{fingerprint}: token ids would change meaning; use the original vocabulary"
        )
    loader: ResumableBatches = task.loader
    task.load_state_dict(saved.get("task", {}))
    if resized:
        position = loader.state_dict()  # ranks may be in different epochs: start after the furthest
        old_epochs = [load_rank_state(checkpoint, rank)["loader"]["epoch"] for rank in range(checkpoint.world_size)]
        position["epoch"] = max(old_epochs) + 1
        loader.load_state_dict(position)
        logger.warning(
            "resumed %s (world size %d) on %d ranks%s: the data starts at epoch %d",
            checkpoint.path,
            checkpoint.world_size,
            training.world_size,
            " via a universal checkpoint" if universal else "",
            position["epoch"],
        )
    else:
        rank_state = load_rank_state(checkpoint, training.rank)
        try:
            loader.load_state_dict(rank_state["loader"])
        except LoaderLayoutChanged as error:
            setting = getattr(task, "loader_settings", {}).get(error.name, error.name)
            raise ValueError(
                f"{checkpoint.path} was saved with {setting} = {error.saved!r}, this run has {error.current!r}: the "
                "data position cannot carry over; resume with the saved value (or start a new checkpoint.dir)"
            ) from None
        set_rng_state(rank_state["rng"])
    if training.rank == 0:
        _check_global_batch(saved.get("global_batch"), training, checkpoint)
        changed = _changed_settings(saved["config"], config.to_dict())
        if changed:
            logger.warning("settings changed since the checkpoint: %s", "; ".join(changed))
        logger.info("resumed from %s at step %d", checkpoint.path, saved["train_state"]["step"])
    return TrainState(**saved["train_state"])


def _check_global_batch(saved: int | None, training: Training, checkpoint: Checkpoint) -> None:
    """Warn loudly when the resumed run's global batch differs from the checkpoint's: the schedule, the noise
    of the gradient and the meaning of a step all change. train.global_batch_size keeps it."""
    if saved is None or saved == training.global_batch:
        return
    logger.warning(
        "GLOBAL BATCH CHANGED: %s was trained with a global batch of %d (world size %d), this run steps with %d "
        "(micro-batch %d x accumulation %d x %d ranks). Set train.global_batch_size: %d to keep it through "
        "gradient accumulation.",
        checkpoint.path,
        saved,
        checkpoint.world_size,
        training.global_batch,
        training.micro_batch_size,
        training.accumulation_steps,
        training.world_size,
        saved,
    )


def _describe(name: str, config: JobConfig, training: Training, parameters: int, non_embedding: int) -> None:
    """Log the resolved set-up (rank 0)."""
    logger.info(
        "model %s: %.1fM parameters (%.1fM non-embedding) | %s, ZeRO-%d | micro-batch %d x accumulation %d x %d "
        "ranks = global batch %d | %d steps",
        name,
        parameters / 1e6,
        non_embedding / 1e6,
        training.precision,
        training.zero_stage,
        training.micro_batch_size,
        training.accumulation_steps,
        training.world_size,
        training.global_batch,
        config.train.steps,
    )


def _changed_settings(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted settings whose value differs between two config dicts."""
    changes = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changes += _changed_settings(old, new, f"{prefix}{key}.")
        elif old != new:
            changes.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return changes


def _configure_logging(rank: int) -> None:
    """INFO on rank 0, warnings from every rank (a skipped shard matters wherever it happens)."""
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    placement_logger.setLevel(logging.INFO)  # every rank says where it runs
