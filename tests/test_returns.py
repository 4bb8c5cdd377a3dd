"""GAE and TD(lambda) against hand-worked arithmetic with a termination and a truncation inside
the rollout; the reward-scale EMA."""

from __future__ import annotations

import pytest
import torch

from flowpolicy.algos.onpolicy import advantages_and_returns
from flowpolicy.buffers import RolloutBatch
from flowpolicy.policies import RunningNorm
from flowpolicy.returns import (
    gae,
    reward_scale_from_ema,
    td_lambda_targets,
    update_abs_reward_ema,
)

GAMMA, LAMBDA = 0.9, 0.8  # gamma * lambda = 0.72

# T = 4 steps (rows), N = 2 envs (columns).
# env 0 terminates at t = 1 (a new episode starts at t = 2);
# env 1 is truncated at t = 2, and V of its true final observation is 4.0.
REWARDS = torch.tensor([[1.0, 0.0], [2.0, 1.0], [0.0, 2.0], [1.0, -1.0]])
VALUES = torch.tensor([[0.5, 1.0], [1.0, 2.0], [2.0, 0.5], [1.5, 1.0]])
# next_values[t] = V(s'_t), the real next observation of step t:
#   env 0: V(s_1) = 1.0, V(terminal obs) = 3.0 (must be ignored), V(s_3) = 1.5, V(bootstrap) = 0.5
#   env 1: V(s_1) = 2.0, V(s_2) = 0.5, V(final obs) = 4.0 (not V(s_3) = 1.0), V(bootstrap) = 2.0
NEXT_VALUES = torch.tensor([[1.0, 2.0], [3.0, 0.5], [1.5, 4.0], [0.5, 2.0]])
TERMINATED = torch.tensor([[0, 0], [1, 0], [0, 0], [0, 0]], dtype=torch.bool)
DONES = torch.tensor([[0, 0], [1, 0], [0, 1], [0, 0]], dtype=torch.bool)

# env 0: deltas  t3 = 1 + 0.9 * 0.5 - 1.5 = -0.05
#                t2 = 0 + 0.9 * 1.5 - 2.0 = -0.65
#                t1 = 2 + 0 (terminated)  - 1.0 = 1.0
#                t0 = 1 + 0.9 * 1.0 - 0.5 = 1.4
#        A3 = -0.05; A2 = -0.65 + 0.72 * -0.05 = -0.686; A1 = 1.0 (episode ended);
#        A0 = 1.4 + 0.72 * 1.0 = 2.12
# env 1: deltas  t3 = -1 + 0.9 * 2.0 - 1.0 = -0.2
#                t2 = 2 + 0.9 * 4.0 - 0.5 = 5.1   (truncation bootstraps from the final obs)
#                t1 = 1 + 0.9 * 0.5 - 2.0 = -0.55
#                t0 = 0 + 0.9 * 2.0 - 1.0 = 0.8
#        A3 = -0.2; A2 = 5.1 (episode ended); A1 = -0.55 + 0.72 * 5.1 = 3.122;
#        A0 = 0.8 + 0.72 * 3.122 = 3.04784
EXPECTED_ADV = torch.tensor([[2.12, 3.04784], [1.0, 3.122], [-0.686, 5.1], [-0.05, -0.2]])
# returns = advantages + values
EXPECTED_RET = torch.tensor([[2.62, 4.04784], [2.0, 5.122], [1.314, 5.6], [1.45, 0.8]])


def test_gae_hand_worked_termination_and_truncation() -> None:
    adv, ret = gae(REWARDS, VALUES, NEXT_VALUES, TERMINATED, DONES, GAMMA, LAMBDA)
    assert adv.shape == ret.shape == (4, 2)
    assert torch.allclose(adv, EXPECTED_ADV, atol=1e-5)
    assert torch.allclose(ret, EXPECTED_RET, atol=1e-5)


def test_gae_accepts_float_flags() -> None:
    adv, _ = gae(REWARDS, VALUES, NEXT_VALUES, TERMINATED.float(), DONES.float(), GAMMA, LAMBDA)
    assert torch.allclose(adv, EXPECTED_ADV, atol=1e-5)


def test_gae_lambda_zero_is_td_error_and_lambda_one_is_monte_carlo() -> None:
    adv0, _ = gae(REWARDS, VALUES, NEXT_VALUES, TERMINATED, DONES, GAMMA, 0.0)
    # the one-step TD errors from the comment above
    deltas = torch.tensor([[1.4, 0.8], [1.0, -0.55], [-0.65, 5.1], [-0.05, -0.2]])
    assert torch.allclose(adv0, deltas, atol=1e-6)
    # gamma = lambda = 1: A_t + V_t = rewards to the episode end + the bootstrap there
    _, ret1 = gae(REWARDS, VALUES, NEXT_VALUES, TERMINATED, DONES, 1.0, 1.0)
    # env 0: t0 = 1 + 2 (terminated, no bootstrap) = 3; t1 = 2; t2 = 0 + 1 + 0.5 = 1.5;
    #        t3 = 1 + 0.5 = 1.5
    # env 1: t0 = 0 + 1 + 2 + 4.0 = 7; t1 = 1 + 2 + 4 = 7; t2 = 2 + 4 = 6; t3 = -1 + 2 = 1
    assert torch.allclose(ret1, torch.tensor([[3.0, 7.0], [2.0, 7.0], [1.5, 6.0], [1.5, 1.0]]))


def test_advantages_and_returns_bootstraps_from_the_stored_next_obs() -> None:
    # A "critic" that reads the value off the first observation feature, so the batch's
    # obs / next_obs encode VALUES / NEXT_VALUES; a fresh RunningNorm is (almost) the identity.
    obs = torch.stack([VALUES, torch.zeros_like(VALUES)], dim=-1)  # (T, N, 2)
    next_obs = torch.stack([NEXT_VALUES, torch.zeros_like(VALUES)], dim=-1)
    batch = RolloutBatch(obs, next_obs, REWARDS, TERMINATED.float(), DONES.float(), {})

    def critic(x: torch.Tensor) -> torch.Tensor:
        return x[..., 0]

    values, adv, ret = advantages_and_returns(
        batch,
        critic,
        RunningNorm(2),
        REWARDS,
        GAMMA,
        LAMBDA,  # type: ignore[arg-type]
    )
    assert torch.allclose(values, VALUES, atol=1e-5)
    assert torch.allclose(adv, EXPECTED_ADV, atol=1e-4)
    assert torch.allclose(ret, EXPECTED_RET, atol=1e-4)


# ----------------------------------------------------------------------------- TD(lambda)

# Same rollout as above; next_values now hold Qbar(s'_t, a'), the target critic at the true
# next observation. Segment = these T = 4 steps (the last row bootstraps fully).
TD_LAMBDA = 0.5
# env 0 (terminates at t = 1):
#   t3 (segment end):  y3 = 1 + 0.9 * 0.5                          = 1.45
#   t2:                y2 = 0 + 0.9 * (0.5 * 1.5 + 0.5 * 1.45)     = 1.3275
#   t1 (terminated):   y2 = 2 + 0 (no bootstrap, no continuation)  = 2.0
#   t0:                y0 = 1 + 0.9 * (0.5 * 1.0 + 0.5 * 2.0)      = 2.35
# env 1 (truncated at t = 2, Qbar of its real final observation 4.0):
#   t3 (segment end):  y3 = -1 + 0.9 * 2.0                         = 0.8
#   t2 (truncated):    y2 = 2 + 0.9 * 4.0 (full bootstrap)         = 5.6
#   t1:                y1 = 1 + 0.9 * (0.5 * 0.5 + 0.5 * 5.6)      = 3.745
#   t0:                y0 = 0 + 0.9 * (0.5 * 2.0 + 0.5 * 3.745)    = 2.58525
EXPECTED_TD_HALF = torch.tensor([[2.35, 2.58525], [2.0, 3.745], [1.3275, 5.6], [1.45, 0.8]])
# lambda = 0, one-step TD: r + 0.9 (1 - term) Qbar
EXPECTED_TD_ZERO = torch.tensor([[1.9, 1.8], [2.0, 1.45], [1.35, 5.6], [1.45, 0.8]])
# lambda = 1: rewards to the episode/segment end, bootstrapped there
#   env 0: y3 = 1.45, y2 = 0.9 * 1.45 = 1.305, y1 = 2, y0 = 1 + 0.9 * 2 = 2.8
#   env 1: y3 = 0.8, y2 = 5.6, y1 = 1 + 0.9 * 5.6 = 6.04, y0 = 0.9 * 6.04 = 5.436
EXPECTED_TD_ONE = torch.tensor([[2.8, 5.436], [2.0, 6.04], [1.305, 5.6], [1.45, 0.8]])


def test_td_lambda_hand_worked_termination_truncation_and_segment_end() -> None:
    targets = td_lambda_targets(REWARDS, NEXT_VALUES, TERMINATED, DONES, GAMMA, TD_LAMBDA)
    assert targets.shape == (4, 2)
    assert torch.allclose(targets, EXPECTED_TD_HALF, atol=1e-5)
    ones = td_lambda_targets(REWARDS, NEXT_VALUES, TERMINATED, DONES, GAMMA, 1.0)
    assert torch.allclose(ones, EXPECTED_TD_ONE, atol=1e-5)


def test_td_lambda_zero_is_one_step_td() -> None:
    zero = td_lambda_targets(REWARDS, NEXT_VALUES, TERMINATED, DONES, GAMMA, 0.0)
    one_step = REWARDS + GAMMA * (1.0 - TERMINATED.float()) * NEXT_VALUES
    assert torch.allclose(zero, one_step) and torch.allclose(zero, EXPECTED_TD_ZERO, atol=1e-6)
    # the recursion (any lambda > 0 takes it) agrees with the shortcut in the limit
    tiny = td_lambda_targets(REWARDS, NEXT_VALUES, TERMINATED, DONES, GAMMA, 1e-9)
    assert torch.allclose(tiny, zero, atol=1e-6)


def test_td_lambda_does_not_modify_its_inputs() -> None:
    dones = DONES.float().clone()
    td_lambda_targets(REWARDS, NEXT_VALUES, TERMINATED, dones, GAMMA, TD_LAMBDA)
    assert torch.equal(dones, DONES.float())


def test_reward_ema_seeds_skips_zero_batches_and_averages() -> None:
    assert update_abs_reward_ema(None, torch.zeros(5), 0.01) is None  # sparse cold start
    assert reward_scale_from_ema(None) == 1.0
    ema = update_abs_reward_ema(None, torch.tensor([2.0, -4.0]), 0.01)
    assert ema == pytest.approx(3.0)  # seeded with the first non-zero batch's mean |r|
    assert update_abs_reward_ema(ema, torch.zeros(3), 0.01) == ema
    ema = update_abs_reward_ema(ema, torch.tensor([-1.0, 1.0]), 0.01)
    assert ema == pytest.approx(0.99 * 3.0 + 0.01 * 1.0)
    assert reward_scale_from_ema(ema) == pytest.approx(1.0 / 2.98)
