"""Vector env state: a restored env replays an interrupted one bit for bit."""

from __future__ import annotations

import pickle
import threading
import warnings
from typing import Any

import gymnasium
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils import EzPickle

from flowpolicy.envs import DMCEnv, EnvSpec, make_vector_env
from flowpolicy.envs import state as env_state
from flowpolicy.envs.state import get_vector_env_state, set_vector_env_state

SEED = 3
REPLAY_STEPS = 200


def _short_cartpole() -> DMCEnv:
    """DMC cartpole with 0.3 s (30-step) episodes, so a short test crosses episode ends."""
    return DMCEnv("cartpole", "balance", time_limit=0.3)


def _short_dmc_cheetah() -> DMCEnv:
    """DMC cheetah (ground contacts) with 30-step episodes."""
    return DMCEnv("cheetah", "run", time_limit=0.3)


def _short_half_cheetah() -> gymnasium.Env:
    """HalfCheetah (never terminates) with 25-step episodes: ends come from TimeLimit alone."""
    return gymnasium.make("HalfCheetah-v5", max_episode_steps=25)


def _assert_identical(actual: Any, expected: Any, path: str = "result") -> None:
    """Exact equality of nested dicts, sequences and (object) arrays, dtypes included."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), path
        for key in expected:
            _assert_identical(actual[key], expected[key], f"{path}[{key!r}]")
    elif isinstance(expected, (list, tuple)) or (
        isinstance(expected, np.ndarray) and expected.dtype == object
    ):
        assert len(actual) == len(expected), path
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            _assert_identical(a, e, f"{path}[{i}]")
    else:
        np.testing.assert_array_equal(actual, expected, err_msg=path, strict=True)


def _random_actions(envs: gymnasium.vector.VectorEnv, rng: np.random.Generator, n: int):
    low, high = envs.action_space.low, envs.action_space.high
    return rng.uniform(low, high, size=(n, *low.shape)).astype(low.dtype)  # (n, N, Da)


def _rollout(envs: gymnasium.vector.VectorEnv, actions: np.ndarray) -> list[tuple]:
    """Every step's `(obs, reward, terminated, truncated, infos)`, infos["final_obs"] included."""
    return [envs.step(action) for action in actions]


def _episode_ends(steps: list[tuple]) -> int:
    return int(sum(np.sum(terminated | truncated) for _, _, terminated, truncated, _ in steps))


@pytest.mark.parametrize(
    ("env", "num_envs", "warmup", "chunk_exec"),
    [
        ("Hopper-v5", 3, 60, 1),
        # Ant-v5 reads body positions before stepping: checks the restored derived quantities.
        ("Ant-v5", 2, 20, 1),
        (_short_half_cheetah, 2, 40, 1),
        ("toy/nav", 3, 70, 1),
        ("toy/nav", 2, 20, 3),
        ("toy/bandit", 3, 5, 1),
        (_short_cartpole, 2, 40, 1),
        # dm_control's split step reuses the contacts computed after the previous step.
        (_short_dmc_cheetah, 2, 40, 1),
    ],
    ids=[
        "hopper",
        "ant",
        "cheetah-time-limit",
        "nav",
        "nav-chunked",
        "bandit",
        "dmc-cartpole",
        "dmc-cheetah",
    ],
)
def test_restored_env_replays_exactly(
    env: EnvSpec, num_envs: int, warmup: int, chunk_exec: int
) -> None:
    original = make_vector_env(env, num_envs, seed=SEED, chunk_exec=chunk_exec)
    original.reset(seed=SEED)
    rng = np.random.default_rng(0)
    warmup_steps = _rollout(original, _random_actions(original, rng, warmup))
    original.action_space.sample()  # moves the batched action space's RNG
    # Through pickle, as a checkpoint stores it.
    saved = pickle.dumps(get_vector_env_state(original))
    actions = _random_actions(original, rng, REPLAY_STEPS)
    expected = _rollout(original, actions)
    expected_sample = original.action_space.sample()

    restored = make_vector_env(env, num_envs, seed=SEED, chunk_exec=chunk_exec)
    restored.reset(seed=SEED)
    set_vector_env_state(restored, pickle.loads(saved))
    actual = _rollout(restored, actions)

    _assert_identical(actual, expected)
    _assert_identical(restored.action_space.sample(), expected_sample)
    assert _episode_ends(expected) > 0  # autoresets happened after the restore
    if not str(env).startswith(("Hopper", "Ant")):  # MuJoCo falls are likely, not certain
        assert _episode_ends(warmup_steps) > 0  # ... and before it


@pytest.mark.parametrize("env", ["Hopper-v5", "dmc/cartpole-balance"])
def test_state_is_small(env: str) -> None:
    envs = make_vector_env(env, 8, seed=0)
    envs.reset(seed=0)
    envs.step(envs.action_space.sample())
    assert len(pickle.dumps(get_vector_env_state(envs))) < 1_000_000


class _CountingEnv(gymnasium.Env):
    """Five-step episodes of random observations."""

    def __init__(self) -> None:
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._t = 0
        return self.np_random.uniform(-1, 1, size=1).astype(np.float32), {}

    def step(self, action: np.ndarray):
        self._t += 1
        obs = self.np_random.uniform(-1, 1, size=1).astype(np.float32)
        return obs, float(action[0]), False, self._t >= 5, {}


class _EzPickleEnv(_CountingEnv, EzPickle):
    """Its pickle records only constructor arguments, not its state."""

    def __init__(self) -> None:
        super().__init__()
        EzPickle.__init__(self)


class _UnpicklableEnv(_CountingEnv):
    """Holds something pickle refuses."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()


@pytest.mark.parametrize("factory", [_EzPickleEnv, _UnpicklableEnv])
def test_unknown_env_falls_back_to_fresh_episodes(
    factory: type[gymnasium.Env], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(env_state, "_warned_types", set())
    envs = make_vector_env(factory, 2, seed=0)
    envs.reset(seed=0)
    envs.step(envs.action_space.sample())
    with pytest.warns(UserWarning, match="restart its episodes"):
        assert get_vector_env_state(envs) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per env type
        assert get_vector_env_state(envs) is None

    fresh, untouched = (make_vector_env(factory, 2, seed=0) for _ in range(2))
    first_fresh, _ = fresh.reset(seed=0)
    first_untouched, _ = untouched.reset(seed=0)
    set_vector_env_state(fresh, None)
    actions = _random_actions(fresh, np.random.default_rng(0), 8)
    _assert_identical(_rollout(fresh, actions), _rollout(untouched, actions))
    _assert_identical(first_fresh, first_untouched)


def test_state_of_another_env_is_refused() -> None:
    envs = make_vector_env("toy/nav", 2, seed=0)
    envs.reset(seed=0)
    state = get_vector_env_state(envs)
    other = make_vector_env("toy/nav", 3, seed=0)
    other.reset(seed=0)
    with pytest.raises(ValueError, match="num_envs"):
        set_vector_env_state(other, state)
    chunked = make_vector_env("toy/nav", 2, seed=0, chunk_exec=2)
    chunked.reset(seed=0)
    with pytest.raises(ValueError, match="same environment"):
        set_vector_env_state(chunked, state)
