"""Slurm's task numbering as torch.distributed's env:// rendezvous variables, and DeepSpeed hostfiles.

Two launch paths start our ranks under Slurm, and neither sets RANK/LOCAL_RANK/WORLD_SIZE:
- `srun python launch/pretrain.py ...` (slurm/pretrain.sbatch): one task per GPU;
- `deepspeed --launcher slurm --hostfile H ...`: DeepSpeed's runner calls `srun -n <slots>` itself but exports
  nothing per task, so `deepspeed.init_distributed` would fall back to mpi4py discovery.
`rendezvous_from_slurm` fills the missing variables from SLURM_PROCID/SLURM_LOCALID/SLURM_NTASKS and the first
host of SLURM_JOB_NODELIST, so both paths rendezvous through env:// with neither MPI nor ssh. Variables a
launcher did set are never overwritten.

`python -m layoutlmv3.training.slurm_env hostfile --out H` writes the hostfile of the current allocation
(`node slots=N` per node) and `... master-addr` prints its first node, for `deepspeed --launcher slurm`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path

BASE_PORT = 20000  # MASTER_PORT defaults to BASE_PORT + job id % 20000: two jobs sharing a node rarely collide


def expand_hostlist(hostlist: str) -> list[str]:
    """Slurm's compressed host list -> host names, in order: "gpu[01-02,7],login-a" -> gpu01 gpu02 gpu7 login-a.

    Handles zero-padded ranges and several bracket groups in one name ("r[1-2]n[1-2]" -> r1n1 r1n2 r2n1 r2n2),
    as `scontrol show hostnames` does, without needing scontrol on the node.
    """
    hosts: list[str] = []
    for item in _split_top_level(hostlist.strip()):
        if item:
            hosts.extend(_expand_item(item))
    return hosts


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside brackets."""
    items, depth, current = [], 0, []
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in host list {text!r}")
        if char == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise ValueError(f"unbalanced '[' in host list {text!r}")
    items.append("".join(current))
    return items


def _expand_item(item: str) -> list[str]:
    match = re.search(r"\[([^\]]*)\]", item)
    if match is None:
        return [item]
    prefix, suffix = item[: match.start()], item[match.end() :]
    names = []
    for part in match.group(1).split(","):
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise ValueError(f"bad range {part!r} in host list item {item!r}")
        width = len(low)
        for number in range(int(low), int(high or low) + 1):
            names.extend(_expand_item(f"{prefix}{number:0{width}d}{suffix}"))
    return names


def expand_tasks_per_node(spec: str) -> list[int]:
    """SLURM_TASKS_PER_NODE / SLURM_STEP_TASKS_PER_NODE -> one count per node: "2(x3),1" -> [2, 2, 2, 1]."""
    counts = []
    for part in spec.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if match is None:
            raise ValueError(f"cannot read tasks per node {spec!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def rendezvous_from_slurm(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the env:// variables a launcher did not set from Slurm's, inside an srun task; returns what was set.

    Outside an srun step (no SLURM_STEP_ID) or when RANK is already there (torchrun, the deepspeed launcher, our sbatch
    after a launcher), nothing changes. MASTER_ADDR is the first node of the step (SLURM_STEP_NODELIST), where
    task 0 runs under srun's default block distribution; MASTER_PORT defaults to 20000 + job id % 20000.
    LOCAL_SIZE (tasks on this node) matters beyond bookkeeping: DeepSpeed's CPU all-reduce uses shared memory
    only when LOCAL_SIZE equals the world size, i.e. every rank is on this host.
    """
    env = os.environ if environ is None else environ
    # SLURM_STEP_ID: a task of an srun step. The batch script itself has SLURM_PROCID=0 and the allocation's
    # SLURM_NTASKS too, and a run started there directly must stay a single process.
    if "SLURM_STEP_ID" not in env or "RANK" in env:
        return {}
    missing = [name for name in ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS") if name not in env]
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
    if missing or not nodelist:
        raise ValueError(f"an srun task without {missing or ['SLURM_STEP_NODELIST']}: cannot rendezvous")
    node_id = int(env.get("SLURM_NODEID", "0"))
    per_node_spec = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    per_node = expand_tasks_per_node(per_node_spec) if per_node_spec else []
    nodes = expand_hostlist(nodelist)
    derived = {
        "RANK": env["SLURM_PROCID"],
        "LOCAL_RANK": env["SLURM_LOCALID"],
        "WORLD_SIZE": env.get("SLURM_STEP_NUM_TASKS") or env["SLURM_NTASKS"],
        "MASTER_ADDR": env.get("MASTER_ADDR") or nodes[0],
        "MASTER_PORT": env.get("MASTER_PORT") or str(BASE_PORT + int(env.get("SLURM_JOB_ID", "0")) % 20000),
        "LOCAL_SIZE": str(per_node[node_id]) if node_id < len(per_node) else env.get("LOCAL_SIZE", "1"),
        "CROSS_RANK": str(node_id),
        "CROSS_SIZE": env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_JOB_NUM_NODES") or str(len(nodes)),
    }
    changed = {name: value for name, value in derived.items() if env.get(name) != value}
    env.update(changed)
    return changed


def hostfile_text(environ: Mapping[str, str] | None = None, slots: int | None = None) -> str:
    """DeepSpeed hostfile lines `node slots=N` for the job's nodes; N from `slots` or SLURM_TASKS_PER_NODE."""
    env = os.environ if environ is None else environ
    if "SLURM_JOB_NODELIST" not in env:
        raise ValueError("SLURM_JOB_NODELIST is not set: run this inside a Slurm allocation (sbatch/salloc)")
    nodes = expand_hostlist(env["SLURM_JOB_NODELIST"])
    if slots is not None:
        counts = [slots] * len(nodes)
    elif "SLURM_TASKS_PER_NODE" in env:
        counts = expand_tasks_per_node(env["SLURM_TASKS_PER_NODE"])
    else:
        raise ValueError("no --slots and no SLURM_TASKS_PER_NODE: say how many ranks each node runs")
    if len(counts) != len(nodes):
        raise ValueError(f"{len(nodes)} nodes but tasks per node {counts}")
    return "".join(f"{node} slots={count}\n" for node, count in zip(nodes, counts, strict=True))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m layoutlmv3.training.slurm_env",
        description="Inside a Slurm allocation: the DeepSpeed hostfile or the master address of the job.",
        epilog="example (in an sbatch script):\n"
        "  python -m layoutlmv3.training.slurm_env hostfile --out hostfile\n"
        "  deepspeed --launcher slurm --hostfile hostfile --no_ssh_check \\\n"
        '      --master_addr "$(python -m layoutlmv3.training.slurm_env master-addr)" launch/pretrain.py ...',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    hostfile = commands.add_parser("hostfile", help="write `node slots=N` lines for the allocation's nodes")
    hostfile.add_argument("--out", type=Path, help="file to write (default: standard output)")
    hostfile.add_argument("--slots", type=int, help="ranks per node (default: SLURM_TASKS_PER_NODE)")
    commands.add_parser("master-addr", help="print the allocation's first node")
    args = parser.parse_args(argv)
    try:
        if args.command == "master-addr":
            if "SLURM_JOB_NODELIST" not in os.environ:
                raise ValueError("SLURM_JOB_NODELIST is not set: run this inside a Slurm allocation")
            print(expand_hostlist(os.environ["SLURM_JOB_NODELIST"])[0])
            return 0
        text = hostfile_text(slots=args.slots)
    except ValueError as error:
        print(f"slurm_env: {error}", file=sys.stderr)
        return 2
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
