"""QAM: the lean adjoint against autograd, the memoryless SDE and its noise scales against
hand-worked numbers, the adjoint-matching loss, the terminal adjoint through the squash, the
pessimistic TD target, the shared critic pieces (random replay transitions, an every-member
loss, target-critic gradients), the schedules and base fields, config checks, exact state round
trips, the bandit toys (known Q and learned critic), and the training loop (CLI, resume)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from flowpolicy import flows
from flowpolicy.algos.offpolicy import CriticData, td_targets
from flowpolicy.algos.offpolicy_presets import qam_cpu
from flowpolicy.algos.qam import (
    QAM,
    QAMConfig,
    adjoint_matching_loss,
    lean_adjoint,
    memoryless_sde,
    qam_rldt,
    sde_sigmas,
)
from flowpolicy.algos.rldt import RLDTConfig
from flowpolicy.buffers import RolloutBuffer, TrajectoryBatch, TrajectoryReplay
from flowpolicy.cli import main
from flowpolicy.critics import QEnsemble
from flowpolicy.envs import BanditEnv, optimum_coverage
from flowpolicy.errors import UserError
from flowpolicy.policies import FlowPolicy
from flowpolicy.policy_io import save_policy
from tests.algos.broad_policies import broad_flow_policy, mean_bandit_reward
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
    critic_members=3,
    critic_hidden=(16, 16),
    batch_size=8,
    utd_ratio=0.25,
)


def _make(**kw) -> QAM:
    torch.manual_seed(0)
    return QAM(OBS_DIM, LOW, HIGH, QAMConfig(**(TINY | kw)))


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def _tiny_field(seed: int, dim: int = 3) -> flows.VelocityFn:
    """A small nonlinear field f(x, tau) in float64."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(dim + 1, 16), nn.Tanh(), nn.Linear(16, dim)).double()

    def field(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        return net(torch.cat([x, tau.to(x.dtype).unsqueeze(-1)], dim=-1))

    return field


# ----------------------------------------------------------------------------- the math


def test_lean_adjoint_matches_autograd_through_the_base_recursion() -> None:
    # The lean adjoint is the discrete adjoint of x_{i+1} = x_i + h (2 f(x_i, tau_i + h) -
    # x_i / (tau_i + h)): adj_i = d <adj_K, x_K> / d x_i. Autograd through that recursion gives
    # it directly; the VJP recursion must agree on the same chain.
    flow_steps, h = 5, 0.2
    base = _tiny_field(0)
    grid = flows.time_grid(flow_steps).double()
    chain = [torch.randn(4, 3, dtype=torch.float64, requires_grad=True)]
    for i in range(flow_steps):
        x, tau = chain[-1], grid[i] + h
        following = x + h * (2 * base(x, tau.expand(4)) - x / tau)
        following.retain_grad()
        chain.append(following)
    terminal = torch.randn(4, 3, dtype=torch.float64)
    (chain[-1] * terminal).sum().backward()
    expected = torch.stack([x.grad for x in chain[:-1]])  # (K, B, A)

    adjoints = lean_adjoint(base, torch.stack(chain).detach(), terminal, flow_steps)
    assert adjoints.shape == (flow_steps, 4, 3)
    assert torch.allclose(adjoints, expected, atol=1e-5, rtol=0)
    assert (adjoints[0] - terminal).abs().max() > 0.1  # the recursion is not the identity


def test_sigmas_by_hand_on_the_shared_grid() -> None:
    # K = 4, h = 1/4, tau = (0, 1/4, 1/2, 3/4): 2 (1 - tau + h) / (tau + h) = 10, 4, 2, 1.
    expected = torch.tensor([math.sqrt(10.0), 2.0, math.sqrt(2.0), 1.0])
    assert torch.allclose(sde_sigmas(4), expected)
    h = 0.1
    tau = flows.time_grid(10)
    assert torch.allclose(sde_sigmas(10), torch.sqrt(2 * (1 - tau + h) / (tau + h)))


def test_memoryless_sde_step_by_hand() -> None:
    # K = 2, h = 1/2, sigma_0 = sqrt(6): x_1 = x_0 + (2 f(x_0, 0) - 2 x_0) / 2 + sqrt(3) n_0
    # = f(x_0, 0) + sqrt(3) n_0; the last step is Euler with the base at tau = 1/2.
    def fine(x, tau):
        return 0.5 * x + tau.unsqueeze(-1) + 1.0

    def base(x, tau):
        return -x + 2.0 * tau.unsqueeze(-1)

    x0 = torch.tensor([[1.0, -2.0]])
    noise = torch.tensor([[[0.5, 1.0]]])  # (K - 1, B, A)
    chain = memoryless_sde(fine, base, x0, 2, noise)
    # x_1 = 0.5 x_0 + 1 + sqrt(3) n_0 = (1.5 + 0.8660254, 0 + 1.7320508)
    x1 = torch.tensor([[1.5 + math.sqrt(3) * 0.5, math.sqrt(3)]])
    # x_2 = x_1 + (-x_1 + 2 * 0.5) / 2 = 0.5 x_1 + 0.5
    x2 = 0.5 * x1 + 0.5
    assert chain.shape == (3, 1, 2)
    assert torch.equal(chain[0], x0)
    assert torch.allclose(chain[1], x1) and torch.allclose(chain[2], x2)


def test_adjoint_matching_loss_by_hand() -> None:
    # one step, sigma 2: (2 / 2 * (1 - 0) + 2 * 0.5)^2 + (2 / 2 * (0 - 0) + 2 * -1)^2 = 4 + 4
    fine = torch.tensor([[[1.0, 0.0]]])
    loss = adjoint_matching_loss(
        fine, torch.zeros(1, 1, 2), torch.tensor([[[0.5, -1.0]]]), torch.tensor([2.0])
    )
    assert torch.allclose(loss, torch.tensor([8.0]))


def test_loss_vanishes_when_the_fields_agree_and_q_is_flat() -> None:
    algo = _make()
    obs = algo.policy.obs_norm(torch.randn(6, OBS_DIM))

    def flat(obs_normalised, actions):
        return torch.zeros_like(actions)

    loss, _ = algo.adjoint_loss(obs, flat)
    assert loss.item() == 0.0  # f_theta = f_beta and adj = 0 at every step
    loss.backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in algo.policy.parameters())

    def sloped(obs_normalised, actions):
        return torch.ones_like(actions)

    assert algo.adjoint_loss(obs, sloped)[0].item() > 1e-3
    with torch.no_grad():
        next(algo.policy.velocity_net.parameters()).add_(0.1)
    assert algo.adjoint_loss(obs, flat)[0].item() > 1e-4


def test_sde_fields_are_the_fields_at_the_chain() -> None:
    # return_fields hands back f_theta and f_beta at every (x_i, tau_i), i < K, of the same
    # chain: the values a second evaluation on the chain gives, f_theta with its graph.
    fine, base = _tiny_field(1), _tiny_field(2)
    x0 = torch.randn(5, 3, dtype=torch.float64)
    noise = torch.randn(3, 5, 3, dtype=torch.float64)
    chain, fine_values, base_values = memoryless_sde(fine, base, x0, 4, noise, return_fields=True)
    assert torch.equal(chain, memoryless_sde(fine, base, x0, 4, noise))
    assert not chain.requires_grad and not base_values.requires_grad
    tau = flows.time_grid(4).double().repeat_interleave(5)
    x = chain[:-1].flatten(0, 1)
    assert torch.allclose(fine_values.flatten(0, 1), fine(x, tau), atol=1e-12, rtol=0)
    assert torch.allclose(base_values.flatten(0, 1), base(x, tau), atol=1e-12, rtol=0)
    assert fine_values.requires_grad  # the loss differentiates through these values


def test_adjoint_loss_equals_the_loss_with_the_fields_evaluated_again() -> None:
    # adjoint_loss takes f_theta and f_beta from the SDE pass; the same loss, with both fields
    # evaluated a second time in one batched pass on the chain, must give the same value and
    # the same gradient (float rounding aside).
    algo = _make(actor_network="residual", actor_hidden=(16, 16, 16), beta=3.0)
    obs = algo.policy.obs_norm(torch.randn(6, OBS_DIM))
    torch.manual_seed(5)
    loss, metrics = algo.adjoint_loss(obs)
    loss.backward()
    gradient = torch.cat([p.grad.flatten() for p in algo.policy.parameters()])
    algo.actor_optimizer.zero_grad()

    torch.manual_seed(5)  # the same x_0 and SDE noise
    steps, batch = algo.policy.flow_steps, obs.shape[0]
    fine, base = algo._fields(obs)
    with torch.no_grad():
        x0 = algo.policy.initial_noise(batch, "random", obs.device)
        chain = memoryless_sde(fine, base, x0, steps)
    adjoints = lean_adjoint(base, chain, algo.terminal_adjoint(obs, chain[-1]), steps)
    x, tau = chain[:-1].flatten(0, 1), flows.time_grid(steps).repeat_interleave(batch)
    obs_k = obs.repeat(steps, 1)
    fine_velocity = algo.policy.velocity(obs_k, x, tau).view(steps, batch, -1)
    with torch.no_grad():
        base_velocity = algo.base.velocity(obs_k, x, tau).view(steps, batch, -1)
    expected = adjoint_matching_loss(
        fine_velocity, base_velocity, adjoints, sde_sigmas(steps)
    ).mean()
    expected.backward()
    expected_gradient = torch.cat([p.grad.flatten() for p in algo.policy.parameters()])
    assert metrics["loss/adjoint_matching"] > 1e-3  # not a vanishing loss
    assert torch.allclose(loss, expected, rtol=1e-5, atol=0)
    assert torch.allclose(gradient, expected_gradient, rtol=1e-4, atol=1e-6)


def test_terminal_adjoint_through_the_clip_and_on_the_executed_part() -> None:
    algo = _make(beta=2.0)  # chunk 2 x Da 2, one action executed: A = 4, A_exec = 2
    final = torch.tensor([[0.5, 2.0, 0.3, -0.3]])
    ones = algo.terminal_adjoint(torch.zeros(1, OBS_DIM), final, lambda o, a: torch.ones_like(a))
    # -beta grad: clipped coordinates (|x| > 1) and unexecuted actions get no gradient
    assert torch.equal(ones, torch.tensor([[-2.0, 0.0, 0.0, 0.0]]))
    # default: the target critics' mean gradient at the clipped executed action
    obs = torch.randn(1, OBS_DIM)
    with torch.no_grad():
        for p in algo.critic.members.parameters():
            p.add_(0.5)  # the online members now differ from the targets
    critic = algo.terminal_adjoint(obs, final)
    expected = algo.critic.action_gradient(obs, torch.tensor([[0.5, 1.0]]), target=True)
    assert torch.allclose(critic[:, :1], -2.0 * expected[:, :1])
    assert torch.equal(critic[:, 1:], torch.zeros(1, 3))


def test_terminal_adjoint_of_a_tanh_policy() -> None:
    torch.manual_seed(0)
    policy = FlowPolicy(OBS_DIM, LOW, HIGH, chunk=2, chunk_exec=1, flow_steps=4, squash="tanh")
    algo = QAM(OBS_DIM, LOW, HIGH, QAMConfig(**TINY), policy=policy)
    final = torch.tensor([[0.5, 2.0, 0.3, -0.3]])
    adj = algo.terminal_adjoint(torch.zeros(1, OBS_DIM), final, lambda o, a: torch.ones_like(a))
    derivative = 1 - torch.tanh(torch.tensor([0.5, 2.0])) ** 2
    assert torch.allclose(adj[0, :2], -0.3 * derivative)


# ----------------------------------------------------------------------------- the critic


def _constant_targets(critic: QEnsemble, values: list[float]) -> None:
    """Make target member e output ``values[e]`` everywhere."""
    with torch.no_grad():
        for net, value in zip(critic.targets, values, strict=True):
            net[-1].weight.zero_()
            net[-1].bias.fill_(value)


def test_pessimistic_target_mean_minus_rho_std_per_chunk() -> None:
    algo = _make(gamma=0.9, chunk=2, chunk_exec=2)
    assert algo.config.chunk_gamma == pytest.approx(0.81)  # 0.9 per env step, 2 per chunk
    _constant_targets(algo.critic, [1.0, 2.0, 3.0])  # mean 2, unbiased std 1 -> 2 - 0.5 = 1.5
    data = CriticData(
        obs=torch.zeros(2, OBS_DIM),
        actions=torch.zeros(2, 4),
        next_obs=torch.zeros(2, OBS_DIM),
        rewards=torch.tensor([[0.5, 0.5]]),  # (T = 1, S = 2)
        terminated=torch.tensor([[0.0, 1.0]]),
        dones=torch.tensor([[0.0, 1.0]]),
        member_of=None,
    )
    targets = td_targets(algo.critic, data, torch.zeros(1, 2, 4), algo.td_settings)
    assert torch.allclose(targets, torch.tensor([0.5 + 0.81 * 1.5, 0.5]))
    per_chunk = _make(gamma=0.9, chunk_exec=2, chunk=2, discount_per_chunk=True)
    assert per_chunk.td_settings.gamma == 0.9


def test_every_member_loss_is_the_mean_over_members_and_rows() -> None:
    torch.manual_seed(0)
    critic = QEnsemble(2, 1, num_members=2, hidden=(4,))
    obs, action, targets = torch.randn(5, 2), torch.randn(5, 1), torch.randn(5)
    loss, metrics = critic.loss(obs, action, targets, None)
    values = critic(obs, action)
    assert torch.allclose(loss, (values - targets).square().mean())
    assert torch.allclose(metrics["critic/q_mean"], values.mean())


def test_action_gradient_of_the_target_members() -> None:
    torch.manual_seed(0)
    critic = QEnsemble(2, 2, num_members=2, hidden=(8,))
    obs, action = torch.randn(5, 2), torch.randn(5, 2)
    before = critic.action_gradient(obs, action)
    with torch.no_grad():
        for p in critic.members.parameters():
            p.mul_(-1.0)
    assert torch.allclose(critic.action_gradient(obs, action, target=True), before)
    assert not torch.allclose(critic.action_gradient(obs, action), before)


def test_replay_transitions_are_uniform_whole_rows() -> None:
    replay = TrajectoryReplay(capacity=5)
    num_steps = 4
    for iteration, segments in enumerate((2, 3)):
        # every field of a transition carries the same id: 100 * iteration + 10 * segment + t
        ids = (100 * iteration + 10 * torch.arange(segments).view(-1, 1)).float()
        ids = ids + torch.arange(num_steps).float()  # (S, T)
        replay.add(
            TrajectoryBatch(
                obs=ids.unsqueeze(-1).repeat(1, 1, 2),
                actions=ids.unsqueeze(-1),
                rewards=ids,
                next_obs=ids.unsqueeze(-1) + 0.5,
                terminated=ids,
                dones=ids,
            )
        )
    generator = torch.Generator().manual_seed(0)
    sample = replay.sample_transitions(4000, generator)
    assert sample.obs.shape == (4000, 1, 2) and sample.rewards.shape == (4000, 1)
    rewards = sample.rewards[:, 0]
    for name in ("actions", "terminated", "dones"):
        assert torch.equal(getattr(sample, name).reshape(4000), rewards)
    assert torch.equal(sample.obs[:, 0, 1], rewards)
    assert torch.equal(sample.next_obs[:, 0, 0], rewards + 0.5)
    counts = torch.unique(rewards, return_counts=True)[1]
    assert len(counts) == 20  # every stored transition can be drawn
    assert counts.min() > 120 and counts.max() < 280  # about 200 each
    again = replay.sample_transitions(4000, torch.Generator().manual_seed(0))
    assert torch.equal(again.rewards, sample.rewards)


# ----------------------------------------------------------------------------- act and schedule


@pytest.mark.parametrize("exploration", ["euler", "sde"])
def test_act_records_the_raw_chunk(exploration: str) -> None:
    algo = _make(exploration=exploration)
    env_action, record = algo.act(torch.randn(5, OBS_DIM))
    assert env_action.shape == (5, 2) and set(record) == {"action"}
    assert record["action"].shape == (5, 4)  # the full chunk, for the bc base
    assert torch.allclose(env_action, algo.policy.env_action(record["action"]))
    assert torch.equal(algo.critic_input(record["action"]), record["action"][:, :2].clamp(-1, 1))


def test_utd_schedule_counts_and_critic_warmup(monkeypatch) -> None:
    algo = _make(critic_warmup_iterations=1)
    calls = {"critic": 0, "actor": 0}
    critic_round, actor_step = algo.critic_round, algo.actor_step

    def count_critic(*args):
        calls["critic"] += 1
        return critic_round(*args)

    def count_actor(*args):
        calls["actor"] += 1
        return actor_step(*args)

    monkeypatch.setattr(algo, "critic_round", count_critic)
    monkeypatch.setattr(algo, "actor_step", count_actor)
    before = _flat(algo.policy)
    metrics = algo.update(random_rollout(algo, OBS_DIM, seed=0))
    steps = algo.config.gradient_steps_per_iteration
    assert steps == 4  # 0.25 x 2 envs x 8 steps x 1 executed action
    assert calls == {"critic": steps, "actor": 0} and "loss/adjoint_matching" not in metrics
    assert torch.equal(_flat(algo.policy), before)
    metrics = algo.update(random_rollout(algo, OBS_DIM, seed=1))
    assert calls == {"critic": 2 * steps, "actor": steps}
    assert not torch.equal(_flat(algo.policy), before)
    for name in ("loss/critic", "critic/grad_norm", "loss/adjoint_matching", "loss/bc"):
        assert math.isfinite(metrics[name])
    assert metrics["charts/replay_segments"] == 4.0


def test_bc_base_is_a_polyak_average_of_the_bc_flow() -> None:
    algo = _make(base_target_rate=0.25)
    base_before = _flat(algo.base)
    obs, actions = torch.randn(8, OBS_DIM), torch.randn(8, 4)
    metrics = algo.actor_step(obs, actions)
    assert metrics["loss/bc"] > 0
    bc_after = _flat(algo.bc_policy)
    assert not torch.equal(bc_after, base_before)  # the bc flow was trained
    assert torch.allclose(_flat(algo.base), 0.75 * base_before + 0.25 * bc_after, atol=1e-6)
    assert not any(p.requires_grad for p in algo.base.parameters())


def test_ema_base_follows_the_actor_once_per_iteration() -> None:
    algo = _make(base="ema", base_ema_decay=0.9, critic_warmup_iterations=0, velocity_coef=0.2)
    assert algo.bc_policy is None
    base_before = _flat(algo.base)
    metrics = algo.update(random_rollout(algo, OBS_DIM, seed=0))
    assert "loss/bc" not in metrics and math.isfinite(metrics["loss/velocity"])
    policy = _flat(algo.policy)
    assert not torch.equal(policy, base_before)
    assert torch.allclose(_flat(algo.base), 0.9 * base_before + 0.1 * policy, atol=1e-6)


def test_rounds_schedule_with_disjoint_members(monkeypatch) -> None:
    algo = _make(
        schedule="rounds",
        rounds=2,
        critic_steps=4,
        actor_steps=2,
        critic_split="disjoint",
        critic_members=2,
        critic_warmup_iterations=0,
    )
    seen = []
    loss = algo.critic.loss

    def spy(obs, action, targets, member_of):
        seen.append(member_of)
        return loss(obs, action, targets, member_of)

    monkeypatch.setattr(algo.critic, "loss", spy)
    algo.update(random_rollout(algo, OBS_DIM, seed=0))
    assert len(seen) == 4  # full-batch critic steps on the round's 2 segments x 8 steps
    assert seen[0].tolist() == [0] * 8 + [1] * 8


# ----------------------------------------------------------------------------- config and state


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(flow_steps=1), "flow_steps >= 2"),
        (dict(chunk_exec=3), "chunk_exec"),
        (dict(beta=-1.0), "beta"),
        (dict(target_decay=1.0), "target_decay"),
        (dict(base_ema_decay=1.5), "base_ema_decay"),
        (dict(base_target_rate=0.0), "base_target_rate"),
        (dict(utd_ratio=0.0), "utd_ratio must be positive"),
        (dict(schedule="rounds", critic_steps=5, rounds=2), "does not split evenly"),
        (dict(critic_split="disjoint", batch_size=2), "batch_size"),
        (dict(gamma=1.5), "gamma"),
        (dict(bootstrap_clip=(1.0, 0.0)), "bootstrap_clip"),
        (dict(critic_max_grad_norm=0.0), "critic_max_grad_norm"),
    ],
)
def test_invalid_configs(kw, message) -> None:
    with pytest.raises(ValueError, match=message):
        QAMConfig(**(TINY | kw))


def test_presets() -> None:
    paper = QAMConfig()
    assert paper.gradient_steps_per_iteration == 10 * 50 * 5  # one per env step
    assert paper.chunk_gamma == pytest.approx(0.99**5)
    assert qam_cpu().gradient_steps_per_iteration == 4 * 50  # one per chunk
    port, rldt = qam_rldt(), RLDTConfig()
    assert (port.base, port.velocity_coef, port.beta, port.schedule) == ("ema", 0.2, 0.3, "rounds")
    assert (port.critic_members, port.target_reduction, port.critic_init_std) == (2, "min", 0.1)
    assert port.chunk_gamma == rldt.gamma and port.critic_steps == rldt.critic_steps


def test_a_pretrained_policy_must_match() -> None:
    cfg = QAMConfig(**TINY)
    policy = FlowPolicy(OBS_DIM, LOW, HIGH, chunk=2, chunk_exec=1, flow_steps=4, hidden=(8,))
    algo = QAM(OBS_DIM, LOW, HIGH, cfg, policy=policy)
    assert algo.policy is policy and algo.eval_policy is policy
    wrong = FlowPolicy(OBS_DIM, LOW, HIGH, chunk=2, chunk_exec=1, flow_steps=10, hidden=(8,))
    with pytest.raises(UserError, match="--flow-steps 10"):
        QAM(OBS_DIM, LOW, HIGH, cfg, policy=wrong)


def test_loading_a_checkpoint_keeps_the_fused_optimisers() -> None:
    # Checkpoints written before the optimisers were fused record fused=None; loading one
    # must neither fail nor switch the fused kernels off (speed only: same keys and shapes).
    algo = _make()
    algo.update(random_rollout(algo, OBS_DIM, seed=0))
    state = algo.state_dict()
    for name in ("critic_optimizer", "actor_optimizer"):
        for group in state[name]["param_groups"]:
            group["fused"] = None
    restored = _make()
    restored.load_state_dict(state)
    for optimizer in (restored.critic_optimizer, restored.actor_optimizer):
        assert [group["fused"] for group in optimizer.param_groups] == [True]
    assert restored.actor_optimizer.state_dict()["state"].keys() == (
        algo.actor_optimizer.state_dict()["state"].keys()
    )


# ----------------------------------------------------------------------------- bandit toys

BANDIT = BanditEnv()  # four equal optima at (+-0.5, +-0.5), bumps of width 0.15
Q_SCALE = 10.0


def _bandit_q_gradient(obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """``grad_a Q`` for ``Q = Q_SCALE * BanditEnv.reward``; (B, 2) -> (B, 2)."""
    return Q_SCALE * BANDIT.reward_gradient(actions)


def _bandit_qam(policy: FlowPolicy, **kw) -> QAM:
    config = QAMConfig(
        **(dict(chunk=1, chunk_exec=1, flow_steps=policy.flow_steps, beta=1.0, actor_lr=3e-3) | kw)
    )
    return QAM(2, torch.tensor([-1.0, -1.0]), torch.tensor([1.0, 1.0]), config, policy=policy)


def _coverage(policy: FlowPolicy) -> np.ndarray:
    with torch.no_grad():
        return optimum_coverage(policy.act(torch.ones(2000, 2)).numpy(), BANDIT.optima)


def test_known_q_moves_a_broad_policy_towards_the_tilted_optimum() -> None:
    # The broad policy (mean reward ~0.12, ~5% of its samples near each optimum) fine-tuned
    # towards pi_beta exp(beta Q) with Q = 10 * reward, beta = 1 (whose own mean reward is ~0.88),
    # for 200 actor steps of 64 states at lr 3e-3. Measured (seeds 0-3): 0.36 / 0.40 / 0.38 /
    # 0.32, with 2-4 optima holding >= 10% of the samples each.
    algo = _bandit_qam(broad_flow_policy(10), critic_members=2, critic_hidden=(8,))
    before = mean_bandit_reward(algo.policy)
    torch.manual_seed(0)
    for _ in range(200):
        algo.actor_step(torch.ones(64, 2), action_gradient=_bandit_q_gradient)
    after = mean_bandit_reward(algo.policy)
    assert before < 0.2
    assert after > before + 0.15
    assert (_coverage(algo.policy) >= 0.1).sum() >= 2  # more than one optimum kept


def _bandit_rollout(algo: QAM) -> RolloutBuffer:
    cfg = algo.config
    buffer = RolloutBuffer(cfg.num_steps, cfg.num_envs, 2)
    ones = torch.ones(cfg.num_envs)
    for _ in range(cfg.num_steps):
        obs = torch.ones(cfg.num_envs, 2)
        action, record = algo.act(obs)
        reward = torch.as_tensor(BANDIT.reward(action.numpy()), dtype=torch.float32)
        buffer.add(obs, record, reward, obs, ones, ones)  # every bandit step terminates
    return buffer


def test_learned_critic_improves_a_broad_policy_on_the_bandit() -> None:
    # The whole method: rollouts, a learned critic (4 members of 64-64), the bc base on the
    # replay. 6 iterations of 16 envs x 8 steps, 64 gradient steps each (the first critic only);
    # rewards x 10 (the toy's Q scale). Measured (seeds 0-3): 0.125 -> 0.35 / 0.32 / 0.40 / 0.38.
    algo = _bandit_qam(
        broad_flow_policy(10),
        num_envs=16,
        num_steps=8,
        reward_scale=10.0,
        critic_members=4,
        critic_hidden=(64, 64),
        critic_lr=1e-3,
        utd_ratio=0.5,
        batch_size=64,
    )
    before = mean_bandit_reward(algo.policy)
    torch.manual_seed(0)
    for _ in range(6):
        metrics = algo.update(_bandit_rollout(algo).batch())
    after = mean_bandit_reward(algo.policy)
    assert after > before + 0.15
    assert metrics["critic/q_mean"] > 0.5  # the critic found the rewards


# ----------------------------------------------------------------------------- the loop

LOOP_TINY = TINY | dict(chunk=1, actor_hidden=(16,), critic_hidden=(16,))


def _run_config(tmp_path: Path, steps: int = 64, **run):
    return small_config(
        tmp_path, QAMConfig(**LOOP_TINY), steps=steps, **(dict(eval_every=32) | run)
    )


def test_fine_tunes_a_bandit_policy_through_the_cli(tmp_path) -> None:
    policy_file = tmp_path / "policy.pt"
    save_policy(policy_file, broad_flow_policy(), {"env_id": "toy/bandit"})
    run_dir = tmp_path / "cli"
    flags = ["--init", str(policy_file), "--env", "toy/bandit", "--num-envs", "2"]
    flags += ["--num-steps", "4", "--critic-members", "2", "--critic-hidden", "16"]
    flags += ["--batch-size", "16", "--utd-ratio", "0.5", "--critic-warmup-iterations", "0"]
    run = ["--total-steps", "8", "--run-dir", str(run_dir), "--eval-episodes", "2"]
    run += ["--tensorboard", "False", "--quiet", "True"]
    assert main(["train", "qam", *flags, *run]) == 0
    config = json.loads((run_dir / "config.json").read_text())
    assert config["algo_name"] == "qam" and config["algo"]["flow_steps"] == 4  # the policy's
    rows = [row for row in metric_rows(run_dir) if "loss/adjoint_matching" in row]
    assert len(rows) == 1 and math.isfinite(rows[0]["loss/bc"])
    assert (run_dir / "done.json").is_file()


def test_cli_presets_and_bad_options(tmp_path) -> None:
    assert main(["train", "qam", "--preset", "nope"]) == 2
    assert main(["train", "qam", "--beta", "-1", "--run-dir", str(tmp_path / "r")]) == 2
    run_dir = tmp_path / "port"
    args = ["train", "qam", "--preset", "qam-rldt", "--env", "toy/nav", "--num-envs", "2"]
    args += ["--num-steps", "4", "--rounds", "1", "--critic-steps", "2", "--actor-steps", "1"]
    args += ["--critic-hidden", "8", "--actor-hidden", "8", "--batch-size", "8"]
    args += ["--critic-warmup-iterations", "0", "--total-steps", "32", "--eval-every", "0"]
    args += ["--eval-episodes", "1", "--tensorboard", "False", "--quiet", "True"]
    assert main([*args, "--run-dir", str(run_dir)]) == 0
    config = json.loads((run_dir / "config.json").read_text())["algo"]
    assert (config["base"], config["schedule"], config["chunk"]) == ("ema", "rounds", 4)
