"""Toy tasks: bandit rewards and coverage, NavEnv geometry, symmetry and episode ends."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowpolicy.envs import BanditEnv, NavEnv, optimum_coverage, route_of

# --- bandit ---------------------------------------------------------------------------------


def test_bandit_reward_is_one_at_each_optimum() -> None:
    env = BanditEnv()
    env.reset(seed=0)
    assert env.optima.shape == (4, 2)
    for optimum in env.optima:
        obs, reward, terminated, truncated, _ = env.step(optimum)
        assert reward == pytest.approx(1.0)
        assert terminated and not truncated
        np.testing.assert_array_equal(obs, np.ones(2, dtype=np.float32))


@pytest.mark.parametrize("action", [(0.0, 0.0), (1.0, -0.0), (0.0, 1.0)])
def test_bandit_reward_vanishes_between_optima(action: tuple[float, float]) -> None:
    _, reward, *_ = BanditEnv().step(np.array(action))
    assert reward < 1e-3


def test_bandit_clips_actions() -> None:
    env = BanditEnv()
    assert env.step(np.array([5.0, -5.0]))[1] == pytest.approx(env.reward(np.array([1.0, -1.0])))


def test_bandit_custom_optima_and_width() -> None:
    env = BanditEnv(width=0.3, optima=np.array([[0.0, 0.0]]))
    assert env.reward(np.array([0.3, 0.0])) == pytest.approx(np.exp(-0.5))


def test_bandit_differentiable_reward_matches_reward_and_its_gradient_finite_differences() -> None:
    env = BanditEnv()
    actions = torch.rand(64, 2, dtype=torch.float64) * 2 - 1
    assert np.allclose(env.differentiable_reward(actions).numpy(), env.reward(actions.numpy()))
    gradient = env.reward_gradient(actions)
    step = 1e-6
    for axis in range(2):
        shift = torch.zeros(2, dtype=torch.float64)
        shift[axis] = step
        numeric = (env.reward(actions + shift) - env.reward(actions - shift)) / (2 * step)
        assert np.allclose(gradient[:, axis].numpy(), numeric, atol=1e-6)
    optima = torch.as_tensor(env.optima)
    assert torch.allclose(env.reward_gradient(optima), torch.zeros_like(optima))


def test_optimum_coverage_counts_points_per_optimum() -> None:
    optima = BanditEnv().optima  # (0.5, 0.5), (0.5, -0.5), (-0.5, 0.5), (-0.5, -0.5)
    actions = np.array([[0.5, 0.5], [0.6, 0.45], [-0.5, -0.5], [0.0, 0.0]])
    np.testing.assert_allclose(optimum_coverage(actions, optima), [0.5, 0.0, 0.0, 0.25])
    np.testing.assert_allclose(
        optimum_coverage(actions, optima, radius=0.75), [0.75, 0.25, 0.25, 0.5]
    )
    np.testing.assert_array_equal(optimum_coverage(np.zeros((0, 2)), optima), np.zeros(4))


# --- nav ------------------------------------------------------------------------------------


def _run(env: NavEnv, start: tuple[float, float], actions: np.ndarray):
    """Rewards and positions of an open-loop action sequence (stops at the episode end)."""
    env.reset(options={"start": start})
    rewards, positions = [], []
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(action)
        rewards.append(reward)
        positions.append(obs)
        if terminated or truncated:
            break
    return np.array(rewards), np.array(positions)


def test_nav_reset_is_seeded_and_near_start() -> None:
    env = NavEnv()
    first, _ = env.reset(seed=5)
    again, _ = env.reset(seed=5)
    other, _ = env.reset(seed=6)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.dtype == np.float32
    np.testing.assert_allclose(first, [0.0, -0.8], atol=0.05)


def test_nav_obstacle_blocks_straight_path() -> None:
    env = NavEnv()
    env.reset(options={"start": (0.0, -0.8)})
    collisions = 0
    for _ in range(20):
        obs, _, terminated, _, info = env.step(np.array([0.0, 1.0]))
        assert np.linalg.norm(obs) >= env.obstacle_radius - 1e-6
        assert obs[1] <= -env.obstacle_radius + 1e-6
        assert not terminated
        collisions += info["collided"]
    assert collisions >= 10


def test_nav_mirrored_trajectories_get_equal_rewards() -> None:
    actions = np.random.default_rng(0).uniform(-1, 1, size=(40, 2))
    mirror = np.array([-1.0, 1.0])
    rewards, positions = _run(NavEnv(), (0.1, -0.8), actions)
    mirrored_rewards, mirrored_positions = _run(NavEnv(), (-0.1, -0.8), actions * mirror)
    np.testing.assert_allclose(rewards, mirrored_rewards, atol=1e-12)
    np.testing.assert_allclose(positions, mirrored_positions * mirror, atol=1e-6)


def test_nav_goal_terminates_with_bonus() -> None:
    rewards, positions = _run(NavEnv(), (0.0, 0.65), np.array([[0.0, 1.0]]))
    assert len(rewards) == 1 and rewards[0] > 1.0
    np.testing.assert_allclose(positions[-1], [0.0, 0.75], atol=1e-6)


def test_nav_time_limit_truncates() -> None:
    env = NavEnv(max_episode_steps=50)
    env.reset(seed=0)
    for step in range(1, 51):
        _, _, terminated, truncated, _ = env.step(np.zeros(2))
        assert not terminated and truncated == (step == 50)


@pytest.mark.parametrize("side", [-1, 1])
def test_nav_both_routes_reach_goal_with_equal_return(side: int) -> None:
    env = NavEnv()
    obs, _ = env.reset(options={"start": (0.0, -0.8)})
    waypoint, goal = np.array([0.4 * side, 0.0]), np.array(NavEnv.GOAL)
    total, xs, terminated = 0.0, [], False
    while not terminated:
        target = waypoint if obs[1] < -0.1 else goal
        obs, reward, terminated, truncated, _ = env.step((target - obs) / NavEnv.STEP_SIZE)
        total += reward
        xs.append(obs[0])
        assert not truncated
    assert route_of(np.array(xs)) == side
    assert total > 2.0  # progress ~1.7 + goal bonus 1 - step costs


def test_route_of_undecided_and_2d_input() -> None:
    assert route_of(np.array([0.0, 0.05, -0.05])) == 0
    assert route_of(np.array([[0.0, -0.8], [-0.35, 0.0], [0.0, 0.8]])) == -1
    assert route_of(np.array([])) == 0
