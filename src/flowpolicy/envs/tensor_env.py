"""The tensor env boundary: batched envs that take and return tensors on the run's device.

The training loop and evaluation talk to envs only through :class:`TensorVectorEnv`. CPU
simulators (Gymnasium, DeepMind Control, the toy tasks) are wrapped once, here, by
:class:`TorchVectorEnv`: one device-to-host copy of the actions and one host-to-device copy of
what comes back per step. A GPU-batched simulator implements the same protocol natively, with
no copy at all.

Shapes: N envs, Do observation size, Da flat action size (``chunk_exec`` actions of the
per-step size, concatenated).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import gymnasium
import numpy as np
import torch
from gymnasium.vector import AsyncVectorEnv
from torch import Tensor

from flowpolicy.envs.async_env import get_async_state, set_async_state
from flowpolicy.envs.registry import EnvSpec, VectorKind, env_dims, make_vector_env
from flowpolicy.envs.state import get_vector_env_state, set_vector_env_state
from flowpolicy.errors import UserError


@dataclass(frozen=True)
class EnvStep:
    """What one step of N envs returns, every field on the env's device.

    Under same-step autoreset, ``obs[i]`` of an env whose episode just ended is already the
    first observation of its next episode; ``final_obs[i]`` is the true last observation of the
    episode that ended (equal to ``obs[i]`` elsewhere), which truncated episodes bootstrap from.
    """

    obs: Tensor  # (N, Do) float32: the observations to act on next
    reward: Tensor  # (N,) floating, the simulator's precision: the reward summed over the chunk
    terminated: Tensor  # (N,) bool: the episode reached a terminal state
    truncated: Tensor  # (N,) bool: the episode was cut (time limit), not terminated
    final_obs: Tensor  # (N, Do) float32: the true next observation of this step

    @property
    def done(self) -> Tensor:
        """(N,) bool: the episode ended, either way."""
        return self.terminated | self.truncated


@runtime_checkable
class TensorVectorEnv(Protocol):
    """N envs stepped together that speak tensors on ``device``.

    ``state()`` / ``load_state()`` capture and restore the simulation for exact resume (a
    state of None means "cannot be captured": the resumed run restarts its episodes).
    """

    num_envs: int
    device: torch.device
    obs_dim: int
    action_dim: int
    action_low: Tensor  # (Da,) on the CPU, the flat action bounds
    action_high: Tensor  # (Da,)

    def reset(self, seed: int) -> Tensor:
        """Start every env's first episode (env i seeded with seed + i); obs (N, Do)."""
        ...

    def step(self, actions: Tensor) -> EnvStep:
        """Execute actions (N, Da) on the device; see :class:`EnvStep`."""
        ...

    def state(self) -> Any:
        """A picklable snapshot of the simulation, or None."""
        ...

    def load_state(self, state: Any) -> None:
        """Restore a snapshot from :meth:`state` into envs made and reset the same way."""
        ...

    def close(self) -> None: ...


class TorchVectorEnv:
    """A Gymnasium vector env (CPU simulation, same-step autoreset) behind tensors on
    ``device``. Made by :func:`make_tensor_env`."""

    def __init__(self, envs: gymnasium.vector.VectorEnv, device: torch.device) -> None:
        self.envs = envs
        self.device = torch.device(device)
        self.num_envs = envs.num_envs
        self.obs_dim, self.action_dim = env_dims(envs)
        space = envs.single_action_space
        self.action_low = torch.as_tensor(space.low, dtype=torch.float32)
        self.action_high = torch.as_tensor(space.high, dtype=torch.float32)

    def _to_device(self, array: np.ndarray, dtype: torch.dtype) -> Tensor:
        return torch.as_tensor(np.asarray(array), dtype=dtype).to(self.device, non_blocking=True)

    def reset(self, seed: int) -> Tensor:
        obs, _ = self.envs.reset(seed=seed)
        return self._to_device(obs, torch.float32)

    def step(self, actions: Tensor) -> EnvStep:
        obs, reward, terminated, truncated, infos = self.envs.step(
            actions.detach().to("cpu", torch.float32).numpy()
        )
        done = terminated | truncated
        final_obs = obs
        if done.any():  # the true final observations of the episodes that ended
            final_obs = obs.copy()
            mask = infos.get("_final_obs", done)
            for i in np.flatnonzero(mask):
                final_obs[i] = infos["final_obs"][i]
        return EnvStep(
            obs=self._to_device(obs, torch.float32),
            reward=self._to_device(reward, torch.float64),  # Gymnasium's own precision
            terminated=self._to_device(terminated, torch.bool),
            truncated=self._to_device(truncated, torch.bool),
            final_obs=self._to_device(final_obs, torch.float32),
        )

    def state(self) -> Any:
        if isinstance(self.envs, AsyncVectorEnv):
            return get_async_state(self.envs)
        return get_vector_env_state(self.envs)

    def load_state(self, state: Any) -> None:
        if isinstance(self.envs, AsyncVectorEnv):
            set_async_state(self.envs, state)
        else:
            set_vector_env_state(self.envs, state)

    def close(self) -> None:
        self.envs.close()


def make_tensor_env(
    env: EnvSpec,
    num_envs: int,
    *,
    seed: int,
    chunk_exec: int = 1,
    device: torch.device | str = "cpu",
    vector_env: VectorKind = "sync",
) -> TensorVectorEnv:
    """``num_envs`` copies of ``env`` behind tensors on ``device``: a ``playground/<Name>``
    env as one JAX batch (:mod:`flowpolicy.envs.playground`), any form :func:`make_env`
    accepts as a Gymnasium vector env, sync or async (``vector_env``). Not reset: call
    ``reset(seed)`` once before stepping."""
    if isinstance(env, str) and env.startswith("playground/"):
        if vector_env != "sync":
            raise UserError(
                f"--vector-env {vector_env} does not apply to {env}: a Playground env is "
                "already one batch stepped in JAX. Leave --vector-env at sync."
            )
        from flowpolicy.envs.playground import PlaygroundVectorEnv  # imports JAX: only here

        return PlaygroundVectorEnv(
            env, num_envs, seed=seed, chunk_exec=chunk_exec, device=torch.device(device)
        )
    envs = make_vector_env(env, num_envs, seed=seed, chunk_exec=chunk_exec, kind=vector_env)
    return TorchVectorEnv(envs, torch.device(device))
