"""The math of RLDT's density transport (:mod:`flowpolicy.algos.rldt`): the SVGD field that
moves particles towards high Q while keeping them apart, and the losses that make a flow's
velocity follow it at expected posteriors, with no gradient through the sampler. Pure tensor
functions (the constraint takes the two flow policies whose fields it compares).

    phi_i = (1/P) sum_j [ k_ij g_j + alpha k_ij (a_dagger_i - a_j) / h_i ],
    L = -E[<v_theta, phi> / (K (1 - tau))] + c_cons E ||a_dagger - a||^2 / (K (1 - tau))^2
        + c_ref E ||v_theta(x', tau') - v_ref(x', tau')||^2.

Shapes: ``S`` states, ``P`` particles (kernel centres) and ``Q`` queries per state, ``B``
particles in all, ``K`` flow steps, ``A`` flat chunk, ``Do`` observation size.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flowpolicy import flows
from flowpolicy.policies import FlowPolicy

# ----------------------------------------------------------------------------- the field


def svgd_field(
    query: Tensor,
    centres: Tensor,
    grads: Tensor,
    temperature: float,
    adaptive_temperature: bool = True,
    bandwidth: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The SVGD transport direction at each query, per state.

    ``d_ij = ||q_i - a_j||^2``; ``h_i = median_j d_ij / (2 log(P + 1))`` (the lower median for
    even P, as ``torch.median`` and the released code) unless ``bandwidth`` is fixed;
    ``k_ij = exp(-d_ij / (2 h_i))``; ``alpha = temperature * mean_j ||g_j||`` per state when
    adaptive, else ``temperature``;

        phi_i = (1/P) sum_j [ k_ij g_j + alpha k_ij (q_i - a_j) / h_i ].

    Args:
        query: (S, Q, A) points where the field is evaluated (the expected posteriors).
        centres: (S, P, A) kernel centres (the particles' final actions).
        grads: (S, P, A) ``grad_a Q`` at the centres.
        temperature: repulsion temperature (the authors' 1e-3).
        adaptive_temperature: scale it by the state's mean gradient norm.
        bandwidth: fixed h, or None for the median heuristic.

    Returns:
        phi (S, Q, A) and diagnostics (means over the batch).
    """
    num_centres = centres.shape[1]
    difference = query.unsqueeze(2) - centres.unsqueeze(1)  # (S, Q, P, A)
    sq_distance = difference.square().sum(-1)  # (S, Q, P)
    if bandwidth is None:
        median = sq_distance.median(dim=-1, keepdim=True).values  # (S, Q, 1)
        h = median / (2.0 * math.log(num_centres + 1))
    else:
        h = torch.full_like(sq_distance[..., :1], bandwidth)
    h = h.clamp(min=1e-8)
    kernel = torch.exp(-sq_distance / (2.0 * h))  # (S, Q, P)
    grad_norm = grads.norm(dim=-1)  # (S, P)
    if adaptive_temperature:
        alpha = temperature * grad_norm.mean(dim=-1).view(-1, 1, 1)  # (S, 1, 1)
    else:
        alpha = torch.full_like(h[:, :1], temperature)
    attraction = kernel @ grads  # (S, Q, A)
    repulsion = (kernel.unsqueeze(-1) * difference).sum(dim=2) / h  # (S, Q, A)
    phi = (attraction + alpha * repulsion) / num_centres
    metrics = {
        "policy/grad_q_norm": grad_norm.mean(),
        "policy/temperature": alpha.mean(),
        "policy/bandwidth": h.mean(),
        "policy/attraction_norm": (attraction / num_centres).norm(dim=-1).mean(),
        "policy/repulsion_norm": (alpha * repulsion / num_centres).norm(dim=-1).mean(),
    }
    return phi, metrics


# ----------------------------------------------------------------------------- the losses


def alignment_loss(velocity: Tensor, field: Tensor, tau: Tensor, flow_steps: int) -> Tensor:
    """``-E[ <v_theta(x_tau, tau), phi> / (K (1 - tau)) ]``.

    Its gradient equals that of the regression ``0.5 ||v - sg(v + phi / (K (1 - tau)))||^2``:
    the velocity is pulled towards the one that moves the expected posterior along phi.

    Args:
        velocity: (B, A) with gradient. field: (B, A) phi, no gradient. tau: (B,), < 1.
        flow_steps: K.
    """
    weight = 1.0 / (flow_steps * (1.0 - tau))
    return -((velocity * field.detach()).sum(-1) * weight).mean()


def consistency_loss(
    x_tau: Tensor, velocity: Tensor, tau: Tensor, final: Tensor, flow_steps: int
) -> Tensor:
    """``E || x_tau + (1 - tau) v_theta - a ||^2 / (K (1 - tau))^2`` with ``a`` the final action
    of the same chain: the expected posterior stays an honest proxy of the sampled action.

    Args:
        x_tau, velocity, final: (B, A). tau: (B,). flow_steps: K.
    """
    posterior = flows.expected_posterior(x_tau, velocity, tau)
    scale = (flow_steps * (1.0 - tau)).square()
    return ((posterior - final.detach()).square().sum(-1) / scale).mean()


def constraint_loss(
    policy: FlowPolicy, reference: FlowPolicy, obs_normalised: Tensor, actions: Tensor
) -> Tensor:
    """``E || v_theta(x', tau') - v_ref(x', tau') ||^2`` at ``x' = (1 - tau') eps + tau' a``,
    tau' on the sampling grid (a time-weighted Fisher divergence between the two flows).

    Args:
        policy: the trained policy. reference: the reference policy (no gradient).
        obs_normalised: (B, Do), used by both fields. actions: (B, A) the particles' actions.
    """
    flow_steps = policy.flow_steps
    tau = flows.sample_tau((actions.shape[0],), "grid", flow_steps, device=actions.device)
    x = flows.interpolate(actions.detach(), torch.randn_like(actions), tau)
    velocity = policy.velocity(obs_normalised, x, tau)
    with torch.no_grad():
        reference_velocity = reference.velocity(obs_normalised, x, tau)
    return (velocity - reference_velocity).square().sum(-1).mean()


def posteriors_at_random_steps(
    velocity: flows.VelocityFn, chain: Tensor, flow_steps: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One random step per particle of its own chain, and the expected posterior there.

    Args:
        velocity: ``v(x (B, A), tau (B,))``; called once, its output keeps its gradient.
        chain: (K + 1, B, A) Euler iterates ``x_0 .. x_K``.
        flow_steps: K.

    Returns:
        ``x_k`` (B, A), ``tau = k / K`` (B,), ``v(x_k, tau)`` (B, A) and
        ``a_dagger = x_k + (1 - tau) v`` (B, A, no gradient).
    """
    batch = chain.shape[1]
    step = torch.randint(0, flow_steps, (batch,), device=chain.device)
    x_k = chain[step, torch.arange(batch, device=chain.device)]
    tau = step.float() / flow_steps
    v = velocity(x_k, tau)
    return x_k, tau, v, flows.expected_posterior(x_k, v.detach(), tau)
