"""Data-parallel scaling: env steps/s and time per update at 1, 2, ... processes (torchrun).

Each method trains on each env through the ordinary command, once per process count:
``python -m flowpolicy train ...`` for 1 and ``torchrun --standalone --nproc-per-node N -m
flowpolicy train ...`` for N > 1, with the same options, so the same total ``--num-envs``
(each rank steps ``num_envs / N``), the same batch and the same number of optimiser steps:
strong scaling. The timing comes from the run's own metrics (:mod:`throughput`'s
:func:`~throughput.measure`): env steps/s of all ranks over the iterations after the first,
and the update's seconds per iteration (rank 0's). The scaling efficiency is
``steps/s at N / (N x steps/s at 1)``; 1.0 is perfect.

It also times the one collective of every optimiser step, the all-reduce of the flattened
gradients (:func:`flowpolicy.distributed.average_gradients`), for each method's parameter
count, with the backend the runs use (gloo on the CPU, NCCL on GPUs), so that the time a
larger job spends meeting can be projected (docs/distributed.md).

Examples::

    python benchmarks/scaling.py                                     # PPO, FPO on Hopper-v5, 1 and 2 processes
    python benchmarks/scaling.py --train-args " --num-envs 8" " --num-envs 16 --num-minibatches 4"
    python benchmarks/scaling.py --envs playground/CartpoleBalance --train-args " --num-envs 64"
    python benchmarks/scaling.py --device cuda --processes 1           # the GPU baseline

(Each --train-args value starts with a space, so that it is not read as an option itself.)

On a machine with fewer cores than processes x threads, the processes share cores and the
numbers say so; the page records the machine and the command.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import tyro
from results import machine_info
from throughput import Throughput, integer_options, iteration_steps, measure

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Args:
    """Measure data-parallel scaling per method and env."""

    methods: tuple[str, ...] = ("ppo", "fpo")
    """``ALGO`` (its default preset) or ``ALGO:PRESET``."""
    envs: tuple[str, ...] = ("Hopper-v5",)
    """env ids."""
    processes: tuple[int, ...] = (1, 2)
    """process counts to run (1 first: the efficiency is relative to it)."""
    iterations: int = 4
    """timed iterations per run (one more runs first, untimed)."""
    threads: int = 1
    """torch threads per process."""
    device: str = "cpu"
    """--device of every run: cpu or cuda (each rank takes its own GPU)."""
    train_args: tuple[str, ...] = ("",)
    """more options for the training commands, one string per regime measured (e.g.
    "--num-envs 64"); every regime runs every method at every process count."""
    allreduce_repeats: int = 200
    """timed all-reduces per parameter count (after 20 untimed)."""
    out: Path | None = None
    """also write the tables, with the command and machine, to this Markdown file."""


@dataclass(frozen=True)
class Point:
    """One run at one process count."""

    processes: int
    run: Throughput
    iterations: int

    @property
    def update_seconds(self) -> float:
        """Seconds in ``algo.update`` per iteration (rank 0's)."""
        return self.run.parts["update"] / self.iterations


def measure_points(args: Args, method: str, env: str, train_args: str) -> list[Point]:
    per_iteration = iteration_steps(method, None, train_args)
    steps = (args.iterations + 1) * per_iteration
    points = []
    for processes in args.processes:
        print(f"measuring {method} on {env} [{train_args}], {processes} process(es) ...",
              file=sys.stderr, flush=True)  # fmt: skip
        run = measure(method, env, steps, args.threads, args.device,
                      train_args=train_args, processes=processes)  # fmt: skip
        points.append(Point(processes, run, round(run.steps / per_iteration)))
    return points


def scaling_table(rows: list[tuple[str, str, str, list[Point]]]) -> str:
    """Markdown: one row per (options, env, method, process count)."""
    lines = [
        "| options | env | method | processes | env steps/s | update s / iteration | efficiency |",
        "|---|---|---|---|---|---|---|",
    ]
    for options, env, method, points in rows:
        base = points[0].run.steps_per_second / points[0].processes
        for point in points:
            sps = point.run.steps_per_second
            efficiency = sps / (point.processes * base)
            lines.append(
                f"| `{options}` | {env} | {method} | {point.processes} | {sps:,.0f} | "
                f"{point.update_seconds:.3f} | {efficiency:.2f} |"
            )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- all-reduce


def gradient_sizes(method: str, env: str, train_args: str) -> tuple[int, int | None]:
    """(parameters the method's optimisers update, optimiser steps per iteration where the
    config says it: epochs x minibatches of the PPO family; None for the others)."""
    import dataclasses

    import torch

    from flowpolicy.algos.presets import find_preset
    from flowpolicy.algos.registry import find_algorithm
    from flowpolicy.envs.tensor_env import make_tensor_env
    from flowpolicy.train import TrainConfig, build_algorithm

    algo_name, _, preset = method.partition(":")
    if find_algorithm(algo_name).requires_init:
        raise SystemExit(f"{method} fine-tunes a policy: scaling.py trains from scratch.")
    config = find_preset(algo_name, preset or None).config()
    sizes = ("num_envs", "num_steps", "num_minibatches", "update_epochs")
    config = dataclasses.replace(
        config, **integer_options(train_args, [n for n in sizes if hasattr(config, n)])
    )
    envs = make_tensor_env(env, 1, seed=0, chunk_exec=config.chunk_exec)
    try:
        algo = build_algorithm(TrainConfig(algo=config, env=env), envs)
    finally:
        envs.close()
    optimizers = [v for v in vars(algo).values() if isinstance(v, torch.optim.Optimizer)]
    count = sum(p.numel() for o in optimizers for g in o.param_groups for p in g["params"])
    steps = None
    if hasattr(config, "num_minibatches"):
        steps = config.update_epochs * config.num_minibatches
    return count, steps


def time_allreduce(numels: list[int], processes: int, device: str, repeats: int) -> list[float]:
    """Median seconds of one all-reduce of ``numel`` float32 numbers over ``processes`` ranks
    (this file's worker under torchrun), per entry of ``numels``."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc-per-node={processes}", __file__, "--worker", device, str(repeats)]
    command += [str(n) for n in numels]
    environment = os.environ | {"PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=environment)
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def allreduce_worker(device: str, repeats: int, numels: list[int]) -> None:
    """One rank: time ``dist.all_reduce`` as average_gradients calls it; rank 0 prints JSON."""
    import torch
    import torch.distributed as dist

    from flowpolicy import distributed

    ranks = distributed.ranks_from_environment()
    where = distributed.rank_device(torch.device(device), ranks)
    distributed.start(where, ranks)
    medians = []
    for numel in numels:
        flat = torch.ones(numel, device=where)
        times = []
        for index in range(20 + repeats):
            if where.type == "cuda":
                torch.cuda.synchronize(where)
            tick = time.perf_counter()
            dist.all_reduce(flat)
            if where.type == "cuda":
                torch.cuda.synchronize(where)
            if index >= 20:
                times.append(time.perf_counter() - tick)
        medians.append(statistics.median(times))
    if ranks.is_main:
        print(json.dumps(medians))
    distributed.stop()


def allreduce_table(args: Args) -> str:
    """Markdown: per method and process count > 1, the gradient all-reduce's time, and per
    iteration (times the optimiser steps of an iteration, where known)."""
    lines = [
        "| options | env | method | parameters | processes | all-reduce ms "
        "| optimiser steps / iteration | all-reduce s / iteration |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for options in args.train_args:
        for env in args.envs:
            sizes = {m: gradient_sizes(m, env, options) for m in args.methods}
            for processes in [p for p in args.processes if p > 1]:
                seconds = time_allreduce(
                    [count for count, _ in sizes.values()], processes, args.device,
                    args.allreduce_repeats,
                )  # fmt: skip
                for (method, (count, steps)), took in zip(sizes.items(), seconds, strict=True):
                    per_iteration = f"{steps * took:.3f}" if steps else "-"
                    lines.append(
                        f"| `{options}` | {env} | {method} | {count:,} | {processes} | "
                        f"{took * 1e3:.3f} | {steps or '-'} | {per_iteration} |"
                    )
    return "\n".join(lines)


def main(args: Args) -> None:
    if args.processes[0] != 1 and len(args.processes) > 1:
        raise SystemExit("--processes must start with 1: the efficiency is relative to it.")
    rows = [
        (options, env, method, measure_points(args, method, env, options))
        for options in args.train_args
        for env in args.envs
        for method in args.methods
    ]
    text = "## Env steps/s and time per update\n\n" + scaling_table(rows)
    if any(p > 1 for p in args.processes):
        text += "\n\n## The gradient all-reduce\n\n" + allreduce_table(args)
    print(text)
    if args.out is not None:
        command = shlex.join(["python", "benchmarks/scaling.py", *sys.argv[1:]])
        page = (
            "# Data-parallel scaling\n\n"
            f"- Command: `{command}`\n- Machine: {machine_info()}\n- Device: {args.device}\n"
            f"- Date: {datetime.date.today().isoformat()}\n\n{text}\n"
        )
        args.out.write_text(page)
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        allreduce_worker(sys.argv[2], int(sys.argv[3]), [int(n) for n in sys.argv[4:]])
    else:
        main(tyro.cli(Args))
