"""Policies: a flow policy and a Gaussian policy behind the same small interface.

Both work in a normalised action space ``[-1, 1]^Da`` and map to the env's bounds at the
edge (:meth:`env_action`), and both carry their observation normaliser, so a saved policy is
self-contained. ``act(obs, mode)`` returns env actions; ``mode="zero"`` is the deterministic
action (zero initial noise for the flow, the mean for the Gaussian), ``mode="random"`` samples.

Shapes: ``B`` batch, ``Do`` obs size, ``Ta`` chunk length, ``Ta_exec`` executed actions,
``Da`` action size, ``A = Ta * Da`` flat action size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from flowpolicy import flows
from flowpolicy.nets import Activation, VelocityMLP, mlp

SampleMode = Literal["zero", "random"]
Squash = Literal["tanh", "clip"]


class RunningNorm(nn.Module):
    """Running mean/variance observation normaliser (parallel-variance update).

    ``normalize(x) = clip((x - mean) / sqrt(var + 1e-8), -clip, clip)``. Statistics change only
    when :meth:`update` is called; algorithms call it after an update so that a batch is acted
    on and learned from with identical statistics.
    """

    def __init__(self, size: int, clip: float = 10.0) -> None:
        super().__init__()
        self.clip = clip
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("var", torch.ones(size))
        self.register_buffer("count", torch.tensor(1e-4))

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Fold a batch (N, size) into the running statistics."""
        x = x.reshape(-1, self.mean.shape[0]).double()
        batch_mean, batch_var, batch_count = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        delta = batch_mean - self.mean
        total = self.count + batch_count
        new_mean = self.mean + delta * batch_count / total
        m2 = (
            self.var * self.count
            + batch_var * batch_count
            + delta.square() * self.count * batch_count / total
        )
        self.mean.copy_(new_mean)
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def forward(self, x: Tensor) -> Tensor:
        return ((x - self.mean) / torch.sqrt(self.var + 1e-8)).clamp(-self.clip, self.clip).float()


class _BoundedActions(nn.Module):
    """Maps normalised actions in [-1, 1]^Da to the env's box ``[low, high]``."""

    def __init__(self, action_low: Sequence[float], action_high: Sequence[float]) -> None:
        super().__init__()
        low = torch.as_tensor(np.asarray(action_low, dtype=np.float32))
        high = torch.as_tensor(np.asarray(action_high, dtype=np.float32))
        if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
            raise ValueError("action bounds must be finite")
        self.register_buffer("action_low", low)
        self.register_buffer("action_high", high)

    def scale_to_env(self, normalised: Tensor) -> Tensor:
        """(..., Da) in [-1, 1] -> (..., Da) in [low, high]."""
        return self.action_low + (normalised + 1.0) * 0.5 * (self.action_high - self.action_low)


class FlowPolicy(_BoundedActions):
    """A flow-matching policy ``v_theta(x, tau | s)`` sampled with K Euler steps.

    The policy produces a chunk of ``Ta`` actions (flat ``A = Ta * Da``); the env executes the
    first ``Ta_exec``. The raw Euler output ``a`` is what algorithms store and learn on; the env
    receives ``tanh(a)`` (``squash="tanh"``, FPO's choice) or ``clip(a, -1, 1)``, scaled to the
    env's bounds.

    Args:
        obs_dim: Do. action_low, action_high: env bounds, (Da,) each.
        chunk: Ta. chunk_exec: Ta_exec <= Ta.
        flow_steps: K Euler steps.
        hidden, time_dim, activation, output_scale: see :class:`flowpolicy.nets.VelocityMLP`.
        squash: how raw actions are bounded.
    """

    def __init__(
        self,
        obs_dim: int,
        action_low: Sequence[float],
        action_high: Sequence[float],
        *,
        chunk: int = 1,
        chunk_exec: int = 1,
        flow_steps: int = 10,
        hidden: Sequence[int] = (32, 32, 32, 32),
        time_dim: int = 8,
        activation: Activation = "silu",
        output_scale: float = 0.25,
        squash: Squash = "tanh",
    ) -> None:
        super().__init__(action_low, action_high)
        if not 1 <= chunk_exec <= chunk:
            raise ValueError(f"need 1 <= chunk_exec <= chunk, got {chunk_exec} and {chunk}")
        self.obs_dim = obs_dim
        self.action_dim = len(self.action_low)
        self.chunk = chunk
        self.chunk_exec = chunk_exec
        self.flow_steps = flow_steps
        self.squash = squash
        self.obs_norm = RunningNorm(obs_dim)
        self.velocity_net = VelocityMLP(
            obs_dim, chunk * self.action_dim, hidden, time_dim, activation, output_scale
        )

    @property
    def flat_action_dim(self) -> int:
        """A = Ta * Da."""
        return self.chunk * self.action_dim

    def velocity(self, obs_normalised: Tensor, x: Tensor, tau: Tensor) -> Tensor:
        """v_theta: obs (B, Do) already normalised, x (B, A), tau (B,) -> (B, A)."""
        return self.velocity_net(obs_normalised, x, tau)

    def initial_noise(self, batch: int, mode: SampleMode, device: torch.device) -> Tensor:
        """x_0: standard normal (random sampling) or zeros (zero sampling); (B, A)."""
        shape = (batch, self.flat_action_dim)
        if mode == "zero":
            return torch.zeros(shape, device=device)
        return torch.randn(shape, device=device)

    def sample(
        self, obs: Tensor, mode: SampleMode = "random", return_chain: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Raw actions ``a = x_K`` (B, A) from raw observations (B, Do); optionally the chain."""
        obs_normalised = self.obs_norm(obs)
        x0 = self.initial_noise(obs.shape[0], mode, obs.device)
        return flows.euler_sample(
            lambda x, tau: self.velocity(obs_normalised, x, tau), x0, self.flow_steps, return_chain
        )

    def env_action(self, raw_action: Tensor) -> Tensor:
        """Raw chunk (B, A) -> executed env actions (B, Ta_exec * Da) in the env's bounds."""
        executed = raw_action.reshape(-1, self.chunk, self.action_dim)[:, : self.chunk_exec]
        bounded = executed.tanh() if self.squash == "tanh" else executed.clamp(-1.0, 1.0)
        return self.scale_to_env(bounded).reshape(raw_action.shape[0], -1)

    @torch.no_grad()
    def act(self, obs: Tensor, mode: SampleMode = "random") -> Tensor:
        """Env actions (B, Ta_exec * Da) for raw observations (B, Do)."""
        return self.env_action(self.sample(obs, mode))


class GaussianPolicy(_BoundedActions):
    """Diagonal Gaussian with a state-independent log-std (CleanRL's continuous PPO).

    ``a ~ N(mu_theta(s), diag(exp(2 log_std)))``; the env receives ``clip(a, -1, 1)`` scaled to
    its bounds, and the unclipped ``a`` is stored for the likelihood ratio.
    """

    def __init__(
        self,
        obs_dim: int,
        action_low: Sequence[float],
        action_high: Sequence[float],
        *,
        hidden: Sequence[int] = (64, 64),
        activation: Activation = "tanh",
        initial_log_std: float = 0.0,
    ) -> None:
        super().__init__(action_low, action_high)
        self.obs_dim = obs_dim
        self.action_dim = len(self.action_low)
        self.obs_norm = RunningNorm(obs_dim)
        self.mean_net = mlp(obs_dim, self.action_dim, hidden, activation, output_gain=0.01)
        self.log_std = nn.Parameter(torch.full((self.action_dim,), float(initial_log_std)))

    def distribution(self, obs_normalised: Tensor) -> torch.distributions.Normal:
        """pi(.|s) for normalised observations (B, Do); batch shape (B, Da)."""
        mean = self.mean_net(obs_normalised)
        return torch.distributions.Normal(mean, self.log_std.exp().expand_as(mean))

    def env_action(self, raw_action: Tensor) -> Tensor:
        """Raw sample (B, Da) -> env action (B, Da) within bounds."""
        return self.scale_to_env(raw_action.clamp(-1.0, 1.0))

    @torch.no_grad()
    def act(self, obs: Tensor, mode: SampleMode = "random") -> Tensor:
        """Env actions (B, Da): the mean (``zero``) or a sample (``random``)."""
        dist = self.distribution(self.obs_norm(obs))
        raw = dist.mean if mode == "zero" else dist.sample()
        return self.env_action(raw)
