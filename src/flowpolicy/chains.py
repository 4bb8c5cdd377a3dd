"""Gaussian sampling chains and their exact log-likelihood, shared by DPPO and ReinFlow.

Both methods turn a K-step sampler into a Markov chain of Gaussian transitions so that the whole
chain has a known density (ALGORITHMS.md sections 6 and 7):

    x_{k+1} ~ N(mean_k, diag(std_k^2)),      k = 0 .. K-1,

and PPO's likelihood ratio is taken over the chain. For a flow policy the transition is a noisy
Euler step on the one time grid of :func:`flowpolicy.flows.time_grid`,

    mean_k = x_k + v_theta(x_k, tau_k | s) / K,      tau_k = k / K,

with ``std_k`` fixed (DPPO's flow variant, "denoising MDP") or from a learned noise network
(ReinFlow). For a DDPM policy the transition is the reverse-process posterior
(:meth:`flowpolicy.policies.DiffusionPolicy.step_gaussian`). The chain's log-likelihood is

    log p(x_0 .. x_K) = [log N(x_0; 0, I)] + sum_k log N(x_{k+1}; mean_k, std_k^2),

with the initial-noise term only where the method counts it (ReinFlow does, DPPO does not).
Sampling (:func:`gaussian_euler_chain`) and re-evaluation on a stored chain
(:func:`euler_step_gaussians`) walk the same grid, so the first minibatch's ratio is exactly 1.

Shapes: ``B`` batch, ``A`` flat action size, ``K`` steps; a chain is (K+1, B, A) with chain[0]
the initial noise and chain[K] the action.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from flowpolicy.flows import VelocityFn, time_grid

NoiseStdFn = Callable[[Tensor, Tensor], Tensor]
"""``std(x, tau) -> std``: x (B, A), tau (B,) -> (B, A) or anything broadcastable to it."""

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def gaussian_log_density(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Element-wise ``log N(x; mean, std^2)``; all arguments broadcast together."""
    return -0.5 * ((x - mean) / std).square() - std.log() - LOG_SQRT_2PI


def gaussian_entropy(std: Tensor) -> Tensor:
    """Element-wise entropy of ``N(., std^2)``: ``log std + 0.5 log(2 pi e)``."""
    return std.log() + LOG_SQRT_2PI + 0.5


def step_log_probs(chain: Tensor, means: Tensor, stds: Tensor) -> Tensor:
    """Per-step, per-element transition log-densities of a chain.

    Args:
        chain: (K+1, B, A) iterates x_0 .. x_K.
        means, stds: (K, B, A) the Gaussian of each transition (stds may broadcast).

    Returns:
        (K, B, A) with entry k = ``log N(x_{k+1}; mean_k, std_k^2)``.
    """
    return gaussian_log_density(chain[1:], means, stds)


def chain_log_likelihood(
    chain: Tensor, means: Tensor, stds: Tensor, include_initial: bool = False
) -> Tensor:
    """``log p(x_0 .. x_K)`` summed over steps and action dims; (B,).

    ``include_initial`` adds ``log N(x_0; 0, I)`` (ReinFlow counts the initial noise).
    """
    total = step_log_probs(chain, means, stds).sum(dim=(0, -1))
    if include_initial:
        total = total + initial_log_density(chain[0]).sum(-1)
    return total


def initial_log_density(x0: Tensor) -> Tensor:
    """Element-wise ``log N(x_0; 0, 1)`` of the initial noise; shape of ``x0``."""
    return -0.5 * x0.square() - LOG_SQRT_2PI


def euler_step_gaussians(
    velocity: VelocityFn, noise_std: NoiseStdFn, chain: Tensor
) -> tuple[Tensor, Tensor]:
    """Means and stds of the noisy Euler transitions evaluated on a stored chain.

    ``mean_k = x_k + v(x_k, tau_k) / K``, ``std_k = noise_std(x_k, tau_k)`` on
    :func:`~flowpolicy.flows.time_grid`, for k = 0 .. K-1, where K = len(chain) - 1.

    Args:
        velocity: ``v(x (K*B, A), tau (K*B,)) -> (K*B, A)``; all steps go through in one call.
        noise_std: ``std(x, tau)``, same batching.
        chain: (K+1, B, A).

    Returns:
        means (K, B, A) and stds (K, B, A).
    """
    flow_steps, batch, _ = chain.shape[0] - 1, chain.shape[1], chain.shape[2]
    x = chain[:-1].flatten(0, 1)  # (K*B, A)
    tau = time_grid(flow_steps, chain.device).repeat_interleave(batch)  # (K*B,)
    means = x + velocity(x, tau) / flow_steps
    stds = noise_std(x, tau).expand_as(means)
    return means.view_as(chain[1:]), stds.reshape(chain[1:].shape)


def euler_step_gaussian(
    velocity: VelocityFn, noise_std: NoiseStdFn, x: Tensor, step: int, flow_steps: int
) -> tuple[Tensor, Tensor]:
    """Mean and std of the single noisy Euler transition k = ``step`` from its iterate ``x_k``.

    ``mean_k = x_k + v(x_k, tau_k) / K``, ``std_k = noise_std(x_k, tau_k)`` with ``tau_k`` from
    :func:`~flowpolicy.flows.time_grid`: the transition :func:`gaussian_euler_chain` samples and
    :func:`euler_step_gaussians` evaluates, for methods that walk the grid one step at a time
    (DPPO runs a frozen network on the early steps and re-evaluates single steps).

    Args:
        velocity, noise_std: as for :func:`gaussian_euler_chain`.
        x: (B, A) the iterate before the step. step: k in 0 .. K-1. flow_steps: K.

    Returns:
        mean (B, A) and std (B, A).
    """
    tau = time_grid(flow_steps, x.device)[step].expand(x.shape[0])  # (B,)
    mean = x + velocity(x, tau) / flow_steps
    return mean, noise_std(x, tau).expand_as(mean)


def gaussian_euler_chain(
    velocity: VelocityFn,
    noise_std: NoiseStdFn,
    x0: Tensor,
    flow_steps: int,
    iterate_clip: float | None = None,
    noise_clip: float | None = None,
) -> Tensor:
    """Sample a chain of noisy Euler steps from ``x0`` (B, A); returns (K+1, B, A).

    ``x_{k+1} = x_k + v(x_k, tau_k) / K + std_k n_k`` with ``n_k ~ N(0, I)`` (clamped to
    ``+-noise_clip`` if given), then clamped to ``+-iterate_clip`` if given (ReinFlow clamps
    every iterate to [-1, 1]). Clamping happens before the iterate is stored, so the stored
    chain is the one whose density is evaluated.
    """
    grid = time_grid(flow_steps, x0.device)
    chain = [x0]
    x = x0
    for tau_k in grid:
        tau = tau_k.expand(x.shape[0])
        noise = torch.randn_like(x)
        if noise_clip is not None:
            noise = noise.clamp(-noise_clip, noise_clip)
        x = x + velocity(x, tau) / flow_steps + noise_std(x, tau) * noise
        if iterate_clip is not None:
            x = x.clamp(-iterate_clip, iterate_clip)
        chain.append(x)
    return torch.stack(chain)
