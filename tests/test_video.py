"""``flowpolicy video``: real videos of Gymnasium MuJoCo, DMC and Playground envs read back
(frame count, size, motion, frame rate), the Python API, and bad input with exit code 2.

Videos are made in a fresh process, as a user runs the command: MuJoCo chooses its OpenGL
backend when first imported, and this test process imported it with MUJOCO_GL=disable
(conftest.py). The subprocess gets no MUJOCO_GL, so the command's own default (egl) is tested.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import gymnasium
import imageio.v3 as iio
import numpy as np
import pytest
import torch

from flowpolicy.cli import load_eval_target, main
from flowpolicy.errors import UserError
from flowpolicy.evaluation import evaluate
from flowpolicy.policies import FlowPolicy, GaussianPolicy
from flowpolicy.policy_io import save_policy
from flowpolicy.video import default_out, gif_timing, record_video

SIZE = ["--width", "160", "--height", "120"]


def video_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    """``flowpolicy video ARGS`` in a fresh process without MUJOCO_GL (unless given)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "DISPLAY")}
    return subprocess.run(
        [sys.executable, "-m", "flowpolicy", "video", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env=environ | env,
    )


def episodes_of(stdout: str) -> list[tuple[float, int]]:
    """(return, steps) of each ``episode i: return R in N steps`` line."""
    found = re.findall(r"episode \d+: return\s+(-?[\d.]+) in (\d+) steps", stdout)
    return [(float(ret), int(steps)) for ret, steps in found]


def read_video(path: Path) -> np.ndarray:
    return iio.imread(path, index=None)  # (T, H, W, 3)


def assert_moves(frames: np.ndarray) -> None:
    """Not one still image: the last frame differs from the first in more pixels than video
    compression would change."""
    changed = np.abs(frames[-1].astype(np.int16) - frames[0]).max(axis=-1) > 40  # (H, W)
    assert changed.sum() > 50


@pytest.fixture(scope="module")
def hopper_run(tmp_path_factory) -> Path:
    """A `flowpolicy train` run of 64 env steps on Hopper-v5 (a few seconds)."""
    run_dir = tmp_path_factory.mktemp("video") / "hopper"
    small = ["--num-envs", "4", "--num-steps", "16", "--num-minibatches", "2"]
    quiet = ["--eval-every", "64", "--eval-episodes", "2", "--tensorboard", "False"]
    args = ["train", "ppo", "--env", "Hopper-v5", "--total-steps", "64", "--run-dir"]
    assert main([*args, str(run_dir), *small, *quiet, "--quiet", "True"]) == 0
    return run_dir


def pushing_policy(obs_dim: int, action_dim: int) -> GaussianPolicy:
    """A policy whose mean action is the upper bound everywhere: a cart visibly slides."""
    policy = GaussianPolicy(obs_dim, [-1.0] * action_dim, [1.0] * action_dim, hidden=(8,))
    with torch.no_grad():
        policy.mean_net[-1].weight.zero_()
        policy.mean_net[-1].bias.fill_(1.0)
    return policy


def policy_file(path: Path, policy: torch.nn.Module, env: str) -> Path:
    torch.manual_seed(0)
    save_policy(path, policy, {"env_id": env, "eval_seed": 3})
    return path


def test_hopper_mp4_of_a_train_run_plays_the_evaluation_episode(hopper_run):
    result = video_cli(str(hopper_run), "--max-steps", "300", *SIZE)
    assert result.returncode == 0, result.stderr
    out = hopper_run / "video.mp4"  # the default place
    assert f"wrote {out}" in result.stdout
    [(ret, steps)] = episodes_of(result.stdout)
    frames = read_video(out)
    assert frames.shape == (steps + 1, 120, 160, 3)  # the first state, then one per step
    assert_moves(frames)
    assert iio.immeta(out)["fps"] == 125  # Hopper's real time: 1 / 0.008 s
    # The same first episode as `flowpolicy eval --episodes 1` (same seed), unless the
    # untrained policy kept the hopper up for the 300 steps (it falls after about 75).
    target = load_eval_target(str(hopper_run), "cpu", None, None)
    if steps < 300:
        expected = evaluate(target.policy, "Hopper-v5", 1, target.seed, target.chunk_exec)[0]
        assert ret == pytest.approx(expected, abs=0.01)


def test_gif_of_a_chunked_policy_file_thins_to_browser_frame_delays(tmp_path):
    # Chunks of 4 actions, 3 executed: the 20-step limit falls inside a chunk.
    policy = FlowPolicy(11, [-1] * 3, [1] * 3, chunk=4, chunk_exec=3, flow_steps=2)
    path = policy_file(tmp_path / "flow.pt", policy, "Hopper-v5")
    out = tmp_path / "clips" / "hopper.gif"  # a folder that does not exist yet
    args = ["--out", str(out), "--episodes", "2", "--max-steps", "20", "--mode", "random"]
    result = video_cli(str(path), *args, *SIZE)
    assert result.returncode == 0, result.stderr
    episodes = episodes_of(result.stdout)
    assert len(episodes) == 2 and all(steps <= 20 for _, steps in episodes)
    frames = read_video(out)
    drawn = sum(steps + 1 for _, steps in episodes)
    assert frames.shape == (math.ceil(drawn / 5), 120, 160, 3)  # every 5th of Hopper's 8 ms
    assert iio.immeta(out)["duration"] == 40
    assert_moves(frames)
    assert not list(out.parent.glob("*.partial*"))


def test_dmc_video_of_a_policy_file(tmp_path):
    path = policy_file(tmp_path / "policy.pt", pushing_policy(5, 1), "dmc/cartpole-swingup")
    result = video_cli(str(path), "--max-steps", "30", *SIZE)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "policy.mp4"  # beside the policy file
    [(_, steps)] = episodes_of(result.stdout)
    frames = read_video(out)
    assert steps == 30 and frames.shape == (31, 120, 160, 3)
    assert iio.immeta(out)["fps"] == 100  # 1 / the control timestep of 0.01 s
    assert_moves(frames)


def test_playground_video_of_a_policy_file(tmp_path):
    pytest.importorskip("mujoco_playground")
    policy = pushing_policy(5, 1)
    path = policy_file(tmp_path / "policy.pt", policy, "playground/CartpoleSwingup")
    args = ["--episodes", "2", "--max-steps", "40", "--out", str(tmp_path / "pg.mp4")]
    result = video_cli(str(path), *args, *SIZE)
    assert result.returncode == 0, result.stderr
    assert [steps for _, steps in episodes_of(result.stdout)] == [40, 40]
    frames = read_video(tmp_path / "pg.mp4")
    # one frame per control step: the state an episode ends in is already the next one's start
    assert frames.shape == (80, 120, 160, 3)
    assert iio.immeta(tmp_path / "pg.mp4")["fps"] == 100
    assert_moves(frames[:40])
    assert_moves(frames[39:41])  # the cut from the first episode's end to the second's start


def test_python_api_takes_a_factory_that_renders(tmp_path, monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "egl")  # Gymnasium makes its GL context when it draws

    def factory() -> gymnasium.Env:
        return gymnasium.make("Hopper-v5", render_mode="rgb_array", width=64, height=48)

    policy = GaussianPolicy(11, [-1] * 3, [1] * 3, hidden=(8,))
    out = tmp_path / "api.mp4"
    result = record_video(policy, factory, out, seed=5, max_steps=12)
    assert result.path == out and result.steps == (12,) and result.frames == 13
    assert read_video(out).shape == (13, 48, 64, 3)
    assert result.returns[0] == pytest.approx(
        sum(r for r in rollout_rewards(policy, factory, seed=5, steps=12)), abs=1e-6
    )


def rollout_rewards(policy, factory, seed: int, steps: int) -> list[float]:
    """The rewards of ``steps`` zero-sampling steps from ``reset(seed)``, without drawing."""
    env = factory()
    obs, _ = env.reset(seed=seed)
    rewards = []
    for _ in range(steps):
        action = policy.act(torch.as_tensor(obs, dtype=torch.float32)[None], "zero")
        obs, reward, *_ = env.step(action[0].numpy())
        rewards.append(float(reward))
    env.close()
    return rewards


def test_factory_without_a_renderer_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "egl")
    policy = GaussianPolicy(11, [-1] * 3, [1] * 3, hidden=(8,))
    with pytest.raises(UserError, match="has no renderer"):
        record_video(policy, lambda: gymnasium.make("Hopper-v5"), tmp_path / "x.mp4")
    assert not list(tmp_path.iterdir())


def test_gif_timing_and_default_places(tmp_path):
    assert gif_timing(125) == (5, 40)  # Hopper-v5: 8 ms per step
    assert gif_timing(100) == (2, 20)  # DMC and Playground: 10 ms
    assert gif_timing(50) == (1, 20)
    assert gif_timing(25) == (1, 40)
    assert default_out(tmp_path) == tmp_path / "video.mp4"
    assert default_out(tmp_path / "expert.pt") == tmp_path / "expert.mp4"


def run_cli(capsys, *args: str) -> tuple[int, str]:
    try:
        code = main(["video", *args])
    except SystemExit as stop:  # tyro's own errors
        code = stop.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "args,words",
    [
        (["/no/such/run"], ["does not exist", "policy file"]),
        (["RUN", "--episodes", "0"], ["--episodes", "positive"]),
        (["RUN", "--mode", "greedy"], ["greedy", "zero", "random"]),
        (["RUN", "--out", "clip.txt"], ["clip.txt", ".mp4", ".gif"]),
        (["RUN", "--max-steps", "0"], ["--max-steps", "positive"]),
        (["TOY"], ["toy/nav", "no renderer", "flowpolicy eval"]),
    ],
)
def test_bad_input_exits_2_with_one_paragraph(tmp_path, monkeypatch, capsys, args, words):
    monkeypatch.setenv("MUJOCO_GL", "egl")
    toy = policy_file(tmp_path / "toy.pt", GaussianPolicy(2, [-1] * 2, [1] * 2), "toy/nav")
    run = policy_file(tmp_path / "hop.pt", GaussianPolicy(11, [-1] * 3, [1] * 3), "Hopper-v5")
    args = [{"RUN": str(run), "TOY": str(toy)}.get(a, a) for a in args]
    code, stderr = run_cli(capsys, *args)
    assert code == 2, stderr
    assert "Traceback" not in stderr
    for word in words:
        assert word in " ".join(stderr.split())  # rich wraps long lines
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob("*.txt"))


def test_switched_off_rendering_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MUJOCO_GL", "disable")
    run = policy_file(tmp_path / "hop.pt", GaussianPolicy(11, [-1] * 3, [1] * 3), "Hopper-v5")
    code, stderr = run_cli(capsys, str(run))
    assert code == 2 and "MUJOCO_GL=egl" in " ".join(stderr.split())


@pytest.mark.parametrize(
    "env,words",
    [
        # no such EGL device: the backend fails as MuJoCo loads it
        ({"MUJOCO_GL": "egl", "MUJOCO_EGL_DEVICE_ID": "99"}, ["could not load", "egl"]),
        # GLFW needs a display, and there is none: the first frame fails
        ({"MUJOCO_GL": "glfw"}, ["Rendering could not start", "glfw"]),
    ],
    ids=["no-egl-device", "glfw-without-display"],
)
def test_rendering_that_cannot_start_exits_2(tmp_path, env, words):
    run = policy_file(tmp_path / "hop.pt", GaussianPolicy(11, [-1] * 3, [1] * 3), "Hopper-v5")
    result = video_cli(str(run), "--max-steps", "3", *SIZE, **env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    message = " ".join(result.stderr.split())
    for word in [*words, "MUJOCO_GL=egl", "MUJOCO_GL=osmesa"]:
        assert word in message
    assert not (tmp_path / "hop.mp4").exists()


def test_gymnasium_locomotion_is_drawn_from_the_camera_that_follows_the_robot():
    import mujoco

    from flowpolicy.video import _GymScene

    scene = _GymScene("Hopper-v5", 0, torch.device("cpu"), (64, 48), None)
    inner = scene.env.unwrapped
    track = mujoco.mj_name2id(inner.model, mujoco.mjtObj.mjOBJ_CAMERA, "track")
    assert track >= 0 and inner.mujoco_renderer.camera_id == track  # not the still free camera
    assert inner.model.vis.quality.shadowsize <= 1024 and inner.model.vis.quality.offsamples == 0
    scene.close()


def test_a_commanded_task_gets_its_command_written_on_the_frame() -> None:
    from types import SimpleNamespace

    from flowpolicy.video import with_command

    frame = np.full((120, 320, 3), 200, dtype=np.uint8)
    plain = SimpleNamespace(info={"rng": 0})
    assert with_command(frame, plain) is frame  # no command: untouched
    commanded = SimpleNamespace(info={"command": np.array([0.8, -0.1, 0.25])})
    written = with_command(frame, commanded)
    assert written.shape == frame.shape and written.dtype == np.uint8
    band, rest = written[:20], written[40:]
    assert (band != 200).any() and (rest == 200).all()  # a caption band at the top only
    other = with_command(frame, SimpleNamespace(info={"command": np.array([0.0, 0.0, 0.0])}))
    assert not np.array_equal(other[:20], band)  # the text says the command
