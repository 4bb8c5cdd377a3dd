"""Network building blocks: MLPs, residual MLPs and time features.

Two families of time-conditioned networks share the call ``net(obs, x, time) -> (B, A)``:

- :class:`VelocityMLP`: a small MLP on ``[obs, x, Fourier features of tau]`` (FPO's actor).
- :class:`DenoisingMLP`: DPPO's and ReinFlow's network, an MLP or residual MLP on
  ``[x, time embedding, obs]`` with a learned sinusoidal time embedding (16 -> 32 -> Mish ->
  16). It is the velocity network of a BC-pretrained flow policy (time = flow time tau in
  [0, 1]) and the noise network of the diffusion policy (time = denoising index k in
  0 .. K-1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

Activation = Literal["silu", "tanh", "relu", "mish", "elu"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "mish": nn.Mish,
    "elu": nn.ELU,
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


class ResidualBlock(nn.Module):
    """Two-layer pre-activation residual block: ``h + W2 act(N2(W1 act(N1(h))))``.

    ``N1``, ``N2`` are LayerNorms when ``layer_norm`` is set, identities otherwise (the block of
    the IBC/d3il residual MLP that DPPO and ReinFlow use).
    """

    def __init__(self, width: int, activation: Activation = "relu", layer_norm: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6) if layer_norm else nn.Identity()
        self.norm2 = nn.LayerNorm(width, eps=1e-6) if layer_norm else nn.Identity()
        self.linear1 = nn.Linear(width, width)
        self.linear2 = nn.Linear(width, width)
        self.activation = _ACTIVATIONS[activation]()

    def forward(self, h: Tensor) -> Tensor:
        """(B, width) -> (B, width)."""
        out = self.linear1(self.activation(self.norm1(h)))
        return h + self.linear2(self.activation(self.norm2(out)))


class ResidualMLP(nn.Module):
    """``in_dim -> width -> blocks x ResidualBlock(width) -> out_dim``, PyTorch's default init.

    One block gives three hidden linear layers of the same width, which is what DPPO's and
    ReinFlow's Gym configs call ``mlp_dims: [512, 512, 512]`` with ``residual_style: True``.

    Args:
        in_dim, out_dim: input and output sizes.
        width: hidden width (512 in DPPO/ReinFlow Gym pretraining).
        blocks: number of residual blocks (1 for "3 x 512").
        activation: hidden activation (ReLU in the Gym configs; Mish elsewhere).
        layer_norm: LayerNorm inside each block (off in the Gym configs).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        width: int = 512,
        blocks: int = 1,
        activation: Activation = "relu",
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        if width < 1 or blocks < 0:
            raise ValueError(f"need width >= 1 and blocks >= 0, got {width} and {blocks}")
        self.input = nn.Linear(in_dim, width)
        self.blocks = nn.Sequential(
            *(ResidualBlock(width, activation, layer_norm) for _ in range(blocks))
        )
        self.output = nn.Linear(width, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_dim) -> (B, out_dim)."""
        return self.output(self.blocks(self.input(x)))


def residual_shape(hidden: Sequence[int]) -> tuple[int, int]:
    """(width, blocks) of a residual MLP written as its hidden layer sizes.

    ``hidden`` must be ``1 + 2 * blocks`` equal widths, e.g. (512, 512, 512) -> (512, 1): the
    input layer plus two layers per block, the way DPPO's configs list ``mlp_dims``.
    """
    hidden = tuple(hidden)
    if not hidden or len(hidden) % 2 == 0 or len(set(hidden)) != 1:
        raise ValueError(
            "a residual network's hidden sizes must be an odd number (1 + 2 * blocks) of equal "
            f"widths, e.g. (512, 512, 512); got {hidden}"
        )
    return hidden[0], (len(hidden) - 1) // 2


def sinusoidal_embedding(time: Tensor, dim: int) -> Tensor:
    """Transformer-style sinusoidal embedding ``[sin(t w_j), cos(t w_j)]``,
    ``w_j = 10000^(-j / (dim/2 - 1))``, j < dim/2 (the embedding DPPO and ReinFlow use).

    Args:
        time: (B,) any real values (a denoising index or a flow time).
        dim: even embedding size >= 4.

    Returns:
        (B, dim).
    """
    if dim % 2 or dim < 4:
        raise ValueError(f"sinusoidal embedding size must be even and >= 4, got {dim}")
    half = dim // 2
    exponent = -math.log(10000.0) / (half - 1)
    frequencies = torch.exp(torch.arange(half, device=time.device, dtype=time.dtype) * exponent)
    angles = time.unsqueeze(-1) * frequencies
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class SinusoidalTimeEmbedding(nn.Module):
    """Learned time embedding: sinusoidal(dim) -> Linear(dim, 2 dim) -> Mish -> Linear(2 dim,
    dim), as in DPPO's and ReinFlow's MLP networks (dim 16)."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.dim = dim
        self.net = nn.Sequential(nn.Linear(dim, 2 * dim), nn.Mish(), nn.Linear(2 * dim, dim))

    def forward(self, time: Tensor) -> Tensor:
        """(B,) -> (B, dim)."""
        return self.net(sinusoidal_embedding(time, self.dim))


class DenoisingMLP(nn.Module):
    """``f_theta(x, t | s)``: an MLP or residual MLP on ``[x, embed(t), obs]`` (DPPO/ReinFlow).

    Args:
        obs_dim: size of the (normalised) observation.
        action_dim: flat action size A = Ta * Da.
        hidden: hidden sizes; for ``residual`` an odd number of equal widths (see
            :func:`residual_shape`), e.g. (512, 512, 512).
        residual: residual MLP (DPPO Gym ``residual_style: True``) or plain MLP.
        time_dim: size of the learned sinusoidal time embedding (16).
        activation: hidden activation.
        layer_norm: LayerNorm in the residual blocks.
        output_scale: multiplies the output.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden: Sequence[int] = (512, 512, 512),
        residual: bool = True,
        time_dim: int = 16,
        activation: Activation = "relu",
        layer_norm: bool = False,
        output_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.output_scale = output_scale
        self.time_embedding = SinusoidalTimeEmbedding(time_dim)
        in_dim = action_dim + time_dim + obs_dim
        if residual:
            width, blocks = residual_shape(hidden)
            self.net: nn.Module = ResidualMLP(
                in_dim, action_dim, width, blocks, activation, layer_norm
            )
        else:
            if layer_norm:
                raise ValueError("layer_norm is only available for the residual network")
            self.net = nn.Sequential(*_default_init_mlp(in_dim, action_dim, hidden, activation))

    def forward(self, obs: Tensor, x: Tensor, time: Tensor) -> Tensor:
        """obs (B, Do), x (B, A), time (B,) -> (B, A)."""
        features = torch.cat([x, self.time_embedding(time), obs], dim=-1)
        return self.output_scale * self.net(features)


def _default_init_mlp(
    in_dim: int, out_dim: int, hidden: Sequence[int], activation: Activation
) -> list[nn.Module]:
    """Layers of a plain MLP with PyTorch's default init (DPPO's ``MLP``)."""
    layers: list[nn.Module] = []
    sizes = [in_dim, *hidden]
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(fan_in, fan_out), _ACTIVATIONS[activation]()]
    layers.append(nn.Linear(sizes[-1], out_dim))
    return layers
