"""Make environments from an id or a factory, checked for what flowpolicy needs.

Accepted forms of `env` (an `EnvSpec`):

- a Gymnasium id, including ids the user registered and the `"module:EnvId"` form that imports
  `module` (which registers `EnvId`) first, e.g. `"Hopper-v5"`;
- `"dmc/<domain>-<task>"` for the DeepMind Control Suite, split at the first '-', e.g.
  `"dmc/ball_in_cup-catch"`;
- `"toy/bandit"` or `"toy/nav"`, the multimodal toy tasks of `flowpolicy.envs.toy`;
- (`train` and `eval` only, through `flowpolicy.envs.tensor_env.make_tensor_env`)
  `"playground/<Name>"`, MuJoCo Playground's DMC tasks as one JAX batch
  (`flowpolicy.envs.playground`);
- a zero-argument callable returning a `gymnasium.Env` (Python API only).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv, VectorEnv

from flowpolicy.envs.dmc import DMCEnv
from flowpolicy.envs.toy import BanditEnv, NavEnv
from flowpolicy.envs.wrappers import ActionChunk
from flowpolicy.errors import UserError

EnvSpec = str | Callable[[], gymnasium.Env]
VectorKind = Literal["sync", "async"]

_TOY_ENVS: dict[str, Callable[[], gymnasium.Env]] = {"toy/bandit": BanditEnv, "toy/nav": NavEnv}

_ACCEPTED_FORMS = (
    "flowpolicy accepts a Gymnasium id such as 'Hopper-v5' (write 'module:EnvId' to import the "
    "module that registers your own id), 'dmc/<domain>-<task>' such as 'dmc/cheetah-run', "
    "'playground/<Name>' such as 'playground/CheetahRun' (MuJoCo Playground, for train and "
    "eval), 'toy/bandit' or 'toy/nav', or, from Python, a zero-argument callable that returns "
    "a gymnasium.Env."
)


def make_env(env: EnvSpec, *, seed: int | None = None, chunk_exec: int = 1) -> gymnasium.Env:
    """Make one environment and check that flowpolicy can act in it.

    Args:
        env: Environment id or factory; see the module docstring for the accepted forms.
        seed: Seeds the action space (for `action_space.sample()`) and, for DMC, the task's
            random state. Pass a seed to the first `reset(seed=...)` to seed the episodes.
        chunk_exec: Actions executed per step; > 1 wraps the env in `ActionChunk`.

    Returns:
        The environment, with a bounded float `Box` action space and a `Box` observation space.

    Raises:
        UserError: On an unknown or malformed id, a failing factory, or unsupported spaces
            (discrete or unbounded actions, non-Box observations).
    """
    if not isinstance(chunk_exec, int) or chunk_exec < 1:
        raise UserError(
            f"chunk_exec must be an integer >= 1 (actions executed per policy step), got "
            f"{chunk_exec!r}. Use 1 to execute one action per step."
        )
    if isinstance(env, str) and env.startswith("playground/"):
        raise UserError(
            f"{env} is a batched JAX env: it runs with `flowpolicy train` and `flowpolicy "
            "eval` (through flowpolicy.envs.tensor_env.make_tensor_env), not as a single "
            "Gymnasium env, so collect and pretrain cannot use it. Use the dmc/ form of the "
            "same task (e.g. dmc/cartpole-balance) there."
        )
    made = _construct(env, seed)
    _check_spaces(made, _describe(env))
    if chunk_exec > 1:
        made = ActionChunk(made, chunk_exec)
    if seed is not None:
        made.action_space.seed(seed)
    return made


def make_vector_env(
    env: EnvSpec, num_envs: int, *, seed: int, chunk_exec: int = 1, kind: VectorKind = "sync"
) -> gymnasium.vector.VectorEnv:
    """Make `num_envs` copies of `env` stepped in lockstep: in this process (`SyncVectorEnv`,
    `kind="sync"`) or one worker process each (`AsyncVectorEnv`, `kind="async"`,
    :mod:`flowpolicy.envs.async_env`).

    Sync beats Async on few cores: the toy and MuJoCo steps are too cheap to pay for
    inter-process transfers; measure before choosing async on a machine with many cores.

    Autoreset is `AutoresetMode.SAME_STEP`: when sub-env i's episode ends at a `step()`, that
    same call resets it and returns the first observation of its next episode in `obs[i]`,
    while `terminated[i]`/`truncated[i]` describe the episode that just ended. The true final
    observation (needed to bootstrap truncated episodes) is `infos["final_obs"][i]`, valid where
    the mask `infos["_final_obs"][i]` is True; the final step's info is in `infos["final_info"]`.
    Every action therefore acts on the observation returned with it: there is no dummy step.

    The environments are not reset here: call `reset(seed=seed)` once before stepping (sub-env
    i is then seeded with seed + i).

    Args:
        env: Environment id or factory, as for `make_env`.
        num_envs: Number of copies, >= 1.
        seed: Seeds the batched action space; sub-env i's action space (and DMC task) get
            seed + i.
        chunk_exec: Actions executed per step in each copy (see `ActionChunk`).
        kind: "sync" or "async".

    Returns:
        The vector environment.

    Raises:
        UserError: As `make_env`, or on `num_envs < 1`.
    """
    if not isinstance(num_envs, int) or num_envs < 1:
        raise UserError(f"num_envs must be an integer >= 1, got {num_envs!r}.")
    env_fns = [
        functools.partial(make_env, env, seed=seed + i, chunk_exec=chunk_exec)
        for i in range(num_envs)
    ]
    if kind not in ("sync", "async"):
        raise UserError(f"Unknown vector env kind {kind!r}; choose sync or async.")
    if kind == "async":
        make_env(env, chunk_exec=chunk_exec).close()  # bad input fails here, not in a worker
        from flowpolicy.envs.async_env import make_async_vector_env

        vector_env = make_async_vector_env(env_fns)
    else:
        vector_env = SyncVectorEnv(env_fns, autoreset_mode=AutoresetMode.SAME_STEP)
    vector_env.action_space.seed(seed)
    return vector_env


def env_dims(env: gymnasium.Env | VectorEnv) -> tuple[int, int]:
    """`(obs_dim, action_dim)` of an env's flat (1-D) Box spaces.

    Args:
        env: A single env, or a vector env (its per-copy spaces are used).

    Raises:
        UserError: If a space is not a 1-D Box.
    """
    if isinstance(env, VectorEnv):
        obs_space, action_space = env.single_observation_space, env.single_action_space
    else:
        obs_space, action_space = env.observation_space, env.action_space
    for name, space in (("observation", obs_space), ("action", action_space)):
        if not isinstance(space, spaces.Box) or len(space.shape) != 1:
            raise UserError(
                f"The {name} space {space} is not a flat (1-D) Box, so it has no single "
                f"dimension. Flatten it, e.g. with gymnasium.wrappers.FlattenObservation."
            )
    return obs_space.shape[0], action_space.shape[0]


def _describe(env: EnvSpec) -> str:
    if isinstance(env, str):
        return repr(env)
    return f"made by {getattr(env, '__qualname__', repr(env))}"


def _construct(env: EnvSpec, seed: int | None) -> gymnasium.Env:
    if isinstance(env, str):
        if env.startswith("dmc/"):
            return _make_dmc(env, seed)
        if env.startswith("toy/"):
            return _make_toy(env)
        return _make_gymnasium(env)
    if callable(env):
        return _call_factory(env)
    raise UserError(
        f"Cannot make an environment from {env!r} ({type(env).__name__}). {_ACCEPTED_FORMS}"
    )


def _make_gymnasium(env_id: str) -> gymnasium.Env:
    try:
        return gymnasium.make(env_id)
    except gymnasium.error.UnregisteredEnv as exc:  # NameNotFound, VersionNotFound, ...
        raise UserError(
            f"Unknown environment id {env_id!r}. Gymnasium says: {exc} {_ACCEPTED_FORMS}"
        ) from exc
    except ModuleNotFoundError as exc:
        if ":" not in env_id:
            raise  # a missing dependency inside the env itself, not a bad id
        raise UserError(
            f"Could not import the module of environment id {env_id!r}: {exc} Check that the "
            f"part before ':' is an importable module (on PYTHONPATH) that registers the id. "
            f"{_ACCEPTED_FORMS}"
        ) from exc
    except gymnasium.error.Error as exc:  # malformed ids, missing optional dependencies
        raise UserError(f"Could not make environment {env_id!r}: {exc} {_ACCEPTED_FORMS}") from exc


def _make_dmc(env_id: str, seed: int | None) -> gymnasium.Env:
    domain, dash, task = env_id.removeprefix("dmc/").partition("-")
    if not (domain and dash and task):
        raise UserError(
            f"Malformed DeepMind Control id {env_id!r}: expected 'dmc/<domain>-<task>', e.g. "
            f"'dmc/cheetah-run' or 'dmc/ball_in_cup-catch' (split at the first '-')."
        )
    return DMCEnv(domain, task, seed=seed)


def _make_toy(env_id: str) -> gymnasium.Env:
    if env_id not in _TOY_ENVS:
        raise UserError(
            f"Unknown toy task {env_id!r}: the toy tasks are {', '.join(sorted(_TOY_ENVS))}. "
            f"{_ACCEPTED_FORMS}"
        )
    return _TOY_ENVS[env_id]()


def _call_factory(factory: Callable[[], gymnasium.Env]) -> gymnasium.Env:
    name = getattr(factory, "__qualname__", repr(factory))
    try:
        made = factory()
    except UserError:
        raise
    except Exception as exc:
        raise UserError(
            f"The environment factory {name} raised {type(exc).__name__}: {exc}. It must be a "
            f"zero-argument callable that returns a gymnasium.Env; call it directly to see the "
            f"full traceback."
        ) from exc
    if not isinstance(made, gymnasium.Env):
        raise UserError(
            f"The environment factory {name} returned {type(made).__name__}, not a "
            f"gymnasium.Env. Return the environment itself (e.g. gymnasium.make(...) or an "
            f"instance of your gymnasium.Env subclass)."
        )
    return made


def _check_spaces(env: gymnasium.Env, label: str) -> None:
    action_space, obs_space = env.action_space, env.observation_space
    problem = None
    if not isinstance(action_space, spaces.Box) or not np.issubdtype(
        action_space.dtype, np.floating
    ):
        problem = (
            f"Environment {label} has action space {action_space}, but flowpolicy needs "
            f"continuous bounded actions (a float gymnasium.spaces.Box with finite low and "
            f"high). Discrete tasks such as CartPole-v1 are not supported: pick a "
            f"continuous-control task (e.g. 'Pendulum-v1', 'Hopper-v5', 'dmc/cheetah-run')."
        )
    elif not action_space.is_bounded("both"):
        problem = (
            f"Environment {label} has unbounded actions ({action_space}), but flowpolicy needs "
            f"continuous bounded actions: give the env's action space finite low and high."
        )
    elif not isinstance(obs_space, spaces.Box):
        problem = (
            f"Environment {label} has observation space {obs_space}, but flowpolicy needs a "
            f"gymnasium.spaces.Box; flatten dict observations with "
            f"gymnasium.wrappers.FlattenObservation."
        )
    if problem is not None:
        env.close()
        raise UserError(problem)
