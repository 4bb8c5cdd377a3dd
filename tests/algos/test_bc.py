"""algos/bc.py: each BC loss against its definition, the optimiser schedule and EMA, NaN
handling, and the learning test: BC of a flow (and diffusion) policy keeps both modes of
bimodal data while the Gaussian baseline averages them."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from flowpolicy import ddpm
from flowpolicy.algos.bc import (
    BC,
    BCConfig,
    cosine_learning_rate,
    ddpm_bc_loss,
    flow_bc_loss,
    gaussian_bc_loss,
)
from flowpolicy.envs import optimum_coverage
from flowpolicy.errors import NonFiniteLossError
from flowpolicy.policies import DiffusionPolicy, FlowPolicy, GaussianPolicy

LOW, HIGH = [-1.0, -1.0], [1.0, 1.0]
SMALL = dict(network="residual", hidden=(64, 64, 64), activation="relu")


def _flow(**kwargs) -> FlowPolicy:
    options = dict(time_dim=16, output_scale=1.0, squash="clip", flow_steps=10) | SMALL
    return FlowPolicy(3, LOW, HIGH, **(options | kwargs))


def _diffusion(**kwargs) -> DiffusionPolicy:
    return DiffusionPolicy(3, LOW, HIGH, **(dict(time_dim=16, denoising_steps=20) | SMALL | kwargs))


def _gaussian(**kwargs) -> GaussianPolicy:
    return GaussianPolicy(3, LOW, HIGH, **(SMALL | kwargs))


def test_config_validation() -> None:
    for bad in (
        dict(learning_rate=0.0),
        dict(min_learning_rate=1e-2),
        dict(ema_decay=1.0),
        dict(batch_size=0),
        dict(ema_every=0),
        dict(max_grad_norm=0.0),
    ):
        with pytest.raises(ValueError):
            BCConfig(**bad)


# ----------------------------------------------------------------------------- losses


def test_flow_loss_is_cfm_at_the_drawn_pairs() -> None:
    torch.manual_seed(0)
    policy = _flow()
    obs, actions = torch.randn(8, 3), torch.rand(8, 2) * 2 - 1
    torch.manual_seed(1)
    loss, metrics = flow_bc_loss(policy, obs, actions)
    torch.manual_seed(1)  # replay the draws: tau ~ U[0, 1], then eps
    tau, eps = torch.rand(8), torch.randn(8, 2)
    x_tau = (1 - tau[:, None]) * eps + tau[:, None] * actions
    expected = (policy.velocity(obs, x_tau, tau) - (actions - eps)).square().mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert metrics["loss/bc"] == loss.detach()
    loss.backward()
    assert all(p.grad is not None for p in policy.velocity_net.parameters())


def test_flow_loss_logit_normal_times_lie_inside_the_interval() -> None:
    policy = _flow()
    seen = []
    original = policy.velocity
    policy.velocity = lambda obs, x, tau: (seen.append(tau), original(obs, x, tau))[1]
    flow_bc_loss(policy, torch.randn(256, 3), torch.zeros(256, 2), "logit_normal")
    tau = seen[0]
    # logit-normal concentrates in the middle: far fewer draws near the ends than uniform
    assert ((tau > 0) & (tau < 1)).all() and (tau - 0.5).abs().mean() < 0.2


def test_ddpm_loss_is_epsilon_mse_at_the_drawn_levels() -> None:
    torch.manual_seed(0)
    policy = _diffusion()
    obs, actions = torch.randn(8, 3), torch.rand(8, 2) * 2 - 1
    torch.manual_seed(2)
    loss, _ = ddpm_bc_loss(policy, obs, actions)
    torch.manual_seed(2)
    k, eps = torch.randint(0, 20, (8,)), torch.randn(8, 2)
    ab = ddpm.alpha_bars(ddpm.cosine_beta_schedule(20))[k]
    x_k = ab.sqrt()[:, None] * actions + (1 - ab).sqrt()[:, None] * eps
    expected = (policy.noise_prediction(obs, x_k, k) - eps).square().mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_gaussian_loss_is_the_negative_log_likelihood_per_dim() -> None:
    policy = _gaussian(initial_log_std=math.log(0.5))
    torch.nn.init.zeros_(policy.mean_net.output.weight)
    torch.nn.init.zeros_(policy.mean_net.output.bias)
    actions = torch.tensor([[0.0, 0.5], [1.0, -0.5]])
    loss, metrics = gaussian_bc_loss(policy, torch.randn(2, 3), actions)
    # N(0, 0.5^2): -log p(a) = log(0.5) + 0.5 log(2 pi) + a^2 / (2 * 0.25)
    expected = np.mean([math.log(0.5) + 0.5 * math.log(2 * math.pi) + a**2 * 2 for a in
                        (0.0, 0.5, 1.0, -0.5)])  # fmt: skip
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["policy/std"].item() == pytest.approx(0.5)


# ----------------------------------------------------------------------------- optimisation


def test_cosine_learning_rate() -> None:
    assert cosine_learning_rate(0, 100, 1e-3, 1e-4) == pytest.approx(1e-3)
    assert cosine_learning_rate(50, 100, 1e-3, 1e-4) == pytest.approx(5.5e-4)
    assert cosine_learning_rate(100, 100, 1e-3, 1e-4) == pytest.approx(1e-4)
    assert cosine_learning_rate(150, 100, 1e-3, 1e-4) == pytest.approx(1e-4)


def test_update_uses_the_schedule_and_the_ema_follows() -> None:
    torch.manual_seed(0)
    config = BCConfig(learning_rate=1e-2, min_learning_rate=1e-3, ema_every=1, ema_start=2)
    bc = BC(_gaussian(), config, total_steps=4)
    obs, actions = torch.randn(16, 3), torch.rand(16, 2)
    lrs = []
    for _ in range(2):  # before ema_start: the EMA is a copy
        lrs.append(bc.update(obs, actions)["charts/learning_rate"])
        for ema, param in zip(bc.ema_policy.parameters(), bc.policy.parameters(), strict=True):
            assert torch.equal(ema, param)
    previous = [p.clone() for p in bc.ema_policy.parameters()]
    lrs.append(bc.update(obs, actions)["charts/learning_rate"])
    for ema, old, param in zip(
        bc.ema_policy.parameters(), previous, bc.policy.parameters(), strict=True
    ):
        assert torch.allclose(ema, 0.995 * old + 0.005 * param, atol=1e-7)
        assert not torch.equal(ema, param)
    assert lrs == pytest.approx([1e-2, cosine_learning_rate(1, 4, 1e-2, 1e-3), 5.5e-3])


def test_a_nan_loss_is_refused_before_the_step() -> None:
    torch.manual_seed(0)
    bc = BC(_flow(), BCConfig(), total_steps=10)
    before = [p.clone() for p in bc.policy.parameters()]
    with pytest.raises(NonFiniteLossError):
        bc.update(torch.randn(4, 3), torch.full((4, 2), float("nan")))
    assert all(torch.equal(a, b) for a, b in zip(before, bc.policy.parameters(), strict=True))
    assert bc.steps == 0


def test_state_dict_round_trip_continues_identically() -> None:
    obs, actions = torch.randn(32, 3), torch.rand(32, 2)
    torch.manual_seed(0)
    config = BCConfig(ema_every=1, ema_start=1)
    first = BC(_diffusion(), config, total_steps=6)
    for _ in range(3):
        first.update(obs, actions)
    second = BC(_diffusion(), config, total_steps=6)
    second.load_state_dict(copy.deepcopy(first.state_dict()))  # as if read from disk
    torch.manual_seed(7)
    a = [first.update(obs, actions)["loss/bc"] for _ in range(3)]
    torch.manual_seed(7)
    b = [second.update(obs, actions)["loss/bc"] for _ in range(3)]
    assert a == b
    for p, q in zip(first.ema_policy.parameters(), second.ema_policy.parameters(), strict=True):
        assert torch.equal(p, q)


# ----------------------------------------------------------------------------- learning

CLUSTERS = np.array([[-0.6, 0.4], [0.6, -0.4]])


def _bimodal_bc(policy, steps: int = 400) -> np.ndarray:
    """BC on one constant observation with actions from two clusters; returns 2000 env-action
    samples of the EMA policy in random mode."""
    rng = np.random.default_rng(0)
    actions = CLUSTERS[rng.integers(0, 2, 1000)] + 0.05 * rng.normal(size=(1000, 2))
    actions = torch.as_tensor(actions, dtype=torch.float32)
    obs = torch.ones(1000, 3)
    policy.fit_normalizers(obs, actions)
    obs_n, raw = policy.obs_norm(obs), policy.raw_from_env(actions)
    config = BCConfig(
        learning_rate=3e-3, min_learning_rate=1e-3, ema_every=1, ema_start=0, ema_decay=0.9
    )
    bc = BC(policy, config, total_steps=steps)
    for _ in range(steps):
        batch = torch.randint(0, 1000, (128,))
        bc.update(obs_n[batch], raw[batch])
    return bc.eval_policy.act(torch.ones(2000, 3), "random").numpy()


def test_flow_bc_reproduces_both_modes_and_gaussian_bc_does_not() -> None:
    torch.manual_seed(0)
    flow = _bimodal_bc(_flow())
    coverage = optimum_coverage(flow, CLUSTERS, radius=0.2)
    assert (coverage >= 0.25).all(), coverage

    torch.manual_seed(0)
    policy = _gaussian()
    gaussian = _bimodal_bc(policy)
    coverage = optimum_coverage(gaussian, CLUSTERS, radius=0.2)
    assert (coverage < 0.25).all(), coverage
    # its mode (the mean) sits between the clusters
    mean = policy.act(torch.ones(1, 3), "zero").numpy()[0]
    assert np.linalg.norm(mean) < 0.2, mean


def test_diffusion_bc_reproduces_both_modes() -> None:
    torch.manual_seed(0)
    samples = _bimodal_bc(_diffusion())
    coverage = optimum_coverage(samples, CLUSTERS, radius=0.2)
    assert (coverage >= 0.25).all(), coverage
