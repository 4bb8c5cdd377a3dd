"""Flow-matching primitives: pure tensor functions, no modules, no state.

Convention (ALGORITHMS.md section 0): flow time ``tau`` in [0, 1], ``tau = 0`` is noise and
``tau = 1`` is the action. The linear (rectified-flow) path is

    x_tau = (1 - tau) * eps + tau * a,        eps ~ N(0, I),
    u     = d x_tau / d tau = a - eps          (the velocity target).

A K-step Euler sampler integrates ``dx/dtau = v(x, tau)`` on the grid ``tau_k = k / K``,
``k = 0 .. K-1``. The single function :func:`time_grid` is used for sampling, likelihoods
and losses, so the three can never drift apart.

Shapes: ``B`` batch (any leading dims), ``A`` flat action size (``Ta * Da``), ``K`` flow
steps, ``M`` Monte-Carlo (tau, eps) pairs per action.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

VelocityFn = Callable[[Tensor, Tensor], Tensor]
"""``v(x, tau) -> velocity``: x (B, A), tau (B,) -> (B, A). Conditioning is closed over."""

TauSampling = Literal["uniform", "grid", "logit_normal"]
LossWeighting = Literal["velocity", "eps"]
LossReduction = Literal["mean", "sqrt_sum", "chunk_sum"]


def time_grid(flow_steps: int, device: torch.device | None = None) -> Tensor:
    """The Euler time grid ``tau_k = k / K`` for ``k = 0 .. K-1``; shape (K,)."""
    if flow_steps < 1:
        raise ValueError(f"flow_steps must be >= 1, got {flow_steps}")
    return torch.arange(flow_steps, device=device, dtype=torch.float32) / flow_steps


def interpolate(action: Tensor, noise: Tensor, tau: Tensor) -> Tensor:
    """Point on the linear path ``x_tau = (1 - tau) eps + tau a``.

    Args:
        action: ``a``, shape (..., A).
        noise: ``eps``, same shape as ``action``.
        tau: shape (...,) — one time per row, broadcast over the last dim.
    """
    tau = tau.unsqueeze(-1)
    return (1.0 - tau) * noise + tau * action


def velocity_target(action: Tensor, noise: Tensor) -> Tensor:
    """Conditional velocity ``u = a - eps`` of the linear path; shape of ``action``."""
    return action - noise


def euler_sample(
    velocity: VelocityFn, x0: Tensor, flow_steps: int, return_chain: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """Integrate ``dx/dtau = v(x, tau)`` from tau = 0 to 1 with K Euler steps.

    ``x_{k+1} = x_k + v(x_k, tau_k) / K`` on :func:`time_grid`.

    Args:
        velocity: ``v(x (B, A), tau (B,)) -> (B, A)``.
        x0: start, shape (B, A): Gaussian noise (random sampling) or zeros (zero sampling).
        flow_steps: K.
        return_chain: also return every iterate.

    Returns:
        ``x_K`` (B, A), and with ``return_chain`` the chain ``(x_0 .. x_K)`` of shape (K+1, B, A).
    """
    grid = time_grid(flow_steps, x0.device)
    dt = 1.0 / flow_steps
    x = x0
    chain = [x0] if return_chain else None
    for tau_k in grid:
        tau = tau_k.expand(x.shape[0])
        x = x + velocity(x, tau) * dt
        if chain is not None:
            chain.append(x)
    if chain is not None:
        return x, torch.stack(chain)
    return x


def expected_posterior(x_tau: Tensor, velocity: Tensor, tau: Tensor) -> Tensor:
    """Expected final action given an intermediate state (Tweedie, linear path).

    ``a_dagger(x_tau) = x_tau + (1 - tau) v(x_tau, tau)``; equals ``E[a | x_tau]`` when v is exact.

    Args:
        x_tau: (..., A). velocity: (..., A). tau: (...,).
    """
    return x_tau + (1.0 - tau).unsqueeze(-1) * velocity


def sample_tau(
    shape: tuple[int, ...],
    scheme: TauSampling = "uniform",
    flow_steps: int = 10,
    tau_min: float = 0.0,
    tau_max: float = 1.0,
    device: torch.device | None = None,
) -> Tensor:
    """Draw flow times for the CFM loss.

    Schemes:
        ``uniform``: tau ~ U[tau_min, tau_max].
        ``grid``: tau uniform over the K-point sampling grid ``k / K`` (FPO's default), so the
            loss trains exactly the times the sampler visits.
        ``logit_normal``: tau = sigmoid(n), n ~ N(0, 1), rescaled into [tau_min, tau_max].
    """
    if scheme == "uniform":
        u = torch.rand(shape, device=device)
    elif scheme == "grid":
        k = torch.randint(0, flow_steps, shape, device=device)
        return k.float() / flow_steps
    elif scheme == "logit_normal":
        u = torch.sigmoid(torch.randn(shape, device=device))
    else:
        raise ValueError(f"unknown tau sampling scheme {scheme!r}")
    return tau_min + (tau_max - tau_min) * u


def cfm_loss(
    predicted_velocity: Tensor,
    action: Tensor,
    noise: Tensor,
    tau: Tensor,
    weighting: LossWeighting = "velocity",
    reduction: LossReduction = "mean",
    chunk: int = 1,
) -> Tensor:
    """Per-sample conditional flow-matching loss, reduced over the action dims only.

    velocity:  ``l = || v - (a - eps) ||^2``
    eps:       ``l = || eps - eps_hat ||^2 = tau^2 || v - (a - eps) ||^2``, with
               ``eps_hat = x_tau - tau v`` (FPO's default "eps-MSE").

    Reduction over the A = Ta * Da action dims: ``mean`` (sum / A), ``sqrt_sum`` (sum / sqrt(A),
    FPO++'s released locomotion code) or ``chunk_sum`` (the mean over each step's Da dims,
    summed over the ``chunk`` = Ta steps, i.e. sum / Da: fpo-control's manipulation code).

    Args:
        predicted_velocity: ``v_theta(x_tau, tau)``, (..., A).
        action, noise: (..., A). tau: (...,).

    Returns:
        Loss per sample, shape (...,).
    """
    squared_error = (predicted_velocity - velocity_target(action, noise)).square()
    if weighting == "eps":
        squared_error = squared_error * tau.unsqueeze(-1).square()
    elif weighting != "velocity":
        raise ValueError(f"unknown loss weighting {weighting!r}")
    dims = action.shape[-1]
    if reduction == "mean":
        return squared_error.sum(-1) / dims
    if reduction == "sqrt_sum":
        return squared_error.sum(-1) / dims**0.5
    if reduction == "chunk_sum":
        if dims % chunk:
            raise ValueError(f"{dims} action dims do not split into chunks of {chunk} steps")
        return squared_error.sum(-1) / (dims // chunk)
    raise ValueError(f"unknown loss reduction {reduction!r}")
