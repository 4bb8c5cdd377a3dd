"""DMCEnv: spaces, seeding, and termination vs truncation."""

from __future__ import annotations

import numpy as np
import pytest

from flowpolicy.envs import DMCEnv
from flowpolicy.envs.dmc import _episode_flags


def test_spaces_and_step() -> None:
    env = DMCEnv("ball_in_cup", "catch", seed=0)
    obs, _ = env.reset()
    assert env.observation_space.shape == obs.shape == (8,)
    assert obs.dtype == np.float32
    assert env.action_space.shape == (2,) and env.action_space.dtype == np.float32
    np.testing.assert_array_equal(env.action_space.low, -1.0)
    obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
    assert obs.dtype == np.float32 and isinstance(reward, float)
    assert not terminated and not truncated


def test_same_seed_same_first_observation() -> None:
    env = DMCEnv("cartpole", "balance")
    first, _ = env.reset(seed=7)
    env.step(np.ones(1))
    again, _ = env.reset(seed=7)
    other_env_first, _ = DMCEnv("cartpole", "balance").reset(seed=7)
    different, _ = env.reset(seed=8)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, other_env_first)
    assert not np.array_equal(first, different)


def test_constructor_seed_is_reproducible() -> None:
    first, _ = DMCEnv("cartpole", "balance", seed=3).reset()
    second, _ = DMCEnv("cartpole", "balance", seed=3).reset()
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize(("time_limit", "steps"), [(0.05, 5), (None, 1000)])
def test_time_limit_is_truncation(time_limit: float | None, steps: int) -> None:
    env = DMCEnv("cartpole", "balance", seed=0, time_limit=time_limit)
    env.reset()
    action = np.zeros(1)
    for _ in range(steps - 1):
        _, _, terminated, truncated, _ = env.step(action)
        assert not terminated and not truncated
    _, _, terminated, truncated, _ = env.step(action)
    assert truncated and not terminated


def test_episode_flags() -> None:
    assert _episode_flags(last=False, discount=1.0) == (False, False)
    assert _episode_flags(last=True, discount=0.0) == (True, False)
    assert _episode_flags(last=True, discount=1.0) == (False, True)
