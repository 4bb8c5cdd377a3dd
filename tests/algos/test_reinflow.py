"""ReinFlow: ratio 1 on the first minibatch, the chain log-likelihood and entropy against
per-step Gaussian densities computed independently, the sampling grid, the noise network's
bounds and schedule, clamped iterates, the W2 regulariser, config checks, state round trips,
the training loop (CLI with --init, exact resume) and the bandit toy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch.distributions import Normal

from flowpolicy.algos.reinflow import (
    NOISE_TIME_DIM,
    ReinFlow,
    ReinFlowConfig,
    cosine_restarts_lr,
    noise_upper_bound,
)
from flowpolicy.buffers import RolloutBuffer
from flowpolicy.cli import main
from flowpolicy.envs import BanditEnv
from flowpolicy.nets import sinusoidal_embedding
from flowpolicy.policies import FlowPolicy
from flowpolicy.policy_io import save_policy
from tests.algos.broad_policies import (
    BANDIT_HIGH,
    BANDIT_LOW,
    broad_flow_policy,
    mean_bandit_reward,
)
from tests.algos.rollouts import random_rollout
from tests.test_train import metric_rows

OBS_DIM = 3
LOW, HIGH = torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 2.0])
TINY = dict(
    num_envs=2,
    num_steps=8,
    num_minibatches=2,
    update_epochs=3,
    actor_hidden=(16, 16, 16),
    time_dim=8,
    critic_hidden=(8,),
    noise_hidden=(16, 16),
    flow_steps=4,
    chunk=2,
    chunk_exec=1,
    actor_lr=1e-2,
    critic_lr=1e-2,
    lr_schedule="constant",
)
METRICS = {
    "loss/surrogate",
    "loss/entropy",
    "loss/policy",
    "loss/value",
    "loss/grad_norm",
    "policy/ratio",
    "policy/approx_kl",
    "policy/clipfrac",
    "policy/entropy",
    "policy/log_prob",
    "policy/log_prob_clampfrac",
    "policy/noise_std",
    "policy/noise_std_upper",
    "critic/explained_variance",
    "charts/actor_lr",
    "charts/critic_lr",
}


def _make(**kw) -> ReinFlow:
    torch.manual_seed(0)
    algo = ReinFlow(OBS_DIM, LOW, HIGH, ReinFlowConfig(**(TINY | kw)))
    algo.policy.obs_norm.update(5.0 + 2.0 * torch.randn(100, OBS_DIM))
    return algo


def _independent_log_prob(
    algo: ReinFlow, obs: torch.Tensor, chain: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised chain log-likelihood and entropy, one step at a time with
    torch.distributions, tau = k / K written out, and the noise squash written out."""
    cfg = algo.config
    obs_n = algo.policy.obs_norm(obs)
    steps, batch, size = chain.shape[0] - 1, chain.shape[1], chain.shape[2]
    log_var_min = math.log(cfg.min_std**2)
    log_var_max = math.log(algo.noise_net.upper**2)
    log_prob = torch.zeros(batch)
    entropy = torch.zeros(batch)
    if cfg.include_initial_noise:
        log_prob += Normal(0.0, 1.0).log_prob(chain[0]).sum(-1)
        entropy += size * Normal(0.0, 1.0).entropy()
    for k in range(steps):
        tau = torch.full((batch,), k / steps)
        mean = chain[k] + algo.policy.velocity_net(obs_n, chain[k], tau) / steps
        if cfg.clamp == "mean":
            mean = mean.clamp(-1.0, 1.0)
        features = algo.policy.velocity_net.time_embedding(tau)
        raw = algo.noise_net.net(torch.cat([features, obs_n], -1))
        log_var = log_var_min + (log_var_max - log_var_min) * (torch.tanh(raw) + 1) / 2
        step = Normal(mean, torch.exp(0.5 * log_var))
        log_prob += step.log_prob(chain[k + 1]).sum(-1)
        entropy += step.entropy().sum(-1)
    terms = (steps + int(cfg.include_initial_noise)) * size
    return log_prob / terms, entropy / terms


# ----------------------------------------------------------------------------- the ratio


@pytest.mark.parametrize("clamp", ["mean", "iterate"])
def test_ratio_is_one_on_the_first_minibatch(clamp: str, monkeypatch) -> None:
    algo = _make(clamp=clamp)
    calls: list[dict] = []
    original = algo.policy_loss

    def spy(obs, chain, old_log_prob, advantages):
        with torch.no_grad():
            new_log_prob, _, _ = algo.chain_log_prob(obs, chain)
        loss, metrics = original(obs, chain, old_log_prob, advantages)
        calls.append({"old": old_log_prob, "new": new_log_prob, "metrics": metrics})
        return loss, metrics

    monkeypatch.setattr(algo, "policy_loss", spy)
    # Two updates; after the first the noise bound moves (progress 0.9 is past the hold), so the
    # second rollout and the second update must both see the new bound.
    for iteration, progress in enumerate((0.9, 0.95)):
        calls.clear()
        batch = random_rollout(algo, OBS_DIM, seed=iteration)
        batch.progress = progress
        algo.update(batch)
        assert len(calls) == 6  # 3 epochs x 2 minibatches
        first = calls[0]
        assert torch.allclose(first["new"], first["old"], atol=1e-6, rtol=0)
        assert float(first["metrics"]["policy/ratio"]) == pytest.approx(1.0, abs=1e-6)
        assert float(first["metrics"]["policy/clipfrac"]) == 0.0
        # sensitivity: later minibatches see changed networks
        assert not torch.allclose(calls[-1]["new"], calls[-1]["old"], atol=1e-4)
    assert algo.noise_net.upper == pytest.approx(noise_upper_bound(0.95, algo.config), rel=1e-6)


# ----------------------------------------------------------------------------- the likelihood


@pytest.mark.parametrize("clamp", ["mean", "iterate"])
@pytest.mark.parametrize("include_initial", [True, False])
def test_chain_log_likelihood_equals_independent_per_step_densities(
    clamp: str, include_initial: bool
) -> None:
    algo = _make(clamp=clamp, include_initial_noise=include_initial)
    algo.noise_net.set_upper(0.2)
    obs = 5.0 + 2.0 * torch.randn(6, OBS_DIM)
    env_action, record = algo.act(obs)
    chain = record["chain"].transpose(0, 1)  # (K+1, B, A)
    assert env_action.shape == (6, 2) and chain.shape == (5, 6, 4)
    assert record["log_prob"].shape == (6,)
    with torch.no_grad():
        expected_log_prob, expected_entropy = _independent_log_prob(algo, obs, chain)
        log_prob, entropy, stds = algo.chain_log_prob(algo.policy.obs_norm(obs), chain)
    assert torch.allclose(record["log_prob"], expected_log_prob, atol=1e-5)
    assert torch.allclose(log_prob, expected_log_prob, atol=1e-5)
    assert torch.allclose(entropy, expected_entropy, atol=1e-5)
    assert stds.shape == (4, 6, 4)


@pytest.mark.parametrize("clamp", ["mean", "iterate"])
def test_sampling_walks_the_same_grid_as_the_likelihood(clamp: str, monkeypatch) -> None:
    # With the per-step noise switched off, the sampled chain is the clamped Euler chain on
    # tau_k = k / K from the sampled x_0; a sampler on another grid (e.g. linspace(0, 1, K),
    # the released code's) would not reproduce it.
    algo = _make(clamp=clamp)
    monkeypatch.setattr(torch, "randn_like", lambda x: torch.zeros_like(x))
    obs = 5.0 + 2.0 * torch.randn(6, OBS_DIM)
    _, record = algo.act(obs)
    chain = record["chain"].transpose(0, 1)
    obs_n = algo.policy.obs_norm(obs)
    x = chain[0]
    with torch.no_grad():
        for k in range(4):
            tau = torch.full((6,), k / 4)
            x = (x + algo.policy.velocity_net(obs_n, x, tau) / 4).clamp(-1.0, 1.0)
            assert torch.allclose(chain[k + 1], x, atol=1e-6), k


# ----------------------------------------------------------------------------- noise and clamps


def test_noise_schedule_holds_then_decays_at_hand_picked_points() -> None:
    cfg = ReinFlowConfig()  # 0.10 - 0.24, hold 35%, decay to 0.10 + 0.7 * 0.14 = 0.198
    assert cfg.decayed_max_std == pytest.approx(0.198)
    expected = {
        0.0: 0.24,
        0.2: 0.24,
        0.35: 0.24,
        0.35 + 0.65 / 4: 0.198 + 0.042 * (1 + math.cos(math.pi / 4)) / 2,  # 0.233849
        0.675: 0.198 + 0.042 / 2,  # half-way through the decay: 0.219
        1.0: 0.198,
    }
    for progress, value in expected.items():
        assert noise_upper_bound(progress, cfg) == pytest.approx(value, abs=1e-9), progress
    never = ReinFlowConfig(noise_hold_fraction=1.0)
    assert noise_upper_bound(0.99, never) == pytest.approx(0.24)


def test_cosine_restarts_learning_rate_at_hand_picked_iterations() -> None:
    lr = lambda i: cosine_restarts_lr(i, peak=4.5e-5, floor=2e-5, cycle=100, warmup=10)  # noqa: E731
    assert lr(0) == pytest.approx(2e-5)
    assert lr(5) == pytest.approx(3.25e-5)  # half-way through the warm-up
    assert lr(10) == pytest.approx(4.5e-5)
    assert lr(55) == pytest.approx(3.25e-5)  # half-way through the cosine
    assert lr(100) == pytest.approx(2e-5) and lr(105) == pytest.approx(3.25e-5)  # restart
    algo = _make(
        actor_lr=4.5e-5,
        lr_schedule="cosine_restarts",
        lr_cycle_iterations=4,
        lr_warmup_iterations=2,
    )
    seen = []
    for seed in range(5):
        seen.append(algo.update(random_rollout(algo, OBS_DIM, seed))["charts/actor_lr"])
    assert seen == pytest.approx([2e-5, 3.25e-5, 4.5e-5, 3.25e-5, 2e-5])


@pytest.mark.parametrize("upper", [0.24, 0.2, 0.12])
def test_noise_std_stays_within_the_scheduled_bounds(upper: float) -> None:
    algo = _make()
    algo.noise_net.set_upper(upper)
    with torch.no_grad():  # a large output layer saturates the squash from both sides
        algo.noise_net.net[-1].weight.normal_(0.0, 30.0)
    obs = 5.0 + 20.0 * torch.randn(500, OBS_DIM)
    _, record = algo.act(obs)
    with torch.no_grad():
        _, _, stds = algo.chain_log_prob(algo.policy.obs_norm(obs), record["chain"].transpose(0, 1))
    assert stds.min() >= 0.10 * (1 - 1e-6) and stds.max() <= upper * (1 + 1e-6)
    assert stds.min() < 0.10 * 1.01 and stds.max() > upper * 0.99  # both ends are reached


def test_initial_noise_std_is_mid_range() -> None:
    algo = _make()
    features = torch.randn(50, algo.noise_net.net[0].in_features - OBS_DIM)
    std = algo.noise_net(features, torch.randn(50, OBS_DIM))
    assert std.shape == (50, 4)
    assert torch.allclose(std, torch.full_like(std, math.sqrt(0.10 * 0.24)), rtol=0.05)


def _steep(algo: ReinFlow) -> ReinFlow:
    algo.policy.velocity_net.output_scale = 30.0  # a field that shoots far out of [-1, 1]
    return algo


def test_every_iterate_is_clamped_in_iterate_mode() -> None:
    algo = _steep(_make(clamp="iterate"))
    _, record = algo.act(5.0 + 2.0 * torch.randn(200, OBS_DIM))
    iterates = record["chain"][:, 1:]
    assert iterates.abs().max() <= 1.0
    assert (iterates.abs() == 1.0).float().mean() > 0.2  # the clamp was active


def test_means_and_final_action_are_clamped_in_mean_mode() -> None:
    algo = _steep(_make(clamp="mean"))
    obs = 5.0 + 2.0 * torch.randn(200, OBS_DIM)
    _, record = algo.act(obs)
    chain = record["chain"].transpose(0, 1)
    velocity, noise_std = algo.step_functions(algo.policy.obs_norm(obs))
    from flowpolicy.chains import euler_step_gaussians

    with torch.no_grad():
        means, stds = euler_step_gaussians(velocity, noise_std, chain)
    assert means.abs().max() <= 1.0 + 1e-6
    assert ((means.abs() - 1.0).abs() < 1e-6).float().mean() > 0.2  # the clamp was active
    assert chain[-1].abs().max() <= 1.0
    # intermediate iterates are Gaussian around clamped means, draws clipped at 3 std
    deviation = (chain[1:-1] - means[:-1]).abs() / stds[:-1]
    assert deviation.max() <= 3.0 + 1e-4
    assert chain[1:-1].abs().max() > 1.0  # not clamped themselves (the released code's way)


# ----------------------------------------------------------------------------- the networks


def test_noise_net_time_input_is_the_detached_velocity_embedding() -> None:
    algo = _make()
    tau = torch.tensor([0.0, 0.25, 0.5, 0.75])
    features = algo.time_features(tau)
    assert not features.requires_grad
    assert torch.equal(features, algo.policy.velocity_net.time_embedding(tau).detach())
    # the entropy bonus trains the noise net only, never the velocity net's embedding
    obs = 5.0 + 2.0 * torch.randn(4, OBS_DIM)
    _, record = algo.act(obs)
    _, entropy, _ = algo.chain_log_prob(algo.policy.obs_norm(obs), record["chain"].transpose(0, 1))
    entropy.sum().backward()
    assert all(p.grad is None for p in algo.policy.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in algo.noise_net.parameters())


def test_a_velocity_net_without_embedding_gets_fixed_sinusoidal_features() -> None:
    torch.manual_seed(0)
    policy = FlowPolicy(OBS_DIM, LOW, HIGH, chunk=2, flow_steps=4, network="mlp", hidden=(8,))
    algo = ReinFlow(OBS_DIM, LOW, HIGH, ReinFlowConfig(**TINY), policy=policy)
    tau = torch.tensor([0.0, 0.5])
    assert torch.equal(algo.time_features(tau), sinusoidal_embedding(tau, NOISE_TIME_DIM))
    _, record = algo.act(torch.randn(3, OBS_DIM))
    assert torch.isfinite(record["log_prob"]).all()


def test_eval_policy_is_the_flow_policy_and_the_noise_net_is_saved() -> None:
    algo = _make(bc_coef=0.1)
    algo.update(random_rollout(algo, OBS_DIM))
    assert algo.eval_policy is algo.policy and isinstance(algo.eval_policy, FlowPolicy)
    state = algo.state_dict()
    assert state["iterations"] == 1 and "log_var_max" in state["noise_net"]
    other = _make(bc_coef=0.1)
    other.load_state_dict(state)
    obs = torch.randn(5, OBS_DIM)
    torch.manual_seed(7)
    first = algo.act(obs)[1]
    torch.manual_seed(7)
    second = other.act(obs)[1]
    assert torch.equal(first["chain"], second["chain"])
    assert torch.equal(first["log_prob"], second["log_prob"])


def test_w2_regulariser_is_zero_at_the_start_and_pulls_back() -> None:
    algo = _make(bc_coef=0.1)
    obs_n = algo.policy.obs_norm(5.0 + 2.0 * torch.randn(16, OBS_DIM))
    assert float(algo.bc_loss(obs_n).detach()) == 0.0
    with torch.no_grad():
        for parameter in algo.policy.velocity_net.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    loss = algo.bc_loss(obs_n)
    assert float(loss.detach()) > 0
    loss.backward()
    assert all(p.grad is None for p in algo.reference.parameters())
    assert any(p.grad is not None for p in algo.policy.parameters())
    metrics = algo.update(random_rollout(algo, OBS_DIM))
    assert metrics["loss/bc"] > 0


def test_update_returns_finite_documented_metrics() -> None:
    algo = _make()
    out = algo.update(random_rollout(algo, OBS_DIM))
    assert set(out) == METRICS
    assert all(isinstance(v, float) and math.isfinite(v) for v in out.values())
    assert out["policy/noise_std_upper"] == pytest.approx(0.24)


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(min_std=0.24, max_std=0.24), "min_std .* must be smaller than max_std"),
        (dict(min_std=0.3), "min_std .* must be smaller than max_std"),
        (dict(min_std=0.0), "min_std must be positive"),
        (dict(clip_coef=0.0), "clip_coef must be positive"),
        (dict(clip_coef=-0.01), "clip_coef must be positive"),
        (dict(noise_hold_fraction=1.5), "noise_hold_fraction"),
        (dict(noise_decay_ratio=-0.1), "noise_decay_ratio"),
        (dict(log_prob_clamp=(1.0, -1.0)), "log_prob_clamp"),
        (dict(ent_coef=-0.03), "ent_coef must be >= 0"),
        (dict(bc_coef=-1.0), "bc_coef must be >= 0"),
        (dict(noise_clip=0.0), "noise_clip must be positive"),
        (dict(flow_steps=0), "flow_steps must be positive"),
        (dict(chunk=2, chunk_exec=3), "chunk_exec"),
        (dict(actor_lr=1e-5), "actor_min_lr .* exceeds actor_lr"),
        (dict(lr_warmup_iterations=100), "lr_warmup_iterations"),
        (dict(gamma=1.5), "gamma"),
        (dict(num_envs=3, num_steps=5, num_minibatches=2), "num_minibatches"),
    ],
)
def test_config_validation(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ReinFlowConfig(**overrides)


def test_config_defaults_are_the_authors_hopper_settings() -> None:
    cfg = ReinFlowConfig()
    assert (cfg.num_envs, cfg.num_steps, cfg.chunk, cfg.flow_steps) == (40, 500, 4, 4)
    assert (cfg.actor_lr, cfg.critic_lr, cfg.clip_coef, cfg.ent_coef) == (
        4.5e-5,
        6.5e-4,
        0.01,
        0.03,
    )
    assert cfg.num_minibatches * cfg.update_epochs == 20
    assert (cfg.min_std, cfg.max_std, cfg.noise_hidden) == (0.10, 0.24, (64, 64))
    assert cfg.bc_coef == 0.0 and cfg.log_prob_clamp == (-1.0, 1.0)
    assert ReinFlowConfig(actor_lr=1e-5, lr_schedule="constant").actor_lr == 1e-5


# ----------------------------------------------------------------------------- the loop


def _policy_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "broad.pt"
    save_policy(path, broad_flow_policy(4), {"env_id": "toy/bandit"})
    return path


LOOP = dict(
    num_envs=4,
    num_steps=8,
    num_minibatches=2,
    update_epochs=2,
    critic_hidden=(16,),
    noise_hidden=(16,),
    actor_lr=1e-3,
    critic_lr=1e-3,
    actor_min_lr=1e-4,
    critic_min_lr=1e-4,
    lr_cycle_iterations=3,
    lr_warmup_iterations=1,
    bc_coef=0.1,
)


def test_trains_through_the_cli_from_a_pretrained_policy(tmp_path) -> None:
    policy_file = _policy_file(tmp_path)
    run_dir = tmp_path / "cli"
    flags = ["--num-envs", "4", "--num-steps", "8", "--num-minibatches", "2"]
    flags += ["--update-epochs", "2", "--critic-hidden", "16", "--noise-hidden", "16"]
    flags += ["--flow-steps", "9", "--log-prob-clamp", "-2", "2", "--clamp", "iterate"]
    run = ["--init", str(policy_file), "--env", "toy/bandit", "--total-steps", "32"]
    run += ["--run-dir", str(run_dir), "--eval-every", "32", "--eval-episodes", "2"]
    run += ["--tensorboard", "False", "--quiet", "True"]
    assert main(["train", "reinflow", *flags, *run]) == 0
    config = json.loads((run_dir / "config.json").read_text())
    assert config["algo_name"] == "reinflow"
    assert config["algo"]["flow_steps"] == 4  # the pretrained policy's, not the flag's 9
    assert config["algo"]["log_prob_clamp"] == [-2.0, 2.0]
    rows = [row for row in metric_rows(run_dir) if "policy/ratio" in row]
    assert len(rows) == 1 and math.isfinite(rows[0]["policy/ratio"])
    assert (run_dir / "done.json").is_file()
    assert main(["train", "reinflow", "--min-std", "0.3", "--run-dir", str(tmp_path / "r")]) == 2


# ----------------------------------------------------------------------------- the toy


def test_improves_the_mean_reward_of_a_broad_pretrained_policy() -> None:
    # Measured (8 iterations of 512 one-step episodes, ~2 s on one core, seeds 0-5 and
    # several BC'd broad policies): mean reward 0.10-0.11 -> 0.35-0.62.
    torch.manual_seed(0)
    policy = broad_flow_policy(4)
    before = mean_bandit_reward(policy)
    config = ReinFlowConfig(
        num_envs=128,
        num_steps=4,
        num_minibatches=4,
        update_epochs=5,
        clip_coef=0.05,
        actor_lr=1e-3,
        critic_lr=1e-3,
        lr_schedule="constant",
        chunk=1,
        chunk_exec=1,
        critic_hidden=(32, 32),
    )
    low, high = torch.tensor(BANDIT_LOW), torch.tensor(BANDIT_HIGH)
    algo = ReinFlow(2, low, high, config, policy=policy)
    env = BanditEnv()
    torch.manual_seed(0)
    iterations = 8
    for iteration in range(iterations):
        buffer = RolloutBuffer(config.num_steps, config.num_envs, 2)
        for _ in range(config.num_steps):
            obs = torch.ones(config.num_envs, 2)
            action, record = algo.act(obs)
            reward = torch.as_tensor(env.reward(action.numpy()), dtype=torch.float32)
            ones = torch.ones(config.num_envs)
            buffer.add(obs, record, reward, obs, ones, ones)
        algo.update(buffer.batch(iteration / iterations))
    after = mean_bandit_reward(algo.eval_policy)
    assert after >= before + 0.15, (before, after)
