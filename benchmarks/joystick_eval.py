"""Tracking error per command type and falls per episode of joystick policies.

For each run (a ``flowpolicy train`` run directory, a pretrain run or a policy file) on
``playground/HumanoidJoystick``, the policy it evaluates plays ``--episodes`` episodes of each
command type (stand, forward, backward, lateral, turn; the command fixed for the episode) with
zero sampling, through :func:`flowpolicy.envs.joystick_eval.evaluate_commands`, at the run's
evaluation seed. The table gives per run and command type the mean absolute error of the
commanded velocities (over the steps of the episodes), the mean return and the falls per
episode, and, per run, its training env steps/s (the median of ``charts/sps`` in its
metrics.jsonl, where it has one).

    python benchmarks/joystick_eval.py benchmarks/runs/humanoid-joystick/*/*/seed0 \\
        --out docs/benchmarks/humanoid-joystick-tracking.md
"""

from __future__ import annotations

import datetime
import shlex
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro
from results import machine_info

from flowpolicy.cli import load_eval_target
from flowpolicy.envs.joystick_eval import evaluate_commands
from flowpolicy.results import read_metrics


@dataclass(frozen=True)
class Args:
    """Evaluate joystick policies per command type."""

    runs: Annotated[tuple[Path, ...], tyro.conf.Positional]
    """run directories or policy files."""
    episodes: int = 4
    """episodes per command type."""
    max_steps: int | None = None
    """cut episodes at this many control steps (default: the task's 1000)."""
    device: str = "auto"
    """where the policies act and the task simulates: auto, cpu or cuda."""
    out: Path | None = None
    """also write the table, with the command and machine, to this Markdown file."""


def training_speed(run: Path) -> float | None:
    """Median env steps/s of a train run's iterations (None without metrics)."""
    speeds = [row["charts/sps"] for row in read_metrics(run) if "charts/sps" in row]
    return statistics.median(speeds) if speeds else None


def evaluate_run(run: Path, args: Args) -> list[str]:
    """Table rows of one run."""
    target = load_eval_target(str(run), args.device, None, None)
    print(f"{run}: {target.what} on {target.env}", file=sys.stderr, flush=True)
    result = evaluate_commands(
        target.policy,
        args.episodes,
        target.seed,
        next(target.policy.parameters()).device,
        chunk_exec=target.chunk_exec,
        max_steps=args.max_steps,
    )
    speed = training_speed(run)
    speed_cell = f"{speed:,.0f}" if speed is not None else "-"
    rows = []
    for command, m in result.items():
        rows.append(
            f"| {run} | {speed_cell} | {command} | {m['vx_error']:.3f} | {m['vy_error']:.3f} | "
            f"{m['yaw_rate_error']:.3f} | {m['return_mean']:.1f} | {m['falls_per_episode']:.2f} "
            f"| {m['steps_mean']:.0f} |"
        )
    return rows


def main(args: Args) -> None:
    if args.episodes < 1:
        raise SystemExit(f"--episodes must be >= 1, got {args.episodes}")
    lines = [
        "| run | train env steps/s | command | vx error (m/s) | vy error (m/s) "
        "| yaw-rate error (rad/s) | return | falls / episode | steps |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in args.runs:
        lines += evaluate_run(run, args)
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        command = shlex.join(["python", "benchmarks/joystick_eval.py", *sys.argv[1:]])
        args.out.write_text(
            "# Joystick tracking per command type\n\n"
            f"- Command: `{command}`\n- Machine: {machine_info()}\n"
            f"- Date: {datetime.date.today().isoformat()}\n\n{text}\n"
        )
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main(tyro.cli(Args))
