"""The sections every training job shares (pretraining, fine-tuning, image-tokenizer training): optimizer and
schedule, fault handling, logging, checkpointing. A job's config embeds them, subclassing one only to change
defaults (a fine-tune takes 1000 steps, not 500 000), so each setting has one meaning and one check everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from layoutlmv3.config_loading import require

from .schedule import DECAYS


@dataclass
class TrainSection:
    steps: int = 500_000  # optimizer steps; the LR schedule spans them
    lr: float = 1e-4  # peak learning rate (AdamW), reached after warmup
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW's beta1, beta2
    eps: float = 1e-6  # AdamW's epsilon
    weight_decay: float = 0.01  # AdamW's decoupled weight decay (not on biases, norms, embeddings)
    warmup_ratio: float = 0.048  # share of train.steps warming up linearly from 0 to lr
    min_lr_ratio: float = 0.0  # the learning rate at the last step, as a share of lr
    decay: str = "linear"  # after warmup, down to lr * min_lr_ratio: linear (the paper's), cosine, or constant
    seed: int = 42  # seeds weights, data order and pretraining masks: same seed, same run
    max_bad_steps: int = 20  # non-finite losses tolerated (each micro-batch skipped) before the run stops
    # Stop (checkpoint, exit 0) after this step while the schedule still spans `steps`: splits a run into jobs.
    stop_at_step: int | None = None
    # Debugging the NaN guard: 1-based micro-batch counts (over the whole run) whose loss rank 0 replaces by NaN.
    debug_nan_batches: list[int] = field(default_factory=list)
    # Seconds a rank waits in a collective (all-reduce, barrier, rendezvous) for its peers before it gives up and
    # exits, so a dead node ends the attempt (requeued) instead of idling the job for torch's 30 minutes. Every
    # healthy wait must fit too: checkpoint saves, validation (trade-off in layoutlmv3/training/distributed.py).
    collective_timeout_s: float = 300.0
    # A rank kept waiting in one step longer than this logs which ranks have not reached it, every heartbeat_s
    # (layoutlmv3/training/heartbeat.py); 0: off. Below collective_timeout_s, or the attempt ends first.
    heartbeat_s: float = 60.0
    # Keep the global batch (micro-batch x accumulation x ranks) at this size on any number of ranks: the
    # gradient accumulation becomes global_batch_size / (micro-batch x ranks), which must divide exactly. null:
    # the DeepSpeed JSON's accumulation, so a run resumed on fewer or more ranks changes its global batch (and
    # says so loudly at start-up).
    global_batch_size: int | None = None

    def __post_init__(self) -> None:
        require(self.steps >= 1, f"train.steps must be >= 1, got {self.steps}")
        require(self.lr >= 0, f"train.lr must be >= 0, got {self.lr}")
        require(all(0 <= beta < 1 for beta in self.betas), f"train.betas must lie in [0, 1), got {self.betas}")
        require(self.eps > 0, f"train.eps must be > 0, got {self.eps}")
        require(self.weight_decay >= 0, f"train.weight_decay must be >= 0, got {self.weight_decay}")
        require(0 <= self.warmup_ratio <= 1, f"train.warmup_ratio must lie in [0, 1], got {self.warmup_ratio}")
        require(self.decay in DECAYS, f"train.decay must be one of {DECAYS}, got {self.decay!r}")
        require(0 <= self.min_lr_ratio <= 1, f"train.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        require(self.seed >= 0, f"train.seed must be >= 0, got {self.seed}")
        require(self.max_bad_steps >= 0, f"train.max_bad_steps must be >= 0, got {self.max_bad_steps}")
        require(
            self.stop_at_step is None or 1 <= self.stop_at_step <= self.steps,
            f"train.stop_at_step must lie in 1..train.steps ({self.steps}) or be null, got {self.stop_at_step}",
        )
        require(
            self.collective_timeout_s > 0, f"train.collective_timeout_s must be > 0, got {self.collective_timeout_s}"
        )
        require(self.heartbeat_s >= 0, f"train.heartbeat_s must be >= 0, got {self.heartbeat_s}")
        require(
            self.global_batch_size is None or self.global_batch_size >= 1,
            f"train.global_batch_size must be >= 1 or null, got {self.global_batch_size}",
        )
        require(
            all(batch >= 1 for batch in self.debug_nan_batches),
            f"train.debug_nan_batches are 1-based micro-batch counts, got {self.debug_nan_batches}",
        )


@dataclass
class LoggingSection:
    dir: str = "runs/pretrain"  # TensorBoard events, metrics.jsonl and the resolved run_config.yaml
    every: int = 10  # a log line every N steps (TensorBoard and metrics.jsonl get every step)
    val_every: int = 1000  # validation on data.val_shards every N steps; 0: never
    tensorboard: bool = True  # write TensorBoard events (rank 0)
    progress: bool = True  # tqdm bar with ETA on rank 0
    peak_tflops: float | None = None  # per-device peak for MFU; None: the table of known GPUs (no MFU on CPU)

    def __post_init__(self) -> None:
        require(self.every >= 1, f"logging.every must be >= 1, got {self.every}")
        require(self.val_every >= 0, f"logging.val_every must be >= 0, got {self.val_every}")
        require(
            self.peak_tflops is None or self.peak_tflops > 0,
            f"logging.peak_tflops must be > 0 or null, got {self.peak_tflops}",
        )


@dataclass
class CheckpointSection:
    dir: str = "checkpoints/pretrain"  # DeepSpeed checkpoints step########/ and `latest`
    every: int = 1000  # also at the end, on stop_at_step and on preemption; 0: only then
    keep: int = 3  # complete checkpoints kept; older ones are deleted once a newer one is complete
    # Seconds a run waits for another run's lock on `dir` before it is refused (exit 2): one run per directory.
    # Covers a requeued attempt whose dead predecessor's lock the file server still holds until its lease ends.
    # At most train.collective_timeout_s - 30: the other ranks wait for rank 0's lock in a collective.
    lock_wait_s: float = 120.0
    # Extra dotted type names a checkpoint's pickles may reference when resuming (beyond checkpointing's
    # SAFE_GLOBALS): only for plain-data types of a newer DeepSpeed; a resume refuses anything else.
    allowed_globals: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        require(self.every >= 0, f"checkpoint.every must be >= 0, got {self.every}")
        require(self.keep >= 1, f"checkpoint.keep must be >= 1, got {self.keep}")
        require(self.lock_wait_s >= 0, f"checkpoint.lock_wait_s must be >= 0, got {self.lock_wait_s}")
