"""``--vector-env async``: Gymnasium's AsyncVectorEnv, one worker process per env, with the
exact-resume snapshots of :mod:`flowpolicy.envs.state`.

On many cores the envs then step in parallel; on few cores the inter-process transfers cost
more than they save (``benchmarks/throughput.py --train-args="--vector-env async"`` measures it
on a machine). Workers are started with ``spawn``: forking a process that holds torch's (or
JAX's) threads can deadlock.

Each worker's env is wrapped in :class:`StateAccess`, through which the parent reads and writes
the sub-env's state with ``AsyncVectorEnv.call``; the snapshot of a sub-env is the same as in a
``SyncVectorEnv`` (the layers below the wrapper), so sync and async runs save the same states.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import gymnasium
from gymnasium.vector import AsyncVectorEnv, AutoresetMode

from flowpolicy.envs import state as env_state

_VERSION = 1


class StateAccess(gymnasium.Wrapper):
    """Reads and restores the state of the env it wraps, inside the worker process."""

    def __init__(self, env: gymnasium.Env, index: int) -> None:
        super().__init__(env)
        self.index = index  # this env's place in the vector env, to pick its own state

    def get_flowpolicy_state(self) -> dict[str, Any] | None:
        return env_state.get_env_state(self.env)

    def set_flowpolicy_state(self, states: list[dict[str, Any]]) -> None:
        env_state.set_env_state(self.env, states[self.index])


def _make_wrapped(make: Callable[[], gymnasium.Env], index: int) -> gymnasium.Env:
    return StateAccess(make(), index)


def make_async_vector_env(env_fns: list[Callable[[], gymnasium.Env]]) -> AsyncVectorEnv:
    """One worker process per factory (spawned), same-step autoreset, state access."""
    wrapped = [functools.partial(_make_wrapped, make, i) for i, make in enumerate(env_fns)]
    return AsyncVectorEnv(wrapped, autoreset_mode=AutoresetMode.SAME_STEP, context="spawn")


def get_async_state(envs: AsyncVectorEnv) -> dict[str, Any] | None:
    """Every sub-env's snapshot and the batched action space's RNG; None if a sub-env's
    state cannot be captured (as for a SyncVectorEnv)."""
    states = list(envs.call("get_flowpolicy_state"))
    if any(state is None for state in states):
        return None
    rng = envs.action_space.np_random.bit_generator.state
    return {"version": _VERSION, "async": True, "envs": states, "action_space_rng": rng}


def set_async_state(envs: AsyncVectorEnv, state: dict[str, Any] | None) -> None:
    """Restore :func:`get_async_state`'s snapshot into a fresh, reset AsyncVectorEnv."""
    if state is None:
        return
    if not state.get("async") or state.get("version") != _VERSION:
        raise ValueError(
            "The env state was saved from a sync vector env: resume with --vector-env sync."
        )
    if len(state["envs"]) != envs.num_envs:
        raise ValueError(
            f"The env state holds {len(state['envs'])} sub-envs but the vector env has "
            f"{envs.num_envs}: resume with the same num_envs."
        )
    envs.call("set_flowpolicy_state", state["envs"])
    envs.action_space.np_random.bit_generator.state = state["action_space_rng"]
