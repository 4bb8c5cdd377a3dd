"""How fast playground/ envs run here, and what the torch <-> JAX bridge costs.

For each task, N envs stepped for S steps after a warm-up step (compilation is not timed):

- ``simulator``: the jitted batch step in JAX alone, zero actions made on the JAX side,
  waiting for each step's result (no torch at all);
- ``bridge copy`` / ``bridge dlpack``: the same zero actions as a torch tensor through
  :class:`~flowpolicy.envs.playground.PlaygroundVectorEnv` with each bridge (every output back
  in torch each step): their extra time over ``simulator`` is the bridge's cost;
- ``rollout (fpo acting)``: FPO's ``fpo-playground`` policy acting (10 Euler steps of its 4x32
  network) and the env stepping through the default bridge: what a training rollout costs.

    python benchmarks/playground_speed.py --envs CartpoleBalance CheetahRun --num-envs 2048 \\
        --out docs/benchmarks/playground_speed_cpu.md

End-to-end training (rollout and update) is measured by ``benchmarks/throughput.py``.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import date
from pathlib import Path

import torch
import tyro
from results import machine_info

from flowpolicy.algos.fpo import FPO
from flowpolicy.algos.playground_regime import fpo_playground
from flowpolicy.device import resolve_device
from flowpolicy.envs.playground import PlaygroundVectorEnv


@dataclasses.dataclass(frozen=True)
class Options:
    envs: tuple[str, ...] = ("CartpoleBalance", "CheetahRun")
    """Playground DMC task names."""
    num_envs: int = 2048
    """envs stepped as one batch."""
    steps: int = 100
    """timed steps per measurement."""
    device: str = "cpu"
    """torch device (auto, cpu, cuda, cuda:N)."""
    out: Path | None = None
    """write the table (markdown) here as well."""


def timed(step_once, steps: int) -> float:
    """Seconds for ``steps`` calls of ``step_once`` after one untimed call."""
    step_once()
    start = time.perf_counter()
    for _ in range(steps):
        step_once()
    return time.perf_counter() - start


def simulator_seconds(env: PlaygroundVectorEnv, steps: int) -> float:
    """The batch step in JAX alone, resets included, each step waited for."""
    jax = env._jax
    actions = jax.device_put(jax.numpy.zeros((env.num_envs, env.action_dim)), env._jax_device)

    def step_once() -> None:
        env._carry, out = env._step_batch(env._carry, actions)
        ended = out[3]
        if bool(ended.any()):
            env._carry = env._reset_batch(env._carry, ended)
        jax.block_until_ready(env._carry)

    return timed(step_once, steps)


def measure(name: str, options: Options, device: torch.device) -> list[tuple[str, float]]:
    rows = []
    n = options.num_envs
    for label, bridge in (
        ("simulator", None),
        ("bridge copy", "copy"),
        ("bridge dlpack", "dlpack"),
    ):
        env = PlaygroundVectorEnv(
            f"playground/{name}", n, seed=0, device=device, bridge=bridge or "auto"
        )
        env.reset(seed=0)
        if bridge is None:
            seconds = simulator_seconds(env, options.steps)
        else:
            zeros = torch.zeros(n, env.action_dim, device=device)
            seconds = timed(lambda env=env, zeros=zeros: env.step(zeros), options.steps)
        rows.append((label, n * options.steps / seconds))
    env = PlaygroundVectorEnv(f"playground/{name}", n, seed=0, device=device)
    obs = env.reset(seed=0)
    with torch.device(device):
        algo = FPO(
            env.obs_dim,
            env.action_low.to(device),
            env.action_high.to(device),
            fpo_playground(num_envs=n),
        )
    state = {"obs": obs}

    def rollout_step() -> None:
        action, _ = algo.act(state["obs"])
        state["obs"] = env.step(action).obs

    rows.append(("rollout (fpo acting)", n * options.steps / timed(rollout_step, options.steps)))
    return rows


def main(options: Options) -> None:
    device = resolve_device(options.device)
    lines = [
        "# playground/ env speed",
        "",
        f"- Command: `python benchmarks/playground_speed.py --envs {' '.join(options.envs)} "
        f"--num-envs {options.num_envs} --steps {options.steps} --device {options.device}`",
        f"- Machine: {machine_info()}, {torch.get_num_threads()} torch threads",
        f"- Device: {device}",
        f"- Date: {date.today().isoformat()}",
        "",
        "| task | measurement | env steps/s | bridge cost (of simulator time) |",
        "|---|---|---|---|",
    ]
    for name in options.envs:
        rows = measure(name, options, device)
        simulator = rows[0][1]
        for label, rate in rows:
            cost = f"{simulator / rate - 1:.0%}" if label.startswith("bridge") else ""
            lines.append(f"| {name} | {label} | {rate:,.0f} | {cost} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if options.out is not None:
        options.out.write_text(text)


if __name__ == "__main__":
    main(tyro.cli(Options))
