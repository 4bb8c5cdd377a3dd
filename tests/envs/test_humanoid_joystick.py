"""playground/HumanoidJoystick: the DMC humanoid following velocity commands.

One batch of 5 envs is compiled for the whole module (about 60 s on the 2-core CPU with an
empty JAX cache, 20 s with a warm one); every test, the evaluation's included, reuses it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("mujoco_playground")

from flowpolicy.errors import UserError  # noqa: E402

N = 5  # = the evaluation's batch with one episode per command type: one compilation for both


@pytest.fixture(scope="module")
def batch():
    from flowpolicy.envs.humanoid_joystick import register
    from flowpolicy.envs.tensor_env import make_tensor_env

    register()
    register()  # idempotent
    env = make_tensor_env("playground/HumanoidJoystick", N, seed=0)
    yield env
    env.close()


def _info(env, key: str) -> np.ndarray:
    return np.asarray(env._carry[0].info[key])


def _set_info(env, **values) -> None:
    """Overwrite per-env entries of the batch's info (as the evaluation does)."""
    state, steps, key = env._carry
    info = dict(state.info)
    for name, value in values.items():
        value = np.asarray(value, dtype=info[name].dtype)
        info[name] = env._jax.device_put(value, env._jax_device)  # committed: no recompile
    env._carry = (state.replace(info=info), steps, key)


def test_observation_is_proprioception_and_the_command(batch) -> None:
    from flowpolicy.envs.humanoid_joystick import OBS_LAYOUT, obs_slices

    obs = batch.reset(seed=0)
    parts = obs_slices()
    assert obs.shape == (N, 88) == (N, sum(size for _, size in OBS_LAYOUT))
    assert batch.action_dim == 21
    assert torch.allclose(obs[:, parts["command"]], torch.tensor(_info(batch, "command")))
    # It starts standing on its feet, upright, still, with no last action.
    assert torch.allclose(obs[:, parts["torso_height"]], torch.tensor(1.285), atol=0.01)
    assert torch.allclose(obs[:, parts["gravity"]], torch.tensor([0.0, 0.0, -1.0]), atol=0.05)
    assert obs[:, parts["lin_vel"]].abs().max() < 1e-3
    assert (obs[:, parts["last_action"]] == 0).all()
    action = torch.full((N, 21), 0.3)
    step = batch.step(action)
    assert torch.allclose(step.obs[:, parts["last_action"]], action)


def test_commands_lie_in_the_ranges_are_sometimes_zero_and_are_redrawn(batch) -> None:
    import jax

    env = batch.env
    keys = jax.random.split(jax.random.PRNGKey(1), 4000)
    commands = np.asarray(jax.jit(jax.vmap(env.sample_command))(keys))
    low, high = np.array([-0.5, -0.3, -0.5]), np.array([1.0, 0.3, 0.5])
    assert ((commands >= low) & (commands <= high)).all()
    zero = (commands == 0).all(axis=1)
    assert 0.08 < zero.mean() < 0.12  # zero_prob 0.1
    assert (commands[~zero].min(axis=0) < low + 0.05).all()
    assert (commands[~zero].max(axis=0) > high - 0.05).all()

    # Every 250 control steps a new command is drawn, unless the command is fixed.
    batch.reset(seed=0)
    odd = np.tile([0.123, 0.0, 0.0], (N, 1))
    _set_info(batch, command=odd, command_steps=[249, 249, 10, 0, 0])
    _set_info(batch, fixed_command=[False, True, False, False, False])
    batch.step(torch.zeros(N, 21))
    command = _info(batch, "command")
    assert not np.allclose(command[0], odd[0])  # redrawn
    assert np.allclose(command[1:], odd[1:])  # fixed, or not yet due
    assert list(_info(batch, "command_steps")[:3]) == [0, 250, 11]


def test_tracking_reward_is_higher_when_the_velocity_matches_the_command(batch) -> None:
    import jax.numpy as jp

    from flowpolicy.envs.humanoid_joystick import reward_terms

    def terms(command, lin_vel, yaw_rate):
        return reward_terms(
            jp.array(command),
            jp.array(lin_vel),
            jp.array([0.0, 0.0, yaw_rate]),
            jp.ones(()),
            jp.zeros(21),
            jp.zeros(21),
            jp.zeros((2, 2)),
            jp.zeros(2),
            sigma=0.25,
            contact_height=0.05,
        )

    match = terms([0.8, 0.2, 0.3], [0.8, 0.2, 0.0], 0.3)
    near = terms([0.8, 0.2, 0.3], [0.6, 0.2, 0.0], 0.2)
    far = terms([0.8, 0.2, 0.3], [-0.4, 0.0, 0.0], -0.5)
    for name in ("tracking_lin_vel", "tracking_yaw_rate"):
        assert float(match[name]) == pytest.approx(1.0)
        assert float(match[name]) > float(near[name]) > float(far[name]) > 0.0
    assert float(near["tracking_lin_vel"]) == pytest.approx(math.exp(-0.04 / 0.25), rel=1e-5)

    # In the simulation: standing still, the zero command earns more than a walking one.
    from flowpolicy.envs.joystick_eval import set_commands

    batch.reset(seed=0)
    commands = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.3, 0.5]]).repeat(3, 1)[:N]
    obs = set_commands(batch, commands)
    assert torch.equal(obs[:, -3:], commands)
    step = batch.step(torch.zeros(N, 21))
    metrics = [batch.sim_state(i).metrics for i in range(N)]
    assert float(metrics[0]["reward/tracking_lin_vel"]) > 0.9
    assert float(metrics[1]["reward/tracking_lin_vel"]) < 0.05
    assert float(metrics[1]["tracking/lin_vel_error"]) > 0.9
    assert float(metrics[1]["tracking/yaw_rate_error"]) > 0.4
    assert step.reward[0] > step.reward[1] + 0.02 and step.reward[2] > step.reward[3] + 0.02


def test_a_fall_terminates_the_episode(batch) -> None:
    from flowpolicy.envs.humanoid_joystick import obs_slices

    height = obs_slices()["torso_height"]
    batch.reset(seed=0)
    fell = torch.zeros(N, dtype=torch.bool)
    for i in range(80):  # with zero actions the humanoid folds up in about 1 s (40 steps)
        step = batch.step(torch.zeros(N, 21))
        if i < 10:
            assert not step.done.any()  # it does not fall at once
        assert not step.truncated.any()
        assert (step.final_obs[step.terminated, height] < 0.8).all()
        assert (step.final_obs[~step.terminated, height] >= 0.8).all()
        # the fallen env starts over, standing
        assert (step.obs[step.terminated, height] > 1.2).all()
        fell |= step.terminated
    assert fell.all()


def test_bad_command_ranges_raise_a_user_error() -> None:
    from flowpolicy.envs.humanoid_joystick import HumanoidJoystick, register

    with pytest.raises(UserError, match=r"lin_vel_x = \[1.0, -0.5\] is empty or inverted"):
        HumanoidJoystick(config_overrides={"command_config.lin_vel_x": [1.0, -0.5]})
    with pytest.raises(UserError, match=r"yaw_rate = \[\] is empty or inverted"):
        register("HumanoidJoystickBad", yaw_rate=())
    with pytest.raises(UserError, match="register a variant"):
        register(lin_vel_x=(0.0, 1.0))
    with pytest.raises(UserError, match="Playground's own tasks"):
        register("HumanoidWalk", lin_vel_x=(0.0, 1.0))
    with pytest.raises(UserError, match="zero_prob"):
        register("HumanoidJoystickBad", zero_prob=1.5)
    # A fixed component (low == high) is a valid range; the variant gets its own id.
    register("HumanoidJoystickForward", lin_vel_x=(0.0, 1.0), lin_vel_y=(0.0, 0.0))
    from mujoco_playground._src import dm_control_suite

    config = dm_control_suite.get_default_config("HumanoidJoystickForward")
    assert list(config.command_config.lin_vel_y) == [0.0, 0.0]
    assert dm_control_suite.get_default_config("HumanoidJoystick").impl == "jax"


def test_evaluate_commands_reports_every_command_type(batch) -> None:
    from flowpolicy.envs.joystick_eval import COMMANDS, evaluate_commands
    from flowpolicy.policies import FlowPolicy

    torch.manual_seed(0)
    policy = FlowPolicy(88, [-1.0] * 21, [1.0] * 21, flow_steps=2, hidden=(8,))
    result = evaluate_commands(policy, 1, seed=0, device="cpu", max_steps=4)
    assert list(result) == list(COMMANDS)
    for row in result.values():
        assert set(row) >= {"vx_error", "yaw_rate_error", "return_mean", "falls_per_episode"}
        assert all(math.isfinite(v) for v in row.values())
        assert row["steps_mean"] == 4 and row["falls_per_episode"] == 0.0

    class Still(torch.nn.Module):
        def act(self, obs: torch.Tensor, mode: str) -> torch.Tensor:
            return torch.zeros(obs.shape[0], 21)

    # Standing still for 4 steps, the error is about the commanded speed (the joints' reset
    # noise makes the torso sway and twist a little: up to 0.1 m/s and 0.4 rad/s).
    result = evaluate_commands(Still(), 1, seed=0, device="cpu", max_steps=4)
    assert result["stand"]["lin_vel_error"] < 0.15
    assert result["forward"]["vx_error"] == pytest.approx(0.8, abs=0.15)
    assert result["backward"]["vx_error"] == pytest.approx(0.4, abs=0.15)
    assert result["lateral"]["vy_error"] == pytest.approx(0.3, abs=0.15)
    assert result["turn"]["yaw_rate_error"] > 0.25
