"""The visual explainers (benchmarks/explainers.py): each draws a PNG in its quick setting, and
each figure's claim holds numerically."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tyro
from explainers import (
    EXPLAINERS,
    Args,
    Mixture1D,
    TwoBumps,
    bandit_config,
    fpo_reweighting,
    learned_velocity,
    main,
    svgd_parts,
    train_flow_1d,
    transport,
    velocity_error,
)
from torch.distributions import Normal

from flowpolicy import flows
from flowpolicy.algos.rldt import svgd_field

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list(EXPLAINERS))
def test_explainer_writes_a_png(tmp_path, name):
    main(tyro.cli(Args, args=["--only", name, "--quick", "--out", str(tmp_path)]))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.png"]
    data = (tmp_path / f"{name}.png").read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000


def test_exact_marginal_velocity_matches_monte_carlo():
    """E[a - eps | x_tau] of the mixture against an average over samples with x_tau in a bin."""
    torch.manual_seed(0)
    target, n, tau = Mixture1D(), 400_000, 0.5
    action, noise = target.sample(n), torch.randn(n, 1)
    x = flows.interpolate(action, noise, torch.full((n,), tau))[:, 0]
    for centre in (-0.8, -0.3, 0.2, 0.6):
        in_bin = (x - centre).abs() < 0.02
        estimate = (action - noise)[in_bin].mean()
        exact = target.velocity(torch.tensor([[centre]]), torch.tensor([tau]))
        assert estimate == pytest.approx(float(exact), abs=0.05)


def test_exact_marginal_density_is_the_noise_at_tau_zero_and_the_target_at_one():
    target, x = Mixture1D(), torch.linspace(-3, 3, 601).unsqueeze(-1)
    noise_pdf = Normal(0.0, 1.0).log_prob(x[:, 0]).exp()
    target_pdf = sum(
        w * Normal(m, s).log_prob(x[:, 0]).exp()
        for w, m, s in zip(target.weights, target.means, target.stds, strict=True)
    )
    assert torch.allclose(target.density(x, torch.zeros(len(x))), noise_pdf, atol=1e-6)
    assert torch.allclose(target.density(x, torch.ones(len(x))), target_pdf, atol=1e-5)
    halfway = target.density(x, torch.full((len(x),), 0.5))
    assert float(halfway.sum() * 0.01) == pytest.approx(1.0, abs=1e-3)


def test_learned_velocity_is_close_to_the_exact_one_at_half_time():
    torch.manual_seed(0)
    target = Mixture1D()
    untrained = velocity_error(target, learned_velocity(train_flow_1d(target, 0)), 0.5)
    trained = velocity_error(target, learned_velocity(train_flow_1d(target, 400)), 0.5)
    assert trained < 0.3 < untrained


def test_fpo_raises_good_actions_cfm_ratio_relative_to_bad_ones():
    """After one epoch the log CFM ratio (l_old - l_new) is higher for A > 0 than for A < 0.

    (Not necessarily > 0: with standardised advantages a common shift of every CFM loss leaves
    the surrogate unchanged; on this setting both groups' losses rise, the bad ones' more.)
    """
    torch.manual_seed(0)
    data = fpo_reweighting(1, 100, bandit_config(num_envs=32, num_steps=8))
    positive = data.advantages > 0
    assert 0 < positive.sum() < len(positive)
    assert data.log_ratio[positive].mean() > data.log_ratio[~positive].mean()
    correlation = np.corrcoef(data.advantages, data.log_ratio)[0, 1]
    assert correlation > 0.1


def test_svgd_parts_add_up_to_svgd_field():
    torch.manual_seed(0)
    query, centres, grads = torch.randn(7, 2), torch.randn(5, 2), torch.randn(5, 2)
    parts = svgd_parts(query, centres, grads, temperature=0.3)
    total, _ = svgd_field(query[None], centres[None], grads[None], 0.3)
    assert torch.allclose(parts.attraction + parts.repulsion, total[0], atol=1e-6)
    assert torch.allclose(parts.total, total[0], atol=1e-6)
    assert parts.alpha == pytest.approx(0.3 * float(grads.norm(dim=-1).mean()))
    # the attraction is the kernel-weighted mean of the gradients, with no repulsion in it
    kernel_only = svgd_parts(query, centres, torch.zeros_like(grads), temperature=0.3)
    assert torch.count_nonzero(kernel_only.attraction) == 0


def test_repulsion_pushes_particles_on_a_line_outwards():
    particles = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    repulsion = svgd_parts(particles, particles, torch.ones(3, 2), temperature=0.1).repulsion
    assert repulsion[0, 0] < 0 < repulsion[2, 0]
    assert repulsion[1].abs().max() < 1e-6  # the middle one is pushed equally both ways
    assert repulsion[:, 1].abs().max() < 1e-6


def test_repulsion_keeps_transported_particles_apart():
    """Along the attraction alone particles pile up on the peaks; the repulsion keeps them
    spread (median distance to the nearest other particle)."""
    torch.manual_seed(0)
    particles, q = 0.35 * torch.randn(12, 2), TwoBumps()

    def nearest(points):
        return torch.cdist(points, points).fill_diagonal_(float("inf")).min(-1).values.median()

    with_repulsion = transport(particles, q, 0.05, 150, 0.05)[-1]
    attraction_only = transport(particles, q, 0.0, 150, 0.05)[-1]
    assert nearest(with_repulsion) > 10 * nearest(attraction_only)
