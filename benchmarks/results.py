"""Read, aggregate and plot benchmark run directories.

A run directory (written by ``python -m flowpolicy train`` or ``benchmarks/sb3_ppo.py``) holds:

- ``metrics.jsonl``: one JSON object per line with ``"step"`` (env steps) and ``"wall_time"``
  (seconds since the run began). Evaluation lines carry ``eval/zero/return_mean``,
  ``eval/zero/return_std``, ``eval/random/return_mean`` and ``eval/random/return_std``.
- ``done.json``: written when the run completed; ``step``, ``wall_time`` and the final
  evaluation's ``eval/...`` keys.

Everything here is a small pure function over those files so that the benchmark scripts and a
later report tool share one reading of the numbers. Seeds are aggregated with the population
standard deviation (``ddof=0``); the pages that quote these numbers say so.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

EVAL_MODES = ("zero", "random")
"""Evaluation sampling modes: zero = deterministic (zero initial noise / Gaussian mean)."""


def return_key(mode: str, stat: str = "mean") -> str:
    """Name of an evaluation metric, e.g. ``return_key("zero") == "eval/zero/return_mean"``."""
    return f"eval/{mode}/return_{stat}"


def path_safe(name: str) -> str:
    """Turn an env id such as ``dmc/cheetah-run`` into a folder name (``dmc_cheetah-run``)."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name)


# --------------------------------------------------------------------------------------------
# Reading one run
# --------------------------------------------------------------------------------------------


def read_metrics(run_dir: Path) -> list[dict]:
    """All records of ``run_dir/metrics.jsonl`` in file order (a torn last line is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a run killed mid-write leaves a partial last line
    return records


def read_done(run_dir: Path) -> dict | None:
    """The contents of ``run_dir/done.json``, or None while the run has not completed."""
    path = Path(run_dir) / "done.json"
    return json.loads(path.read_text()) if path.exists() else None


@dataclass
class Curve:
    """Evaluation returns of one run against env steps.

    Attributes:
        steps: env steps of each evaluation, increasing. Shape (E,).
        returns: mode -> mean evaluation return at each step, shape (E,).
    """

    steps: np.ndarray
    returns: dict[str, np.ndarray]


def eval_curve(records: Iterable[dict]) -> Curve:
    """Evaluation curve from metrics records; a step logged twice keeps its last value."""
    by_step: dict[int, dict] = {}
    for record in records:
        if return_key("zero") in record or return_key("random") in record:
            by_step[int(record["step"])] = record
    steps = np.array(sorted(by_step), dtype=np.int64)
    returns = {
        mode: np.array([by_step[s].get(return_key(mode), np.nan) for s in steps], dtype=float)
        for mode in EVAL_MODES
    }
    return Curve(steps=steps, returns=returns)


@dataclass
class RunResult:
    """One completed run: its identity, final numbers and evaluation curve."""

    env: str
    method: str
    seed: int
    run_dir: Path
    final_step: int
    wall_time: float
    final_returns: dict[str, float]
    curve: Curve
    cpu_time: float | None = None
    """CPU seconds of the training process, if the run recorded ``process_time``."""

    @property
    def steps_per_second(self) -> float:
        """Env steps per wall-clock second over the whole run, evaluation included."""
        return self.final_step / self.wall_time if self.wall_time > 0 else float("nan")


def load_run(run_dir: Path, env: str, method: str, seed: int) -> RunResult | None:
    """Load a completed run; None if ``done.json`` is missing (not started, running or failed)."""
    done = read_done(run_dir)
    if done is None:
        return None
    return RunResult(
        env=env,
        method=method,
        seed=seed,
        run_dir=Path(run_dir),
        final_step=int(done["step"]),
        wall_time=float(done["wall_time"]),
        final_returns={mode: float(done.get(return_key(mode), np.nan)) for mode in EVAL_MODES},
        curve=eval_curve(read_metrics(run_dir)),
        cpu_time=float(done["process_time"]) if "process_time" in done else None,
    )


# --------------------------------------------------------------------------------------------
# Aggregating seeds
# --------------------------------------------------------------------------------------------


@dataclass
class Summary:
    """Final numbers of one (env, method) over seeds.

    ``*_std`` are population standard deviations over seeds (``ddof=0``).
    """

    env: str
    method: str
    num_seeds: int
    seeds: list[int]
    final_step_mean: float
    return_mean: dict[str, float]
    return_std: dict[str, float]
    wall_time_mean: float
    steps_per_second_mean: float
    per_seed: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        """Plain-JSON form (for ``from_scratch.json``)."""
        return asdict(self)


def summarize(runs: Sequence[RunResult]) -> Summary:
    """Mean and std over seeds of final returns, wall-clock and steps/s of runs of one method."""
    if not runs:
        raise ValueError("summarize() needs at least one completed run")
    if len({(r.env, r.method) for r in runs}) != 1:
        raise ValueError("summarize() expects runs of a single (env, method)")
    finals = {mode: np.array([r.final_returns[mode] for r in runs]) for mode in EVAL_MODES}
    return Summary(
        env=runs[0].env,
        method=runs[0].method,
        num_seeds=len(runs),
        seeds=[r.seed for r in runs],
        final_step_mean=float(np.mean([r.final_step for r in runs])),
        return_mean={mode: float(np.mean(v)) for mode, v in finals.items()},
        return_std={mode: float(np.std(v)) for mode, v in finals.items()},
        wall_time_mean=float(np.mean([r.wall_time for r in runs])),
        steps_per_second_mean=float(np.mean([r.steps_per_second for r in runs])),
        per_seed=[
            {
                "seed": r.seed,
                "final_step": r.final_step,
                "wall_time": r.wall_time,
                "steps_per_second": r.steps_per_second,
                "cpu_time": r.cpu_time,
                **{f"return_{mode}": r.final_returns[mode] for mode in EVAL_MODES},
                "run_dir": str(r.run_dir),
            }
            for r in runs
        ],
    )


@dataclass
class SeedBand:
    """Curves of several seeds on one step grid: mean, std, min and max, each shape (G,)."""

    steps: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    low: np.ndarray
    high: np.ndarray


def seed_band(curves: Sequence[Curve], mode: str) -> SeedBand:
    """Aggregate one evaluation mode over seeds.

    Runs of one method evaluate at the same steps, so the grid is normally exactly those steps;
    if they differ, each curve is linearly interpolated onto the union of steps inside the range
    that every seed covers.
    """
    usable = [c for c in curves if len(c.steps) > 0]
    if not usable:
        empty = np.array([])
        return SeedBand(empty, empty, empty, empty, empty)
    start = max(c.steps[0] for c in usable)
    stop = min(c.steps[-1] for c in usable)
    grid = np.unique(np.concatenate([c.steps for c in usable]))
    grid = grid[(grid >= start) & (grid <= stop)]
    values = np.stack([np.interp(grid, c.steps, c.returns[mode]) for c in usable])  # (S, G)
    return SeedBand(
        steps=grid,
        mean=values.mean(axis=0),
        std=values.std(axis=0),
        low=values.min(axis=0),
        high=values.max(axis=0),
    )


# --------------------------------------------------------------------------------------------
# Plotting and tables
# --------------------------------------------------------------------------------------------


def plot_learning_curves(
    curves_by_method: dict[str, Sequence[Curve]], title: str, path: Path
) -> Path:
    """Save evaluation return vs env steps, one colour per method.

    Solid lines: zero (deterministic) sampling; dashed: random sampling. Lines are the mean over
    seeds, the shaded band spans the min and max over seeds.

    Args:
        curves_by_method: method name -> one Curve per seed.
        title: figure title (usually the env id).
        path: PNG file to write; parent folders are created.

    Returns:
        The path written.
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    ax = fig.add_subplot()
    colours = [f"C{i}" for i in range(10)]
    for colour, (method, curves) in zip(colours, curves_by_method.items(), strict=False):
        num_seeds = len(curves)
        for mode, style in (("zero", "-"), ("random", "--")):
            band = seed_band(curves, mode)
            if len(band.steps) == 0:
                continue
            label = f"{method} ({num_seeds} seeds)" if mode == "zero" else None
            ax.plot(band.steps, band.mean, style, color=colour, label=label, linewidth=1.6)
            ax.fill_between(band.steps, band.low, band.high, color=colour, alpha=0.15, lw=0)
    ax.plot([], [], "-", color="0.3", label="zero sampling (deterministic)")
    ax.plot([], [], "--", color="0.3", label="random sampling")
    ax.set_title(f"{title}: evaluation return (mean over seeds, band = min-max)")
    ax.set_xlabel("env steps")
    ax.set_ylabel("episode return")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def _pm(mean: float, std: float) -> str:
    return f"{mean:.1f} ± {std:.1f}"


def markdown_table(summaries: Sequence[Summary]) -> str:
    """One markdown table: a row per method with final returns, wall-clock and steps/s."""
    lines = [
        "| method | seeds | final step | return, zero sampling | return, random sampling "
        "| wall-clock (s) | env steps/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        lines.append(
            f"| {s.method} | {s.num_seeds} | {s.final_step_mean:,.0f} "
            f"| {_pm(s.return_mean['zero'], s.return_std['zero'])} "
            f"| {_pm(s.return_mean['random'], s.return_std['random'])} "
            f"| {s.wall_time_mean:,.0f} | {s.steps_per_second_mean:,.0f} |"
        )
    return "\n".join(lines)


def markdown_seed_table(summaries: Sequence[Summary]) -> str:
    """One markdown table with a row per (method, seed): the raw numbers behind the means.

    CPU time (of the training process) is shown where the run recorded it; on a shared machine
    a wall-clock much larger than the CPU time means the run waited for a core.
    """
    lines = [
        "| method | seed | return, zero | return, random | wall-clock (s) | CPU time (s) "
        "| env steps/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        for r in s.per_seed:
            cpu = "n/a" if r.get("cpu_time") is None else f"{r['cpu_time']:,.0f}"
            lines.append(
                f"| {s.method} | {r['seed']} | {r['return_zero']:.1f} | {r['return_random']:.1f} "
                f"| {r['wall_time']:,.0f} | {cpu} | {r['steps_per_second']:,.0f} |"
            )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------


def machine_info() -> str:
    """CPU model and core count from /proc/cpuinfo (falls back to ``platform``)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{cores} CPU cores ({model}), {platform.system()} {platform.release()}"


def git_commit(repo: Path) -> str:
    """Short commit hash, ``+ uncommitted changes`` if the tree is dirty, or ``uncommitted``."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "uncommitted"
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True
    ).stdout
    return f"{head} + uncommitted changes" if status.strip() else head
