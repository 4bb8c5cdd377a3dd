"""How well a policy follows each kind of joystick command on ``playground/HumanoidJoystick``.

:func:`evaluate_commands` runs ``episodes_per_command`` episodes of each command type (stand,
forward, backward, lateral, turn), all as one batch, with the command fixed for the whole
episode (no redraws), and reports per type the mean absolute tracking error of each commanded
velocity, the mean return, and the falls per episode. Shapes: N = command types x episodes.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from flowpolicy.device import forked_rng_devices
from flowpolicy.envs.humanoid_joystick import NAME, obs_slices, register
from flowpolicy.envs.playground import PlaygroundVectorEnv

COMMANDS: dict[str, tuple[float, float, float]] = {
    "stand": (0.0, 0.0, 0.0),
    "forward": (0.8, 0.0, 0.0),
    "backward": (-0.4, 0.0, 0.0),
    "lateral": (0.0, 0.3, 0.0),
    "turn": (0.0, 0.0, 0.5),
}
"""Command type -> (vx m/s, vy m/s, wz rad/s), each inside the default ranges."""


def set_commands(env: PlaygroundVectorEnv, commands: Tensor) -> Tensor:
    """Fix each env's command (N, 3) for the rest of its episode; returns the observations
    (N, Do) with the new command in them. Call it right after ``env.reset``.

    It writes into the env's JAX batch (``info["command"]``, ``info["fixed_command"]`` and the
    observation's last 3 entries), which the env's step then carries on; an env that ends its
    episode is reset with a fresh random command.
    """
    jax = env._jax
    state, steps, key = env._carry  # the batch: states, step counters, reset key
    command = commands.detach().to("cpu").numpy().astype(state.info["command"].dtype)
    obs = np.array(state.obs)
    obs[:, obs_slices()["command"]] = command
    fixed = np.ones(state.info["fixed_command"].shape, dtype=bool)
    # Committed to the env's device like the rest of the batch: an uncommitted array would
    # make the jitted step compile again.
    command, obs, fixed = jax.device_put((command, obs, fixed), env._jax_device)
    info = dict(state.info, command=command, fixed_command=fixed)
    env._carry = (state.replace(info=info, obs=obs), steps, key)
    return env._to_torch(obs)


def evaluate_commands(
    policy: torch.nn.Module,
    episodes_per_command: int,
    seed: int,
    device: torch.device | str = "cpu",
    *,
    chunk_exec: int = 1,
    mode: str = "zero",
    max_steps: int | None = None,
    commands: Mapping[str, tuple[float, float, float]] = COMMANDS,
    env_id: str = f"playground/{NAME}",
) -> dict[str, dict[str, float]]:
    """Per command type: ``vx_error``, ``vy_error``, ``yaw_rate_error`` (mean over the steps of
    |velocity - command|, m/s and rad/s, averaged over episodes), ``lin_vel_error`` (the same
    for the xy error's norm), ``return_mean``, ``falls_per_episode`` and ``steps_mean``.

    Args:
        policy: anything with ``act(obs (N, Do), mode) -> env actions (N, chunk_exec * Da)``,
            on ``device``.
        episodes_per_command: episodes of each type, run side by side (one per env).
        seed: env and noise seed. chunk_exec: control steps per policy call; the velocities are
            read at the end of each call's chunk.
        max_steps: stop after this many control steps (rounded up to whole chunks; default the
            task's episode length, 1000). An episode that reaches it counts as not fallen.
        commands: the command types to run (default :data:`COMMANDS`).
        env_id: a ``playground/`` joystick task registered by :func:`register`.
    """
    if episodes_per_command < 1:
        raise ValueError(f"episodes_per_command must be >= 1, got {episodes_per_command}")
    register()
    per = episodes_per_command
    table = torch.tensor(list(commands.values()), dtype=torch.float32)  # (types, 3)
    target = table.repeat_interleave(per, dim=0).to(device)  # (N, 3)
    n = target.shape[0]
    env = PlaygroundVectorEnv(env_id, n, seed=seed, chunk_exec=chunk_exec, device=device)
    limit = min(max_steps or env.episode_length, env.episode_length)
    parts = obs_slices()
    returns = torch.zeros(n, dtype=torch.float64, device=device)
    errors = torch.zeros(n, 4, dtype=torch.float64, device=device)  # vx, vy, wz, |xy| sums
    counts = torch.zeros(n, device=device)
    fell = torch.zeros(n, dtype=torch.bool, device=device)
    active = torch.ones(n, dtype=torch.bool, device=device)
    try:
        with torch.random.fork_rng(devices=forked_rng_devices(torch.device(device))):
            torch.manual_seed(seed)
            env.reset(seed=seed)
            obs = set_commands(env, target)
            steps = 0
            while steps < limit and bool(active.any()):
                with torch.no_grad():
                    actions = policy.act(obs, mode)
                step = env.step(actions)
                steps += chunk_exec
                # final_obs: where each episode really is after the step, ended or not.
                lin = step.final_obs[:, parts["lin_vel"]]
                wz = step.final_obs[:, parts["ang_vel"]][:, 2]
                err = torch.stack(
                    [
                        (lin[:, 0] - target[:, 0]).abs(),
                        (lin[:, 1] - target[:, 1]).abs(),
                        (wz - target[:, 2]).abs(),
                        (lin[:, :2] - target[:, :2]).norm(dim=1),
                    ],
                    dim=1,
                )
                errors += torch.where(active[:, None], err.double(), 0.0)
                returns += torch.where(active, step.reward.double(), 0.0)
                counts += active.float()
                fell |= active & step.terminated
                active &= ~step.done
                obs = step.obs
    finally:
        env.close()
    mean_errors = (errors / counts.clamp(min=1)[:, None].double()).cpu().numpy()
    out: dict[str, dict[str, float]] = {}
    for i, name in enumerate(commands):
        rows = slice(i * per, (i + 1) * per)
        e = mean_errors[rows].mean(axis=0)
        out[name] = {
            "vx_error": float(e[0]),
            "vy_error": float(e[1]),
            "yaw_rate_error": float(e[2]),
            "lin_vel_error": float(e[3]),
            "return_mean": float(returns[rows].mean()),
            "falls_per_episode": float(fell[rows].double().mean()),
            "steps_mean": float(np.mean(counts[rows].cpu().numpy()) * chunk_exec),
        }
    return out
