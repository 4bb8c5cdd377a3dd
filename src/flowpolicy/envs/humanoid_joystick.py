"""A joystick task for the DeepMind Control humanoid: ``--env playground/HumanoidJoystick``.

The humanoid of MuJoCo Playground's DMC suite (21 motors, 27 degrees of freedom; its model ships
with the package, so it works offline) is asked to follow a velocity command
``c = (vx, vy, wz)``: forward and lateral speed of the torso in its own frame (m/s) and yaw rate
(rad/s). Each episode starts standing, with a command drawn uniformly from the configured ranges,
or with probability ``zero_prob`` the zero command (stand still); a new one is drawn every
``resample_steps`` control steps. The policy sees proprioception and the command only.

Reward per control step (dt = ``ctrl_dt`` = 0.025 s; scaled by dt as in Playground's and Isaac
Lab's joystick tasks, so a return is "reward per second" times seconds)::

    r = dt * sum_i w_i * r_i
    tracking_lin_vel   exp(-|c_xy - v_xy|^2 / sigma)          v: torso-frame linear velocity
    tracking_yaw_rate  exp(-(c_wz - w_z)^2 / sigma)           w: torso-frame angular velocity
    upright            u_z                                    torso z axis . world z, in [-1, 1]
    action_rate        sum_j (a_t,j - a_t-1,j)^2              a: actions in [-1, 1], (21,)
    torques            sum_j clip(a_t,j, -1, 1)^2             motor torque / gear, squared
    feet_slip          sum_f |p'_f,xy|^2 [z_f < contact_height]   foot speed while on the floor
    alive              1

with weights ``w`` in ``reward_config.scales`` (negative for the regularisers) and
``sigma = reward_config.tracking_sigma``. ``state.metrics`` holds every ``reward/<name>``
(``w_i * r_i``, before the dt scaling) and ``tracking/lin_vel_error`` (|c_xy - v_xy|, m/s),
``tracking/yaw_rate_error`` (|c_wz - w_z|, rad/s).

An episode terminates when the torso falls below ``min_torso_height`` (0.8 m; 1.28 m standing)
or the simulation goes NaN; flowpolicy truncates it at ``episode_length`` (1000 steps, 25 s).

Observation (88,), in this order: joint angles (21), joint velocities (21), torso height (1),
gravity in the torso frame (3), torso-frame linear velocity (3), torso-frame angular velocity
(3), hands and feet relative to the torso in its frame (4 x 3), last action (21), command (3).
No global x, y or heading. No privileged observations (asymmetric critic) are offered.

Command ranges are set by registering a named variant, :func:`register`, see
docs/humanoid_joystick.md. Shapes: Da = 21 actions, Do = 88 observation entries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jp
import mujoco
import numpy as np
from ml_collections import config_dict
from mujoco import mjx
from mujoco_playground._src import mjx_env
from mujoco_playground._src.dm_control_suite import humanoid

from flowpolicy.errors import UserError

NAME = "HumanoidJoystick"
COMMAND_RANGES = ("lin_vel_x", "lin_vel_y", "yaw_rate")
OBS_LAYOUT = (
    ("joint_angles", 21),
    ("joint_velocities", 21),
    ("torso_height", 1),
    ("gravity", 3),
    ("lin_vel", 3),
    ("ang_vel", 3),
    ("extremities", 12),
    ("last_action", 21),
    ("command", 3),
)
"""The observation's parts in order, with their sizes (88 in all)."""
_REGISTERED: set[str] = set()


def obs_slices() -> dict[str, slice]:
    """Where each part of :data:`OBS_LAYOUT` sits in the observation vector."""
    out, start = {}, 0
    for name, size in OBS_LAYOUT:
        out[name] = slice(start, start + size)
        start += size
    return out


def default_config() -> config_dict.ConfigDict:
    """The task's configuration (Playground's style: a ConfigDict, overridable by flat keys)."""
    return config_dict.create(
        ctrl_dt=0.025,
        sim_dt=0.005,
        episode_length=1000,
        action_repeat=1,
        vision=False,
        # Playground's humanoid defaults to warp; flowpolicy's default (and the CPU's) is jax.
        impl="jax",
        naconmax=200_000,
        njmax=250,
        min_torso_height=0.8,  # m; standing is 1.28, fallen (lying) 0.1-0.3
        reset_noise_scale=0.05,  # rad, uniform noise on the joint angles at reset
        command_config=config_dict.create(
            lin_vel_x=[-0.5, 1.0],  # m/s, torso frame; [low, high], low == high fixes it
            lin_vel_y=[-0.3, 0.3],  # m/s
            yaw_rate=[-0.5, 0.5],  # rad/s
            zero_prob=0.1,  # probability that a drawn command is (0, 0, 0): stand still
            resample_steps=250,  # control steps between draws (6.25 s); 0: never redraw
        ),
        reward_config=config_dict.create(
            scales=config_dict.create(
                tracking_lin_vel=1.0,
                tracking_yaw_rate=0.5,
                upright=0.2,
                action_rate=-0.01,
                torques=-0.01,
                feet_slip=-0.1,
                alive=0.5,
            ),
            tracking_sigma=0.25,  # (m/s)^2 and (rad/s)^2: error 0.5 -> exp(-1)
            foot_contact_height=0.05,  # m, foot body origin; 0.027 when the sole is flat
        ),
    )


def check_command_config(command: config_dict.ConfigDict) -> None:
    """UserError unless every range is two finite numbers with low <= high, ``zero_prob`` is
    in [0, 1] and ``resample_steps`` >= 0."""
    how = (
        "Set the ranges by registering a variant of the task under its own name, e.g. "
        "`from flowpolicy.envs.humanoid_joystick import register; register('MyJoystick', "
        "lin_vel_x=(0.0, 1.0))`, then use --env playground/MyJoystick "
        "(docs/humanoid_joystick.md)."
    )
    for key in COMMAND_RANGES:
        value = command[key]
        ok = isinstance(value, Sequence) and len(value) == 2
        ok = ok and all(isinstance(v, int | float) and math.isfinite(v) for v in value)
        if not ok or value[0] > value[1]:
            raise UserError(
                f"The humanoid joystick's command range {key} = {list(value)!r} is empty or "
                "inverted: a range is [low, high], two finite numbers with low <= high "
                "(low == high fixes that part of the command, e.g. lin_vel_y=(0, 0) for no "
                f"sideways walking). {how}"
            )
    if not 0.0 <= command.zero_prob <= 1.0:
        raise UserError(f"zero_prob must be a probability in [0, 1], got {command.zero_prob}.")
    if not isinstance(command.resample_steps, int) or command.resample_steps < 0:
        raise UserError(
            f"resample_steps must be an integer >= 0 (0: never redraw the command), got "
            f"{command.resample_steps!r}."
        )


def reward_terms(
    command: jax.Array,
    lin_vel: jax.Array,
    ang_vel: jax.Array,
    up_z: jax.Array,
    action: jax.Array,
    last_action: jax.Array,
    feet_vel_xy: jax.Array,
    feet_height: jax.Array,
    *,
    sigma: float,
    contact_height: float,
) -> dict[str, jax.Array]:
    """The unweighted terms r_i of the module docstring, each a scalar.

    Args:
        command: (3,) vx, vy, wz. lin_vel, ang_vel: (3,) torso-frame velocities. up_z: ().
        action, last_action: (Da,). feet_vel_xy: (2, 2) horizontal foot velocities.
        feet_height: (2,) foot body heights. sigma, contact_height: see default_config.
    """
    lin_err2 = jp.sum(jp.square(command[:2] - lin_vel[:2]))
    yaw_err2 = jp.square(command[2] - ang_vel[2])
    on_floor = feet_height < contact_height
    return {
        "tracking_lin_vel": jp.exp(-lin_err2 / sigma),
        "tracking_yaw_rate": jp.exp(-yaw_err2 / sigma),
        "upright": up_z,
        "action_rate": jp.sum(jp.square(action - last_action)),
        # The motors clamp their controls to [-1, 1] (ctrllimited), so that is the torque.
        "torques": jp.sum(jp.square(jp.clip(action, -1.0, 1.0))),
        "feet_slip": jp.sum(jp.sum(jp.square(feet_vel_xy), axis=-1) * on_floor),
        "alive": jp.ones(()),
    }


class HumanoidJoystick(humanoid.Humanoid):
    """Velocity tracking on the DMC humanoid (see the module docstring)."""

    def __init__(
        self,
        config: config_dict.ConfigDict | None = None,
        config_overrides: dict[str, Any] | None = None,
    ) -> None:
        # move_speed only picks Humanoid's own reward, which this task replaces.
        super().__init__(
            move_speed=0.0,
            config=config if config is not None else default_config(),
            config_overrides=config_overrides,
        )

    def _post_init(self) -> None:
        check_command_config(self._config.command_config)
        super()._post_init()
        model = self.mj_model
        self._feet_ids = np.array([model.body(f"{s}_foot").id for s in ("left", "right")])
        self._joint_low, self._joint_high = (jp.asarray(r) for r in model.jnt_range[1:].T)
        # Stand on the floor: raise or lower the model's default pose (torso at 1.5 m, feet in
        # the air) so that the lowest point of the feet is 1 mm above it.
        data = mujoco.MjData(model)
        mujoco.mj_forward(model, data)
        feet_geoms = np.isin(model.geom_bodyid, self._feet_ids)
        lowest = np.min(data.geom_xpos[feet_geoms, 2] - model.geom_size[feet_geoms, 0])
        qpos = model.qpos0.copy()
        qpos[2] += 0.001 - lowest
        self._init_qpos = jp.asarray(qpos)
        cmd = self._config.command_config
        self._cmd_low = jp.array([cmd[k][0] for k in COMMAND_RANGES], dtype=float)
        self._cmd_high = jp.array([cmd[k][1] for k in COMMAND_RANGES], dtype=float)
        self._scales = dict(self._config.reward_config.scales)

    def sample_command(self, rng: jax.Array) -> jax.Array:
        """One command (3,): uniform in the ranges, or zero with probability ``zero_prob``."""
        uniform_key, zero_key = jax.random.split(rng)
        command = jax.random.uniform(uniform_key, (3,), minval=self._cmd_low, maxval=self._cmd_high)
        stand = jax.random.bernoulli(zero_key, self._config.command_config.zero_prob)
        return jp.where(stand, 0.0, command)

    def reset(self, rng: jax.Array) -> mjx_env.State:
        rng, noise_key, command_key = jax.random.split(rng, 3)
        scale = self._config.reset_noise_scale
        joints = self._init_qpos[7:] + jax.random.uniform(
            noise_key, self._init_qpos[7:].shape, minval=-scale, maxval=scale
        )
        # Within the joint limits: some are 2 degrees from the default pose (knees).
        qpos = self._init_qpos.at[7:].set(jp.clip(joints, self._joint_low, self._joint_high))
        data = mjx_env.make_data(
            self.mj_model,
            qpos=qpos,
            qvel=jp.zeros(self.mj_model.nv),
            impl=self.mjx_model.impl.value,
            naconmax=self._config.naconmax,
            njmax=self._config.njmax,
        )
        data = mjx.forward(self.mjx_model, data)
        info = {
            "rng": rng,
            "command": self.sample_command(command_key),
            "command_steps": jp.zeros((), jp.int32),  # control steps since the last draw
            "fixed_command": jp.zeros((), bool),  # never redraw (set by the evaluation)
            "last_act": jp.zeros(self.mj_model.nu),
        }
        metrics = {f"reward/{k}": jp.zeros(()) for k in self._scales}
        metrics |= {"tracking/lin_vel_error": jp.zeros(()), "tracking/yaw_rate_error": jp.zeros(())}
        zero = jp.zeros(())
        return mjx_env.State(data, self._get_obs(data, info), zero, zero, metrics, info)

    def step(self, state: mjx_env.State, action: jax.Array) -> mjx_env.State:
        data = mjx_env.step(self.mjx_model, state.data, action, self.n_substeps)
        info = dict(state.info)
        lin_vel, ang_vel = self._local_velocities(data)
        rewards = self._config.reward_config
        feet_now, feet_before = data.xpos[self._feet_ids], state.data.xpos[self._feet_ids]
        terms = reward_terms(
            info["command"],
            lin_vel,
            ang_vel,
            self._torso_upright(data),
            action,
            info["last_act"],
            # The mean foot velocity over the control step, from its two ends.
            (feet_now[:, :2] - feet_before[:, :2]) / self.dt,
            feet_now[:, 2],
            sigma=rewards.tracking_sigma,
            contact_height=rewards.foot_contact_height,
        )
        weighted = {k: self._scales[k] * v for k, v in terms.items()}
        reward = self.dt * sum(weighted.values())
        metrics = {f"reward/{k}": v for k, v in weighted.items()}
        metrics["tracking/lin_vel_error"] = jp.linalg.norm(info["command"][:2] - lin_vel[:2])
        metrics["tracking/yaw_rate_error"] = jp.abs(info["command"][2] - ang_vel[2])

        nan = jp.isnan(data.qpos).any() | jp.isnan(data.qvel).any()
        done = nan | (data.qpos[2] < self._config.min_torso_height)

        # Draw the next command before observing, so the observation shows the command that
        # the next reward is computed against.
        info["rng"], key = jax.random.split(info["rng"])
        steps = info["command_steps"] + 1
        period = self._config.command_config.resample_steps
        redraw = (steps >= period) & ~info["fixed_command"] if period > 0 else jp.zeros((), bool)
        info["command"] = jp.where(redraw, self.sample_command(key), info["command"])
        info["command_steps"] = jp.where(redraw, 0, steps)
        info["last_act"] = action
        return mjx_env.State(
            data,
            self._get_obs(data, info),
            jp.where(jp.isfinite(reward), reward, 0.0),  # a NaN must not reach the returns
            done.astype(float),
            metrics,
            info,
        )

    def _local_velocities(self, data: mjx.Data) -> tuple[jax.Array, jax.Array]:
        """Torso-frame linear (velocimeter) and angular (gyro) velocity, (3,) each."""
        lin_vel = mjx_env.get_sensor_data(self.mj_model, data, "torso_vel")
        ang_vel = mjx_env.get_sensor_data(self.mj_model, data, "torso_gyro")
        return lin_vel, ang_vel

    def _get_obs(self, data: mjx.Data, info: dict[str, Any]) -> jax.Array:
        lin_vel, ang_vel = self._local_velocities(data)
        # World gravity (0, 0, -1) in the torso frame: R^T g = -(row z of R).
        gravity = -data.xmat[self._torso_body_id, 2]
        obs = jp.concatenate(
            [
                data.qpos[7:],
                data.qvel[6:],
                data.qpos[2:3],
                gravity,
                lin_vel,
                ang_vel,
                self._extremities(data).ravel(),
                info["last_act"],
                info["command"],
            ]
        )
        # A simulation that went NaN ends its episode; its last observation must stay finite.
        return jp.nan_to_num(obs)


def _variant_config(command: dict[str, Any]) -> config_dict.ConfigDict:
    config = default_config()
    try:
        config.command_config.update(command)
    except TypeError as error:  # ConfigDict keeps each field's type: 2.5 steps, "a" as p
        raise UserError(
            f"Bad humanoid joystick command setting ({error}): lin_vel_x, lin_vel_y and "
            "yaw_rate take (low, high) pairs of numbers, zero_prob a number in [0, 1] and "
            "resample_steps an integer >= 0."
        ) from None
    return config


def register(
    name: str = NAME,
    *,
    lin_vel_x: tuple[float, float] | None = None,
    lin_vel_y: tuple[float, float] | None = None,
    yaw_rate: tuple[float, float] | None = None,
    zero_prob: float | None = None,
    resample_steps: int | None = None,
) -> None:
    """Register the task into Playground's DMC registry as ``playground/<name>``; calling it
    again is harmless.

    ``register()`` registers the default task, ``HumanoidJoystick``, which always has the
    default ranges. A variant with other command ranges (``[low, high]`` each) gets its own
    name, so that its env id says which task it is: ``register("HumanoidForward",
    lin_vel_x=(0.0, 1.0), lin_vel_y=(0.0, 0.0))``, then ``--env playground/HumanoidForward`` in
    the same process. Register a variant before its first env is made: a process compiles each
    name once. Bad ranges raise a UserError.
    """
    from mujoco_playground._src import dm_control_suite

    given = dict(
        lin_vel_x=lin_vel_x,
        lin_vel_y=lin_vel_y,
        yaw_rate=yaw_rate,
        zero_prob=zero_prob,
        resample_steps=resample_steps,
    )
    command = {k: list(v) if isinstance(v, tuple) else v for k, v in given.items() if v is not None}
    if name == NAME and command:
        raise UserError(
            f"playground/{NAME} is the task with the default command ranges; register a variant "
            f"with other ranges under its own name, e.g. register('MyJoystick', ...), and use "
            "--env playground/MyJoystick."
        )
    if name in dm_control_suite.ALL_ENVS and name not in _REGISTERED:
        raise UserError(f"{name!r} is one of Playground's own tasks; choose another name.")
    check_command_config(_variant_config(command).command_config)
    config_fn = default_config if not command else partial(_variant_config, command)
    dm_control_suite.register_environment(name, HumanoidJoystick, config_fn)
    _REGISTERED.add(name)
