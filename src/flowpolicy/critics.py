"""Critics: state-value networks for the on-policy methods (an MLP, or DPPO's residual one), and a
Q ensemble with Polyak targets for RLDT and QAM.

Shapes: ``B`` batch, ``Do`` observation size, ``A`` flat executed action size
(``Ta_exec * Da``), ``E`` ensemble members.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from flowpolicy.nets import Activation, ResidualMLP, mlp, residual_shape


class ValueNet(nn.Module):
    """``V_phi(s)``: an MLP on the (already normalised) observation; (B, Do) -> (B,)."""

    def __init__(
        self, obs_dim: int, hidden: Sequence[int] = (64, 64), activation: Activation = "tanh"
    ) -> None:
        super().__init__()
        self.net = mlp(obs_dim, 1, hidden, activation, output_gain=1.0)

    def forward(self, obs_normalised: Tensor) -> Tensor:
        return self.net(obs_normalised).squeeze(-1)


class ResidualValueNet(nn.Module):
    """``V_phi(s)`` as DPPO's residual critic: (B, Do) normalised -> (B,)."""

    def __init__(self, obs_dim: int, hidden: Sequence[int], activation: Activation) -> None:
        super().__init__()
        width, blocks = residual_shape(hidden)
        self.net = ResidualMLP(obs_dim, 1, width, blocks, activation)

    def forward(self, obs_normalised: Tensor) -> Tensor:
        return self.net(obs_normalised).squeeze(-1)


QReduction = Literal["min", "mean", "pessimistic"]
"""How target members are combined: min (RLDT, clipped double Q), mean, or ``mean - rho * std``
(QAM)."""


def q_network(
    in_dim: int,
    hidden: Sequence[int],
    activation: Activation = "silu",
    layer_norm: bool = False,
    init_std: float | None = None,
) -> nn.Sequential:
    """MLP ``in_dim -> hidden... -> 1``, optionally with LayerNorm after each hidden Linear.

    ``init_std``: draw every Linear weight from N(0, init_std^2) with zero biases (RLDT's
    released critic uses 0.1 on Gym); None keeps :func:`flowpolicy.nets.mlp`'s orthogonal init.
    """
    net = mlp(in_dim, 1, hidden, activation, output_gain=1.0)
    if layer_norm:
        layers: list[nn.Module] = []
        for module in net:
            layers.append(module)
            if isinstance(module, nn.Linear) and module is not net[-1]:
                layers.append(nn.LayerNorm(module.out_features))
        net = nn.Sequential(*layers)
    if init_std is not None:
        for module in net.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=init_std)
                nn.init.zeros_(module.bias)
    return net


class QEnsemble(nn.Module):
    """An ensemble of E critics ``Q_e(s, a)`` over the executed action chunk, each with a Polyak
    target copy ``Qbar_e``.

    Inputs are the (already normalised) observation and the flat executed chunk
    ``a`` of size ``A = Ta_exec * Da``; every member sees ``concat[s, a]``.

    Args:
        obs_dim: Do. action_dim: A.
        num_members: E (RLDT: 2, QAM: 10).
        hidden, activation, layer_norm, init_std: see :func:`q_network`.
        target_decay: Polyak factor m of :meth:`update_targets`, ``Qbar <- m Qbar + (1 - m) Q``
            (RLDT: 0.995 per critic step).
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        num_members: int = 2,
        hidden: Sequence[int] = (256, 256, 256),
        activation: Activation = "silu",
        layer_norm: bool = False,
        init_std: float | None = None,
        target_decay: float = 0.995,
    ) -> None:
        super().__init__()
        if num_members < 1:
            raise ValueError(f"num_members must be >= 1, got {num_members}.")
        if not 0.0 <= target_decay < 1.0:
            raise ValueError(f"target_decay must be in [0, 1), got {target_decay}.")
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.target_decay = target_decay
        in_dim = obs_dim + action_dim
        self.members = nn.ModuleList(
            q_network(in_dim, hidden, activation, layer_norm, init_std) for _ in range(num_members)
        )
        self.targets = copy.deepcopy(self.members)
        self.targets.requires_grad_(False)

    @property
    def num_members(self) -> int:
        return len(self.members)

    @staticmethod
    def _evaluate(nets: nn.ModuleList, obs: Tensor, action: Tensor) -> Tensor:
        inputs = torch.cat([obs, action], dim=-1)
        return torch.stack([net(inputs).squeeze(-1) for net in nets])

    def forward(self, obs: Tensor, action: Tensor) -> Tensor:
        """Every member's value: obs (B, Do), action (B, A) -> (E, B)."""
        return self._evaluate(self.members, obs, action)

    @torch.no_grad()
    def target_values(self, obs: Tensor, action: Tensor) -> Tensor:
        """Every target member's value: obs (B, Do), action (B, A) -> (E, B)."""
        return self._evaluate(self.targets, obs, action)

    @staticmethod
    def reduce(values: Tensor, mode: QReduction = "min", pessimism: float = 0.5) -> Tensor:
        """Combine members: values (E, B) -> (B,).

        ``min`` over members, their ``mean``, or ``pessimistic`` = mean - pessimism * std
        (unbiased std over members; a single member has std 0).
        """
        if mode == "min":
            return values.min(dim=0).values
        mean = values.mean(dim=0)
        if mode == "mean":
            return mean
        if mode == "pessimistic":
            std = values.std(dim=0) if values.shape[0] > 1 else torch.zeros_like(mean)
            return mean - pessimism * std
        raise ValueError(f"unknown Q reduction {mode!r}")

    @torch.no_grad()
    def bootstrap_value(
        self, obs: Tensor, actions: Tensor, mode: QReduction = "min", pessimism: float = 0.5
    ) -> Tensor:
        """``Qbar(s, .)`` for TD targets: target members combined by ``mode`` at each of M
        fresh policy actions, then averaged over the actions.

        Args:
            obs: (B, Do). actions: (M, B, A), M policy actions per state.

        Returns:
            (B,).
        """
        values = [self.reduce(self.target_values(obs, a), mode, pessimism) for a in actions]
        return torch.stack(values).mean(dim=0)

    def action_gradient(self, obs: Tensor, action: Tensor, target: bool = False) -> Tensor:
        """``mean_e grad_a Q_e(s, a)`` at the given actions: (B, Do), (B, A) -> (B, A).

        ``target=True`` differentiates the target members ``Qbar_e`` instead (QAM). No gradient
        reaches the critic's parameters or the inputs' graphs.
        """
        nets = self.targets if target else self.members
        with torch.enable_grad():
            action = action.detach().requires_grad_(True)
            values = self._evaluate(nets, obs.detach(), action)  # (E, B)
            # Rows are independent, so the gradient of the sum is each row's own gradient.
            (gradient,) = torch.autograd.grad(values.mean(dim=0).sum(), action)
        return gradient.detach()

    def loss(
        self, obs: Tensor, action: Tensor, targets: Tensor, member_of: Tensor | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Sum over members of each member's mean squared TD error on *its own* rows.

        Members are trained on disjoint subsets of the data (RLDT splits by trajectory), which
        keeps them from agreeing on errors and makes their minimum a useful pessimistic target.
        With ``member_of=None`` every member trains on every row and the loss is the mean over
        members and rows (QAM's released code).

        Args:
            obs: (B, Do). action: (B, A). targets: (B,), no gradient.
            member_of: (B,) integer member index of each row, in [0, E); or None.

        Returns:
            (loss, metrics) with ``critic/q_mean`` and ``critic/td_error`` (RMS over members).
        """
        values = self(obs, action)  # (E, B)
        if member_of is None:
            squared = (values - targets.detach()).square()  # (E, B)
            metrics = {
                "critic/q_mean": values.detach().mean(),
                "critic/td_error": squared.detach().mean(dim=1).sqrt().mean(),
            }
            return squared.mean(), metrics
        total = values.new_zeros(())
        errors, means = [], []
        for member in range(self.num_members):
            rows = member_of == member
            if not rows.any():
                raise ValueError(f"critic member {member} was given no data")
            squared = (values[member, rows] - targets[rows].detach()).square().mean()
            total = total + squared
            errors.append(squared.detach().sqrt())
            means.append(values[member, rows].detach().mean())
        metrics = {
            "critic/q_mean": torch.stack(means).mean(),
            "critic/td_error": torch.stack(errors).mean(),
        }
        return total, metrics

    @torch.no_grad()
    def update_targets(self) -> None:
        """Polyak step ``Qbar <- m Qbar + (1 - m) Q`` with ``m = target_decay``."""
        for target, online in zip(
            self.targets.parameters(), self.members.parameters(), strict=True
        ):
            target.lerp_(online, 1.0 - self.target_decay)
        for target, online in zip(self.targets.buffers(), self.members.buffers(), strict=True):
            target.copy_(online)
