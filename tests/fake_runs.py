"""Fake run directories, as `flowpolicy train` leaves them, for the tests of reading, plotting and
benchmark collection (no training)."""

from __future__ import annotations

import json
from pathlib import Path


def eval_row(step: int, wall_time: float, zero: float, random: float) -> dict:
    """One evaluation line of metrics.jsonl: mean returns in zero and random sampling (the
    per-episode std is 1 and 2)."""
    return {
        "step": step,
        "wall_time": wall_time,
        "eval/zero/return_mean": zero,
        "eval/zero/return_std": 1.0,
        "eval/random/return_mean": random,
        "eval/random/return_std": 2.0,
    }


def write_run(
    run_dir: Path,
    evals: list[tuple[int, float, float, float]],
    *,
    seed: int = 0,
    env: str = "Hopper-v5",
    algo_name: str = "ppo",
    init: str | None = None,
    done: bool = True,
    config: dict | None = None,
) -> Path:
    """A run directory: evaluation rows (step, wall_time, zero, random) with a training row
    between consecutive ones, config.json, and done.json (the last evaluation) if ``done``."""
    run_dir.mkdir(parents=True)
    if config is None:
        config = {"algo": {}, "env": env, "seed": seed, "init": init, "algo_name": algo_name}
    (run_dir / "config.json").write_text(json.dumps(config))
    rows = []
    for i, (step, wall, zero, random) in enumerate(evals):
        if i > 0:
            rows.append({"step": step, "wall_time": wall - 0.5, "charts/sps": 100.0})
        rows.append(eval_row(step, wall, zero, random))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if done:
        (run_dir / "done.json").write_text(json.dumps(eval_row(*evals[-1])))
    return run_dir
