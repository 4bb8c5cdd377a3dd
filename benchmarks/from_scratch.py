"""From-scratch comparison: FPO, FPO++, our Gaussian PPO and stable-baselines3 PPO.

The ``from_scratch`` protocol of the benchmark harness, with this script's original options:
``python benchmarks/from_scratch.py ARGS`` does what ``python benchmarks/bench.py from_scratch
ARGS`` does, except that ``--runs-root`` here is the protocol's own folder (default
``benchmarks/runs/from_scratch``). The methods, budgets and command lines are declared in
``benchmarks/protocols.py`` (``FROM_SCRATCH``); running, skipping, resuming and collecting are
``benchmarks/bench.py``'s (its docstring says what each run directory and results file holds).

Every (env, method, seed) runs as its own subprocess with one torch thread, ``--jobs`` at a time,
in ``<runs-root>/<env>/<method>/seed<k>`` (output in ``train.log``; runs with ``done.json`` are
skipped, stopped flowpolicy runs resume from their checkpoint). Then every completed run of the
selected envs and methods is collected into ``<docs-dir>/from_scratch.md`` (a table per env,
the commands, machine, commit and date), ``from_scratch.json``, ``from_scratch.csv`` and
``from_scratch_<env>.png`` (+ ``_wall_clock.png``).

Examples:
    # everything (3 envs x 4 methods x 2 seeds), two runs at a time
    nice -n 10 python benchmarks/from_scratch.py
    # only the SB3 reference on Hopper, one run at a time
    nice -n 10 python benchmarks/from_scratch.py --methods sb3-ppo --envs Hopper-v5 --jobs 1
    # a smoke run that touches neither the real runs nor the docs
    python benchmarks/from_scratch.py --methods sb3-ppo --envs Hopper-v5 --seeds 0 \
        --steps Hopper-v5=5000 --eval-every 2500 --runs-root /tmp/fs --docs-dir /tmp/fs/docs
    # re-collect tables and plots from the runs on disk
    python benchmarks/from_scratch.py --collect-only
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bench import cli, plan_and_run
from protocols import FROM_SCRATCH

REPO = Path(__file__).resolve().parents[1]

Method = Literal["fpo", "fpo++", "ppo", "sb3-ppo"]
METHODS: tuple[Method, ...] = ("fpo", "fpo++", "ppo", "sb3-ppo")


@dataclass(frozen=True)
class Args:
    """Run and collect the from-scratch comparison."""

    methods: tuple[Method, ...] = METHODS
    """Methods to run and collect."""
    envs: tuple[str, ...] = tuple(FROM_SCRATCH.budgets)
    """Env ids (gymnasium ids or ``dmc/<domain>-<task>``)."""
    seeds: tuple[int, ...] = FROM_SCRATCH.seeds
    """Seeds per (env, method)."""
    steps: tuple[str, ...] = ()
    """Per-env step budget overrides, ``ENV=N`` (e.g. ``Hopper-v5=5000``)."""
    eval_every: int | None = None
    """Evaluate every this many env steps, for every env (default: the env's own)."""
    eval_episodes: int | None = None
    """Episodes per evaluation and mode, for every env (default: the env's own)."""
    jobs: int = 2
    """Runs at a time (each uses one torch thread)."""
    nice: int = 0
    """Extra niceness for each run, on top of this script's (which the runs inherit)."""
    collect_only: bool = False
    """Do not run anything; only collect, tabulate and plot the runs on disk."""
    runs_root: Path = REPO / "benchmarks" / "runs" / "from_scratch"
    """Where run directories go."""
    docs_dir: Path = REPO / "docs" / "benchmarks"
    """Where the markdown, JSON, CSV and PNG results go."""


def main(args: Args) -> None:
    """Run what is missing (unless ``--collect-only``), then collect, tabulate and plot."""
    plan_and_run(FROM_SCRATCH, args.runs_root, args)


if __name__ == "__main__":
    sys.exit(cli(main, Args))
