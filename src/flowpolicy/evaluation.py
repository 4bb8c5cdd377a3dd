"""Policy evaluation in zero and random sampling.

Every evaluation of a run uses the same env seeds, so curves compare like with like, and it
draws its noise from a forked RNG, so evaluating never changes the training run's numbers.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from flowpolicy.device import forked_rng_devices, module_device
from flowpolicy.envs import EnvSpec
from flowpolicy.envs.tensor_env import make_tensor_env

ActFn = Callable[[Tensor, str], Tensor]
MODES = ("zero", "random")
EVAL_SEED_OFFSET = 10_000
"""A run with seed s evaluates on env and noise seed s + EVAL_SEED_OFFSET (train and pretrain
alike), away from the seeds its training envs use."""


def evaluate(
    policy: torch.nn.Module,
    env: EnvSpec,
    episodes: int,
    seed: int,
    chunk_exec: int = 1,
    mode: str = "zero",
    max_parallel: int = 10,
) -> np.ndarray:
    """Returns of ``episodes`` complete episodes; shape (episodes,).

    Args:
        policy: anything with ``act(obs (B, Do), mode) -> env actions (B, Ta_exec * Da)``.
        env: env id or factory. seed: env and noise seed. chunk_exec: actions per policy call.
        mode: ``zero`` (deterministic) or ``random`` sampling.
        max_parallel: envs stepped together; each runs an equal share of the episodes.
    """
    num_envs = min(episodes, max_parallel)
    quota = np.full(num_envs, episodes // num_envs)
    quota[: episodes % num_envs] += 1
    device = module_device(policy)
    envs = make_tensor_env(env, num_envs, seed=seed, chunk_exec=chunk_exec, device=device)
    returns: list[float] = []
    running = np.zeros(num_envs)
    done_count = np.zeros(num_envs, dtype=np.int64)
    try:
        with torch.random.fork_rng(devices=forked_rng_devices(device)):
            torch.manual_seed(seed)
            obs = envs.reset(seed=seed)
            while (done_count < quota).any():
                step = envs.step(policy.act(obs, mode))
                obs = step.obs
                # Episode ends are read on the host: evaluation runs few envs and needs the
                # exact count of finished episodes.
                running += step.reward.double().cpu().numpy()
                for i in np.flatnonzero(step.done.cpu().numpy()):
                    if done_count[i] < quota[i]:
                        returns.append(float(running[i]))
                        done_count[i] += 1
                    running[i] = 0.0
    finally:
        envs.close()
    return np.asarray(returns)


def evaluate_modes(
    policy: torch.nn.Module, env: EnvSpec, episodes: int, seed: int, chunk_exec: int = 1
) -> dict[str, float]:
    """``eval/<mode>/return_mean`` and ``return_std`` for both sampling modes."""
    metrics: dict[str, float] = {}
    for mode in MODES:
        returns = evaluate(policy, env, episodes, seed, chunk_exec, mode)
        metrics[f"eval/{mode}/return_mean"] = float(returns.mean())
        metrics[f"eval/{mode}/return_std"] = float(returns.std())
    return metrics
