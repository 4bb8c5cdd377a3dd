"""policies.py: FlowPolicy / GaussianPolicy shapes, modes, bounds; RunningNorm statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowpolicy import flows
from flowpolicy.policies import FlowPolicy, GaussianPolicy, RunningNorm

LOW, HIGH = [0.0, -2.0], [1.0, 2.0]


def _flow_policy(**kwargs) -> FlowPolicy:
    torch.manual_seed(0)
    options = dict(chunk=3, chunk_exec=2, flow_steps=4, hidden=(16, 16), output_scale=1.0)
    return FlowPolicy(5, LOW, HIGH, **(options | kwargs))


def test_flow_policy_sample_shapes() -> None:
    policy = _flow_policy()
    assert policy.action_dim == 2 and policy.flat_action_dim == 6
    obs = torch.randn(7, 5)
    raw = policy.sample(obs)
    assert raw.shape == (7, 6)
    raw, chain = policy.sample(obs, "zero", return_chain=True)
    assert chain.shape == (5, 7, 6)
    assert torch.equal(chain[0], torch.zeros(7, 6))
    assert torch.equal(chain[-1], raw)
    assert policy.act(obs).shape == (7, 4)  # Ta_exec * Da


def test_flow_policy_sample_is_euler_on_its_velocity() -> None:
    policy = _flow_policy()
    obs = torch.randn(4, 5)
    with torch.no_grad():
        raw = policy.sample(obs, "zero")
        norm = policy.obs_norm(obs)
        expected = flows.euler_sample(
            lambda x, tau: policy.velocity(norm, x, tau), torch.zeros(4, 6), 4
        )
    assert torch.allclose(raw, expected)


def test_zero_mode_is_deterministic_and_random_mode_is_not() -> None:
    policy = _flow_policy()
    obs = torch.randn(6, 5)
    torch.manual_seed(1)
    a = policy.act(obs, "zero")
    torch.manual_seed(2)
    b = policy.act(obs, "zero")
    assert torch.equal(a, b)
    c, d = policy.act(obs, "random"), policy.act(obs, "random")
    assert not torch.allclose(c, d)
    # different observations give different zero-mode actions
    assert not torch.allclose(policy.act(obs + 1.0, "zero"), a)


def test_env_action_executes_the_first_actions_of_the_chunk() -> None:
    policy = _flow_policy(squash="clip")
    # chunk of 3 actions of size 2, batch 1; the env executes the first 2
    raw = torch.tensor([[0.5, -0.5, 0.0, 2.0, 9.0, 9.0]])
    # clip -> [[0.5, -0.5], [0.0, 1.0]]; dim 0 maps [-1, 1] -> [0, 1]: (x + 1) / 2;
    # dim 1 maps [-1, 1] -> [-2, 2]: 2 x
    expected = torch.tensor([[0.75, -1.0, 0.5, 2.0]])
    assert torch.allclose(policy.env_action(raw), expected)


def test_env_action_tanh_values() -> None:
    policy = _flow_policy(squash="tanh")
    raw = torch.tensor([[0.0, 0.0, 1.0, -1.0, 5.0, 5.0]])
    t = float(np.tanh(1.0))
    expected = torch.tensor([[0.5, 0.0, (t + 1) / 2, -2 * t]])
    assert torch.allclose(policy.env_action(raw), expected, atol=1e-6)


@pytest.mark.parametrize("squash", ["tanh", "clip"])
def test_env_actions_stay_in_a_non_symmetric_box(squash: str) -> None:
    policy = _flow_policy(squash=squash)
    torch.manual_seed(0)
    raw = 10.0 * torch.randn(500, 6)
    env = policy.env_action(raw).view(500, 2, 2)
    low, high = torch.tensor(LOW), torch.tensor(HIGH)
    assert (env >= low).all() and (env <= high).all()
    # the extremes are reached (not a box scaled into a corner)
    assert torch.allclose(env.amin((0, 1)), low, atol=1e-3)
    assert torch.allclose(env.amax((0, 1)), high, atol=1e-3)


def test_flow_policy_rejects_bad_chunks_and_bounds() -> None:
    with pytest.raises(ValueError):
        FlowPolicy(3, LOW, HIGH, chunk=2, chunk_exec=3)
    with pytest.raises(ValueError):
        FlowPolicy(3, LOW, HIGH, chunk=2, chunk_exec=0)
    with pytest.raises(ValueError, match="finite"):
        FlowPolicy(3, [-np.inf, 0.0], HIGH)


def test_running_norm_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    norm = RunningNorm(3)
    chunks = [rng.normal([1.0, -2.0, 5.0], [0.5, 2.0, 3.0], size=(n, 3)) for n in (10, 1, 37, 64)]
    for chunk in chunks:
        norm.update(torch.as_tensor(chunk, dtype=torch.float32))
    data = np.concatenate(chunks).astype(np.float32).astype(np.float64)
    assert np.allclose(norm.mean.numpy(), data.mean(0), rtol=1e-4, atol=1e-4)
    assert np.allclose(norm.var.numpy(), data.var(0), rtol=1e-4, atol=1e-4)
    assert float(norm.count) == pytest.approx(len(data) + 1e-4)
    x = torch.as_tensor(data[:5], dtype=torch.float32)
    expected = (data[:5] - data.mean(0)) / np.sqrt(data.var(0) + 1e-8)
    assert np.allclose(norm(x).numpy(), expected, atol=1e-3)
    assert norm(x).dtype == torch.float32


def test_running_norm_clips_and_accepts_leading_dims() -> None:
    norm = RunningNorm(2, clip=3.0)
    norm.update(torch.tensor([[[0.0, 0.0], [2.0, 2.0]], [[0.0, 0.0], [2.0, 2.0]]]))  # (2, 2, 2)
    assert torch.allclose(norm.mean, torch.ones(2), atol=1e-4)
    assert torch.allclose(norm.var, torch.ones(2), atol=1e-4)
    out = norm(torch.tensor([[100.0, -100.0]]))
    assert torch.equal(out, torch.tensor([[3.0, -3.0]]))


def test_gaussian_policy_shapes_and_modes() -> None:
    torch.manual_seed(0)
    policy = GaussianPolicy(4, LOW, HIGH, hidden=(8, 8), initial_log_std=-0.5)
    obs = torch.randn(9, 4)
    zero = policy.act(obs, "zero")
    assert zero.shape == (9, 2)
    with torch.no_grad():
        dist = policy.distribution(policy.obs_norm(obs))
    assert dist.mean.shape == (9, 2)
    assert torch.allclose(dist.stddev, torch.full((9, 2), float(np.exp(-0.5))))
    assert torch.equal(zero, policy.env_action(dist.mean))
    assert torch.equal(policy.act(obs, "zero"), zero)
    random = policy.act(obs, "random")
    assert random.shape == (9, 2)
    assert not torch.allclose(random, zero)
    low, high = torch.tensor(LOW), torch.tensor(HIGH)
    wide = GaussianPolicy(4, LOW, HIGH, initial_log_std=2.0).act(torch.randn(200, 4))
    assert (wide >= low).all() and (wide <= high).all()
    # a raw 0 is the middle of the box
    assert torch.allclose(policy.env_action(torch.zeros(1, 2)), torch.tensor([[0.5, 0.0]]))
