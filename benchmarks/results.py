"""Benchmark-page helpers over run directories: the tables and plot of ``from_scratch.py``.

Reading runs, their curves, seed bands and summaries live in the package
(:mod:`flowpolicy.results`, figures in :mod:`flowpolicy.plot`) and are shared with
``flowpolicy plot``; this module re-exports them, adds the benchmark's view of a run (only
completed runs count, identity given by the benchmark's plan) and the formats of the pages in
``docs/benchmarks/``: the markdown tables and the provenance lines. Seeds are aggregated with the
population standard deviation (``ddof=0``); the pages that quote these numbers say so.
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path

from flowpolicy import results as _results
from flowpolicy.plot import (
    Panel,
    format_mean_std,
    format_returns,
    learning_curve_figure,
    save_figure,
)
from flowpolicy.results import (
    EVAL_MODES,
    Curve,
    RunResult,
    SeedBand,
    Summary,
    eval_curve,
    path_safe,
    read_done,
    read_metrics,
    return_key,
    seed_band,
    summarize,
)

__all__ = [
    "EVAL_MODES",
    "Curve",
    "RunResult",
    "SeedBand",
    "Summary",
    "eval_curve",
    "git_commit",
    "git_state",
    "load_run",
    "machine_info",
    "markdown_seed_table",
    "markdown_table",
    "path_safe",
    "plot_learning_curves",
    "read_done",
    "read_metrics",
    "return_key",
    "seed_band",
    "summarize",
]


def load_run(run_dir: Path, env: str, method: str, seed: int) -> RunResult | None:
    """Load a completed run as (env, method, seed); None if ``done.json`` is missing (not
    started, running or failed), so that benchmark tables hold only full-budget runs."""
    if read_done(run_dir) is None:
        return None
    return _results.load_run(run_dir, env=env, method=method, seed=seed)


def plot_learning_curves(
    curves_by_method: dict[str, Sequence[Curve]], title: str, path: Path
) -> Path:
    """Save evaluation return vs env steps of one env, one colour per method.

    Solid lines: zero (deterministic) sampling; dashed: random sampling. Lines are the mean over
    seeds, the shaded band spans the min and max over seeds.

    Args:
        curves_by_method: method name -> one Curve per seed.
        title: figure title (usually the env id).
        path: PNG file to write; parent folders are created.

    Returns:
        The path written.
    """
    panel = Panel(
        f"{title}: evaluation return (mean over seeds, band = min-max)",
        {method: list(curves) for method, curves in curves_by_method.items()},
    )
    fig = learning_curve_figure([panel], title="", panel_size=(7.0, 4.5))
    path = Path(path)
    return save_figure(fig, path.parent / path.stem, [path.suffix.lstrip(".") or "png"])[0]


# --------------------------------------------------------------------------------------------
# Tables of the benchmark pages
# --------------------------------------------------------------------------------------------


def markdown_table(summaries: Sequence[Summary]) -> str:
    """One markdown table: a row per method with final returns, wall-clock and steps/s; with
    fine-tuning runs among them, also BC -> final (the step-0 return of the pretrained policy,
    then the final return; means over seeds) per sampling mode."""
    with_bc = any(s.bc_return_mean is not None for s in summaries)
    bc_header = "| BC → final, zero | BC → final, random " if with_bc else ""
    lines = [
        "| method | seeds | final step | return, zero sampling | return, random sampling "
        f"{bc_header}| wall-clock (s) | env steps/s |",
        "|---|---|---|---|---|" + ("---|---|" if with_bc else "") + "---|---|",
    ]
    for s in summaries:
        bc = (
            "".join(f"| {_bc_to_final(s, mode)} " for mode in ("zero", "random")) if with_bc else ""
        )
        lines.append(
            f"| {s.method} | {s.num_seeds} | {s.final_step_mean:,.0f} "
            f"| {format_mean_std(s.return_mean['zero'], s.return_std['zero'])} "
            f"| {format_mean_std(s.return_mean['random'], s.return_std['random'])} {bc}"
            f"| {s.wall_time_mean:,.0f} | {s.steps_per_second_mean:,.0f} |"
        )
    return "\n".join(lines)


def _bc_to_final(summary: Summary, mode: str) -> str:
    """``"1563.0 → 1819.0"`` (BC return, then final return; three decimals below 10), or
    ``—`` for a run from scratch."""
    if summary.bc_return_mean is None:
        return "—"
    return " → ".join(format_returns(summary.bc_return_mean[mode], summary.return_mean[mode]))


def markdown_seed_table(summaries: Sequence[Summary]) -> str:
    """One markdown table with a row per (method, seed): the raw numbers behind the means.

    CPU time (of the training process) is shown where the run recorded it; on a shared machine
    a wall-clock much larger than the CPU time means the run waited for a core. With
    fine-tuning runs among them, the pretrained policy's (step-0) returns are shown too.
    """
    with_bc = any(s.bc_return_mean is not None for s in summaries)
    lines = [
        "| method | seed | return, zero | return, random "
        + ("| BC, zero | BC, random " if with_bc else "")
        + "| wall-clock (s) | CPU time (s) | env steps/s |",
        "|---|---|---|---|" + ("---|---|" if with_bc else "") + "---|---|---|",
    ]
    for s in summaries:
        for r in s.per_seed:
            cpu = "n/a" if r.get("cpu_time") is None else f"{r['cpu_time']:,.0f}"
            bc = "".join(
                f"| {format_returns(r[key])[0]} " if key in r else "| — "
                for key in (("bc_return_zero", "bc_return_random") if with_bc else ())
            )
            lines.append(
                f"| {s.method} | {r['seed']} | {format_returns(r['return_zero'])[0]} "
                f"| {format_returns(r['return_random'])[0]} "
                f"{bc}| {r['wall_time']:,.0f} | {cpu} | {r['steps_per_second']:,.0f} |"
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


def git_state(repo: Path) -> tuple[str | None, bool]:
    """(full commit hash of HEAD, whether tracked or untracked files differ from it); the hash
    is None outside a git repository."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None, True
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True
    ).stdout
    return head, bool(status.strip())


def git_commit(repo: Path) -> str:
    """Short commit hash, ``+ uncommitted changes`` if the tree is dirty, or ``uncommitted``."""
    head, dirty = git_state(repo)
    if head is None:
        return "uncommitted"
    return f"{head[:7]} + uncommitted changes" if dirty else head[:7]
