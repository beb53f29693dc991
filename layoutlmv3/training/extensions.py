"""DeepSpeed's just-in-time compiled ops: find stale build locks before they hang a run, and build ops ahead.

DeepSpeed compiles its C++/CUDA ops (the CPU shared-memory all-reduce, FusedAdam, ...) on first use into
torch's extension cache (TORCH_EXTENSIONS_DIR, default ~/.cache/torch_extensions). While one process builds, it
holds an empty `lock` file there and every other process waits for it to disappear. A build that was killed
(preemption, a timeout, a node failure) never removes its lock, and from then on every run on that cache waits
forever inside `deepspeed.init_distributed()` with nothing in its log. `check_build_locks` turns that silent hang
into one clear error before the run starts.

`python -m layoutlmv3.training.extensions` builds the ops a run needs, once, ahead of any run (the Makefile does it
for the CPU all-reduce when it creates the virtualenv), so tests and jobs never start by compiling concurrently.
Several ops (`--ops A B`) build each in its own process, all at once: they share no file (one folder and lock per
op), so they are ready in the time of the longest build instead of the sum.

Without TORCH_EXTENSIONS_DIR, torch's cache is one per user, shared by every checkout and virtualenv: a shell that
did not export the Makefile's setting rebuilt the ops silently (40-65 s) into it, over ops built against another
torch. `use_virtualenv_cache` makes the default one cache per virtualenv, and a build about to start is announced.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

logger = logging.getLogger(__name__)

STALE_LOCK_SECONDS = 30 * 60  # far longer than any op build (tens of seconds on CPU, minutes for CUDA ops)
# What a CPU run loads: the shared-memory all-reduce only. Its optimizer is torch's AdamW (engine.build_optimizer);
# FusedAdam is a GPU op and DeepSpeed's CPU Adam serves optimizer offload, a GPU setting. (Checked: ZeRO-2 and
# ZeRO-3 CPU runs on a cache without fused_adam never build it; building it here cost 75-85 s of every set-up.)
CPU_OPS = ("ShareMemCommBuilder",)
RUN_OPS = {"cpu": CPU_OPS, "cuda": ("FusedAdamBuilder",)}  # the ops a run loads, by accelerator


def use_virtualenv_cache() -> Path:
    """Default TORCH_EXTENSIONS_DIR to <virtualenv>/torch_extensions when it is unset and Python runs in a
    virtualenv (an explicit setting always wins); returns the cache in use. Ranks inherit it from the launcher."""
    if not os.environ.get("TORCH_EXTENSIONS_DIR") and sys.prefix != sys.base_prefix:
        os.environ["TORCH_EXTENSIONS_DIR"] = str(Path(sys.prefix) / "torch_extensions")
    return extension_cache_dir()


def announce_op_builds(names: tuple[str, ...] | None = None) -> list[str]:
    """Log "building op X once" for each op the run will load that the cache does not hold yet, before DeepSpeed
    compiles it without a word; returns their names. `names`: op builder classes (default: this accelerator's)."""
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    cache = extension_cache_dir()
    pending = []
    for name in RUN_OPS.get(accelerator.device_name(), ()) if names is None else names:
        builder = accelerator.create_op_builder(name)
        if builder is None or (cache / builder.NAME / f"{builder.NAME}.so").exists():
            continue
        logger.warning(
            "building DeepSpeed op %s once into %s (about a minute; later runs reuse it)", builder.NAME, cache
        )
        pending.append(builder.NAME)
    return pending


def extension_cache_dir() -> Path:
    """Where torch builds and caches JIT extensions: TORCH_EXTENSIONS_DIR/<op>, else <default>/<py+device>/<op>."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    from torch.utils.cpp_extension import get_default_build_root

    return Path(get_default_build_root())


def build_locks(cache_dir: Path | None = None) -> list[tuple[Path, float]]:
    """Every build lock in the cache (`<root>/<op>/lock` or `<root>/<python+device tag>/<op>/lock`), with its age."""
    root = extension_cache_dir() if cache_dir is None else cache_dir
    now = time.time()
    locks = []
    for lock in sorted(root.glob("*/*/lock")) + sorted(root.glob("*/lock")):
        try:
            locks.append((lock, now - lock.stat().st_mtime))
        except FileNotFoundError:  # the build finished while we looked
            continue
    return locks


def check_build_locks(cache_dir: Path | None = None, stale_after: float = STALE_LOCK_SECONDS) -> None:
    """Raise ValueError for a lock older than `stale_after` (a killed build); log one for a build in progress."""
    for lock, age in build_locks(cache_dir):
        if age >= stale_after:
            raise ValueError(
                f"stale DeepSpeed/torch extension build lock {lock} ({age / 3600:.1f} h old): a build of "
                f"'{lock.parent.name}' was interrupted and every run would wait for it forever. "
                f"No build is running that long; delete the file (rm {lock}) and start again."
            )
        logger.warning(
            "extension build lock %s is %.0f s old: this run waits until that build of '%s' finishes "
            "(if no other process is building, the lock is left over from a killed build: delete it)",
            lock,
            age,
            lock.parent.name,
        )


def build_ops(names: tuple[str, ...] = CPU_OPS) -> list[str]:
    """Compile (or load from the cache) the named DeepSpeed ops for the current accelerator; returns those built.

    An op the accelerator does not offer, or that DeepSpeed reports incompatible with this machine, is skipped
    with a log line: the run would not load it either.
    """
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    use_virtualenv_cache()
    check_build_locks()
    accelerator = get_accelerator()
    built = []
    for name in names:
        builder = accelerator.create_op_builder(name)
        if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
            logger.info("skipping %s: not available for accelerator %s", name, accelerator.device_name())
            continue
        started = time.perf_counter()
        builder.load(verbose=False)
        logger.info("%s ready in %.1f s (%s)", builder.NAME, time.perf_counter() - started, extension_cache_dir())
        built.append(builder.NAME)
    return built


def build_ops_at_once(names: tuple[str, ...]) -> int:
    """Build each op in its own child process, concurrently; 0 when all succeed, else the first failure's code."""
    import subprocess

    use_virtualenv_cache()  # the children inherit the cache
    module = "layoutlmv3.training.extensions"  # this file, also when it runs as __main__
    children = [subprocess.Popen([sys.executable, "-m", module, "--ops", name]) for name in names]
    codes = [child.wait() for child in children]
    return next((code for code in codes if code), 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build DeepSpeed's JIT ops once, ahead of runs and tests (set DS_ACCELERATOR=cpu for the "
        "CPU ops), after checking the extension cache for build locks left by killed builds.",
    )
    parser.add_argument("--ops", nargs="+", default=list(CPU_OPS), help="DeepSpeed op builder class names")
    parser.add_argument("--check-only", action="store_true", help="only look for stale build locks")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.check_only:
            check_build_locks()
        elif len(args.ops) > 1:
            check_build_locks()
            return build_ops_at_once(tuple(args.ops))
        else:
            build_ops(tuple(args.ops))
    except ValueError as error:
        logger.error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
