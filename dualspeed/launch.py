"""How a training job starts its processes: plain python, torchrun on one node, or one torchrun agent per node.

    python -m dualspeed.launch --nnodes N --nproc-per-node G [--dry-run] -m dualspeed.train --spec ...

runs on every node of an N-node job (under Slurm: one `srun` task per node, which the pipeline's rule starts) and
replaces itself with

    torchrun --nnodes N --nproc_per_node G --rdzv_backend c10d --rdzv_endpoint HOST:PORT --rdzv_id ID
             --max_restarts 0 -m dualspeed.train --spec ...

(torchrun is `python -m torch.distributed.run` of this interpreter). The agents meet at HOST, which starts the
rendezvous store. Where the rendezvous comes from:
- inside a Slurm job step: HOST is the step's first node (`scontrol show hostnames $SLURM_JOB_NODELIST | head -1`),
  ID the job id, N the step's node count, PORT DUALSPEED_RDZV_PORT or 20000 + job id mod 10000 (two jobs sharing
  a first node do not collide, and every node computes the same one);
- elsewhere (any other scheduler, or by hand on each node): DUALSPEED_RDZV_ENDPOINT=HOST:PORT, DUALSPEED_NNODES,
  DUALSPEED_RDZV_ID, or torchrun's own PET_RDZV_ENDPOINT, PET_NNODES, PET_RDZV_ID.
One node keeps `torchrun --standalone` (G > 1) or plain python.

The pipeline builds a rule's command with `command()` at plan time (workflow/rules/common.smk); this module
imports nothing heavy, so planning stays fast.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Mapping

from . import cli

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


class LaunchError(RuntimeError):
    pass


def command(nodes: int, gpus: int, cpus: int, python: str = sys.executable) -> str:
    """The shell prefix a training rule puts before `dualspeed.train --spec ...`: plain python, torchrun on one
    node, or, for nodes > 1, one srun task per node running this launcher. Every one runs `python`, the interpreter
    that plans the workflow (not whatever `python` or `torchrun` PATH holds: a job that got the system Python failed
    at its first import). srun is told the node, task and CPU counts itself: the Slurm executor's job step hands the
    rule an environment without the allocation's SLURM_* task settings (docs/slurm.md), and --kill-on-bad-exit ends
    every node's agent when one fails."""
    if nodes < 1:
        raise ValueError(f"nodes must be >= 1, got {nodes}")
    py = shlex.quote(python)
    if nodes == 1:
        return f"{py} -m torch.distributed.run --standalone --nproc_per_node={gpus} -m" if gpus > 1 else f"{py} -m"
    return (f"srun --nodes={nodes} --ntasks={nodes} --ntasks-per-node=1 --cpus-per-task={cpus} --kill-on-bad-exit=1 "
            f"{py} -m dualspeed.launch --nnodes {nodes} --nproc-per-node {max(gpus, 1)} -m")


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list (`gpu[01-04]`), as Slurm itself expands it."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             timeout=60, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError) as e:
        raise LaunchError(f"cannot expand the Slurm node list {nodelist!r} with `scontrol show hostnames`: {e}; "
                          "set DUALSPEED_RDZV_ENDPOINT=HOST:PORT to name the rendezvous host yourself") from None
    if not out:
        raise LaunchError(f"`scontrol show hostnames {nodelist}` named no host")
    return out[0]


def _first(env: Mapping[str, str], *names: str) -> str | None:
    return next((env[n] for n in names if env.get(n)), None)


def rendezvous(env: Mapping[str, str], nnodes: int | None = None) -> dict:
    """nnodes, endpoint and id of the rendezvous, from the Slurm step or the DUALSPEED_* / PET_* variables.
    `nnodes` (the job's resources.train.nodes) must agree with what the scheduler started."""
    endpoint = _first(env, "DUALSPEED_RDZV_ENDPOINT", "PET_RDZV_ENDPOINT")
    slurm = env.get("SLURM_JOB_ID") and _first(env, "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST")
    if slurm and not endpoint:
        job = env["SLURM_JOB_ID"]
        port = env.get("DUALSPEED_RDZV_PORT") or str(20000 + int(job) % 10000)
        endpoint = f"{first_host(slurm)}:{port}"
        started = int(_first(env, "SLURM_STEP_NUM_NODES", "SLURM_NNODES") or 0) or None
        rdzv_id = _first(env, "DUALSPEED_RDZV_ID") or job
        where = "the Slurm step (SLURM_STEP_NUM_NODES / SLURM_NNODES)"
    else:
        started = int(_first(env, "DUALSPEED_NNODES", "PET_NNODES") or 0) or None
        rdzv_id = _first(env, "DUALSPEED_RDZV_ID", "PET_RDZV_ID") or "dualspeed"
        where = "DUALSPEED_NNODES"
    if nnodes and started and nnodes != started:
        raise LaunchError(f"this job was planned for {nnodes} nodes (resources.train.nodes) but {where} says "
                          f"{started}; ask the scheduler for {nnodes} nodes, one task each")
    n = nnodes or started or 1
    if n > 1 and not endpoint:
        raise LaunchError(f"{n} nodes need a rendezvous host: outside a Slurm job set DUALSPEED_RDZV_ENDPOINT=HOST:PORT "
                          "(HOST reachable from every node; the same value on each) and DUALSPEED_NNODES")
    return {"nnodes": n, "endpoint": endpoint, "id": rdzv_id}


def argv(nproc_per_node: int, module_argv: list[str], env: Mapping[str, str], nnodes: int | None = None) -> list[str]:
    """The command this node runs: torchrun with the rendezvous, or (one node) torchrun --standalone / python."""
    if nproc_per_node < 1:
        raise LaunchError(f"--nproc-per-node must be >= 1, got {nproc_per_node}")
    rdzv = rendezvous(env, nnodes)
    if rdzv["nnodes"] == 1:
        if nproc_per_node == 1:
            return [sys.executable, "-m", *module_argv]
        return [*TORCHRUN, "--standalone", "--nproc_per_node", str(nproc_per_node), "-m", *module_argv]
    # max_restarts 0: a failed rank fails the run (restarting would replay steps from scratch, not from a checkpoint)
    return [*TORCHRUN, "--nnodes", str(rdzv["nnodes"]), "--nproc_per_node", str(nproc_per_node),
            "--rdzv_backend", "c10d", "--rdzv_endpoint", rdzv["endpoint"], "--rdzv_id", str(rdzv["id"]),
            "--max_restarts", "0", "-m", *module_argv]


def main(args: list[str] | None = None) -> None:
    args = sys.argv[1:] if args is None else list(args)
    ap = cli.ArgumentParser(prog="python -m dualspeed.launch", usage="%(prog)s [options] -m MODULE [ARGS ...]",
                            description=__doc__.split("\n\n")[0])
    ap.add_argument("--nnodes", type=int, help="nodes of the job (the pipeline passes resources.train.nodes)")
    ap.add_argument("--nproc-per-node", type=int, required=True, help="processes per node (its GPUs)")
    ap.add_argument("--dry-run", action="store_true", help="print this node's command instead of running it")
    if "-m" not in args or args.index("-m") == len(args) - 1:
        ap.error("name the module to run after -m, e.g. -m dualspeed.train --spec ...")
    cut = args.index("-m")  # everything after -m is the module's own command line
    ns = ap.parse_args(args[:cut])
    try:
        cmd = argv(ns.nproc_per_node, args[cut + 1:], os.environ, ns.nnodes)
    except LaunchError as e:
        sys.exit(f"dualspeed.launch: {e}")
    print(f"dualspeed.launch on {os.uname().nodename}: {shlex.join(cmd)}",
          file=sys.stdout if ns.dry_run else sys.stderr, flush=True)
    if not ns.dry_run:
        # exec, not a child: the scheduler's signals (srun's kill on a failed node, a time limit) reach torchrun
        os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
