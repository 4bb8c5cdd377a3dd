"""Plot the evaluation curves (zero and random sampling) of run directories into one PNG.

    python benchmarks/plot_runs.py OUT.png RUN_DIR [RUN_DIR ...] [--title TEXT]

A small stand-in until `flowpolicy plot` exists: reads each run's metrics.jsonl and draws
``eval/zero/return_mean`` and ``eval/random/return_mean`` against env steps.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def eval_curve(run_dir: Path, mode: str) -> tuple[list[int], list[float]]:
    """(steps, returns) of every evaluation row of a run."""
    key = f"eval/{mode}/return_mean"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    points = [(row["step"], row[key]) for row in rows if key in row]
    return [step for step, _ in points], [value for _, value in points]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    figure, axis = plt.subplots(figsize=(6, 4))
    for run_dir in args.runs:
        for mode, style in (("zero", "-"), ("random", "--")):
            steps, returns = eval_curve(run_dir, mode)
            axis.plot(steps, returns, style, marker="o", label=f"{run_dir.name} ({mode})")
    axis.set_xlabel("env steps")
    axis.set_ylabel("evaluation return")
    axis.set_title(args.title)
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
