"""Environment wrappers: action chunking."""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium
import numpy as np
from gymnasium import spaces


class ActionChunk(gymnasium.Wrapper):
    """Execute `chunk_exec` consecutive actions per `step`.

    Chunked policies (diffusion_policy style) emit a flat vector of `chunk_exec` actions; this
    wrapper runs them in order. Rewards of the executed sub-steps are summed (undiscounted). When
    the episode terminates or truncates mid-chunk the remaining actions are dropped and that
    sub-step's observation and flags are returned, so episode boundaries are never crossed.

    `info` is the last executed sub-step's info plus `info["chunk_steps"]`, the number of
    sub-steps actually executed (1..chunk_exec); losses that discount per environment step need it.

    Attributes:
        chunk_exec: Number of actions executed per `step`.
    """

    def __init__(self, env: gymnasium.Env, chunk_exec: int) -> None:
        """Wrap `env`.

        Args:
            env: Environment with a `Box` action space of shape `(Da,)` (any shape is flattened).
            chunk_exec: Actions executed per step, >= 1.

        Raises:
            ValueError: If `chunk_exec < 1` or the action space is not a `Box`.
        """
        super().__init__(env)
        if chunk_exec < 1:
            raise ValueError(f"chunk_exec must be >= 1, got {chunk_exec}.")
        inner = env.action_space
        if not isinstance(inner, spaces.Box):
            raise ValueError(f"ActionChunk needs a Box action space, got {inner}.")
        self.chunk_exec = chunk_exec
        self._inner_shape = inner.shape
        self.action_space = spaces.Box(
            low=np.tile(inner.low.ravel(), chunk_exec),
            high=np.tile(inner.high.ravel(), chunk_exec),
            dtype=inner.dtype,
        )  # (chunk_exec * Da,)

    def step(self, action: np.ndarray) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Run the chunk's actions in order until it ends or the episode does.

        Args:
            action: Flat array of shape `(chunk_exec * Da,)`.

        Returns:
            `(obs, summed_reward, terminated, truncated, info)` of the last executed sub-step.
        """
        actions = np.asarray(action).reshape(self.chunk_exec, *self._inner_shape)
        total, executed = 0.0, 0
        for sub_action in actions:
            obs, reward, terminated, truncated, info = self.env.step(sub_action)
            executed += 1
            total += float(reward)
            if terminated or truncated:
                break
        info = {**info, "chunk_steps": executed}
        return obs, total, terminated, truncated, info
