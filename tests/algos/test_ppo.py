"""Gaussian PPO: ratio 1 on the first minibatch, metrics, config validation."""

from __future__ import annotations

import math

import pytest
import torch

from flowpolicy.algos.ppo import PPO, PPOConfig, ppo_fpo_paper
from flowpolicy.buffers import RolloutBatch, RolloutBuffer
from tests.algos.rollouts import random_rollout

OBS_DIM = 3
LOW, HIGH = torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 2.0])
METRICS = {
    "policy/ratio",
    "policy/approx_kl",
    "policy/clipfrac",
    "policy/entropy",
    "loss/policy",
    "loss/value",
    "loss/grad_norm",
    "critic/explained_variance",
    "policy/std",
    "charts/learning_rate",
}


def _config(**overrides) -> PPOConfig:
    options = dict(
        num_envs=2,
        num_steps=8,
        num_minibatches=2,
        update_epochs=2,
        actor_hidden=(8,),
        critic_hidden=(8,),
        learning_rate=1e-2,
    )
    return PPOConfig(**(options | overrides))


def _rollout(algo, seed: int = 0) -> RolloutBatch:
    return random_rollout(algo, OBS_DIM, seed)


def _spy_policy_loss(algo: PPO, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Record, for every minibatch, the per-sample ratio (recomputed) and the metrics."""
    calls: list[dict] = []
    original = algo.policy_loss

    def spy(obs_normalised, action, old_log_prob, advantages):
        with torch.no_grad():
            dist = algo.policy.distribution(obs_normalised)
            ratio = (dist.log_prob(action).sum(-1) - old_log_prob).exp()
        loss, metrics = original(obs_normalised, action, old_log_prob, advantages)
        calls.append({"ratio": ratio, "metrics": metrics})
        return loss, metrics

    monkeypatch.setattr(algo, "policy_loss", spy)
    return calls


def test_ratio_is_one_on_the_first_minibatch(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    algo = PPO(OBS_DIM, LOW, HIGH, _config())
    # non-trivial normalisation statistics, so a mismatch between act and update would show
    algo.policy.obs_norm.update(5.0 + 2.0 * torch.randn(100, OBS_DIM))
    calls = _spy_policy_loss(algo, monkeypatch)
    for iteration in range(2):  # also after the statistics changed in the first update
        calls.clear()
        algo.update(_rollout(algo, seed=iteration))
        assert len(calls) == 4  # 2 epochs x 2 minibatches
        first = calls[0]
        assert first["ratio"].shape == (8,)
        assert torch.allclose(first["ratio"], torch.ones(8), atol=1e-6, rtol=0)
        assert float(first["metrics"]["policy/ratio"]) == pytest.approx(1.0, abs=1e-6)
        assert float(first["metrics"]["policy/approx_kl"]) == pytest.approx(0.0, abs=1e-6)
        assert float(first["metrics"]["policy/clipfrac"]) == 0.0
        # the check can fail: after optimiser steps the ratio has moved
        assert not torch.allclose(calls[-1]["ratio"], torch.ones(8), atol=1e-4)


def test_policy_loss_before_any_step_has_ratio_one() -> None:
    torch.manual_seed(0)
    algo = PPO(OBS_DIM, LOW, HIGH, _config())
    batch = _rollout(algo)
    obs = algo.policy.obs_norm(batch.obs).flatten(0, 1)[:8]
    action = batch.records["action"].flatten(0, 1)[:8]
    log_prob = batch.records["log_prob"].flatten(0, 1)[:8]
    advantages = torch.randn(8)
    loss, metrics = algo.policy_loss(obs, action, log_prob, advantages)
    assert float(metrics["policy/ratio"]) == pytest.approx(1.0, abs=1e-6)
    # at r = 1 the clipped surrogate is just -mean(A) (ent_coef = 0)
    assert float(loss.detach()) == pytest.approx(-float(advantages.mean()), abs=1e-6)


def test_act_record_is_the_unclipped_sample_and_its_log_prob() -> None:
    torch.manual_seed(0)
    algo = PPO(OBS_DIM, LOW, HIGH, _config(initial_log_std=1.0))
    obs = torch.randn(50, OBS_DIM)
    env_action, record = algo.act(obs)
    assert env_action.shape == record["action"].shape == (50, 2)
    assert record["log_prob"].shape == (50,)
    assert (record["action"].abs() > 1).any()  # std e: some samples leave [-1, 1]
    assert torch.allclose(env_action, algo.policy.env_action(record["action"]))
    with torch.no_grad():
        dist = algo.policy.distribution(algo.policy.obs_norm(obs))
    expected = dist.log_prob(record["action"]).sum(-1)
    assert torch.allclose(record["log_prob"], expected)


def test_update_returns_finite_documented_metrics() -> None:
    torch.manual_seed(0)
    algo = PPO(OBS_DIM, LOW, HIGH, _config())
    batch = _rollout(algo)
    batch.progress = 0.5
    out = algo.update(batch)
    assert set(out) == METRICS
    assert all(isinstance(v, float) and math.isfinite(v) for v in out.values())
    assert out["charts/learning_rate"] == pytest.approx(0.5e-2)  # annealed to half at 50%
    assert out["loss/value"] > 0


def test_update_moves_the_mean_towards_rewarded_actions() -> None:
    # one-step bandit: reward = first raw action component; PPO must raise the policy mean
    torch.manual_seed(0)
    algo = PPO(OBS_DIM, LOW, HIGH, _config(scale_rewards=False, gamma=0.0, update_epochs=4))
    obs = torch.zeros(2, OBS_DIM)
    start = float(algo.policy.act(obs, "zero")[0, 0])
    for _ in range(5):
        buffer = RolloutBuffer(8, 2, OBS_DIM)
        for _ in range(8):
            _, record = algo.act(obs)
            reward = record["action"][:, 0]
            buffer.add(obs, record, reward, obs, torch.ones(2), torch.ones(2))
        algo.update(buffer.batch())
    assert float(algo.policy.act(obs, "zero")[0, 0]) > start + 0.05


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(learning_rate=0.0), "learning_rate must be positive"),
        (dict(learning_rate=-1e-3), "learning_rate must be positive"),
        (dict(clip_coef=0.0), "clip_coef must be positive"),
        (dict(clip_coef=-0.2), "clip_coef must be positive"),
        (dict(num_envs=3, num_steps=5, num_minibatches=2), "num_minibatches = 2"),
        (dict(num_envs=2, num_steps=4, num_minibatches=8), "too small"),
        (dict(gamma=1.5), "gamma"),
        (dict(gae_lambda=-0.1), "gae_lambda"),
        (dict(vf_coef=-1.0), "vf_coef"),
        (dict(max_grad_norm=0.0), "max_grad_norm"),
        (dict(update_epochs=0), "update_epochs"),
    ],
)
def test_config_validation(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _config(**overrides)


def test_config_error_message_says_what_to_do() -> None:
    with pytest.raises(ValueError) as info:
        PPOConfig(num_envs=3, num_steps=5, num_minibatches=2)
    message = str(info.value)
    assert "3 * 5 = 15" in message and "--num-minibatches" in message
    with pytest.raises(ValueError) as info:
        PPOConfig(learning_rate=0)
    assert "--learning-rate" in str(info.value)


def test_config_derived_sizes() -> None:
    cfg = PPOConfig()
    assert cfg.batch_size == cfg.num_envs * cfg.num_steps == 2048
    assert cfg.minibatch_size == 64
    assert cfg.chunk_exec == 1


def test_fpo_paper_preset_builds_fpos_actor_with_tanh_actions() -> None:
    config = ppo_fpo_paper(num_envs=2, num_steps=8, num_minibatches=2, update_epochs=1)
    algo = PPO(OBS_DIM, LOW, HIGH, config)
    linears = [m for m in algo.policy.mean_net if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears[:-1]] == [32, 32, 32, 32]
    assert any(isinstance(m, torch.nn.SiLU) for m in algo.policy.mean_net)
    assert any(isinstance(m, torch.nn.Tanh) for m in algo.critic.modules())
    raw = torch.tensor([[3.0, -0.5]])
    # tanh, not clip, then scaled to [low, high]: [-1, 1] and [0, 2]
    expected = torch.stack([raw[0, 0].tanh(), 1.0 + (-0.5 * torch.ones(())).tanh()])
    assert torch.allclose(algo.policy.env_action(raw)[0], expected)
    out = algo.update(random_rollout(algo, OBS_DIM, 0))
    assert set(out) == METRICS and all(math.isfinite(v) for v in out.values())


def test_cleanrl_default_clips_actions() -> None:
    algo = PPO(OBS_DIM, LOW, HIGH, _config())
    assert torch.allclose(
        algo.policy.env_action(torch.tensor([[3.0, -0.5]])), torch.tensor([[1.0, 0.5]])
    )


def test_the_adaptive_schedule_follows_the_kl() -> None:
    algo = PPO(OBS_DIM, LOW, HIGH, _config(learning_rate=1e-3, anneal_lr=False, desired_kl=0.01))
    rates = []
    for kl in (0.05, 0.05, 0.012, 0.001, 0.0):  # above 2x, above 2x, near, below half, zero
        algo.adapt_learning_rate(torch.tensor(kl))
        rates.append(algo.optimizer.param_groups[0]["lr"])
    expected = [1e-3 / 1.5, 1e-3 / 1.5**2, 1e-3 / 1.5**2, 1e-3 / 1.5, 1e-3 / 1.5]
    assert rates == pytest.approx(expected)
    for _ in range(40):  # bounded within [1e-5, 1e-2]
        algo.adapt_learning_rate(torch.tensor(1.0))
    assert algo.optimizer.param_groups[0]["lr"] == pytest.approx(1e-5)


def test_an_update_adapts_and_keeps_the_rate() -> None:
    # A desired KL far below what any step gives: every minibatch lowers the rate, and the
    # next update starts from there (no annealing resets it).
    algo = PPO(OBS_DIM, LOW, HIGH, _config(anneal_lr=False, desired_kl=1e-12))
    algo.update(_rollout(algo, 0))
    after_one = algo.optimizer.param_groups[0]["lr"]
    assert after_one < 1e-2 / 1.5  # lowered at least at the minibatches after the first
    out = algo.update(_rollout(algo, 1))
    assert algo.optimizer.param_groups[0]["lr"] < after_one
    assert out["charts/learning_rate"] == algo.optimizer.param_groups[0]["lr"]


def test_an_adaptive_rate_cannot_also_anneal() -> None:
    with pytest.raises(ValueError, match="--anneal-lr False"):
        _config(desired_kl=0.01)
    with pytest.raises(ValueError, match="desired_kl must be positive"):
        _config(anneal_lr=False, desired_kl=0.0)
