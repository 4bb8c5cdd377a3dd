"""A minimal Gymnasium view of a DeepMind Control task, for the stable-baselines3 reference.

Only ``benchmarks/sb3_ppo.py`` uses this: SB3 needs a ``gymnasium.Env``, and the reference must
not depend on the library it is a reference for. Env ids follow the library's convention,
``dmc/<domain>-<task>`` (e.g. ``dmc/cheetah-run``, ``dmc/ball_in_cup-catch``).

Observations are the task's observation dict flattened and concatenated in spec order (float32).
DMC episodes end by time limit (1000 steps), reported as ``truncated``; an episode that ends with
discount 0 is reported as ``terminated``.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

DMC_PREFIX = "dmc/"


def parse_dmc_id(env_id: str) -> tuple[str, str]:
    """``"dmc/cheetah-run"`` -> ``("cheetah", "run")``."""
    if not env_id.startswith(DMC_PREFIX) or "-" not in env_id:
        raise ValueError(f"expected an env id like 'dmc/cheetah-run', got {env_id!r}")
    domain, task = env_id[len(DMC_PREFIX) :].split("-", 1)
    return domain, task


class DmcEnv(gym.Env):
    """One dm_control suite task behind the Gymnasium API (no rendering)."""

    metadata = {"render_modes": []}

    def __init__(self, env_id: str) -> None:
        self._domain, self._task = parse_dmc_id(env_id)
        self._env = self._load(seed=None)
        obs_dim = sum(int(np.prod(s.shape)) for s in self._env.observation_spec().values())
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(obs_dim,), dtype=np.float32)
        spec = self._env.action_spec()
        self.action_space = spaces.Box(
            spec.minimum.astype(np.float32), spec.maximum.astype(np.float32), dtype=np.float32
        )

    def _load(self, seed: int | None):
        from dm_control import suite

        return suite.load(self._domain, self._task, task_kwargs={"random": seed})

    @staticmethod
    def _flatten(observation: dict) -> np.ndarray:
        return np.concatenate(
            [np.asarray(v, dtype=np.float32).ravel() for v in observation.values()]
        )

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start an episode; a seed re-creates the task with that random state."""
        super().reset(seed=seed)
        if seed is not None:
            self._env = self._load(seed)
        time_step = self._env.reset()
        return self._flatten(time_step.observation), {}

    def step(self, action: np.ndarray):
        """Advance one control step."""
        time_step = self._env.step(action)
        terminated = bool(time_step.last() and time_step.discount == 0.0)
        truncated = bool(time_step.last() and not terminated)
        reward = float(time_step.reward or 0.0)
        return self._flatten(time_step.observation), reward, terminated, truncated, {}


def make_env(env_id: str) -> gym.Env:
    """A Gymnasium env for a gymnasium id (``Hopper-v5``) or a ``dmc/<domain>-<task>`` id."""
    if env_id.startswith(DMC_PREFIX):
        return DmcEnv(env_id)
    return gym.make(env_id)
