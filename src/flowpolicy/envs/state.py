"""Snapshot and restore the state of a vector env, so a killed run resumes bit-identically.

`get_vector_env_state` returns a small picklable dict (numpy arrays, python scalars, bytes,
dicts, lists); `set_vector_env_state` writes it into a freshly made vector env of the same spec
and seed. Stepping both with the same actions then gives identical observations, rewards, flags
and infos, across episode ends and autoresets.

What is saved, per sub-env:

- every wrapper layer (TimeLimit, OrderEnforcing, PassiveEnvChecker, ActionChunk, ...): the
  plain values of its `__dict__` (numbers, bools, strings, numpy arrays, and lists, tuples and
  dicts of them), the states of its numpy RNGs and of its spaces' RNGs;
- the unwrapped env, the same way, plus:
  - MuJoCo envs (anything with a `mujoco.MjModel` `model` and `mujoco.MjData` `data`, e.g.
    Gymnasium's `MujocoEnv`): `mj_getState(mjSTATE_INTEGRATION)` and the fixed-size arrays of
    `mjData`'s main buffer. The latter matter: after `mj_step` the kinematics (`xpos`, ...)
    belong to the state *before* the last substep, and envs such as Ant-v5 read them before
    stepping, so recomputing them with `mj_forward` would change the first reward;
  - `DMCEnv`: the same for its dm_control physics, plus the dm_control `Environment`'s and
    task's attributes (`_step_count`, `_reset_next_step`, the task's `RandomState`);
  - other envs whose `__dict__` pickles and that are not `EzPickle` (for which pickling only
    records constructor arguments): the pickled `__dict__` (the toy tasks);
- the vector env itself: its plain attributes (SAME_STEP buffers) and its spaces' RNGs.

An env of any other kind cannot be restored: `get_vector_env_state` then warns (once per env
type) and returns None, and `set_vector_env_state(envs, None)` leaves the freshly reset envs as
they are, so a resumed run restarts its episodes.
"""

from __future__ import annotations

import copy
import pickle
import warnings
from typing import Any

import gymnasium
import numpy as np
from gymnasium.utils import EzPickle

from flowpolicy.envs.dmc import DMCEnv

_VERSION = 1
# Live structure, not state: sub-envs, factories, physics handles.
_SKIP_ATTRS = frozenset({"env", "envs", "env_fns", "model", "data", "_env"})
# mjData's main-buffer arrays (MuJoCo 3.17's MJDATA_POINTERS, plus `qM` of older versions),
# less `plugin`/`plugin_data` (process-specific pointers). After `mj_step` the derived ones
# describe the state before the last substep; envs may read them before the next step.
_MJ_BUFFER_NAMES = """
    qpos qvel act history qacc_warmstart plugin_state ctrl qfrc_applied xfrc_applied eq_active
    mocap_pos mocap_quat qacc act_dot userdata sensordata tree_asleep xpos xquat xmat xipos
    ximat xanchor xaxis geom_xpos geom_xmat site_xpos site_xmat cam_xpos cam_xmat light_xpos
    light_xdir subtree_com cdof cinert flexvert_xpos flexelem_aabb flexelem_krot
    flex_hessian_valid flexvert_hessian flexedge_hessian flexedge_J flexedge_length flexvert_J
    flexvert_length bvh_aabb_dyn flexvert_lambda flexvert_conage ten_wrapadr ten_wrapnum ten_J
    ten_length wrap_obj wrap_xpos actuator_length moment_rownnz moment_rowadr moment_colind
    actuator_moment crb M qM qLD qLDiagInv bvh_active tree_awake body_awake body_awake_ind
    parent_awake_ind dof_awake_ind flexedge_velocity ten_velocity actuator_velocity cvel
    cdof_dot qfrc_bias qfrc_spring qfrc_damper qfrc_gravcomp qfrc_fluid qfrc_adhesion
    qfrc_passive subtree_linvel subtree_angmom qH qHDiagInv qDeriv qLU actuator_force
    qfrc_actuator qfrc_smooth qacc_smooth qfrc_constraint qfrc_inverse cacc cfrc_int cfrc_ext
"""
_MJ_BUFFER_ARRAYS = tuple(_MJ_BUFFER_NAMES.split())
_warned_types: set[str] = set()


def get_vector_env_state(envs: gymnasium.vector.SyncVectorEnv) -> dict[str, Any] | None:
    """Snapshot the state of every sub-env, its wrappers and the vector env.

    Args:
        envs: A `SyncVectorEnv`, e.g. from `make_vector_env`.

    Returns:
        A small picklable dict, or None (with a warning, once per env type) when a sub-env is of
        a kind this module cannot restore; see the module docstring.
    """
    sub_states = []
    for env in envs.envs:
        sub_state = get_env_state(env)
        if sub_state is None:
            return None
        sub_states.append(sub_state)
    return {"version": _VERSION, "vector": _capture_attrs(envs), "envs": sub_states}


def set_vector_env_state(
    envs: gymnasium.vector.SyncVectorEnv, state: dict[str, Any] | None
) -> None:
    """Restore a snapshot from `get_vector_env_state` into a fresh vector env.

    Args:
        envs: A vector env made like the snapshotted one (same spec, `num_envs` and seed) and
            already `reset(seed=seed)`.
        state: The snapshot; None leaves `envs` as they are (episodes restart).

    Raises:
        ValueError: If the snapshot was taken from a different kind or number of envs.
    """
    if state is None:
        return
    if state.get("async"):
        raise ValueError(
            "The env state was saved from an async vector env: resume with --vector-env async."
        )
    if state.get("version") != _VERSION:
        raise ValueError(f"Unsupported env state version {state.get('version')!r}.")
    if len(state["envs"]) != len(envs.envs):
        raise ValueError(
            f"The env state holds {len(state['envs'])} sub-envs but the vector env has "
            f"{len(envs.envs)}: resume with the same num_envs."
        )
    for env, sub_state in zip(envs.envs, state["envs"], strict=True):
        set_env_state(env, sub_state)
    _restore_attrs(envs, state["vector"])


# --- one sub-env ----------------------------------------------------------------------------


def _layers(env: gymnasium.Env) -> list[gymnasium.Env]:
    """The wrapper chain from the outermost layer down to the unwrapped env (inclusive)."""
    layers = [env]
    while isinstance(layers[-1], gymnasium.Wrapper):
        layers.append(layers[-1].env)
    return layers


def get_env_state(env: gymnasium.Env) -> dict[str, Any] | None:
    """The snapshot of one env (its wrappers and core), or None if it cannot be restored."""
    *wrappers, core = _layers(env)
    core_state = _get_core_state(core)
    if core_state is None:
        return None
    return {
        "types": [type(layer).__qualname__ for layer in (*wrappers, core)],
        "wrappers": [_capture_attrs(layer) for layer in wrappers],
        "core": core_state,
    }


def set_env_state(env: gymnasium.Env, state: dict[str, Any]) -> None:
    """Restore :func:`get_env_state`'s snapshot into an env made the same way."""
    layers = _layers(env)
    types = [type(layer).__qualname__ for layer in layers]
    if types != state["types"]:
        raise ValueError(
            f"The env state was saved from wrapper chain {state['types']} but this env is "
            f"{types}: resume with the same environment and chunk_exec."
        )
    *wrappers, core = layers
    for layer, layer_state in zip(wrappers, state["wrappers"], strict=True):
        _restore_attrs(layer, layer_state)
    _set_core_state(core, state["core"])


def _is_mujoco_env(env: gymnasium.Env) -> bool:
    model, data = getattr(env, "model", None), getattr(env, "data", None)
    if model is None or data is None:
        return False
    import mujoco

    return isinstance(model, mujoco.MjModel) and isinstance(data, mujoco.MjData)


def _get_core_state(env: gymnasium.Env) -> dict[str, Any] | None:
    """State of an unwrapped env, or None (after a warning) if it cannot be captured."""
    if isinstance(env, DMCEnv):
        control_env = env._env
        physics = control_env.physics
        return {
            "kind": "dmc",
            "attrs": _capture_attrs(env),
            "control": _capture_attrs(control_env),
            "task": _capture_attrs(control_env.task),
            "physics": _capture_attrs(physics),
            "mujoco": _get_mujoco_state(physics.model.ptr, physics.data.ptr),
        }
    if _is_mujoco_env(env):
        return {
            "kind": "mujoco",
            "attrs": _capture_attrs(env),
            "mujoco": _get_mujoco_state(env.model, env.data),
        }
    pickled = None if isinstance(env, EzPickle) else _pickle_round_trip(env)
    if pickled is None:
        _warn_once(env)
        return None
    return {"kind": "pickle", "attrs": _capture_attrs(env), "pickled": pickled}


def _set_core_state(env: gymnasium.Env, state: dict[str, Any]) -> None:
    kind = state["kind"]
    if kind == "dmc":
        control_env = env._env
        physics = control_env.physics
        _restore_attrs(env, state["attrs"])
        _restore_attrs(control_env, state["control"])
        _restore_attrs(control_env.task, state["task"])
        _restore_attrs(physics, state["physics"])
        _set_mujoco_state(physics.model.ptr, physics.data.ptr, state["mujoco"])
    elif kind == "mujoco":
        _restore_attrs(env, state["attrs"])
        _set_mujoco_state(env.model, env.data, state["mujoco"])
    elif kind == "pickle":
        # Spaces stay out of the pickle (they are shared with wrappers and the vector env), so
        # the restored __dict__ keeps the fresh env's space objects; their RNGs come from attrs.
        vars(env).update(pickle.loads(state["pickled"]))
        _restore_attrs(env, state["attrs"])
    else:
        raise ValueError(f"Unknown env state kind {kind!r}.")


def _pickle_round_trip(env: gymnasium.Env) -> bytes | None:
    """The env's `__dict__` (spaces left out) pickled, or None if it does not round-trip."""
    contents = {
        name: value
        for name, value in vars(env).items()
        if not isinstance(value, gymnasium.spaces.Space)
    }
    try:
        blob = pickle.dumps(contents)
        pickle.loads(blob)
    except Exception:
        return None
    return blob


def _warn_once(env: gymnasium.Env) -> None:
    name = f"{type(env).__module__}.{type(env).__qualname__}"
    if name in _warned_types:
        return
    _warned_types.add(name)
    warnings.warn(
        f"Cannot save the state of environment {name} (not a MuJoCo or DMC env, and its "
        f"pickle does not round-trip or only records constructor arguments): a resumed run "
        f"will restart its episodes, so it is not bit-identical to an uninterrupted one.",
        stacklevel=5,
    )


# --- MuJoCo physics -------------------------------------------------------------------------


def _buffer_arrays(data: Any) -> dict[str, np.ndarray]:
    """The non-empty arrays of `data` that live in mjData's main (fixed-size) buffer.

    Only names from `_MJ_BUFFER_ARRAYS` are touched, and only where the array really lies in
    the buffer (from `qpos`, the first of them, for `nbuffer` bytes): arena arrays (contacts,
    constraint rows) may hold stale or uninitialised pointers, so they are never read or
    written; `mj_forward` recomputes them.
    """
    if data.qpos.size == 0:
        return {}
    start = data.qpos.__array_interface__["data"][0]
    end = start + data.nbuffer
    arrays = {}
    for name in _MJ_BUFFER_ARRAYS:
        value = getattr(data, name, None)
        if not isinstance(value, np.ndarray) or value.size == 0:
            continue
        address = value.__array_interface__["data"][0]
        if start <= address and address + value.nbytes <= end:
            arrays[name] = value
    return arrays


def _get_mujoco_state(model: Any, data: Any) -> dict[str, Any]:
    import mujoco

    signature = mujoco.mjtState.mjSTATE_INTEGRATION
    integration = np.empty(mujoco.mj_stateSize(model, signature), dtype=np.float64)
    mujoco.mj_getState(model, data, integration, signature)
    buffer = {name: value.copy() for name, value in _buffer_arrays(data).items()}
    return {"integration": integration, "buffer": buffer}


def _set_mujoco_state(model: Any, data: Any, state: dict[str, Any]) -> None:
    import mujoco

    signature = mujoco.mjtState.mjSTATE_INTEGRATION
    integration = np.asarray(state["integration"], dtype=np.float64)
    if integration.shape != (mujoco.mj_stateSize(model, signature),):
        raise ValueError(
            "The saved MuJoCo state does not fit this model: resume with the same environment."
        )
    mujoco.mj_setState(model, data, integration, signature)
    _write_buffer(data, state["buffer"])
    # Recompute the arena (contacts, constraint rows) that dm_control's split step reuses,
    # then put back the buffer, which holds the original's (possibly stale) derived
    # quantities and the solver warmstart that mj_forward may overwrite.
    mujoco.mj_forward(model, data)
    _write_buffer(data, state["buffer"])


def _write_buffer(data: Any, buffer: dict[str, np.ndarray]) -> None:
    arrays = _buffer_arrays(data)
    for name, value in buffer.items():
        if name not in arrays or arrays[name].shape != value.shape:
            raise ValueError(
                f"The saved MuJoCo array {name!r} does not fit this model: resume with the "
                "same environment."
            )
        np.copyto(arrays[name], value)


# --- generic attributes ---------------------------------------------------------------------


def _is_plain(value: Any, depth: int = 0) -> bool:
    """Whether `value` is plain data that can be saved by value and is small."""
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes, np.generic)):
        return True
    if isinstance(value, np.ndarray):
        return value.dtype != object
    if depth >= 4:
        return False
    if isinstance(value, (list, tuple)):
        return all(_is_plain(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return all(
            isinstance(key, str) and _is_plain(item, depth + 1) for key, item in value.items()
        )
    return False


def _capture_attrs(obj: Any) -> dict[str, Any]:
    """Plain values, numpy RNG states and space RNG states found in `vars(obj)`."""
    plain, generators, random_states, spaces = {}, {}, {}, {}
    for name, value in vars(obj).items():
        if name in _SKIP_ATTRS:
            continue
        if isinstance(value, np.random.Generator):
            generators[name] = copy.deepcopy(value.bit_generator.state)
        elif isinstance(value, np.random.RandomState):
            random_states[name] = value.get_state()
        elif isinstance(value, gymnasium.spaces.Space):
            spaces[name] = _capture_attrs(value)
        elif _is_plain(value):
            plain[name] = copy.deepcopy(value)
    return {
        "plain": plain,
        "generators": generators,
        "random_states": random_states,
        "spaces": spaces,
    }


def _restore_attrs(obj: Any, state: dict[str, Any]) -> None:
    attrs = vars(obj)
    for name, value in state["plain"].items():
        current = attrs.get(name)
        if (
            isinstance(value, np.ndarray)
            and isinstance(current, np.ndarray)
            and current.shape == value.shape
            and current.dtype == value.dtype
            and current.flags.writeable
        ):
            # In place: the array may be a view that something else also holds.
            np.copyto(current, value)
        else:
            attrs[name] = copy.deepcopy(value)
    for name, bit_state in state["generators"].items():
        current = attrs.get(name)
        if not isinstance(current, np.random.Generator) or (
            type(current.bit_generator).__name__ != bit_state["bit_generator"]
        ):
            current = np.random.Generator(getattr(np.random, bit_state["bit_generator"])())
            attrs[name] = current
        current.bit_generator.state = copy.deepcopy(bit_state)
    for name, random_state in state["random_states"].items():
        current = attrs.get(name)
        if not isinstance(current, np.random.RandomState):
            current = attrs[name] = np.random.RandomState()
        current.set_state(random_state)
    for name, space_state in state["spaces"].items():
        space = attrs.get(name)
        if isinstance(space, gymnasium.spaces.Space):
            _restore_attrs(space, space_state)
