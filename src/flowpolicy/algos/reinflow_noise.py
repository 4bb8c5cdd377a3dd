"""ReinFlow's noise (:mod:`flowpolicy.algos.reinflow`): the network ``sigma_phi(s, tau)`` that
makes each Euler step of the flow a Gaussian, and the schedule of the upper bound of its std.

    log sigma^2 = lo + (hi - lo) (tanh(u) + 1) / 2,   lo = log min_std^2,   hi = log upper^2,

with ``upper`` held at ``max_std`` for the first ``noise_hold_fraction`` of the run, then
cosine-decayed to ``min_std + noise_decay_ratio (max_std - min_std)``.

Shapes: ``B`` rows, ``Dt`` time features, ``Do`` observation size, ``A`` flat chunk.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from flowpolicy.nets import Activation, mlp

if TYPE_CHECKING:
    from flowpolicy.algos.reinflow import ReinFlowConfig


def noise_upper_bound(progress: float, config: ReinFlowConfig) -> float:
    """The noise std's upper bound at ``progress`` (fraction of the run) in [0, 1]:

    ``max_std`` while ``progress <= hold``; then
    ``floor + (max_std - floor) (1 + cos(pi x)) / 2`` with
    ``x = (progress - hold) / (1 - hold)`` (capped at 1) and
    ``floor = min_std + noise_decay_ratio (max_std - min_std)``.
    """
    hold = config.noise_hold_fraction
    if progress <= hold:
        return config.max_std
    fraction = min(1.0, (progress - hold) / (1.0 - hold))
    floor = config.decayed_max_std
    return floor + (config.max_std - floor) * 0.5 * (1.0 + math.cos(math.pi * fraction))


class NoiseNet(nn.Module):
    """``sigma_phi(s, tau)``: an MLP on [time features of tau, normalised obs] -> (B, A) stds.

    The raw output ``u`` becomes ``log sigma^2 = lo + (hi - lo) (tanh(u) + 1) / 2`` with
    ``lo = log min_std^2`` and ``hi = log upper^2``, so every std lies in ``[min_std, upper]``.
    The bounds are buffers (saved with the weights); :meth:`set_upper` moves the upper one
    along the schedule. The last layer starts near zero, so the initial std is about
    ``sqrt(min_std * upper)`` everywhere.
    """

    def __init__(
        self,
        in_dim: int,
        action_size: int,
        hidden: tuple[int, ...],
        activation: Activation,
        min_std: float,
        max_std: float,
    ) -> None:
        super().__init__()
        self.net = mlp(in_dim, action_size, hidden, activation, output_gain=0.01)
        self.register_buffer("log_var_min", torch.tensor(2.0 * math.log(min_std)))
        self.register_buffer("log_var_max", torch.tensor(2.0 * math.log(max_std)))

    @property
    def upper(self) -> float:
        """The current upper bound of the std."""
        return float(torch.exp(0.5 * self.log_var_max))

    @torch.no_grad()
    def set_upper(self, max_std: float) -> None:
        """Move the upper bound of the std (the schedule's current value)."""
        self.log_var_max.fill_(2.0 * math.log(max_std))

    def forward(self, time_features: Tensor, obs_normalised: Tensor) -> Tensor:
        """time_features (B, Dt), obs (B, Do) -> std (B, A) in [min_std, upper]."""
        raw = self.net(torch.cat([time_features, obs_normalised], dim=-1))
        unit = 0.5 * (torch.tanh(raw) + 1.0)
        log_var = self.log_var_min + (self.log_var_max - self.log_var_min) * unit
        return torch.exp(0.5 * log_var)
