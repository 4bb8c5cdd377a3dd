"""DeepMind Control Suite tasks as Gymnasium environments.

dm_control takes about a second to import, so it is imported only when a `DMCEnv` is built:
`import flowpolicy.envs` stays fast for users who never touch DMC.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from flowpolicy.errors import UserError


def _suite() -> ModuleType:
    """Import `dm_control.suite` with headless rendering settings."""
    # No display on training machines and no rendering needed; without this dm_control may try
    # to create an OpenGL context at import.
    os.environ.setdefault("MUJOCO_GL", "disable")
    from dm_control import suite

    return suite


def dmc_tasks() -> dict[str, list[str]]:
    """All DeepMind Control tasks, `{domain: [task, ...]}`, from `dm_control.suite.ALL_TASKS`."""
    tasks: dict[str, list[str]] = {}
    for domain, task in _suite().ALL_TASKS:
        tasks.setdefault(domain, []).append(task)
    return tasks


def _episode_flags(last: bool, discount: float | None) -> tuple[bool, bool]:
    """`(terminated, truncated)` for a dm_env timestep.

    DMC episodes end either on a true terminal state (discount 0) or at the time limit, where
    the discount stays 1: the latter is a truncation and must be bootstrapped.
    """
    if not last:
        return False, False
    terminated = discount is not None and float(discount) == 0.0
    return terminated, not terminated


class DMCEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """One DeepMind Control Suite task (`dm_control.suite.load`) behind the Gymnasium API.

    Observation: the observation dict's values, flattened and concatenated in the dict's order,
    as float32. Action: a float32 `Box` with the task's action bounds. Reward: the timestep's
    reward (0.0 on a missing reward). An episode ends with `terminated=True` when the last
    timestep has discount 0 and with `truncated=True` otherwise (time limit).
    """

    metadata = {"render_modes": []}

    def __init__(
        self, domain: str, task: str, *, seed: int | None = None, time_limit: float | None = None
    ) -> None:
        """Load the task.

        Args:
            domain: DMC domain, e.g. `"cheetah"`.
            task: Task of that domain, e.g. `"run"`.
            seed: Seed of the task's random state (initial states); `reset(seed=...)` reseeds.
            time_limit: Episode length in seconds of simulated time; None keeps the task's
                default (usually 1000 control steps).

        Raises:
            UserError: If the domain or task does not exist.
        """
        tasks = dmc_tasks()
        if domain not in tasks:
            raise UserError(
                f"Unknown DeepMind Control domain {domain!r} (in 'dmc/{domain}-{task}'). "
                f"Available domains: {', '.join(sorted(tasks))}. Use the form "
                "'dmc/<domain>-<task>', e.g. 'dmc/cheetah-run'."
            )
        if task not in tasks[domain]:
            raise UserError(
                f"Unknown task {task!r} for DeepMind Control domain {domain!r}. Tasks of "
                f"{domain!r}: {', '.join(tasks[domain])}; e.g. 'dmc/{domain}-{tasks[domain][0]}'."
            )
        self.domain = domain
        self.task = task
        self._time_limit = time_limit
        self._env = self._load(seed)

        obs_spec = self._env.observation_spec()
        obs_dim = sum(int(np.prod(spec.shape)) for spec in obs_spec.values())
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(obs_dim,), dtype=np.float32)
        act_spec = self._env.action_spec()
        self.action_space = spaces.Box(
            low=np.broadcast_to(act_spec.minimum, act_spec.shape).astype(np.float32),
            high=np.broadcast_to(act_spec.maximum, act_spec.shape).astype(np.float32),
            dtype=np.float32,
        )

    def _load(self, seed: int | None) -> Any:
        task_kwargs: dict[str, Any] = {"random": seed}
        if self._time_limit is not None:
            task_kwargs["time_limit"] = self._time_limit
        return _suite().load(self.domain, self.task, task_kwargs=task_kwargs)

    @property
    def physics(self) -> Any:
        """The task's dm_control ``Physics``; ``physics.render(height, width, camera_id)``
        draws a frame (`flowpolicy video`). A seeded `reset` makes a new one."""
        return self._env.physics

    @property
    def control_timestep(self) -> float:
        """Simulated seconds per `step` (the frame period of a real-time video)."""
        return float(self._env.control_timestep())

    @staticmethod
    def _flatten(observation: dict[str, Any]) -> np.ndarray:
        parts = [np.asarray(value, dtype=np.float32).ravel() for value in observation.values()]
        return np.concatenate(parts)  # (obs_dim,)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode; a given `seed` makes the first observation reproducible."""
        super().reset(seed=seed)
        if seed is not None:
            # The task's random state lives inside the dm_control env; rebuilding it is the
            # public way to reseed it.
            self._env.close()
            self._env = self._load(seed)
        timestep = self._env.reset()
        return self._flatten(timestep.observation), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Advance one control step with `action` clipped to the action bounds."""
        action = np.clip(
            np.asarray(action, dtype=np.float64), self.action_space.low, self.action_space.high
        )
        timestep = self._env.step(action)
        reward = 0.0 if timestep.reward is None else float(timestep.reward)
        terminated, truncated = _episode_flags(timestep.last(), timestep.discount)
        return self._flatten(timestep.observation), reward, terminated, truncated, {}

    def close(self) -> None:
        """Release the physics."""
        self._env.close()
