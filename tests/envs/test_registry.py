"""make_env / make_vector_env / env_dims: accepted forms, checks, errors and autoreset."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import pytest
from gymnasium import spaces

from flowpolicy.envs import ActionChunk, NavEnv, env_dims, make_env, make_vector_env
from flowpolicy.errors import UserError


class _SpacesEnv(gymnasium.Env):
    """Env with arbitrary spaces, to exercise the space checks."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space) -> None:
        self.observation_space = observation_space
        self.action_space = action_space

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


def _box(*shape: int, bound: float = 1.0) -> spaces.Box:
    return spaces.Box(-bound, bound, shape=shape, dtype=np.float32)


# --- accepted forms -------------------------------------------------------------------------


def test_gymnasium_id() -> None:
    env = make_env("Hopper-v5", seed=0)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (11,)
    assert env.action_space.shape == (3,)
    assert env_dims(env) == (11, 3)
    env.close()


@pytest.mark.parametrize("env_id", ["toy/bandit", "toy/nav"])
def test_toy_ids(env_id: str) -> None:
    env = make_env(env_id, seed=0)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (2,) and obs.dtype == np.float32
    assert env.action_space.shape == (2,) and env.action_space.dtype == np.float32
    obs, reward, *_ = env.step(env.action_space.sample())
    assert obs.dtype == np.float32
    assert isinstance(reward, float)


def test_dmc_id() -> None:
    env = make_env("dmc/cartpole-balance", seed=0)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (5,) and obs.dtype == np.float32
    assert env.action_space.shape == (1,) and env.action_space.dtype == np.float32
    assert env_dims(env) == (5, 1)
    env.close()


def test_callable_factory() -> None:
    env = make_env(lambda: NavEnv(max_episode_steps=7))
    assert isinstance(env.unwrapped, NavEnv)
    assert env.unwrapped.max_episode_steps == 7


def test_module_colon_id(monkeypatch: pytest.MonkeyPatch) -> None:
    # The module's folder on sys.path makes the test independent of pytest's import mode.
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    env = make_env("flowpolicy_tiny_env:FlowpolicyTiny-v0")
    assert env_dims(env) == (3, 1)


def test_seed_seeds_action_space() -> None:
    first = make_env("toy/nav", seed=3).action_space.sample()
    second = make_env("toy/nav", seed=3).action_space.sample()
    np.testing.assert_array_equal(first, second)


def test_chunk_exec_wraps() -> None:
    env = make_env("toy/nav", chunk_exec=4)
    assert isinstance(env, ActionChunk)
    assert env.action_space.shape == (8,)
    assert env_dims(env) == (2, 8)


def test_import_does_not_load_dm_control() -> None:
    code = "import sys, flowpolicy.envs; assert 'dm_control' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- errors ---------------------------------------------------------------------------------


def test_unknown_gymnasium_id_passes_on_suggestion() -> None:
    with pytest.raises(UserError) as info:
        make_env("Hoper-v5")
    message = str(info.value)
    assert "'Hoper-v5'" in message
    assert "Did you mean" in message and "Hopper" in message
    assert "dmc/<domain>-<task>" in message and "toy/bandit" in message


def test_unknown_version() -> None:
    with pytest.raises(UserError, match="v5"):
        make_env("Hopper-v99")


def test_bad_module_part() -> None:
    with pytest.raises(UserError, match="no_such_module_xyz"):
        make_env("no_such_module_xyz:Foo-v0")


def test_discrete_actions_rejected() -> None:
    with pytest.raises(UserError, match="continuous bounded actions") as info:
        make_env("CartPole-v1")
    assert "CartPole-v1" in str(info.value)


def test_unbounded_actions_rejected() -> None:
    with pytest.raises(UserError, match="bounded"):
        make_env(lambda: _SpacesEnv(_box(2), _box(2, bound=np.inf)))


def test_non_box_observations_rejected() -> None:
    with pytest.raises(UserError, match="observation space"):
        make_env(lambda: _SpacesEnv(spaces.Discrete(3), _box(2)))


def test_failing_factory() -> None:
    def broken() -> gymnasium.Env:
        raise RuntimeError("no robot attached")

    with pytest.raises(UserError, match="no robot attached"):
        make_env(broken)


def test_factory_returning_non_env() -> None:
    with pytest.raises(UserError, match="not a gymnasium.Env"):
        make_env(lambda: 42)


def test_neither_string_nor_callable() -> None:
    with pytest.raises(UserError, match="accepts"):
        make_env(42)  # type: ignore[arg-type]


def test_unknown_toy() -> None:
    with pytest.raises(UserError, match="toy/bandit, toy/nav"):
        make_env("toy/maze")


@pytest.mark.parametrize("env_id", ["dmc/cartpole", "dmc/-balance", "dmc/cartpole-"])
def test_malformed_dmc_id(env_id: str) -> None:
    with pytest.raises(UserError, match="dmc/<domain>-<task>"):
        make_env(env_id)


def test_unknown_dmc_task_lists_tasks() -> None:
    with pytest.raises(UserError) as info:
        make_env("dmc/cartpole-fly")
    message = str(info.value)
    assert "'fly'" in message and "balance" in message and "swingup" in message


def test_unknown_dmc_domain_lists_domains() -> None:
    with pytest.raises(UserError, match="cheetah"):
        make_env("dmc/spaceship-run")


def test_bad_chunk_exec_and_num_envs() -> None:
    with pytest.raises(UserError, match="chunk_exec"):
        make_env("toy/nav", chunk_exec=0)
    with pytest.raises(UserError, match="num_envs"):
        make_vector_env("toy/nav", 0, seed=0)


def test_env_dims_needs_flat_spaces() -> None:
    with pytest.raises(UserError, match="1-D"):
        env_dims(_SpacesEnv(_box(2, 2), _box(2)))


# --- vector envs ----------------------------------------------------------------------------


def test_vector_env_dims_and_seeding() -> None:
    first = make_vector_env("toy/nav", 3, seed=1)
    second = make_vector_env("toy/nav", 3, seed=1)
    assert env_dims(first) == (2, 2)
    np.testing.assert_array_equal(first.reset(seed=1)[0], second.reset(seed=1)[0])
    np.testing.assert_array_equal(first.action_space.sample(), second.action_space.sample())


def test_vector_bandit_same_step_autoreset() -> None:
    envs = make_vector_env("toy/bandit", 3, seed=0)
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (3, 2)
    for _ in range(2):
        obs, reward, terminated, truncated, infos = envs.step(envs.action_space.sample())
        assert terminated.all() and not truncated.any()
        assert infos["_final_obs"].all()
        np.testing.assert_array_equal(np.stack(infos["final_obs"]), np.ones((3, 2)))
        assert obs.shape == (3, 2) and reward.shape == (3,)


def test_vector_nav_termination_then_truncation() -> None:
    envs = make_vector_env(lambda: NavEnv(max_episode_steps=3), 3, seed=0)
    up = np.tile([0.0, 1.0], (3, 1))

    # Start one step below the goal: the first step terminates every copy.
    envs.reset(seed=0, options={"start": (0.0, 0.65)})
    obs, _, terminated, truncated, infos = envs.step(up)
    assert terminated.all() and not truncated.any()
    assert infos["_final_obs"].all()
    np.testing.assert_allclose(np.stack(infos["final_obs"]), np.tile([0.0, 0.75], (3, 1)))
    # The returned observation is already the next episode's start (near (0, -0.8)).
    np.testing.assert_allclose(obs, np.tile([0.0, -0.8], (3, 1)), atol=0.051)

    for step in range(1, 4):
        obs, _, terminated, truncated, infos = envs.step(up)
        assert not terminated.any()
        assert truncated.all() == (step == 3)
    assert infos["_final_obs"].all()
    final = np.stack(infos["final_obs"])
    # Final observations are 3 steps up from the start; the returned ones are fresh starts.
    assert (obs[:, 1] < -0.74).all() and (final[:, 1] > -0.56).all()
