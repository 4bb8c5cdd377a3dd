"""Soft actor-critic pieces (Haarnoja et al. 2018, as in Stable-Baselines3's SAC, which DSRL's
released code builds on): the tanh-squashed Gaussian actor, the learned temperature and the
soft TD target. With ``u = tanh(z)``, ``z ~ N(mu(s), sigma(s)^2)``:

    log pi(u|s) = sum_i [log N(z_i; mu_i, sigma_i^2) - log(1 - u_i^2 + 1e-6)]
    y           = r + gamma (1 - term) [min_e Qbar_e(s', u') - alpha log pi(u'|s')],  u' ~ pi(s')
    L_actor     = E_s E_{u ~ pi} [alpha log pi(u|s) - min_e Q_e(s, u)]
    L_alpha     = -E [log alpha (log pi(u|s) + H_target)]          (alpha = exp(log alpha))

Shapes: ``B`` states, ``Do`` observation size, ``U`` action size of the actor, ``E`` critics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from flowpolicy import distributed
from flowpolicy.nets import _ACTIVATIONS, Activation

LOG_STD_BOUNDS = (-20.0, 2.0)
"""Clamp of the actor's log-std (Stable-Baselines3's LOG_STD_MIN / LOG_STD_MAX)."""
SQUASH_EPS = 1e-6
"""Added inside the log of the tanh Jacobian (Stable-Baselines3's TanhBijector epsilon)."""


def trunk(
    in_dim: int, hidden: Sequence[int], activation: Activation, layer_norm: bool
) -> nn.Sequential:
    """``Linear -> [LayerNorm] -> activation`` per hidden width (the DSRL configs'
    ``post_linear_modules: LayerNorm``), PyTorch's default init (as Stable-Baselines3)."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers.append(nn.Linear(in_dim, width))
        if layer_norm:
            layers.append(nn.LayerNorm(width))
        layers.append(_ACTIVATIONS[activation]())
        in_dim = width
    return nn.Sequential(*layers)


class SquashedGaussianActor(nn.Module):
    """``pi(u|s)``: a Gaussian on ``z`` squashed by tanh into ``(-1, 1)^U``.

    Args:
        obs_dim: Do (normalised observations). action_dim: U.
        hidden, activation, layer_norm: the shared trunk (see :func:`trunk`).
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden: Sequence[int],
        activation: Activation = "tanh",
        layer_norm: bool = True,
    ) -> None:
        super().__init__()
        self.trunk = trunk(obs_dim, hidden, activation, layer_norm)
        width = hidden[-1] if hidden else obs_dim
        self.mean = nn.Linear(width, action_dim)
        self.log_std = nn.Linear(width, action_dim)

    def forward(self, obs_normalised: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and clamped log-std of ``z``, (B, U) each."""
        features = self.trunk(obs_normalised)
        return self.mean(features), self.log_std(features).clamp(*LOG_STD_BOUNDS)

    def sample(self, obs_normalised: Tensor) -> tuple[Tensor, Tensor]:
        """A reparameterised ``u`` (B, U) and its log-density ``log pi(u|s)`` (B,)."""
        mean, log_std = self(obs_normalised)
        z = mean + log_std.exp() * torch.randn_like(mean)
        u = torch.tanh(z)
        gaussian = -0.5 * ((z - mean) / log_std.exp()).square() - log_std
        gaussian = gaussian - 0.5 * math.log(2 * math.pi)
        log_prob = (gaussian - torch.log(1.0 - u.square() + SQUASH_EPS)).sum(-1)
        return u, log_prob

    def mode(self, obs_normalised: Tensor) -> Tensor:
        """The deterministic action ``tanh(mu(s))`` (B, U)."""
        return torch.tanh(self(obs_normalised)[0])


class Temperature(nn.Module):
    """The entropy weight ``alpha = exp(log_alpha)``, learned towards ``H_target``."""

    def __init__(self, initial: float) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.tensor(math.log(initial)))

    @property
    def alpha(self) -> Tensor:
        """The current alpha, without gradient."""
        return self.log_alpha.detach().exp()

    def loss(self, log_prob: Tensor, target_entropy: float) -> Tensor:
        """``-E[log alpha (log pi + H_target)]``; only ``log_alpha`` gets a gradient."""
        return -(self.log_alpha * (log_prob.detach() + target_entropy)).mean()


def soft_td_target(
    rewards: Tensor,
    terminated: Tensor,
    gamma: float,
    next_values: Tensor,
    next_log_prob: Tensor,
    alpha: Tensor,
) -> Tensor:
    """``r + gamma (1 - term) [min_e Qbar_e(s', u') - alpha log pi(u'|s')]`` (B,).

    Args:
        rewards, terminated: (B,). next_values: (E, B) the target critics at (s', u').
        next_log_prob: (B,). alpha: () the temperature.
    """
    soft_value = next_values.min(dim=0).values - alpha * next_log_prob
    return rewards + gamma * (1.0 - terminated) * soft_value


def evaluate(critics: nn.ModuleList, obs_normalised: Tensor, action: Tensor) -> Tensor:
    """Every critic's value: (B, Do), (B, U) -> (E, B)."""
    inputs = torch.cat([obs_normalised, action], dim=-1)
    return torch.stack([net(inputs).squeeze(-1) for net in critics])


def step(optimizer: torch.optim.Optimizer, loss: Tensor) -> None:
    """Backward and one optimiser step (no gradient clipping, as Stable-Baselines3's SAC); a
    non-finite loss stops the run before it reaches the weights."""
    distributed.synced_backward(loss, [optimizer])  # the ranks' mean gradient; NaN guard
    optimizer.step()
