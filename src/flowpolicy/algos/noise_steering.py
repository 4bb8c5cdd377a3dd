"""The policy DSRL (:mod:`flowpolicy.algos.dsrl`) trains and exports: a frozen flow or
diffusion policy ``pi_0`` whose initial noise is chosen by a SAC actor,

    w = b tanh(z), z ~ N(mu_psi(s), sigma_psi(s)^2)   (zero mode: w = b tanh(mu_psi(s)))
    a = pi_0(s, w)   (``deterministic_sample``: Euler ODE from x_0 = w, or DDIM eta 0 from x_K = w)

Shapes: ``B`` states, ``Do`` observation size, ``A = Ta * Da`` the noise and the raw chunk,
``A_exec = Ta_exec * Da`` the executed part.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from flowpolicy.algos import sac
from flowpolicy.errors import UserError
from flowpolicy.nets import Activation
from flowpolicy.policies import DiffusionPolicy, FlowPolicy, SampleMode

SteerablePolicy = FlowPolicy | DiffusionPolicy


def bounded_executed(policy: SteerablePolicy, raw: Tensor, executed_dim: int) -> Tensor:
    """Raw chunks (..., A) -> their executed part, bounded as the env gets it (..., A_exec)."""
    executed = raw[..., :executed_dim]
    return executed.tanh() if getattr(policy, "squash", "clip") == "tanh" else executed.clamp(-1, 1)


class DSRLPolicy(nn.Module):
    """A frozen flow or diffusion policy ``pi_0`` steered by a noise actor ``pi_psi``: what
    evaluation runs and ``policy.pt`` holds.

    Args:
        policy: the pretrained FlowPolicy or DiffusionPolicy (copied, frozen).
        noise_bound: b. hidden, activation, layer_norm: the noise actor's network.
    """

    def __init__(
        self,
        policy: SteerablePolicy,
        noise_bound: float,
        hidden: tuple[int, ...],
        activation: Activation = "tanh",
        layer_norm: bool = True,
    ) -> None:
        super().__init__()
        if not callable(getattr(policy, "deterministic_sample", None)):
            raise UserError(
                f"DSRL steers a policy through its initial noise, but a {type(policy).__name__} "
                "has no deterministic noise-to-action map. Start DSRL from a FlowPolicy or a "
                "DiffusionPolicy (`flowpolicy pretrain --policy flow` or `--policy diffusion`)."
            )
        self.base = copy.deepcopy(policy).requires_grad_(False)
        self.noise_bound = noise_bound
        self.actor = sac.SquashedGaussianActor(
            policy.obs_dim, policy.flat_action_dim, hidden, activation, layer_norm
        )
        self.init_kwargs: dict[str, Any] = {
            "policy": {"class": type(policy).__name__, "init_kwargs": dict(policy.init_kwargs)},
            "noise_bound": noise_bound,
            "hidden": tuple(hidden),
            "activation": activation,
            "layer_norm": layer_norm,
        }

    obs_dim = property(lambda self: self.base.obs_dim)
    action_dim = property(lambda self: self.base.action_dim)
    chunk = property(lambda self: self.base.chunk)
    chunk_exec = property(lambda self: self.base.chunk_exec)
    obs_norm = property(lambda self: self.base.obs_norm)

    def noise(self, obs: Tensor, mode: SampleMode) -> Tensor:
        """The steering noise w (B, A) for raw observations (B, Do): ``b tanh(mu)`` or a sample."""
        obs_normalised = self.base.obs_norm(obs)
        if mode == "zero":
            u = self.actor.mode(obs_normalised)
        else:
            u = self.actor.sample(obs_normalised)[0]
        return self.noise_bound * u

    def steer(self, obs: Tensor, noise: Tensor) -> Tensor:
        """The frozen policy's raw chunk (B, A) at noise w (B, A)."""
        return self.base.deterministic_sample(obs, noise)

    def act(self, obs: Tensor, mode: SampleMode = "random") -> Tensor:
        """Env actions (B, Ta_exec * Da) for raw observations (B, Do)."""
        with torch.no_grad():
            return self.base.env_action(self.steer(obs, self.noise(obs, mode)))
