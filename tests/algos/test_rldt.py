"""RLDT: the SVGD field against hand-worked numbers, the alignment loss as a regression, exact
expected posteriors along the sampler's own chain, the consistency and constraint losses, the
schedule (critic warm-up, rounds, member split), exploration, config checks, exact state round
trips, a known-Q toy on the multimodal bandit, and the training loop (API, CLI, resume)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import flowpolicy.train as train_module
from flowpolicy import flows
from flowpolicy.algos.offpolicy import segment_members
from flowpolicy.algos.offpolicy_presets import rldt_gym
from flowpolicy.algos.rldt import (
    RLDT,
    RLDTConfig,
    actor_states,
    alignment_loss,
    consistency_loss,
    constraint_loss,
    posteriors_at_random_steps,
    svgd_field,
)
from flowpolicy.buffers import TrajectoryBatch
from flowpolicy.cli import main
from flowpolicy.errors import UserError
from flowpolicy.policies import FlowPolicy
from flowpolicy.train import TrainConfig, train
from tests.algos.rollouts import random_rollout
from tests.test_train import metric_rows, small_config

OBS_DIM = 3
LOW, HIGH = torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 2.0])
TINY = dict(
    num_envs=2,
    num_steps=8,
    flow_steps=4,
    chunk=2,
    chunk_exec=1,
    actor_hidden=(16,),
    critic_hidden=(16, 16),
    num_particles=4,
    rounds=2,
    critic_steps=4,
    actor_steps=2,
    critic_warmup_iterations=1,
    min_extrp_step=2,
    actor_chunk_states=8,
)


def _make(**kw) -> RLDT:
    torch.manual_seed(0)
    return RLDT(OBS_DIM, LOW, HIGH, RLDTConfig(**(TINY | kw)))


def _velocity_params(algo: RLDT) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in algo.policy.velocity_net.parameters()])


# ----------------------------------------------------------------------------- the field


def test_svgd_field_hand_worked_p3_1d() -> None:
    # One state, P = 3 particles in 1-D. Centres a = (0, 1, 2) with grad Q g = (2, 1, -1),
    # so mean ||g|| = 4/3 and the adaptive temperature is alpha = 0.3 * 4/3 = 0.4.
    centres = torch.tensor([[[0.0], [1.0], [2.0]]])
    grads = torch.tensor([[[2.0], [1.0], [-1.0]]])
    query = torch.tensor([[[1.0], [0.0], [-1.0]]])
    phi, metrics = svgd_field(query, centres, grads, temperature=0.3)
    ln2 = math.log(2.0)
    # Query 1.0: d = (1, 0, 1), median 1, h = 1 / (2 ln 4) = 1 / (4 ln 2), so
    #   k = exp(-d / (2h)) = exp(-2 ln 2 d) = 4^-d = (1/4, 1, 1/4);
    #   attraction = 2/4 + 1 - 1/4 = 1.25; repulsion sum k (q - a) = 1/4 - 1/4 = 0;
    #   phi = 1.25 / 3.
    phi_1 = 1.25 / 3
    # Query 0.0: d = (0, 1, 4), median 1, same h, k = (1, 1/4, 1/256);
    #   attraction = 2 + 1/4 - 1/256; repulsion = (0 - 1/4 - 2/256) / h = -(66/256) * 4 ln 2;
    #   phi = (attraction + 0.4 * repulsion) / 3.
    phi_2 = (2 + 0.25 - 1 / 256 + 0.4 * (-(66 / 256) * 4 * ln2)) / 3
    # Query -1.0: d = (1, 4, 9), median 4, h = 4 / (2 ln 4) = 1 / ln 2, k = 2^(-d/2);
    #   attraction = 2 * 2^-0.5 + 2^-2 - 2^-4.5;
    #   repulsion = (2^-0.5 * -1 + 2^-2 * -2 + 2^-4.5 * -3) * ln 2.
    k = [2**-0.5, 2**-2, 2**-4.5]
    attraction = 2 * k[0] + k[1] - k[2]
    repulsion = (-1 * k[0] - 2 * k[1] - 3 * k[2]) * ln2
    phi_3 = (attraction + 0.4 * repulsion) / 3
    expected = torch.tensor([[[phi_1], [phi_2], [phi_3]]])
    assert torch.allclose(phi, expected, atol=1e-6)
    assert float(metrics["policy/temperature"]) == pytest.approx(0.4)
    # bandwidths: 1 / (4 ln 2) twice and 1 / ln 2
    assert float(metrics["policy/bandwidth"]) == pytest.approx((2 / (4 * ln2) + 1 / ln2) / 3)


def test_svgd_field_fixed_bandwidth_and_temperature_2d() -> None:
    # P = 2 in 2-D with a fixed bandwidth h = 1 and a fixed temperature 0.5.
    centres = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]])
    grads = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    query = torch.tensor([[[0.0, 1.0]]])  # one query: d = (1, 1), k = e^-0.5 for both
    phi, _ = svgd_field(
        query, centres, grads, temperature=0.5, adaptive_temperature=False, bandwidth=1.0
    )
    k = math.exp(-0.5)
    attraction = [k * 1.0 + k * 0.0, k * 0.0 + k * 2.0]
    repulsion = [k * (0 - 0) + k * (0 - 1), k * (1 - 0) + k * (1 - 1)]  # divided by h = 1
    expected = [(attraction[i] + 0.5 * repulsion[i]) / 2 for i in range(2)]
    assert torch.allclose(phi, torch.tensor([[expected]]), atol=1e-6)


def test_svgd_field_states_are_independent() -> None:
    torch.manual_seed(0)
    query, centres, grads = torch.randn(3, 4, 2), torch.randn(3, 4, 2), torch.randn(3, 4, 2)
    phi, _ = svgd_field(query, centres, grads, 1e-3)
    alone, _ = svgd_field(query[1:2], centres[1:2], grads[1:2], 1e-3)
    assert torch.allclose(phi[1:2], alone, atol=1e-6)


# ----------------------------------------------------------------------------- the losses


def test_alignment_loss_gradient_equals_its_regression_form() -> None:
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    inputs = torch.randn(16, 3)
    field = torch.randn(16, 2)
    tau = torch.randint(0, 8, (16,)).float() / 8

    def grads(loss_fn) -> list[torch.Tensor]:
        net.zero_grad()
        loss_fn(net(inputs)).backward()
        return [p.grad.clone() for p in net.parameters()]

    def regression(v: torch.Tensor) -> torch.Tensor:
        target = (v + field / (8 * (1 - tau)).unsqueeze(-1)).detach()
        return 0.5 * (v - target).square().sum(-1).mean()

    aligned = grads(lambda v: alignment_loss(v, field, tau, 8))
    for a, b in zip(aligned, grads(regression), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in aligned)


def _gaussian_field(mean: torch.Tensor, std: torch.Tensor):
    """Exact velocity of the linear path from N(0, I) to N(mean, diag(std^2)), derived from the
    deterministic transport map x_tau = tau m + sigma_tau z, sigma_tau^2 = (1-tau)^2 + tau^2 s^2:
    v = m + (d sigma_tau / d tau) / sigma_tau * (x - tau m)."""

    def velocity(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        t = tau.unsqueeze(-1)
        var = (1 - t) ** 2 + t**2 * std**2
        return mean + (-(1 - t) + t * std**2) / var * (x - t * mean)

    return velocity


def test_expected_posterior_is_exact_along_the_samplers_own_chain() -> None:
    torch.manual_seed(0)
    mean, std = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 2.0])
    velocity = _gaussian_field(mean, std)
    flow_steps = 8
    _, chain = flows.euler_sample(velocity, torch.randn(512, 2), flow_steps, return_chain=True)
    x_k, tau, v, posterior = posteriors_at_random_steps(velocity, chain, flow_steps)
    # each x_k is its particle's own iterate at k = tau K
    steps = (tau * flow_steps).round().long()
    assert torch.equal(x_k, chain[steps, torch.arange(512)])
    assert len(steps.unique()) == flow_steps  # every step is drawn
    # closed-form Gaussian conditioning: E[a | x_tau] = m + tau s^2 / sigma_tau^2 (x - tau m)
    t = tau.unsqueeze(-1)
    var = (1 - t) ** 2 + t**2 * std**2
    exact = mean + t * std**2 / var * (x_k - t * mean)
    assert torch.allclose(posterior, exact, atol=1e-5)
    assert torch.allclose(v, velocity(x_k, tau))


def test_consistency_loss_vanishes_on_a_point_mass_flow() -> None:
    # For a point mass at c the exact field is (c - x) / (1 - tau): every posterior is c and every
    # chain lands on c, so the expected posterior is already consistent.
    c = torch.tensor([0.3, -0.7])

    def velocity(x, tau):
        return (c - x) / (1 - tau).unsqueeze(-1)

    final, chain = flows.euler_sample(velocity, torch.randn(64, 2), 8, return_chain=True)
    x_k, tau, v, _ = posteriors_at_random_steps(velocity, chain, 8)
    assert consistency_loss(x_k, v, tau, final, 8).item() == pytest.approx(0.0, abs=1e-10)
    wrong = consistency_loss(x_k, v + 0.1, tau, final, 8).item()
    # || (1 - tau) 0.1 ||^2 * 2 dims / (8 (1 - tau))^2 = 0.02 / 64
    assert wrong == pytest.approx(0.02 / 64, rel=1e-5)


def test_constraint_is_zero_when_the_policy_equals_its_reference() -> None:
    algo = _make()
    obs = algo.policy.obs_norm(torch.randn(32, OBS_DIM))
    actions = torch.randn(32, 4)
    assert constraint_loss(algo.policy, algo.reference, obs, actions).item() == 0.0
    with torch.no_grad():
        next(algo.policy.velocity_net.parameters()).add_(0.1)
    assert constraint_loss(algo.policy, algo.reference, obs, actions).item() > 1e-4
    algo.refresh_reference()
    assert constraint_loss(algo.policy, algo.reference, obs, actions).item() == 0.0


# ----------------------------------------------------------------------------- act and explore


@pytest.mark.parametrize("exploration", ["min_extrp", "gaussian", "none"])
def test_act_shapes_and_record(exploration: str) -> None:
    algo = _make(exploration=exploration)
    obs = torch.randn(5, OBS_DIM)
    env_action, record = algo.act(obs)
    assert env_action.shape == (5, 2)  # chunk_exec 1 x Da 2
    assert set(record) == {"action"} and record["action"].shape == (5, 2)
    # the env receives the clipped record scaled into its bounds
    assert torch.allclose(env_action, algo.policy.env_action(torch.cat([record["action"]] * 2, 1)))
    assert torch.all(env_action >= LOW) and torch.all(env_action <= HIGH)


def test_min_extrp_noise_is_calibrated_by_the_posterior_gap() -> None:
    algo = _make()
    final, chain = torch.ones(3, 4), torch.zeros(5, 3, 4)
    c = torch.tensor([0.3, -0.7, 0.1, 0.2])
    # A policy whose posterior at every step equals its final action: no exploration noise.
    algo.policy.velocity = lambda obs, x, tau: (c - x) / (1 - tau).unsqueeze(-1)  # type: ignore[method-assign]
    final = c.expand(3, 4)
    assert torch.equal(algo.explore(torch.zeros(3, OBS_DIM), final, chain), final)
    # Posterior 0 and final a: noise std ||a|| (here 2 for a = (1, 1, 1, 1)).
    algo.policy.velocity = lambda obs, x, tau: -x / (1 - tau).unsqueeze(-1)  # type: ignore[method-assign]
    torch.manual_seed(0)
    final = torch.ones(20000, 4)
    noisy = algo.explore(torch.zeros(20000, OBS_DIM), final, torch.zeros(5, 20000, 4))
    assert (noisy - final).std().item() == pytest.approx(2.0, rel=0.03)


def test_gaussian_exploration_std() -> None:
    algo = _make(exploration="gaussian", action_noise_std=0.02)
    torch.manual_seed(0)
    final = torch.zeros(20000, 4)
    noise = algo.explore(torch.zeros(20000, OBS_DIM), final, torch.zeros(5, 20000, 4))
    assert noise.std().item() == pytest.approx(0.02, rel=0.03)


# ----------------------------------------------------------------------------- the schedule


def test_members_get_disjoint_segments_and_actor_states_cycle() -> None:
    assert segment_members(5, 2).tolist() == [0, 1, 0, 1, 0]
    data = TrajectoryBatch(
        obs=torch.arange(10.0).view(10, 1, 1).expand(10, 3, 1),
        actions=torch.zeros(10, 3, 1),
        rewards=torch.zeros(10, 3),
        next_obs=torch.zeros(10, 3, 1),
        terminated=torch.zeros(10, 3),
        dones=torch.zeros(10, 3),
    )
    # every 4th segment of the round, starting at step % 4, all of its T = 3 states
    assert actor_states(data, 1, 4)[:, 0].tolist() == [1, 1, 1, 5, 5, 5, 9, 9, 9]
    assert actor_states(data, 6, 4)[:, 0].tolist() == [2, 2, 2, 6, 6, 6]
    assert actor_states(data, 3, 16)[:, 0].tolist() == [3, 3, 3]
    assert actor_states(data, 13, 16)[:, 0].tolist() == [3, 3, 3]  # fewer segments than P


def test_critic_warmup_then_actor_updates_with_warmed_up_lr(monkeypatch) -> None:
    algo = _make(critic_warmup_iterations=2, actor_warmup_steps=4, actor_lr=1e-3)
    calls = {"critic": 0, "actor": 0}
    critic_round, actor_step = algo.critic_round, algo.actor_step

    def count_critic(*args):
        out = critic_round(*args)
        calls["critic"] += len(out)
        return out

    def count_actor(*args):
        calls["actor"] += 1
        return actor_step(*args)

    monkeypatch.setattr(algo, "critic_round", count_critic)
    monkeypatch.setattr(algo, "actor_step", count_actor)
    before = _velocity_params(algo)
    for iteration in range(2):
        metrics = algo.update(random_rollout(algo, OBS_DIM, seed=iteration))
        assert "loss/alignment" not in metrics and "loss/critic" in metrics
    assert torch.equal(_velocity_params(algo), before)  # critic-only iterations
    assert calls == {"critic": 8, "actor": 0}  # 2 iterations x 2 rounds x 2 critic steps
    metrics = algo.update(random_rollout(algo, OBS_DIM, seed=2))
    assert calls == {"critic": 12, "actor": 2}
    assert not torch.equal(_velocity_params(algo), before)
    for name in ("loss/alignment", "loss/consistency", "loss/constraint", "policy/temperature"):
        assert math.isfinite(metrics[name])
    # LinearLR warm-up from lr / 4: after 2 of 4 steps the lr is (1/4 + 3/4 * 2/4) * 1e-3
    assert metrics["charts/actor_lr"] == pytest.approx(0.625e-3)
    assert metrics["charts/replay_segments"] == 6.0  # 3 iterations x 2 envs


def test_replay_keeps_raw_rewards_and_the_scale_follows_the_ema() -> None:
    algo = _make()
    batch = random_rollout(algo, OBS_DIM, seed=0)
    metrics = algo.update(batch)
    assert algo.reward_ema == pytest.approx(float(batch.rewards.abs().mean()))
    assert metrics["charts/reward_scale"] == pytest.approx(1 / algo.reward_ema, rel=1e-6)
    assert torch.equal(algo.replay.fresh.rewards, batch.rewards.T)
    fixed = _make(reward_ema_rate=None, reward_scale=0.1)
    assert fixed.update(batch)["charts/reward_scale"] == 0.1


def test_reference_modes() -> None:
    for mode, stays in (("initial", True), ("previous", False)):
        algo = _make(reference=mode, critic_warmup_iterations=0)
        start = torch.cat([p.flatten() for p in algo.reference.parameters()])
        algo.update(random_rollout(algo, OBS_DIM, seed=0))
        now = torch.cat([p.flatten() for p in algo.reference.parameters()])
        assert torch.equal(now, start) == stays
        if mode == "previous":
            assert torch.equal(now, _velocity_params(algo))


def test_actor_states_are_processed_in_chunks(monkeypatch) -> None:
    algo = _make(actor_chunk_states=5)
    sizes = []
    original = algo.transport_loss

    def spy(obs, gradient_fn):
        sizes.append(obs.shape[0])
        return original(obs, gradient_fn)

    monkeypatch.setattr(algo, "transport_loss", spy)
    metrics = algo.actor_step(torch.randn(12, OBS_DIM))
    assert sizes == [5, 5, 2]
    assert all(math.isfinite(v) for v in metrics.values())


def test_non_finite_actor_loss_is_refused() -> None:
    algo = _make()
    before = _velocity_params(algo)

    def poisoned(obs, action):
        return torch.full_like(action, float("nan"))

    with pytest.raises(Exception, match="nan"):
        algo.actor_step(torch.randn(4, OBS_DIM), poisoned)
    assert torch.equal(_velocity_params(algo), before)


# ----------------------------------------------------------------------------- config and init


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(critic_steps=5), "does not split evenly"),
        (dict(actor_steps=3), "does not split evenly"),
        (dict(num_envs=1, critic_members=2), "critic_members"),
        (dict(min_extrp_step=4), "min_extrp_step"),
        (dict(num_particles=1), "num_particles"),
        (dict(td_lambda=1.5), "td_lambda"),
        (dict(chunk_exec=3), "chunk_exec"),
        (dict(bootstrap_clip=(1.0, 0.0)), "bootstrap_clip"),
        (dict(actor_lr=0.0), "actor_lr must be positive"),
        (dict(target_decay=1.0), "target_decay"),
    ],
)
def test_invalid_configs(kw, message) -> None:
    with pytest.raises(ValueError, match=message):
        RLDTConfig(**(TINY | kw))


def test_delta_field_allows_one_particle_and_gym_preset() -> None:
    RLDTConfig(**(TINY | dict(field="delta", num_particles=1)))
    gym = rldt_gym()
    assert (gym.num_envs, gym.num_steps, gym.rounds, gym.critic_steps) == (100, 500, 16, 512)
    assert gym.critic_steps_per_round == 32 and gym.actor_steps_per_round == 2
    # The CPU defaults bootstrap over TD(0.95) targets; the authors' Gym regime uses 1-step TD.
    assert RLDTConfig().td_lambda == 0.95 and gym.td_lambda == 0.0


def test_a_pretrained_policy_is_used_as_given_and_must_match() -> None:
    cfg = RLDTConfig(**TINY)
    policy = FlowPolicy(OBS_DIM, LOW, HIGH, chunk=2, chunk_exec=1, flow_steps=4, hidden=(8,))
    policy.obs_norm.update(torch.randn(50, OBS_DIM))
    algo = RLDT(OBS_DIM, LOW, HIGH, cfg, policy=policy)
    assert algo.policy is policy and algo.eval_policy is policy
    assert torch.equal(algo.reference.obs_norm.mean, policy.obs_norm.mean)
    wrong = FlowPolicy(OBS_DIM, LOW, HIGH, chunk=2, chunk_exec=1, flow_steps=10, hidden=(8,))
    with pytest.raises(UserError, match="--flow-steps 10"):
        RLDT(OBS_DIM, LOW, HIGH, cfg, policy=wrong)
    with pytest.raises(UserError, match="another environment"):
        RLDT(OBS_DIM + 1, LOW, HIGH, cfg, policy=policy)


# ----------------------------------------------------------------------------- state


# ----------------------------------------------------------------------------- toy: known Q


# The known-Q bandit toy (moving a broad policy onto the optima while keeping several of them)
# lives in tests/benchmarks/test_rldt_mode_keeping.py, next to the sweep it is a case of.


# ----------------------------------------------------------------------------- the loop

LOOP_TINY = TINY | dict(chunk=1, actor_hidden=(16,), critic_hidden=(16,))


def _run_config(tmp_path: Path, steps: int = 64, **run) -> TrainConfig:
    """tests/test_train.py's small run, with RLDT and an evaluation every 32 steps."""
    run = dict(eval_every=32) | run
    return small_config(tmp_path, RLDTConfig(**LOOP_TINY), steps=steps, **run)


def test_trains_through_the_api(tmp_path) -> None:
    result = train(_run_config(tmp_path))
    assert result.metrics["step"] == 64  # 4 iterations of 2 envs x 8 steps
    rows = [row for row in metric_rows(result.run_dir) if "loss/critic" in row]
    assert len(rows) == 4
    assert "loss/alignment" not in rows[0] and rows[-1]["loss/alignment"] is not None
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["algo_name"] == "rldt" and config["algo"]["num_particles"] == 4
    assert train_module.read_run_config(result.run_dir) == _run_config(tmp_path)


def test_trains_through_the_cli(tmp_path) -> None:
    run_dir = tmp_path / "cli"
    flags = ["--num-envs", "2", "--num-steps", "8", "--flow-steps", "4", "--chunk", "1"]
    flags += ["--chunk-exec", "1", "--actor-hidden", "16", "--critic-hidden", "16"]
    flags += ["--num-particles", "4", "--rounds", "2", "--critic-steps", "4", "--actor-steps", "2"]
    flags += ["--min-extrp-step", "2", "--critic-warmup-iterations", "1"]
    flags += ["--bootstrap-clip", "-10", "10", "--reference", "initial"]
    run = ["--env", "toy/nav", "--total-steps", "32", "--run-dir", str(run_dir)]
    run += [
        "--eval-every",
        "16",
        "--eval-episodes",
        "2",
        "--tensorboard",
        "False",
        "--quiet",
        "True",
    ]
    assert main(["train", "rldt", *flags, *run]) == 0
    config = json.loads((run_dir / "config.json").read_text())["algo"]
    assert config["bootstrap_clip"] == [-10.0, 10.0] and config["reference"] == "initial"
    assert (run_dir / "done.json").is_file()


def test_cli_rejects_bad_rldt_options(tmp_path) -> None:
    args = ["train", "rldt", "--critic-steps", "5", "--run-dir", str(tmp_path / "r")]
    assert main(args) == 2
    assert main(["train", "rldt", "--preset", "nope"]) == 2


def test_fine_tunes_a_pretrained_policy_through_init(tmp_path) -> None:
    from flowpolicy.policy_io import save_policy

    torch.manual_seed(0)
    policy = FlowPolicy(2, [-1.0, -1.0], [1.0, 1.0], flow_steps=6, network="residual", hidden=(16,))
    policy.obs_norm.fit(torch.randn(100, 2))  # a pretrained policy's frozen statistics
    frozen_mean = policy.obs_norm.mean.clone()
    save_policy(tmp_path / "policy.pt", policy)
    config = _run_config(tmp_path, init=str(tmp_path / "policy.pt"))
    result = train(config)
    assert result.metrics["step"] == 64
    algo_config = json.loads((result.run_dir / "config.json").read_text())["algo"]
    assert algo_config["flow_steps"] == 6  # the policy's, not the config's 4
    tuned = train_module.load_policy(result.run_dir)
    assert torch.equal(tuned.obs_norm.mean, frozen_mean)  # obs_norm.update was a no-op
    start = torch.cat([p.flatten() for p in policy.velocity_net.parameters()])
    end = torch.cat([p.flatten() for p in tuned.velocity_net.parameters()])
    assert not torch.equal(start, end)  # the actor was trained (after the critic warm-up)
