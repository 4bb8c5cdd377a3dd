"""policies.py: FlowPolicy / DiffusionPolicy / GaussianPolicy shapes, modes, bounds; the
observation and action normalisers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowpolicy import ddpm, flows
from flowpolicy.nets import DenoisingMLP
from flowpolicy.policies import (
    DiffusionPolicy,
    FlowPolicy,
    GaussianPolicy,
    MinMaxNorm,
    RunningNorm,
)

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


# ----------------------------------------------------------------------------- diffusion


def _diffusion_policy(**kwargs) -> DiffusionPolicy:
    torch.manual_seed(0)
    options = dict(chunk=3, chunk_exec=2, denoising_steps=6, hidden=(16, 16, 16), time_dim=8)
    return DiffusionPolicy(5, LOW, HIGH, **(options | kwargs))


def test_diffusion_policy_shapes_and_chain() -> None:
    policy = _diffusion_policy()
    assert policy.flat_action_dim == 6 and policy.num_sampling_steps() == 6
    obs = torch.randn(7, 5)
    with torch.no_grad():
        raw, chain = policy.sample(obs, "zero", return_chain=True)
    assert raw.shape == (7, 6) and chain.shape == (7, 7, 6)
    assert torch.equal(chain[0], torch.zeros(7, 6))
    assert torch.equal(chain[-1], raw)
    # the last step returns the clipped x0 prediction
    assert raw.abs().max() <= 1.0
    assert policy.act(obs).shape == (7, 4)


def test_diffusion_zero_mode_is_deterministic_and_random_mode_is_not() -> None:
    policy = _diffusion_policy()
    obs = torch.randn(6, 5)
    torch.manual_seed(1)
    a = policy.act(obs, "zero")
    torch.manual_seed(2)
    assert torch.equal(policy.act(obs, "zero"), a)
    assert not torch.allclose(policy.act(obs, "random"), policy.act(obs, "random"))
    assert not torch.allclose(policy.act(obs + 1.0, "zero"), a)


@pytest.mark.parametrize("ddim_steps", [None, 3])
def test_diffusion_step_gaussian_is_what_sample_uses(ddim_steps) -> None:
    policy = _diffusion_policy(ddim_steps=ddim_steps, ddim_eta=0.7)
    obs = torch.randn(4, 5)
    torch.manual_seed(5)
    with torch.no_grad():
        raw, chain = policy.sample(obs, "random", return_chain=True)
        # replay: the same draws in the same order, every step from step_gaussian
        torch.manual_seed(5)
        x = torch.randn(4, 6)
        norm = policy.obs_norm(obs)
        assert torch.equal(chain[0], x)
        for step in range(policy.num_sampling_steps("random")):
            mean, std = policy.step_gaussian(norm, chain[step], step, "random")
            assert mean.shape == std.shape == (4, 6)
            x = mean + std * torch.randn_like(mean)
            assert torch.allclose(chain[step + 1], x)
    assert chain.shape[0] == (6 if ddim_steps is None else 3) + 1
    assert torch.equal(x, raw)


def test_diffusion_ddpm_step_is_the_posterior_at_the_predicted_x0() -> None:
    policy = _diffusion_policy(denoised_clip=None)
    obs, x = torch.randn(3, 5), torch.randn(3, 6)
    with torch.no_grad():
        norm = policy.obs_norm(obs)
        k = policy.timesteps("random")[2]  # third reverse step: level 3 -> 2
        assert k.item() == 3
        eps = policy.noise_prediction(norm, x, k.expand(3))
        ab = ddpm.alpha_bars(ddpm.cosine_beta_schedule(6))
        x0 = ddpm.predict_x0(x, eps, ab[3])
        expected_mean, expected_var = ddpm.posterior_mean_var(x0, x, ab[3], ab[2])
        mean, std = policy.step_gaussian(norm, x, 2, "random")
        _, last_std = policy.step_gaussian(norm, x, 5, "random")
    assert torch.allclose(mean, expected_mean, atol=1e-5)
    assert torch.allclose(std, expected_var.sqrt().expand(3, 6))
    assert (std > 0).all() and (last_std == 0).all()
    _, zero_std = policy.step_gaussian(norm, x, 2, "zero")
    assert (zero_std == 0).all()


def test_diffusion_env_actions_stay_in_bounds_and_bad_arguments_fail() -> None:
    policy = _diffusion_policy()
    env = policy.env_action(10.0 * torch.randn(200, 6)).view(200, 2, 2)
    assert (env >= torch.tensor(LOW)).all() and (env <= torch.tensor(HIGH)).all()
    with pytest.raises(ValueError):
        _diffusion_policy(ddim_steps=7)
    with pytest.raises(ValueError):
        _diffusion_policy(ddim_eta=-1.0)
    with pytest.raises(ValueError):
        _diffusion_policy(chunk=2, chunk_exec=3)


def test_flow_policy_residual_network() -> None:
    policy = _flow_policy(network="residual", hidden=(16, 16, 16), time_dim=8, squash="clip")
    assert isinstance(policy.velocity_net, DenoisingMLP)
    assert policy.act(torch.randn(3, 5)).shape == (3, 4)
    with pytest.raises(ValueError, match="odd number"):
        _flow_policy(network="residual", hidden=(16, 16))
    with pytest.raises(ValueError):
        _flow_policy(network="mlp", layer_norm=True)


def test_gaussian_policy_chunks() -> None:
    torch.manual_seed(0)
    policy = GaussianPolicy(4, LOW, HIGH, chunk=3, chunk_exec=2, hidden=(8, 8))
    assert policy.flat_action_dim == 6 and policy.log_std.shape == (6,)
    obs = torch.randn(5, 4)
    assert policy.sample(obs).shape == (5, 6)
    raw = torch.tensor([[0.0, 0.0, 1.0, -1.0, 9.0, 9.0]])
    assert torch.allclose(policy.env_action(raw), torch.tensor([[0.5, 0.0, 1.0, -2.0]]))


# ----------------------------------------------------------------------------- normalisers


def test_running_norm_fit_freezes_it() -> None:
    data = torch.tensor([[0.0, 10.0], [2.0, 30.0]])
    norm = RunningNorm(2)
    norm.fit(data)
    assert bool(norm.frozen)
    assert torch.allclose(norm.mean, torch.tensor([1.0, 20.0]))
    assert torch.allclose(norm.var, torch.tensor([1.0, 100.0]))
    before = norm(data).clone()
    norm.update(100.0 + torch.randn(50, 2))
    assert torch.equal(norm(data), before)
    assert torch.allclose(before, torch.tensor([[-1.0, -1.0], [1.0, 1.0]]), atol=1e-4)
    # the flag travels with the state
    copy = RunningNorm(2)
    copy.load_state_dict(norm.state_dict())
    copy.update(torch.randn(10, 2))
    assert torch.equal(copy.mean, norm.mean)


def test_running_norm_loads_state_written_before_the_frozen_flag() -> None:
    old = {"mean": torch.ones(2), "var": torch.full((2,), 4.0), "count": torch.tensor(5.0)}
    norm = RunningNorm(2)
    norm.load_state_dict(old)
    assert not bool(norm.frozen)
    norm.update(torch.zeros(5, 2))  # still a running normaliser
    assert torch.allclose(norm.mean, torch.full((2,), 0.5))


def test_min_max_norm_maps_the_data_box_to_minus_one_one() -> None:
    norm = MinMaxNorm(3)
    x = torch.tensor([[5.0, -1.0, 2.0], [7.0, 3.0, 2.0], [6.0, 1.0, 2.0]])
    assert torch.equal(norm(x), x.clamp(-10, 10))  # identity before fitting
    norm.fit(x)
    out = norm(x)
    assert torch.allclose(out[:, :2], torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]))
    assert torch.equal(out[:, 2], torch.zeros(3))  # a constant dim maps to 0, not NaN
    norm.update(torch.randn(10, 3))  # RL updates never move it
    assert torch.equal(norm(x), out)
    assert norm.frozen


@pytest.mark.parametrize("policy_class", [FlowPolicy, DiffusionPolicy, GaussianPolicy])
def test_fitted_obs_normaliser_survives_an_rl_update(policy_class) -> None:
    for kind in ("running", "min_max"):
        policy = policy_class(3, LOW, HIGH, obs_normalization=kind)
        data = torch.randn(100, 3) * 4.0 + 2.0
        policy.fit_normalizers(data, torch.rand(100, 2))
        before = policy.obs_norm(data).clone()
        policy.obs_norm.update(torch.randn(64, 3) * 100.0)  # what PPO/FPO call after an update
        assert torch.equal(policy.obs_norm(data), before)
        assert before.abs().max() <= (1.0 + 1e-6 if kind == "min_max" else 10.0)


def test_action_normaliser_defaults_to_the_exact_old_mapping() -> None:
    policy = _flow_policy(squash="clip")
    bounded = torch.rand(50, 2) * 2 - 1
    low, high = torch.tensor(LOW), torch.tensor(HIGH)
    assert torch.equal(policy.scale_to_env(bounded), low + (bounded + 1.0) * 0.5 * (high - low))


@pytest.mark.parametrize(
    "policy_class,options",
    [(FlowPolicy, {"squash": "clip"}), (DiffusionPolicy, {}), (GaussianPolicy, {})],
    ids=["flow", "diffusion", "gaussian"],
)
def test_fitted_action_normaliser_round_trip(policy_class, options) -> None:
    torch.manual_seed(0)
    policy = policy_class(3, LOW, HIGH, chunk=1, chunk_exec=1, **options)
    # data uses [0.2, 0.6] of dim 0 (box [0, 1]) and [-1, 1.5] of dim 1 (box [-2, 2])
    actions = torch.stack([0.2 + 0.4 * torch.rand(500), -1.0 + 2.5 * torch.rand(500)], -1)
    actions[0], actions[1] = torch.tensor([0.2, -1.0]), torch.tensor([0.6, 1.5])
    policy.fit_normalizers(torch.randn(500, 3), actions)
    raw = policy.raw_from_env(actions)
    assert torch.allclose(raw.amin(0), -torch.ones(2), atol=1e-5)
    assert torch.allclose(raw.amax(0), torch.ones(2), atol=1e-5)
    assert torch.allclose(policy.env_action(raw), actions, atol=1e-5)
    # any raw action lands inside the data's range (clip to [-1, 1] first)
    env = policy.env_action(5.0 * torch.randn(300, 2))
    assert (env >= torch.tensor([0.2, -1.0]) - 1e-5).all()
    assert (env <= torch.tensor([0.6, 1.5]) + 1e-5).all()


@pytest.mark.parametrize("policy_class", [FlowPolicy, DiffusionPolicy, GaussianPolicy])
def test_policies_load_state_without_the_new_buffers(policy_class) -> None:
    # files written before the action normaliser and the frozen flag existed still load
    policy = policy_class(3, LOW, HIGH)
    state = {
        name: value
        for name, value in policy.state_dict().items()
        if not name.startswith("action_norm.") and name != "obs_norm.frozen"
    }
    fresh = policy_class(3, LOW, HIGH)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.action_norm.half_range, torch.ones(2))


@pytest.mark.parametrize("policy_class", [FlowPolicy, DiffusionPolicy, GaussianPolicy])
def test_init_kwargs_rebuild_the_same_architecture(policy_class) -> None:
    policy = policy_class(3, torch.tensor(LOW), np.asarray(HIGH), chunk=2, chunk_exec=1)
    rebuilt = policy_class(**policy.init_kwargs)
    rebuilt.load_state_dict(policy.state_dict())
    assert rebuilt.init_kwargs == policy.init_kwargs
    assert policy.init_kwargs["action_low"] == LOW  # plain lists, whatever was passed in
