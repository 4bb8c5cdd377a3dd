"""Rollout storage for the on-policy methods.

The loop writes one row per vector-env step; the algorithm's ``act`` decides what else is kept
per step (its *record*: e.g. log-probs for PPO, the (tau, eps) pairs and old CFM losses for
FPO). The loop never looks inside a record.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class RolloutBatch:
    """One iteration of experience, every tensor with leading dims (T, N).

    Attributes:
        obs: (T, N, Do) raw observations acted on.
        next_obs: (T, N, Do) the true next observations (final obs where an episode ended).
        rewards: (T, N) raw env rewards (algorithms apply their own scaling).
        terminated: (T, N) episode ended in an absorbing state.
        dones: (T, N) episode ended (terminated or truncated).
        records: the algorithm's own per-step tensors, each (T, N, ...).
        progress: fraction of the run's env-step budget done before this batch, in [0, 1).
    """

    obs: Tensor
    next_obs: Tensor
    rewards: Tensor
    terminated: Tensor
    dones: Tensor
    records: dict[str, Tensor]
    progress: float = 0.0


class RolloutBuffer:
    """Preallocated (T, N, ...) storage filled step by step, read as a :class:`RolloutBatch`."""

    def __init__(self, num_steps: int, num_envs: int, obs_dim: int) -> None:
        self.num_steps = num_steps
        self.obs = torch.zeros(num_steps, num_envs, obs_dim)
        self.next_obs = torch.zeros(num_steps, num_envs, obs_dim)
        self.rewards = torch.zeros(num_steps, num_envs)
        self.terminated = torch.zeros(num_steps, num_envs)
        self.dones = torch.zeros(num_steps, num_envs)
        self.records: dict[str, Tensor] = {}
        self.step = 0

    def add(
        self,
        obs: Tensor,
        record: dict[str, Tensor],
        reward: Tensor,
        next_obs: Tensor,
        terminated: Tensor,
        done: Tensor,
    ) -> None:
        """Store one vector step; record tensors are (N, ...)."""
        t = self.step
        if t >= self.num_steps:
            raise RuntimeError("rollout buffer is full; call batch() and reset()")
        for name, value in record.items():
            if name not in self.records:
                self.records[name] = torch.zeros(self.num_steps, *value.shape, dtype=value.dtype)
            self.records[name][t] = value
        self.obs[t], self.next_obs[t], self.rewards[t] = obs, next_obs, reward
        self.terminated[t], self.dones[t] = terminated, done
        self.step += 1

    def batch(self, progress: float = 0.0) -> RolloutBatch:
        """The full rollout; raises if it is not full yet."""
        if self.step != self.num_steps:
            raise RuntimeError(f"rollout has {self.step} of {self.num_steps} steps")
        return RolloutBatch(
            self.obs,
            self.next_obs,
            self.rewards,
            self.terminated,
            self.dones,
            dict(self.records),
            progress,
        )

    def reset(self) -> None:
        self.step = 0
