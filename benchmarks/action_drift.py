"""How far a fine-tuned policy's raw actions drift past its squash, and what its updates saw.

A flow or diffusion policy acts through a squash: the raw action ``a`` (the last point of the
chain) is clipped to [-1, 1] (or put through tanh) before the env sees it. Past the bound the
env cannot tell one raw action from another, so nothing in the reward pulls a raw action back.
This script measures, for each run directory:

- the raw actions of the starting policy (``init_policy.pt``) and of the run's policy (the
  last checkpoint; for a run stopped by the NaN/inf guard, the last good one), each on its own
  rollouts in the run's env with sampled (random-mode) actions: the mean |a|, the 99th
  percentile, the maximum, and the share of coordinates past the bound (|a| > 1, clipped or
  tanh'd to more than 0.76) and far past it (|a| > 2);
- from the run's TensorBoard scalars (when it logged them): the first and the largest
  ``policy/cfm_loss`` and ``loss/grad_norm`` (the step of the largest), which is where an FPO
  update sees the CFM losses of these actions;
- the last zero-sampling evaluation, and whether the run finished (``done.json``).

Example (the FPO diagnosis in docs/fpo.md)::

    python benchmarks/action_drift.py benchmarks/runs/finetune/Walker2d-v5/{fpo,fpo-finetune,fpo++,reinflow}/seed*

Prints a Markdown table; ``--out FILE`` also writes it, after the command that made it. Each policy acts for ``--decisions``
policy calls (each executes its chunk) from ``--seed``; one torch thread.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

from flowpolicy.envs import make_env
from flowpolicy.policy_io import load_policy_file
from flowpolicy.results import load_run
from flowpolicy.train import load_policy


@dataclass
class Args:
    runs: tyro.conf.Positional[list[Path]]
    """`flowpolicy train` run directories made from ``--init`` (they hold init_policy.pt)."""
    decisions: int = 1000
    """policy calls per policy (each executes a chunk of actions)."""
    seed: int = 0
    """seed of the env resets and of the policies' noise."""
    out: Path | None = None
    """also write the table to this Markdown file."""


@dataclass
class RawActionStats:
    """|a| statistics over every coordinate of every raw action chunk a policy sampled."""

    mean_abs: float
    p99_abs: float
    max_abs: float
    past_bound: float  # share of coordinates with |a| > 1
    far_past_bound: float  # share with |a| > 2


def raw_action_stats(
    policy: torch.nn.Module, env_id: str, decisions: int, seed: int
) -> RawActionStats:
    """Roll ``policy`` out in ``env_id`` with sampled actions and summarise its raw actions.

    Each call draws one raw chunk ``a`` (1, Ta * Da) with ``policy.sample(obs, "random")``
    and executes ``policy.env_action(a)``, its first Ta_exec actions (``ActionChunk`` stops
    them at the end of an episode).
    """
    torch.manual_seed(seed)
    env = make_env(env_id, seed=seed, chunk_exec=policy.chunk_exec)
    obs, _ = env.reset(seed=seed)
    raw_chunks = []
    for _ in range(decisions):
        with torch.no_grad():
            raw = policy.sample(torch.as_tensor(obs, dtype=torch.float32)[None], "random")
            obs, _, terminated, truncated, _ = env.step(policy.env_action(raw)[0].numpy())
        raw_chunks.append(raw[0].numpy())
        if terminated or truncated:
            obs, _ = env.reset()
    magnitudes = np.abs(np.concatenate(raw_chunks))
    return RawActionStats(
        mean_abs=float(magnitudes.mean()),
        p99_abs=float(np.percentile(magnitudes, 99)),
        max_abs=float(magnitudes.max()),
        past_bound=float((magnitudes > 1.0).mean()),
        far_past_bound=float((magnitudes > 2.0).mean()),
    )


def scalar_peaks(run_dir: Path, tags: tuple[str, ...]) -> dict[str, tuple[float, float, int]]:
    """For each TensorBoard scalar in ``tags``: (first value, largest value, its step).

    Tags the run did not log are left out; a run without a ``tb`` folder gives {}.
    """
    if not (run_dir / "tb").is_dir():
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    peaks = {}
    for tag in tags:
        if tag not in events.Tags()["scalars"]:
            continue
        scalars = events.Scalars(tag)
        largest = max(scalars, key=lambda scalar: scalar.value)
        peaks[tag] = (scalars[0].value, largest.value, largest.step)
    return peaks


def describe_run(run_dir: Path, decisions: int, seed: int) -> list[str]:
    """One table row: the run (last three path parts), seed, finished?, last evaluation, the
    starting and final policies' drift, the peaks of the logged losses."""
    run = load_run(run_dir)
    policy = load_policy(run_dir)
    if not hasattr(policy, "sample"):
        raise SystemExit(
            f"{run_dir}: its policy ({type(policy).__name__}) has no sample(obs, mode) that "
            "returns raw actions. Pass runs of methods that tune the flow or diffusion policy "
            "itself (fpo, fpo++, reinflow, rldt, qam); DPPO's split policy is not supported."
        )
    initial_policy = load_policy_file(run_dir / "init_policy.pt")
    start = raw_action_stats(initial_policy, run.env, decisions, seed)
    end = raw_action_stats(policy, run.env, decisions, seed)
    steps, zero_returns = run.curve.steps, run.curve.returns["zero"]
    last_eval = f"{zero_returns[-1]:.0f} ({steps[-1] // 1000}k)" if len(steps) else "-"
    peaks = scalar_peaks(run_dir, ("policy/cfm_loss", "loss/grad_norm"))

    def peak(tag: str) -> str:
        if tag not in peaks:
            return "-"
        first, largest, step = peaks[tag]
        return f"{first:.3g} → {largest:.3g} ({step // 1000}k)"

    return [
        "/".join(run_dir.parts[-3:]),  # env/method/seedN in the benchmark's layout
        str(run.seed),
        "yes" if run.finished else "no",
        last_eval,
        f"{start.past_bound:.1%} / {start.far_past_bound:.1%} / {start.max_abs:.1f}",
        f"{end.past_bound:.1%} / {end.far_past_bound:.1%} / {end.max_abs:.1f}",
        f"{end.p99_abs:.2f}",
        peak("policy/cfm_loss"),
        peak("loss/grad_norm"),
    ]


TITLE = "Raw actions past the squash, and the largest CFM loss and gradient norm of each run"
HEADER = [
    "run",
    "seed",
    "finished",
    "last zero-sampling eval (step)",
    "start: share \\|a\\|>1 / \\|a\\|>2 / max \\|a\\|",
    "end: share \\|a\\|>1 / \\|a\\|>2 / max \\|a\\|",
    "end: p99 \\|a\\|",
    "cfm_loss first → largest (step)",
    "grad norm first → largest (step)",
]


def main(args: Args) -> str:
    torch.set_num_threads(1)
    rows = [HEADER, ["---"] * len(HEADER)]
    rows += [describe_run(run_dir, args.decisions, args.seed) for run_dir in args.runs]
    table = "\n".join("| " + " | ".join(row) + " |" for row in rows)
    print(table)
    if args.out is not None:
        command = shlex.join(["python", "benchmarks/action_drift.py", *map(str, args.runs)])
        args.out.write_text(
            f"# {TITLE}\n\nMade by `{command}` (decisions {args.decisions}, seed {args.seed}).\n\n"
            f"{table}\n"
        )
    return table


if __name__ == "__main__":
    main(tyro.cli(Args))
