"""MuJoCo Playground's DeepMind Control Suite envs as one batch: ``--env playground/<Name>``.

Thousands of envs are stepped as one jitted, vmapped MJX call in JAX and reach torch through
the tensor env boundary (:class:`~flowpolicy.envs.tensor_env.TensorVectorEnv`): actions go in
and observations, rewards, terminations, truncations and true final observations come out as
tensors, with no Python loop over envs.

Episodes and auto-reset are handled here, not by Brax's training wrappers (which replace the
final observation with the reset one, and restore one cached initial state per env):

- an episode is *truncated* when it reaches the task's ``episode_length`` (1000 control
  steps for every DMC task) and *terminated* when the env says ``done`` (in the DMC tasks,
  only a simulation that went NaN);
- ``final_obs`` is the observation the episode really ended in, so a truncated episode
  bootstraps from it; envs that ended are reset with fresh randomness in the same call;
- with ``chunk_exec`` > 1 one step executes that many actions in turn, summing their
  rewards; an env whose episode ends inside the chunk ignores the rest of it.

The seed gives the same numbers on the same machine: every reset, the first included, draws
its N keys from a key carried in the state, which starts as ``PRNGKey(seed)``.

The bridge between torch and JAX is chosen by device, by measurement (docs/playground.md):
on the CPU, ``jax.device_put`` of the action array and a copy of each output (DLPack was 40x
slower there); on CUDA, zero-copy DLPack both ways. JAX is imported only when a playground env
is made, and it is told not to pre-allocate GPU memory (torch needs it).

Shapes: N envs, Do observation size, Da action size, Ta_exec executed actions per step.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from flowpolicy.envs.tensor_env import EnvStep
from flowpolicy.errors import UserError

PREFIX = "playground/"
INSTALL = "pip install 'flowpolicy[playground]'"
IMPLS = ("jax", "warp")
OPTIONS = ("impl", "episode_length")
JAX_CACHE = Path.home() / ".cache" / "flowpolicy" / "jax"
_BATCHES: dict[tuple, Any] = {}
"""(name, impl, chunk_exec, episode_length) -> (env, jitted batch reset, jitted batch step):
every env made alike in one process (training's, evaluation's) shares one compilation; and
("shapes", name) -> one env's state as shapes."""


def clear_compiled() -> None:
    """Forget every compiled batch (and JAX's caches): their memory is released. For a process
    that goes through many tasks, such as the tests; a training run keeps its one task."""
    _BATCHES.clear()
    if "jax" in sys.modules:
        sys.modules["jax"].clear_caches()


def is_playground(env: object) -> bool:
    """Whether an env id names a Playground env (``playground/<Name>``)."""
    return isinstance(env, str) and env.startswith(PREFIX)


def _registry() -> Any:
    """mujoco_playground's registry, or a UserError with the install command."""
    if importlib.util.find_spec("mujoco_playground") is None:
        raise UserError(
            "playground/ envs need MuJoCo Playground (and JAX), which are not installed. "
            f"Install them with `{INSTALL}` (or run `bash scripts/setup.sh`, which does)."
        )
    # Before JAX starts: leave the GPU memory to torch, JAX takes what it needs as it goes.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax
    import mujoco
    from mujoco_playground import registry

    # Compiling a task's batch takes 5-40 s on a CPU: keep the programs on disk so that the
    # next run of the same task and batch size loads them (JAX's own cache; the variable wins).
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        jax.config.update("jax_compilation_cache_dir", str(JAX_CACHE))

    # Playground 0.2.0's Reacher compares version strings ("3.17.0" >= "3.3.0" is False) and
    # then calls MjSpec.find_body, which MuJoCo 3.3 renamed to MjSpec.body.
    if not hasattr(mujoco.MjSpec, "find_body"):
        mujoco.MjSpec.find_body = mujoco.MjSpec.body
    # flowpolicy's own task on a model that ships with Playground (docs/humanoid_joystick.md).
    from flowpolicy.envs.humanoid_joystick import register

    register()
    return registry


def dmc_names() -> tuple[str, ...]:
    """The DeepMind Control Suite envs of MuJoCo Playground (their models ship with it)."""
    return tuple(_registry().dm_control_suite.ALL_ENVS)


def parse_env_id(env_id: str) -> tuple[str, dict[str, str]]:
    """``playground/<Name>[:key=value,...]`` -> (``playground/<Name>``, options).

    Options: ``impl`` (jax or warp) and ``episode_length`` (control steps before truncation),
    e.g. ``playground/CheetahRun:episode_length=500``. They are part of the env id so that
    training, evaluation and a resumed run all make the same env from the id alone.
    """
    base, _, rest = env_id.partition(":")
    options: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in OPTIONS or not value:
            raise UserError(
                f"Bad option {item!r} in the env id {env_id!r}: write "
                f"playground/<Name>:key=value,... with keys {', '.join(OPTIONS)}, e.g. "
                "playground/CheetahRun:episode_length=500."
            )
        options[key] = value
    return base, options


def check_name(env_id: str) -> str:
    """``playground/<Name>`` -> ``Name``, a DMC env of Playground; UserError otherwise."""
    name = env_id[len(PREFIX) :]
    names = dmc_names()
    if name in names:
        return name
    registry = _registry()
    if name in registry.ALL_ENVS:
        raise UserError(
            f"playground/{name} is one of Playground's locomotion or manipulation envs, whose "
            "robot models (MuJoCo Menagerie) are downloaded on first use; this machine cannot "
            f"download them, so only the {len(names)} envs whose models ship inside the package "
            "(the DeepMind Control Suite's and flowpolicy's HumanoidJoystick) are offered: "
            f"{', '.join(names)}."
        )
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(PREFIX + c for c in close)}?" if close else ""
    raise UserError(
        f"Unknown Playground env {env_id!r}.{hint} The {len(names)} available are listed by "
        "`python -m flowpolicy.envs.playground` (and in docs/playground.md)."
    )


def check_impl(impl: str, device: torch.device) -> None:
    if impl not in IMPLS:
        raise UserError(f"Unknown Playground impl {impl!r}; choose jax or warp.")
    if impl == "warp" and importlib.util.find_spec("warp") is None:
        raise UserError(
            "impl warp needs the warp-lang package, which is not installed. Install it with "
            "`pip install warp-lang`, or use impl jax (the default)."
        )
    if impl == "warp" and device.type != "cuda":
        raise UserError(
            "impl warp runs MJX on MuJoCo Warp, which needs an NVIDIA GPU (--device cuda); "
            "on a CPU use impl jax (the default)."
        )


def check_episode_length(value: object) -> int:
    try:
        length = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        length = 0
    if length < 1:
        raise UserError(f"episode_length must be an integer >= 1, got {value!r}.")
    return length


class PlaygroundVectorEnv:
    """N copies of a Playground DMC task stepped as one batch (a ``TensorVectorEnv``)."""

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        *,
        seed: int,
        chunk_exec: int = 1,
        device: torch.device | str = "cpu",
        impl: str | None = None,
        episode_length: int | None = None,
        bridge: str = "auto",
    ) -> None:
        """``impl`` (default jax) and ``episode_length`` (control steps before truncation,
        default the task's: 1000) override the options written in ``env_id``. ``bridge``:
        how tensors cross between torch and JAX: ``copy`` (device_put / numpy), ``dlpack``
        (zero-copy views) or ``auto``, the faster by measurement (dlpack on a GPU, copy on a
        CPU)."""
        if not isinstance(num_envs, int) or num_envs < 1:
            raise UserError(f"num_envs must be an integer >= 1, got {num_envs!r}.")
        base, options = parse_env_id(env_id)
        name = check_name(base)
        self.device = torch.device(device)
        impl = impl or options.get("impl", "jax")
        check_impl(impl, self.device)
        registry = _registry()
        import jax

        self._jax = jax
        self.name, self.num_envs, self.chunk_exec = name, num_envs, chunk_exec
        platform = "gpu" if self.device.type == "cuda" else "cpu"
        try:
            self._jax_device = jax.devices(platform)[self.device.index or 0]
        except RuntimeError:  # no JAX GPU backend: simulate on the CPU, copy to the device
            self._jax_device = jax.devices("cpu")[0]
        if bridge not in ("auto", "copy", "dlpack"):
            raise UserError(f"Unknown bridge {bridge!r}; choose auto, copy or dlpack.")
        if bridge == "auto":  # the faster route, measured (docs/playground.md)
            bridge = "dlpack" if self._jax_device.platform == "gpu" else "copy"
        self.bridge = bridge
        config = registry.get_default_config(name)
        length = episode_length or options.get("episode_length") or config.episode_length
        self.episode_length = check_episode_length(length)
        cache_key = (name, impl, chunk_exec, self.episode_length)
        if cache_key not in _BATCHES:
            self.env = registry.load(name, config_overrides={"impl": impl})
            step = jax.jit(self._step)
            _BATCHES[cache_key] = (self.env, jax.jit(self._reset_ended), step)
        self.env, self._reset_batch, self._step_batch = _BATCHES[cache_key]
        # (not env.observation_size: it traces a reset at every call)
        self.obs_dim = int(self._state_shapes().obs.shape[-1])
        self.step_action_dim = int(self.env.action_size)
        self.action_dim = self.step_action_dim * chunk_exec
        # Playground's DMC tasks take actions in [-1, 1] (their actuators' control ranges).
        self.action_low = -torch.ones(self.action_dim)
        self.action_high = torch.ones(self.action_dim)
        self._carry: Any = None

    # ------------------------------------------------------------------------- the bridge

    def _to_jax(self, tensor: Tensor) -> Any:
        on_jax_device = tensor.is_cuda == (self._jax_device.platform == "gpu")
        if self.bridge == "dlpack" and on_jax_device:
            return self._jax.dlpack.from_dlpack(tensor.detach().contiguous())
        return self._jax.device_put(tensor.detach().to("cpu").numpy(), self._jax_device)

    def _to_torch(self, array: Any, dtype: torch.dtype = torch.float32) -> Tensor:
        if self.bridge == "dlpack":
            return torch.from_dlpack(array).to(self.device, dtype)
        return torch.from_numpy(np.array(array)).to(self.device, dtype)

    # ------------------------------------------------------------------------- JAX side

    def _select(self, mask: Any, new: Any, old: Any) -> Any:
        """Per env: ``new`` where mask (N,), else ``old``, over whole state pytrees."""
        jnp = self._jax.numpy

        def pick(a: Any, b: Any) -> Any:
            return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)

        return self._jax.tree.map(pick, new, old)

    def _reset_ended(self, carry: tuple, ended: Any) -> tuple:
        """Start a fresh episode in every env where ``ended`` (N,), with keys split from the
        carried one. Jitted once per batch and used for the first reset too, so the reset is
        compiled once and the step program does not contain it (it costs as much to compile
        as the step)."""
        jax = self._jax
        state, steps, key = carry
        key, reset_key = jax.random.split(key)
        fresh = jax.vmap(self.env.reset)(jax.random.split(reset_key, ended.shape[0]))
        state = self._select(ended, fresh, state)
        return state, jax.numpy.where(ended, 0, steps), key

    def _step(self, carry: tuple, actions: Any) -> tuple[tuple, tuple]:
        """One vector step: the chunk's actions in turn (no reset). Jitted."""
        jax, jnp = self._jax, self._jax.numpy
        state, steps, key = carry
        n = actions.shape[0]
        actions = actions.reshape(n, self.chunk_exec, self.step_action_dim)
        reward = jnp.zeros(n)
        ended = terminated = truncated = jnp.zeros(n, dtype=bool)
        for j in range(self.chunk_exec):
            new = jax.vmap(self.env.step)(state, actions[:, j])
            active = ~ended
            state = self._select(active, new, state)
            reward = reward + jnp.where(active, new.reward, 0.0)
            steps = steps + active.astype(steps.dtype)
            term = active & (new.done > 0)
            trunc = active & ~term & (steps >= self.episode_length)
            terminated, truncated = terminated | term, truncated | trunc
            ended = ended | term | trunc
        return (state, steps, key), (reward, terminated, truncated, ended, state.obs)

    # ------------------------------------------------------------------------- TensorVectorEnv

    def reset(self, seed: int) -> Tensor:
        """Every env's first episode, from keys split off ``PRNGKey(seed)``."""
        jax = self._jax
        n = self.num_envs
        # A zero batch of the state's structure to reset into (the structure is traced once
        # per task: tracing a reset costs seconds for the larger models).
        zeros = jax.tree.map(lambda s: np.zeros((n, *s.shape), s.dtype), self._state_shapes())
        key = jax.random.PRNGKey(seed)
        # Committed to the device like the step's outputs, so that later resets find the
        # same compiled program.
        carry, every = jax.device_put(
            ((zeros, np.zeros(n, dtype=np.int32), key), np.ones(n, dtype=bool)),
            self._jax_device,
        )
        self._carry = self._reset_batch(carry, every)
        return self._to_torch(self._carry[0].obs)

    def _state_shapes(self) -> Any:
        """One env's state as shapes and dtypes, traced from its reset once per task."""
        key = ("shapes", self.name)
        if key not in _BATCHES:
            _BATCHES[key] = self._jax.eval_shape(self.env.reset, self._jax.random.PRNGKey(0))
        return _BATCHES[key]

    def step(self, actions: Tensor) -> EnvStep:
        if self._carry is None:
            raise RuntimeError("call reset(seed) before step()")
        self._carry, (reward, terminated, truncated, ended, final_obs) = self._step_batch(
            self._carry, self._to_jax(actions.float())
        )
        if bool(ended.any()):
            self._carry = self._reset_batch(self._carry, ended)
        return EnvStep(
            obs=self._to_torch(self._carry[0].obs),
            reward=self._to_torch(reward),
            terminated=self._to_torch(terminated, torch.bool),
            truncated=self._to_torch(truncated, torch.bool),
            final_obs=self._to_torch(final_obs),
        )

    def sim_state(self, index: int = 0) -> Any:
        """Env ``index``'s current Playground ``State`` (JAX arrays), what ``self.env.render``
        draws (`flowpolicy video`). After a step that ended its episode it is already the next
        episode's first state."""
        if self._carry is None:
            raise RuntimeError("call reset(seed) before sim_state()")
        return self._jax.tree.map(lambda leaf: leaf[index], self._carry[0])

    def state(self) -> dict[str, Any]:
        """The whole batch (simulator states, step counters, reset key) as numpy arrays."""
        leaves = self._jax.tree_util.tree_leaves(self._carry)
        return {"playground": self.name, "leaves": [np.asarray(leaf) for leaf in leaves]}

    def load_state(self, state: Any) -> None:
        if state is None:
            return
        if not isinstance(state, dict) or state.get("playground") != self.name:
            raise ValueError(f"the env state is not one of playground/{self.name}")
        treedef = self._jax.tree_util.tree_structure(self._carry)
        leaves = [self._jax.device_put(leaf, self._jax_device) for leaf in state["leaves"]]
        self._carry = self._jax.tree_util.tree_unflatten(treedef, leaves)

    def close(self) -> None:
        self._carry = None


if __name__ == "__main__":
    print("\n".join(PREFIX + name for name in dmc_names()))
