"""The shared Gaussian-chain log-likelihood (DPPO, ReinFlow) against independent computations."""

from __future__ import annotations

import math

import torch

from flowpolicy import chains, flows


def velocity_field(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """A smooth, x- and tau-dependent field so that every step's mean differs."""
    return torch.sin(x) + tau.unsqueeze(-1) * x


def noise_std_field(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    return 0.1 + 0.05 * tau.unsqueeze(-1) + 0.01 * x.abs()


def test_chain_log_likelihood_equals_sum_of_independent_step_densities():
    torch.manual_seed(0)
    flow_steps, batch, size = 4, 3, 2
    x0 = torch.randn(batch, size)
    chain = chains.gaussian_euler_chain(velocity_field, noise_std_field, x0, flow_steps)
    assert chain.shape == (flow_steps + 1, batch, size)
    means, stds = chains.euler_step_gaussians(velocity_field, noise_std_field, chain)
    total = chains.chain_log_likelihood(chain, means, stds, include_initial=True)

    # Independently: loop over steps with torch.distributions and the grid tau_k = k / K.
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(x0).sum(-1)
    for k in range(flow_steps):
        x = chain[k]
        tau = torch.full((batch,), k / flow_steps)
        mean = x + velocity_field(x, tau) / flow_steps
        step = torch.distributions.Normal(mean, noise_std_field(x, tau))
        expected = expected + step.log_prob(chain[k + 1]).sum(-1)
    torch.testing.assert_close(total, expected)
    without_initial = chains.chain_log_likelihood(chain, means, stds)
    torch.testing.assert_close(
        total - without_initial, torch.distributions.Normal(0.0, 1.0).log_prob(x0).sum(-1)
    )


def test_sampling_and_likelihood_share_the_time_grid():
    """With zero noise the chain is the deterministic Euler sampler, and the re-evaluated
    means reproduce the chain exactly: the likelihood walks the sampler's grid."""
    x0 = torch.randn(5, 3)
    chain = chains.gaussian_euler_chain(
        velocity_field, lambda x, tau: torch.zeros_like(x), x0, flow_steps=6
    )
    final, euler_chain = flows.euler_sample(velocity_field, x0, 6, return_chain=True)
    torch.testing.assert_close(chain, euler_chain)
    means, _ = chains.euler_step_gaussians(velocity_field, noise_std_field, chain)
    torch.testing.assert_close(means, chain[1:])


def test_iterate_and_noise_clips():
    torch.manual_seed(1)
    x0 = 5 * torch.randn(100, 2)
    chain = chains.gaussian_euler_chain(
        velocity_field, lambda x, tau: torch.full_like(x, 10.0), x0, 3, iterate_clip=1.0
    )
    assert chain[1:].abs().max() <= 1.0
    assert chain[0].abs().max() > 1.0  # the initial noise is stored as drawn
    zero_velocity = lambda x, tau: torch.zeros_like(x)  # noqa: E731
    chain = chains.gaussian_euler_chain(
        zero_velocity, lambda x, tau: torch.ones_like(x), torch.zeros(2000, 1), 1, noise_clip=0.5
    )
    assert chain[1].abs().max() <= 0.5


def test_gaussian_log_density_and_entropy_values():
    value = chains.gaussian_log_density(torch.tensor(1.0), torch.tensor(0.0), torch.tensor(2.0))
    expected = -0.125 - math.log(2.0) - 0.5 * math.log(2 * math.pi)
    assert math.isclose(float(value), expected, rel_tol=1e-6)
    entropy = chains.gaussian_entropy(torch.tensor(0.5))
    normal = torch.distributions.Normal(0.0, 0.5)
    assert math.isclose(float(entropy), float(normal.entropy()), rel_tol=1e-6)
