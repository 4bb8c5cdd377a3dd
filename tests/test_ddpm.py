"""ddpm.py: the cosine schedule, the forward process, the DDPM posterior and the DDIM step
against hand-computed numbers and Gaussian conditioning."""

from __future__ import annotations

import math

import pytest
import torch

from flowpolicy import ddpm


def test_cosine_schedule_matches_hand_computation() -> None:
    # K = 4, s = 0.008: f(i) = cos((i/4 + s) / (1 + s) * pi/2)^2, abar_k = f(k+1) / f(0):
    # abar = 0.847012, 0.493844, 0.144272, ~4e-33; beta_k = 1 - abar_k / abar_{k-1}, and the
    # last beta (~1) is clipped to 0.999.
    betas = ddpm.cosine_beta_schedule(4)
    expected = torch.tensor([0.1529878, 0.4169581, 0.7078587, 0.999])
    assert betas.dtype == torch.float32
    assert torch.allclose(betas, expected, atol=1e-6)
    alpha_bars = ddpm.alpha_bars(betas)
    # unclipped steps follow the cosine formula; the clipped one is abar_2 * (1 - 0.999)
    assert torch.allclose(alpha_bars[:3], torch.tensor([0.8470122, 0.4938436, 0.1442721]))
    assert alpha_bars[3] == pytest.approx(0.1442721 * 0.001, rel=1e-4)  # float32 beta


def test_cosine_schedule_of_dppo_size_is_monotone_and_bounded() -> None:
    betas = ddpm.cosine_beta_schedule(20)
    assert betas.shape == (20,)
    assert (betas > 0).all() and (betas <= 0.999).all()
    assert (betas[1:] >= betas[:-1]).all()
    alpha_bars = ddpm.alpha_bars(betas)
    assert (alpha_bars[1:] < alpha_bars[:-1]).all()
    with pytest.raises(ValueError):
        ddpm.cosine_beta_schedule(0)


def test_q_sample_and_its_inverses() -> None:
    # sqrt(0.64) * 1 + sqrt(0.36) * 2 = 0.8 + 1.2
    x0, eps = torch.tensor([[1.0]]), torch.tensor([[2.0]])
    assert ddpm.q_sample(x0, eps, torch.tensor(0.64)).item() == pytest.approx(2.0)
    torch.manual_seed(0)
    x0, eps, ab = torch.randn(5, 3), torch.randn(5, 3), torch.rand(5) * 0.9 + 0.05
    x = ddpm.q_sample(x0, eps, ab)  # per-row coefficients
    assert torch.allclose(x[2], ab[2].sqrt() * x0[2] + (1 - ab[2]).sqrt() * eps[2])
    assert torch.allclose(ddpm.predict_x0(x, eps, ab), x0, atol=1e-5)
    assert torch.allclose(ddpm.predict_eps(x, x0, ab), eps, atol=1e-5)


def test_posterior_mean_and_variance_by_hand() -> None:
    # betas 0.1, 0.2: abar = 0.9, 0.72. q(x_0 | x_1, x0):
    # coef_x0 = sqrt(0.9) * 0.2 / 0.28 = 0.677631, coef_x = sqrt(0.8) * 0.1 / 0.28 = 0.319438,
    # var = 0.2 * 0.1 / 0.28 = 0.0714286; with x0 = 1, x_1 = 2: mean = 1.316508.
    mean, var = ddpm.posterior_mean_var(
        torch.tensor([[1.0]]), torch.tensor([[2.0]]), torch.tensor(0.72), torch.tensor(0.9)
    )
    assert mean.item() == pytest.approx(0.677631 + 2 * 0.319438, abs=1e-5)
    assert var.item() == pytest.approx(0.0714286, abs=1e-6)


@pytest.mark.parametrize("ab_t,ab_s", [(0.72, 0.9), (0.05, 0.6), (1e-4, 0.3)])
def test_posterior_is_gaussian_conditioning(ab_t: float, ab_s: float) -> None:
    # x_s = sqrt(ab_s) x0 + sqrt(1 - ab_s) e1, x_t = sqrt(ab_t / ab_s) x_s + sqrt(1 - ab_t / ab_s) e2:
    # E[x_s | x_t] = m_s + C / V (x_t - m_t), Var = (1 - ab_s) - C^2 / V,
    # with C = sqrt(ab_t / ab_s) (1 - ab_s), V = 1 - ab_t.
    x0, x_t = torch.tensor([[0.3, -0.7]]), torch.tensor([[1.5, 0.2]])
    mean, var = ddpm.posterior_mean_var(x0, x_t, torch.tensor(ab_t), torch.tensor(ab_s))
    cov, v = math.sqrt(ab_t / ab_s) * (1 - ab_s), 1 - ab_t
    expected = math.sqrt(ab_s) * x0 + cov / v * (x_t - math.sqrt(ab_t) * x0)
    assert torch.allclose(mean, expected, atol=1e-5)
    assert var.item() == pytest.approx((1 - ab_s) - cov**2 / v, rel=1e-4)


def test_last_step_returns_x0() -> None:
    x0, x = torch.tensor([[0.4, -0.2]]), torch.tensor([[3.0, 1.0]])
    mean, var = ddpm.posterior_mean_var(x0, x, torch.tensor(0.3), torch.tensor(1.0))
    assert torch.allclose(mean, x0) and var.item() == 0.0
    mean, std = ddpm.ddim_step(x0, torch.randn(1, 2), torch.tensor(0.3), torch.tensor(1.0), 1.0)
    assert torch.allclose(mean, x0) and std.item() == 0.0


def test_ddim_with_eta_one_is_the_ddpm_posterior() -> None:
    torch.manual_seed(1)
    x0, eps = torch.randn(4, 3), torch.randn(4, 3)
    ab_t, ab_s = torch.tensor(0.2), torch.tensor(0.55)
    x_t = ddpm.q_sample(x0, eps, ab_t)
    ddim_mean, ddim_std = ddpm.ddim_step(x0, eps, ab_t, ab_s, eta=1.0)
    post_mean, post_var = ddpm.posterior_mean_var(x0, x_t, ab_t, ab_s)
    assert torch.allclose(ddim_mean, post_mean, atol=1e-5)
    assert ddim_std.square().item() == pytest.approx(post_var.item(), rel=1e-5)


def test_ddim_with_eta_zero_is_deterministic_and_follows_the_ode() -> None:
    x0, eps = torch.tensor([[0.5]]), torch.tensor([[-1.0]])
    mean, std = ddpm.ddim_step(x0, eps, torch.tensor(0.36), torch.tensor(0.64), eta=0.0)
    assert std.item() == 0.0
    # sqrt(0.64) * 0.5 + sqrt(0.36) * (-1): the same (x0, eps) one level up
    assert mean.item() == pytest.approx(0.4 - 0.6)


def test_ddim_timesteps() -> None:
    assert ddpm.ddim_timesteps(20, 5).tolist() == [16, 12, 8, 4, 0]
    assert ddpm.ddim_timesteps(20, 20).tolist() == list(range(19, -1, -1))
    assert ddpm.ddim_timesteps(10, 3).tolist() == [6, 3, 0]
    with pytest.raises(ValueError):
        ddpm.ddim_timesteps(5, 6)
