"""The policy FQL (:mod:`flowpolicy.algos.fql`) acts with, evaluates and exports: the one-step
policy ``mu_w(s, z) = MLP([s, z])``, ``z ~ N(0, I)``, which maps noise to an action chunk in one
network pass (distilled from FQL's BC flow while it maximises Q), clipped to [-1, 1] and mapped
to the env's bounds.

Shapes: ``B`` states, ``Do`` observation size, ``Da`` action size, ``h`` chunk, ``A = h * Da``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from flowpolicy.nets import Activation, mlp
from flowpolicy.policies import ObsNormalization, SampleMode, _BoundedActions, make_obs_norm


class OneStepPolicy(_BoundedActions):
    """``mu_w(s, z)``: an MLP on ``[normalised obs, z]`` that maps noise to an action chunk in
    one pass; ``act(obs, mode)`` uses ``z = 0`` (zero) or ``z ~ N(0, I)`` (random), clips to
    [-1, 1] and maps to the env's bounds (through the action normaliser, as a FlowPolicy does).

    Args:
        obs_dim: Do. action_low, action_high: env bounds, (Da,) each.
        chunk: h. chunk_exec: executed actions (= h in FQL).
        hidden, activation: the MLP. obs_normalization: the normaliser's kind.
    """

    squash = "clip"

    def __init__(
        self,
        obs_dim: int,
        action_low: Sequence[float],
        action_high: Sequence[float],
        *,
        chunk: int = 1,
        chunk_exec: int = 1,
        hidden: Sequence[int] = (512, 512, 512, 512),
        activation: Activation = "silu",
        obs_normalization: ObsNormalization = "running",
    ) -> None:
        super().__init__(action_low, action_high)
        self.obs_dim, self.action_dim = obs_dim, len(self.action_low)
        self.chunk, self.chunk_exec = chunk, chunk_exec
        self.obs_norm = make_obs_norm(obs_normalization, obs_dim)
        size = self.flat_action_dim
        self.net = mlp(obs_dim + size, size, hidden, activation)
        self.init_kwargs: dict[str, Any] = {
            "obs_dim": obs_dim,
            "action_low": self.action_low.tolist(),
            "action_high": self.action_high.tolist(),
            "chunk": chunk,
            "chunk_exec": chunk_exec,
            "hidden": tuple(hidden),
            "activation": activation,
            "obs_normalization": obs_normalization,
        }

    def raw(self, obs_normalised: Tensor, noise: Tensor) -> Tensor:
        """``mu_w``: normalised obs (B, Do), z (B, A) -> unclipped chunk (B, A)."""
        return self.net(torch.cat([obs_normalised, noise], dim=-1))

    def sample(self, obs: Tensor, mode: SampleMode = "random") -> Tensor:
        """Clipped chunks (B, A) in [-1, 1] for raw observations (B, Do)."""
        shape = (obs.shape[0], self.flat_action_dim)
        noise = torch.zeros(shape, device=obs.device)
        if mode == "random":
            noise = torch.randn(shape, device=obs.device)
        return self.raw(self.obs_norm(obs), noise).clamp(-1.0, 1.0)

    def env_action(self, bounded: Tensor) -> Tensor:
        """Chunk (B, A) in [-1, 1] -> env actions (B, Ta_exec * Da) in the env's bounds."""
        return self.scale_to_env(self._executed(bounded)).reshape(bounded.shape[0], -1)

    @torch.no_grad()
    def act(self, obs: Tensor, mode: SampleMode = "random") -> Tensor:
        """Env actions (B, Ta_exec * Da) for raw observations (B, Do)."""
        return self.env_action(self.sample(obs, mode))
