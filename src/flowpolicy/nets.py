"""Network building blocks: MLPs and flow-time features."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

Activation = Literal["silu", "tanh", "relu", "mish"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "mish": nn.Mish,
}


def mlp(
    in_dim: int,
    out_dim: int,
    hidden: Sequence[int],
    activation: Activation = "silu",
    output_gain: float = 1.0,
) -> nn.Sequential:
    """Plain MLP ``in_dim -> hidden... -> out_dim`` with orthogonal init (CleanRL style).

    ``output_gain`` scales the orthogonal init of the last layer: small values (0.01) make a
    policy start close to zero output, 1.0 suits value heads.
    """
    layers: list[nn.Module] = []
    sizes = [in_dim, *hidden]
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        linear = nn.Linear(fan_in, fan_out)
        nn.init.orthogonal_(linear.weight, gain=math.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers += [linear, _ACTIVATIONS[activation]()]
    head = nn.Linear(sizes[-1], out_dim)
    nn.init.orthogonal_(head.weight, gain=output_gain)
    nn.init.zeros_(head.bias)
    layers.append(head)
    return nn.Sequential(*layers)


def fourier_time_features(tau: Tensor, dim: int) -> Tensor:
    """Sinusoidal features of flow time: ``[cos(2^j pi tau), sin(2^j pi tau)]``, j < dim/2.

    Args:
        tau: (B,) in [0, 1].
        dim: even feature size (FPO uses 8).

    Returns:
        (B, dim).
    """
    if dim % 2:
        raise ValueError(f"time feature size must be even, got {dim}")
    frequencies = math.pi * 2.0 ** torch.arange(dim // 2, device=tau.device, dtype=tau.dtype)
    angles = tau.unsqueeze(-1) * frequencies
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class VelocityMLP(nn.Module):
    """Velocity field ``v_theta(x, tau | s)``: an MLP on ``[obs, x, time features]``.

    Args:
        obs_dim: size of the (normalised) observation.
        action_dim: flat action size A = Ta * Da.
        hidden: hidden layer sizes.
        time_dim: size of the Fourier time features.
        activation: hidden activation.
        output_scale: multiplies the output (FPO scales its actor's output by 0.25 so the
            initial field is gentle and the first samples stay close to the noise).
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden: Sequence[int] = (32, 32, 32, 32),
        time_dim: int = 8,
        activation: Activation = "silu",
        output_scale: float = 0.25,
    ) -> None:
        super().__init__()
        self.time_dim = time_dim
        self.output_scale = output_scale
        self.net = mlp(obs_dim + action_dim + time_dim, action_dim, hidden, activation)

    def forward(self, obs: Tensor, x: Tensor, tau: Tensor) -> Tensor:
        """obs (B, Do), x (B, A), tau (B,) -> velocity (B, A)."""
        features = fourier_time_features(tau, self.time_dim)
        return self.output_scale * self.net(torch.cat([obs, x, features], dim=-1))
