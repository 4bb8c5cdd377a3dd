"""Training throughput of every algorithm: env steps/s and where an iteration's time goes.

Each method (``ALGO`` or ``ALGO:PRESET``, from scratch) trains for ``--steps`` env steps on each
env through the ordinary command, ``python -m flowpolicy train ALGO [--preset PRESET] --env ENV
--total-steps N --eval-every 0 --torch-threads T``, in a temporary run directory. QAM runs as
``qam:qam-cpu``: its authors' sizes take about 28 CPU-hours of updates per 100k env steps. The loop records for every
iteration the seconds spent acting (``charts/time_act``: the policy's forward passes and the
algorithm's per-step records), stepping the envs (``charts/time_env``) and updating
(``charts/time_update``). The table sums them over the run's iterations after the first (which
pays for warm-up and, for the off-policy methods, fills the replay) and gives each share and the
env steps/s over those iterations. Evaluation, checkpoints and logging are outside the three
parts; their share is the rest.

Examples::

    python benchmarks/throughput.py                                  # every algorithm, Hopper + bandit
    python benchmarks/throughput.py --methods fpo ppo --envs Hopper-v5 --steps 40960
    python benchmarks/throughput.py --out docs/benchmarks/throughput.md

The CPU figures are only comparable when nothing else runs on the machine; the page records the
machine and the command.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tyro
from results import machine_info

REPO = Path(__file__).resolve().parents[1]
PARTS = ("act", "env", "update")


@dataclass(frozen=True)
class Args:
    """Measure training throughput per algorithm and env."""

    methods: tuple[str, ...] = (
        "ppo",
        "fpo",
        "fpo:fpo++",
        "dppo",
        "reinflow",
        "rldt",
        "qam:qam-cpu",
    )
    """``ALGO`` (its default preset) or ``ALGO:PRESET``."""
    envs: tuple[str, ...] = ("Hopper-v5", "toy/bandit")
    """env ids."""
    steps: int = 20_480
    """env steps per run (at least two iterations of every algorithm's default rollout)."""
    threads: int = 1
    """torch threads per run."""
    out: Path | None = None
    """also write the table, with the command and machine, to this Markdown file."""


@dataclass(frozen=True)
class Throughput:
    """What one run measured over its iterations after the first."""

    method: str
    env: str
    steps: int
    seconds: float
    parts: dict[str, float]

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds

    def share(self, part: str) -> float:
        return self.parts[part] / self.seconds


def measure(method: str, env: str, steps: int, threads: int) -> Throughput:
    """Train ``method`` on ``env`` in a temporary directory and read its timing metrics."""
    algo, _, preset = method.partition(":")
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        command = [sys.executable, "-m", "flowpolicy", "train", algo, "--env", env]
        command += ["--preset", preset] if preset else []
        command += ["--total-steps", str(steps), "--eval-every", "0", "--eval-episodes", "1"]
        command += ["--torch-threads", str(threads), "--tensorboard", "False", "--quiet", "True"]
        command += ["--run-dir", str(run_dir)]
        environment = os.environ | {"PYTHONPATH": str(REPO / "src")}
        done = subprocess.run(command, capture_output=True, text=True, env=environment)
        if done.returncode != 0:
            raise SystemExit(f"{shlex.join(command)} failed:\n{done.stderr[-2000:]}")
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        rows = [row for row in map(json.loads, lines) if "charts/time_update" in row]
    if len(rows) < 2:
        raise SystemExit(f"{method} on {env}: fewer than two iterations; raise --steps.")
    first, rest = rows[0], rows[1:]
    seconds = rest[-1]["wall_time"] - first["wall_time"]
    parts = {part: sum(row[f"charts/time_{part}"] for row in rest) for part in PARTS}
    return Throughput(method, env, rest[-1]["step"] - first["step"], seconds, parts)


def table(results: list[Throughput]) -> str:
    """Markdown: one row per (env, algorithm)."""
    head = "| env | method | env steps/s | acting | env stepping | updating | rest |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in results:
        shares = [r.share(part) for part in PARTS]
        cells = " | ".join(f"{share:.0%}" for share in shares)
        rest = max(0.0, 1.0 - sum(shares))
        lines.append(f"| {r.env} | {r.method} | {r.steps_per_second:,.0f} | {cells} | {rest:.0%} |")
    return "\n".join(lines)


def main(args: Args) -> None:
    results = []
    for env in args.envs:
        for method in args.methods:
            print(f"measuring {method} on {env} ...", file=sys.stderr, flush=True)
            results.append(measure(method, env, args.steps, args.threads))
    text = table(results)
    print(text)
    if args.out is not None:
        command = shlex.join(["python", "benchmarks/throughput.py", *sys.argv[1:]])
        page = (
            "# Training throughput\n\n"
            f"- Command: `{command}`\n- Machine: {machine_info()}\n"
            f"- Date: {datetime.date.today().isoformat()}\n\n{text}\n"
        )
        args.out.write_text(page)
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main(tyro.cli(Args))
