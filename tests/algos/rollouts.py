"""A random rollout for algorithm tests: real records from ``algo.act``, made-up env data."""

from __future__ import annotations

import torch

from flowpolicy.buffers import RolloutBatch, RolloutBuffer


def random_rollout(algo, obs_dim: int, seed: int = 0) -> RolloutBatch:
    """Random observations and rewards for a 2-env config; env 0 terminates at t = 3 and
    env 1 is truncated at t = 5."""
    cfg = algo.config
    generator = torch.Generator().manual_seed(seed)
    buffer = RolloutBuffer(cfg.num_steps, cfg.num_envs, obs_dim)
    for t in range(cfg.num_steps):
        obs = 2.0 + 3.0 * torch.randn(cfg.num_envs, obs_dim, generator=generator)
        _, record = algo.act(obs)
        buffer.add(
            obs,
            record,
            torch.randn(cfg.num_envs, generator=generator),
            obs + torch.randn(cfg.num_envs, obs_dim, generator=generator),
            torch.tensor([float(t == 3), 0.0]),
            torch.tensor([float(t == 3), float(t == 5)]),
        )
    return buffer.batch()
