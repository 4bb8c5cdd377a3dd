"""The math of adjoint matching (Domingo-Enrich et al., ICLR 2025) as QAM uses it
(:mod:`flowpolicy.algos.qam`): the memoryless SDE of a flow, the lean adjoint ODE that runs
backwards along its chain, and the matching loss. Pure tensor functions of velocity fields.

With ``h = 1 / K`` and the grid ``tau_i = i / K`` (:func:`flowpolicy.flows.time_grid`):

    sigma_i = sqrt(2 (1 - tau_i + h) / (tau_i + h)),
    x_{i+1} = x_i + h (2 f(x_i, tau_i) - x_i / (tau_i + h)) + sqrt(h) sigma_i n_i,
    adj_i   = adj_{i+1} + h J_x[2 f_beta(x, tau_i + h) - x / (tau_i + h)]^T adj_{i+1},
    L       = sum_i || (2 / sigma_i) (f_theta - f_beta)(x_i, tau_i) + sigma_i adj_i ||^2.

Shapes: ``B`` states, ``K`` flow steps, ``A`` flat chunk.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flowpolicy import flows


def sde_sigmas(flow_steps: int, device: torch.device | None = None) -> Tensor:
    """Noise scales of the memoryless SDE, ``sigma_i = sqrt(2 (1 - tau_i + h) / (tau_i + h))``
    on :func:`flowpolicy.flows.time_grid`, ``h = 1 / K``; shape (K,)."""
    tau = flows.time_grid(flow_steps, device)
    h = 1.0 / flow_steps
    return torch.sqrt(2.0 * (1.0 - tau + h) / (tau + h))


def memoryless_sde(
    fine: flows.VelocityFn,
    base: flows.VelocityFn,
    x0: Tensor,
    flow_steps: int,
    noise: Tensor | None = None,
    return_fields: bool = False,
) -> Tensor | tuple[Tensor, Tensor, Tensor]:
    """The memoryless SDE's chain with the fine-tuned field and a last Euler step of the base.

    ``x_{i+1} = x_i + h (2 f(x_i, tau_i) - x_i / (tau_i + h)) + sqrt(h) sigma_i n_i`` for
    i < K - 1, then ``x_K = x_{K-1} + h f_beta(x_{K-1}, tau_{K-1})``. No gradient flows along
    the chain.

    With ``return_fields`` it also returns both fields at every ``(x_i, tau_i)``, i < K, which
    the adjoint-matching loss needs: the SDE evaluates ``f_theta`` there anyway, so the
    loss reuses those values and their graphs (when called with gradients enabled) instead of
    evaluating ``f_theta`` a second time, and ``f_beta`` at the last step serves both the Euler
    step and the loss.

    Args:
        fine: ``f_theta(x (B, A), tau (B,))``. base: ``f_beta``, same signature.
        x0: (B, A) the start, ``N(0, I)`` noise.
        flow_steps: K >= 2.
        noise: (K - 1, B, A) the ``n_i``; default fresh ``N(0, I)`` draws.
        return_fields: also return the fields along the chain.

    Returns:
        The chain ``x_0 .. x_K``, (K + 1, B, A); with ``return_fields`` also ``f_theta`` at
        ``(x_i, tau_i)``, (K, B, A), with whatever graph ``fine`` builds, and ``f_beta`` there,
        (K, B, A), without gradient.
    """
    grid = flows.time_grid(flow_steps, x0.device)
    sigmas = sde_sigmas(flow_steps, x0.device)
    h = 1.0 / flow_steps
    x = x0.detach()
    chain = [x]
    fine_values: list[Tensor] = []
    base_values: list[Tensor] = []
    for i in range(flow_steps):
        tau = grid[i].expand(x.shape[0])
        if i < flow_steps - 1:
            n = torch.randn_like(x) if noise is None else noise[i]
            velocity = fine(x, tau)
            if return_fields:
                fine_values.append(velocity)
                with torch.no_grad():
                    base_values.append(base(x, tau))
            drift = 2.0 * velocity.detach() - x / (grid[i] + h)
            x = x + h * drift + math.sqrt(h) * sigmas[i] * n
        else:  # the released code ends with a plain Euler step of the base field
            with torch.no_grad():
                base_velocity = base(x, tau)
            if return_fields:
                fine_values.append(fine(x, tau))
                base_values.append(base_velocity)
            x = x + h * base_velocity
        chain.append(x)
    if return_fields:
        return torch.stack(chain), torch.stack(fine_values), torch.stack(base_values)
    return torch.stack(chain)


def lean_adjoint(
    base: flows.VelocityFn, chain: Tensor, terminal: Tensor, flow_steps: int
) -> Tensor:
    """The lean adjoint states ``adj_0 .. adj_{K-1}``, backwards along a chain.

    ``adj_i = adj_{i+1} + h J_x[2 f_beta(x, tau_i + h) - x / (tau_i + h)]^T adj_{i+1}`` at
    ``x = x_i``: one vector-Jacobian product of the base field per step (the released code's
    ``jax.vjp``), no gradient to any parameter.

    Args:
        base: ``f_beta(x (B, A), tau (B,))``.
        chain: (K + 1, B, A) ``x_0 .. x_K``; only ``x_0 .. x_{K-1}`` are used.
        terminal: (B, A) ``adj_K``.
        flow_steps: K.

    Returns:
        (K, B, A), row i is ``adj_i``.
    """
    grid = flows.time_grid(flow_steps, chain.device).to(chain.dtype)
    h = 1.0 / flow_steps
    adjoint = terminal.detach()
    adjoints = [adjoint] * flow_steps
    for i in reversed(range(flow_steps)):
        tau_next = (grid[i] + h).expand(chain.shape[1])
        with torch.enable_grad():
            x = chain[i].detach().requires_grad_(True)
            drift = 2.0 * base(x, tau_next) - x / tau_next.unsqueeze(-1)
            (vjp,) = torch.autograd.grad(drift, x, grad_outputs=adjoint)
        adjoint = adjoint + h * vjp
        adjoints[i] = adjoint
    return torch.stack(adjoints)


def adjoint_matching_loss(
    fine_velocity: Tensor, base_velocity: Tensor, adjoints: Tensor, sigmas: Tensor
) -> Tensor:
    """``sum_i || (2 / sigma_i) (f_theta - f_beta)(x_i, tau_i) + sigma_i adj_i ||^2`` per state.

    Args:
        fine_velocity: (K, B, A) ``f_theta`` at the chain's ``x_i``, with gradient.
        base_velocity: (K, B, A) ``f_beta`` there. adjoints: (K, B, A). sigmas: (K,).

    Returns:
        (B,) the loss of each state, summed over steps and the chunk.
    """
    sigma = sigmas.view(-1, 1, 1)
    residual = (2.0 / sigma) * (fine_velocity - base_velocity.detach()) + sigma * adjoints.detach()
    return residual.square().sum(dim=(0, 2))
