"""Registers a tiny continuous env so tests can make it through the "module:EnvId" form."""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces


class TinyEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """Three-dimensional observation, one-dimensional action, ten-step episodes."""

    def __init__(self) -> None:
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
        self.action_space = spaces.Box(-2.0, 2.0, shape=(1,), dtype=np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        return np.zeros(3, dtype=np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        return np.zeros(3, dtype=np.float32), 0.0, False, False, {}


gymnasium.register(id="FlowpolicyTiny-v0", entry_point=TinyEnv, max_episode_steps=10)
