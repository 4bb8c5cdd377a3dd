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

``--device cuda`` trains on a GPU (the envs still step on the CPU); ``--init POLICY``
fine-tunes every method of the call from that policy (so its chunking applies). With
``--baseline-src DIR`` every run is repeated with another copy of the library (e.g. a checkout
of the commit before a change, its ``src``), the two alternating ``--repeats`` times, and the
table adds the median ratio of env steps/s, new over baseline: the "no slower than before"
check, measured side by side.

Examples::

    python benchmarks/throughput.py                                  # every algorithm, Hopper + bandit
    python benchmarks/throughput.py --methods fpo ppo --envs Hopper-v5 --steps 40960
    python benchmarks/throughput.py --out docs/benchmarks/throughput.md
    git worktree add /tmp/before HEAD~1 && python benchmarks/throughput.py --methods fpo ppo \
        --envs Hopper-v5 --baseline-src /tmp/before/src --repeats 3
    python benchmarks/throughput.py --device cuda --methods rldt reinflow --init POLICY.pt

The CPU figures are only comparable when nothing else runs on the machine; the page records the
machine and the command.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterable
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
    """env steps per run (it must hold at least two iterations); see --iterations."""
    iterations: int | None = None
    """instead of --steps: time this many iterations of each method (one more runs first,
    untimed); the env steps follow from the method's preset, --init's chunk and --train-args."""
    threads: int = 1
    """torch threads per run."""
    device: str = "cpu"
    """--device of every run: cpu, cuda or cuda:N (auto is not offered: say what you measure)."""
    init: Path | None = None
    """fine-tune every method from this policy file or run directory (train's --init)."""
    train_args: str = ""
    """more options for every training command, as one string (e.g. "--num-envs 64")."""
    baseline_src: Path | None = None
    """also measure every run with the library at this ``src`` directory, alternating."""
    repeats: int = 1
    """measurements of each run (each alternating with the baseline's); medians are shown."""
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


def measure(
    method: str,
    env: str,
    steps: int,
    threads: int,
    device: str = "cpu",
    init: Path | None = None,
    src: Path = REPO / "src",
    train_args: str = "",
    processes: int = 1,
) -> Throughput:
    """Train ``method`` on ``env`` in a temporary directory, with the library at ``src``, and
    read its timing metrics; ``processes`` > 1 runs it data-parallel under torchrun (the env
    steps then count every rank's, the times are rank 0's)."""
    algo, _, preset = method.partition(":")
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        command = [sys.executable]
        if processes > 1:
            command += ["-m", "torch.distributed.run", "--standalone"]
            command += [f"--nproc-per-node={processes}"]
        command += ["-m", "flowpolicy", "train", algo, "--env", env]
        command += ["--preset", preset] if preset else []
        command += ["--total-steps", str(steps), "--eval-every", "0", "--eval-episodes", "1"]
        command += ["--torch-threads", str(threads), "--tensorboard", "False", "--quiet", "True"]
        # A library from before --device knows only the CPU: leave the option out there.
        command += ["--device", device] if device != "cpu" or src == REPO / "src" else []
        command += ["--init", str(init)] if init is not None else []
        command += shlex.split(train_args) + ["--run-dir", str(run_dir)]
        environment = os.environ | {"PYTHONPATH": str(src)}
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


@dataclass(frozen=True)
class Measured:
    """Every measurement of one (method, env): this library's, and the baseline's if any."""

    runs: list[Throughput]
    baseline: list[Throughput]

    @property
    def median(self) -> Throughput:
        """The run with the median env steps/s (the lower middle one of an even count)."""
        ordered = sorted(self.runs, key=lambda r: r.steps_per_second)
        return ordered[(len(ordered) - 1) // 2]

    @property
    def ratio(self) -> float | None:
        """Median over the alternating pairs of env steps/s, this library over the baseline."""
        if not self.baseline:
            return None
        pairs = zip(self.runs, self.baseline, strict=True)
        return statistics.median(a.steps_per_second / b.steps_per_second for a, b in pairs)


def table(results: list[Throughput] | list[Measured]) -> str:
    """Markdown: one row per (env, algorithm); with a baseline, its env steps/s and the ratio."""
    measured = [r if isinstance(r, Measured) else Measured([r], []) for r in results]
    compare = any(m.baseline for m in measured)
    head = "| env | method | env steps/s | acting | env stepping | updating | rest |"
    rule = "|---|---|---|---|---|---|---|"
    if compare:
        head += " baseline env steps/s | ratio (median of pairs) |"
        rule += "---|---|"
    lines = [head, rule]
    for m in measured:
        r = m.median
        shares = [r.share(part) for part in PARTS]
        cells = " | ".join(f"{share:.0%}" for share in shares)
        rest = max(0.0, 1.0 - sum(shares))
        line = f"| {r.env} | {r.method} | {r.steps_per_second:,.0f} | {cells} | {rest:.0%} |"
        if compare:
            base = Measured(m.baseline, []).median.steps_per_second if m.baseline else None
            line += f" {base:,.0f} | {m.ratio:.3f} |" if base else " - | - |"
        lines.append(line)
    return "\n".join(lines)


def iteration_steps(method: str, init: Path | None, train_args: str) -> int:
    """Env steps of one iteration of ``method``: num_envs x num_steps x chunk_exec of its
    preset, with --init's chunk_exec and the --train-args values where given."""
    from flowpolicy.algos.presets import find_preset
    from flowpolicy.policy_io import load_policy_from

    algo, _, preset = method.partition(":")
    config = find_preset(algo, preset or None).config()
    sizes = {name: getattr(config, name) for name in ("num_envs", "num_steps", "chunk_exec")}
    if init is not None:
        sizes["chunk_exec"] = load_policy_from(init).chunk_exec
    sizes |= integer_options(train_args, sizes)
    return sizes["num_envs"] * sizes["num_steps"] * sizes["chunk_exec"]


def integer_options(train_args: str, names: Iterable[str]) -> dict[str, int]:
    """The values of ``--name-with-dashes N`` in ``train_args`` for each of ``names`` given
    there (e.g. ``{"num_envs": 64}`` from ``"--num-envs 64"``)."""
    words = shlex.split(train_args)
    found = {}
    for name in names:
        flag = "--" + name.replace("_", "-")
        if flag in words:
            found[name] = int(words[words.index(flag) + 1])
    return found


def measure_all(args: Args) -> list[Measured]:
    """Every (env, method), ``repeats`` times, alternating with the baseline when there is one."""
    results = []
    for env in args.envs:
        for method in args.methods:
            runs, baseline = [], []
            steps = args.steps
            if args.iterations is not None:
                per_iteration = iteration_steps(method, args.init, args.train_args)
                steps = (args.iterations + 1) * per_iteration
            for repeat in range(args.repeats):
                print(f"measuring {method} on {env} ({repeat + 1}/{args.repeats}) ...",
                      file=sys.stderr, flush=True)  # fmt: skip
                common = (method, env, steps, args.threads, args.device, args.init)
                runs.append(measure(*common, train_args=args.train_args))
                if args.baseline_src is not None:
                    src = args.baseline_src.resolve()
                    baseline.append(measure(*common, src=src, train_args=args.train_args))
            results.append(Measured(runs, baseline))
    return results


def main(args: Args) -> None:
    results = measure_all(args)
    text = table(results)
    print(text)
    if args.out is not None:
        command = shlex.join(["python", "benchmarks/throughput.py", *sys.argv[1:]])
        page = (
            "# Training throughput\n\n"
            f"- Command: `{command}`\n- Machine: {machine_info()}\n- Device: {args.device}\n"
            f"- Date: {datetime.date.today().isoformat()}\n\n{text}\n"
        )
        args.out.write_text(page)
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main(tyro.cli(Args))
