"""ActionChunk: flat chunk action space, in-order execution, summed rewards, early stop."""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.wrappers import TimeLimit

from flowpolicy.envs import ActionChunk


class _RecordingEnv(gymnasium.Env):
    """Reward = first action component; terminates at step `terminate_at`."""

    def __init__(self, terminate_at: int = 100) -> None:
        self.observation_space = spaces.Box(0.0, np.inf, shape=(1,), dtype=np.float32)
        self.action_space = spaces.Box(
            np.array([-5.0, -1.0], dtype=np.float32), np.array([5.0, 1.0], dtype=np.float32)
        )
        self.terminate_at = terminate_at
        self.executed: list[np.ndarray] = []

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.executed = []
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action):
        self.executed.append(np.asarray(action))
        obs = np.array([len(self.executed)], dtype=np.float32)
        terminated = len(self.executed) >= self.terminate_at
        return obs, float(action[0]), terminated, False, {"sub_step": len(self.executed)}


def _chunk(*pairs: tuple[float, float]) -> np.ndarray:
    return np.array(pairs, dtype=np.float32).ravel()


def test_action_space_is_flat_and_tiled() -> None:
    env = ActionChunk(_RecordingEnv(), 3)
    assert env.action_space.shape == (6,)
    np.testing.assert_array_equal(env.action_space.low, [-5, -1] * 3)
    np.testing.assert_array_equal(env.action_space.high, [5, 1] * 3)


def test_executes_in_order_and_sums_rewards() -> None:
    env = ActionChunk(_RecordingEnv(), 3)
    env.reset()
    obs, reward, terminated, truncated, info = env.step(_chunk((1, 0.1), (2, 0.2), (3, 0.3)))
    assert reward == pytest.approx(6.0)
    assert info["chunk_steps"] == 3 and info["sub_step"] == 3
    assert obs[0] == 3 and not terminated and not truncated
    np.testing.assert_allclose(np.stack(env.unwrapped.executed)[:, 1], [0.1, 0.2, 0.3])


def test_stops_early_on_termination() -> None:
    env = ActionChunk(_RecordingEnv(terminate_at=2), 4)
    env.reset()
    obs, reward, terminated, truncated, info = env.step(_chunk((1, 0), (2, 0), (3, 0), (4, 0)))
    assert terminated and not truncated
    assert reward == pytest.approx(3.0)
    assert info["chunk_steps"] == 2 and obs[0] == 2
    assert len(env.unwrapped.executed) == 2


def test_stops_early_on_truncation() -> None:
    env = ActionChunk(TimeLimit(_RecordingEnv(), max_episode_steps=1), 2)
    env.reset()
    _, reward, terminated, truncated, info = env.step(_chunk((1, 0), (2, 0)))
    assert truncated and not terminated
    assert reward == pytest.approx(1.0) and info["chunk_steps"] == 1


def test_rejects_bad_chunk_exec() -> None:
    with pytest.raises(ValueError, match="chunk_exec"):
        ActionChunk(_RecordingEnv(), 0)
