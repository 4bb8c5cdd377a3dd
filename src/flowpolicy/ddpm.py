"""DDPM / DDIM primitives for the diffusion policy: pure tensor functions, no modules.

Convention (DDPM, Ho et al. 2020; cosine schedule, Nichol & Dhariwal 2021; as in DPPO): the
clean action is ``x`` at level "-1" (abar = 1) and the K noise levels are indexed
``k = 0 .. K-1`` with

    beta_k  = min(1 - abar_k / abar_{k-1}, 0.999),   alpha_k = 1 - beta_k,
    abar_k  = prod_{j <= k} alpha_j,
    q(x_k | x0) = N(sqrt(abar_k) x0, (1 - abar_k) I)          (:func:`q_sample`).

Sampling runs k = K-1 down to 0 and ends with the clean action. Note the direction is the
reverse of flow time (ALGORITHMS.md section 0: tau = 0 is noise); the diffusion policy keeps
the DDPM indexing inside and orders its chain like the flow's (noise first, action last).

Between two levels s < t (consecutive for DDPM, strided for DDIM), with
``alpha_{t|s} = abar_t / abar_s`` and ``beta_{t|s} = 1 - alpha_{t|s}``:

    q(x_s | x_t, x0) = N(mu, var),
    mu  = sqrt(abar_s) beta_{t|s} / (1 - abar_t) x0 + sqrt(alpha_{t|s}) (1 - abar_s) / (1 - abar_t) x_t,
    var = beta_{t|s} (1 - abar_s) / (1 - abar_t)                 (:func:`posterior_mean_var`),

and the DDIM step (Song et al. 2021) with noise level eta:

    sigma = eta sqrt((1 - abar_s) / (1 - abar_t) (1 - abar_t / abar_s)),
    x_s   = sqrt(abar_s) x0 + sqrt(1 - abar_s - sigma^2) eps + sigma z   (:func:`ddim_step`).

With eta = 1 and the eps consistent with (x_t, x0), the DDIM step equals the posterior.

Shapes: ``B`` batch (any leading dims), ``A`` flat action size; per-row coefficients are
(B,) and broadcast over the last dim, scalar coefficients are 0-d tensors.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

MAX_BETA = 0.999


def cosine_beta_schedule(steps: int, s: float = 0.008) -> Tensor:
    """Betas (K,) of the cosine schedule, float32.

    ``f(i) = cos(((i / K) + s) / (1 + s) * pi / 2)^2`` for i = 0 .. K, ``abar_k = f(k+1) /
    f(0)`` and ``beta_k = 1 - abar_k / abar_{k-1}``, clipped to [0, 0.999] (computed in
    float64, as DPPO's numpy code does).
    """
    if steps < 1:
        raise ValueError(f"the number of denoising steps must be >= 1, got {steps}")
    i = torch.arange(steps + 1, dtype=torch.float64)
    f = torch.cos(((i / steps) + s) / (1 + s) * math.pi * 0.5).square()
    abar = f / f[0]
    betas = 1.0 - abar[1:] / abar[:-1]
    return betas.clamp(0.0, MAX_BETA).float()


def alpha_bars(betas: Tensor) -> Tensor:
    """``abar_k = prod_{j <= k} (1 - beta_j)``, shape of ``betas``."""
    return torch.cumprod(1.0 - betas.double(), dim=0).to(betas.dtype)


def _rows(coef: Tensor | float, x: Tensor) -> Tensor:
    """A per-row (B,) or scalar coefficient shaped to broadcast against x (B, A)."""
    coef = torch.as_tensor(coef, dtype=x.dtype, device=x.device)
    return coef.reshape(*coef.shape, *([1] * (x.dim() - coef.dim())))


def q_sample(x0: Tensor, noise: Tensor, alpha_bar: Tensor | float) -> Tensor:
    """``x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) eps``; x0, noise (B, A), abar (B,) or ()."""
    ab = _rows(alpha_bar, x0)
    return ab.sqrt() * x0 + (1.0 - ab).sqrt() * noise


def predict_x0(x: Tensor, eps: Tensor, alpha_bar: Tensor | float) -> Tensor:
    """The x0 implied by x_k and a noise prediction: ``(x_k - sqrt(1 - abar) eps) / sqrt(abar)``."""
    ab = _rows(alpha_bar, x)
    return (x - (1.0 - ab).sqrt() * eps) / ab.sqrt()


def predict_eps(x: Tensor, x0: Tensor, alpha_bar: Tensor | float) -> Tensor:
    """The noise implied by x_k and x0: ``(x_k - sqrt(abar) x0) / sqrt(1 - abar)``."""
    ab = _rows(alpha_bar, x)
    return (x - ab.sqrt() * x0) / (1.0 - ab).sqrt()


def posterior_mean_var(
    x0: Tensor, x: Tensor, alpha_bar: Tensor | float, alpha_bar_prev: Tensor | float
) -> tuple[Tensor, Tensor]:
    """Mean (B, A) and variance (broadcastable) of ``q(x_s | x_t = x, x0)`` for s < t.

    ``alpha_bar`` is abar_t, ``alpha_bar_prev`` abar_s (1 for the final step to the clean
    action, where the variance is 0 and the mean is x0). Equations in the module docstring.
    """
    ab, ab_prev = _rows(alpha_bar, x), _rows(alpha_bar_prev, x)
    alpha = ab / ab_prev
    beta = 1.0 - alpha
    coef_x0 = ab_prev.sqrt() * beta / (1.0 - ab)
    coef_x = alpha.sqrt() * (1.0 - ab_prev) / (1.0 - ab)
    var = beta * (1.0 - ab_prev) / (1.0 - ab)
    return coef_x0 * x0 + coef_x * x, var


def ddim_step(
    x0: Tensor,
    eps: Tensor,
    alpha_bar: Tensor | float,
    alpha_bar_prev: Tensor | float,
    eta: float,
) -> tuple[Tensor, Tensor]:
    """Mean (B, A) and std (broadcastable) of the DDIM step from level t to s < t.

    ``mean = sqrt(abar_s) x0 + sqrt(1 - abar_s - sigma^2) eps``, ``std = sigma`` (module
    docstring); eta = 0 is deterministic.
    """
    ab, ab_prev = _rows(alpha_bar, x0), _rows(alpha_bar_prev, x0)
    sigma = eta * ((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev)).clamp(min=0.0).sqrt()
    direction = (1.0 - ab_prev - sigma.square()).clamp(min=0.0).sqrt()
    return ab_prev.sqrt() * x0 + direction * eps, sigma


def ddim_timesteps(denoising_steps: int, steps: int) -> Tensor:
    """The S timesteps a DDIM sampler visits, descending: ``(S-1) r, ..., r, 0`` with
    ``r = K // S`` (the "leading" spacing DPPO uses). S = K gives every level."""
    if not 1 <= steps <= denoising_steps:
        raise ValueError(f"need 1 <= steps <= denoising_steps, got {steps} and {denoising_steps}")
    ratio = denoising_steps // steps
    return (torch.arange(steps, dtype=torch.int64) * ratio).flip(0)
