"""Videos of a policy acting: ``flowpolicy video RUN_DIR`` (docs/video.md).

Episodes play one after another into one file at the env's real-time frame rate, one frame per
control step (every executed action of a chunk gets its own), drawn offscreen by MuJoCo: a
Gymnasium MuJoCo env by its own ``render()`` and camera; a ``dmc/`` task by dm_control's
``physics.render`` from the task's first camera; a ``playground/`` task as env 0 of a one-env
batch (the episodes ``flowpolicy eval`` plays), its states drawn by Playground's ``env.render``.
Frames stream to ffmpeg, so memory stays flat; a GIF is kept in memory and written by pillow.

MuJoCo picks its OpenGL backend from ``MUJOCO_GL`` when it is first imported: importing this
module sets it to ``egl`` (headless: a GPU driver, or Mesa on a CPU) unless the user chose one.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from flowpolicy.errors import UserError

os.environ.setdefault("MUJOCO_GL", "egl")

MODES = ("zero", "random")
FFMPEG_CODECS = dict.fromkeys((".mp4", ".mkv", ".mov", ".avi"), "libx264") | {".webm": "libvpx-vp9"}
SUFFIXES = (*FFMPEG_CODECS, ".gif")
Size = tuple[int, int]  # (width, height) of a frame in pixels
GIF_MIN_DELAY_MS = 20
"""Browsers play GIF frame delays below 20 ms as 100 ms: GIFs are thinned to this period."""
SHADOW_SIZE = 1024
"""Cap on the shadow map's side. MuJoCo's default (4096, 2048 in the DMC models) is drawn at
every frame and dominates software rendering (Mesa's llvmpipe); 1024 looks alike at video
sizes."""
MULTISAMPLES = 0
"""Cap on the anti-aliasing samples per pixel. MuJoCo's default, 4, makes Mesa's software
render 2-4x slower (docs/video.md); on a GPU it costs nothing: raise it there for smoother
edges."""
_GL_OFF = ("disable", "disabled", "off", "false", "0")
_GL_HELP = (
    "flowpolicy video draws offscreen with OpenGL, through the backend named by the environment "
    "variable MUJOCO_GL and chosen when MuJoCo is first imported: set MUJOCO_GL=egl (a GPU "
    "driver, or Mesa on a CPU: apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri) or "
    "MUJOCO_GL=osmesa (software: apt-get install libosmesa6) before starting Python; neither "
    "needs a display (glfw does)."
)


@dataclass(frozen=True)
class VideoResult:
    """What :func:`record_video` wrote."""

    path: Path
    frames: int  # frames in the file (a GIF's after thinning)
    fps: float  # the file's frame rate
    returns: tuple[float, ...]  # each episode's return, in order
    steps: tuple[int, ...]  # each episode's control steps


def default_out(path: Path) -> Path:
    """``RUN_DIR/video.mp4`` for a run directory; ``NAME.mp4`` beside a policy file."""
    return path / "video.mp4" if path.is_dir() else path.with_suffix(".mp4")


def check_options(
    out: Path, episodes: int, mode: str, width: int, height: int, max_steps: int | None = None
) -> None:
    """Raise a UserError for options no video can be made with (before the slow loading)."""
    if episodes <= 0:
        raise UserError(f"--episodes must be a positive number of episodes, got {episodes}.")
    if max_steps is not None and max_steps <= 0:
        raise UserError(f"--max-steps must be a positive number of steps, got {max_steps}.")
    if mode not in MODES:
        raise UserError(
            f"Unknown sampling --mode {mode!r}: use zero (deterministic: zero initial noise, "
            "the Gaussian's mean) or random (sampled, as in training)."
        )
    if width <= 0 or height <= 0:
        raise UserError(f"--width and --height must be positive pixels, got {width}x{height}.")
    if out.suffix.lower() not in SUFFIXES:
        raise UserError(
            f"Cannot write a video to {out}: imageio writes videos as {', '.join(SUFFIXES)} "
            f"here, not {out.suffix or 'a file without an extension'}. Pass e.g. --out "
            f"{out.with_suffix('.mp4')}."
        )


def check_gl() -> None:
    """Load MuJoCo's and dm_control's OpenGL backends now (0.2 s), so that a MUJOCO_GL which
    cannot work stops the command with a UserError that says what to do."""
    value = os.environ.get("MUJOCO_GL", "")
    if value.lower() in _GL_OFF:
        raise UserError(f"Rendering is switched off (MUJOCO_GL={value}). {_GL_HELP}")
    try:
        # Both choose their backend at import; a missing library fails right there.
        import dm_control._render  # noqa: F401
        import mujoco  # noqa: F401
    except Exception as error:  # PyOpenGL and the backends raise assorted types
        raise UserError(
            f"MuJoCo could not load the OpenGL backend MUJOCO_GL={value!r} "
            f"({type(error).__name__}: {error}). {_GL_HELP}"
        ) from error


def record_video(
    policy: torch.nn.Module,
    env: Any,
    out: Path,
    *,
    episodes: int = 1,
    seed: int = 0,
    chunk_exec: int = 1,
    mode: str = "zero",
    width: int = 640,
    height: int = 480,
    max_steps: int | None = None,
) -> VideoResult:
    """Play ``episodes`` episodes of ``policy`` in ``env`` and write them to ``out``.

    Args:
        policy: anything with ``act(obs (1, Do), mode) -> env actions (1, chunk_exec * Da)``.
        env: env id (Gymnasium MuJoCo, ``dmc/...``, ``playground/...``) or a zero-argument
            factory of a Gymnasium env made with ``render_mode="rgb_array"`` (drawn at its size).
        out: the video file; its extension picks the format (:data:`SUFFIXES`).
        seed: env and noise seed; the first episode is the one ``flowpolicy eval --episodes 1``
            plays with this seed. chunk_exec: actions per policy call.
        mode: ``zero`` or ``random`` sampling. width, height: frame size in pixels.
        max_steps: cut each episode after this many control steps (None: play it to its end).

    Raises:
        UserError: bad options, an env without a renderer, or rendering that cannot start.
    """
    from flowpolicy.device import forked_rng_devices, module_device

    out = Path(out)
    check_options(out, episodes, mode, width, height, max_steps)
    check_gl()
    device = module_device(policy)
    if isinstance(env, str) and env.startswith("playground/"):
        scene: _Scene = _PlaygroundScene(env, seed, device, (width, height), max_steps)
    else:
        scene = _GymScene(env, seed, device, (width, height), max_steps)
    partial = out.with_name(f"{out.stem}.partial{out.suffix}")  # no half-written `out`
    writer, played = None, []  # (return, steps) per episode
    try:
        # Evaluation's noise seeding, forked so a caller's RNG never moves.
        with torch.random.fork_rng(devices=forked_rng_devices(device)):
            torch.manual_seed(seed)
            obs = scene.reset(seed)
            _check_render(scene)
            out.parent.mkdir(parents=True, exist_ok=True)
            writer = _Writer(partial, scene.fps)
            for episode in range(episodes):
                if episode:
                    obs = scene.reset(None)
                played.append(_play_episode(scene, writer, policy, obs, mode, chunk_exec))
        writer.close()
        partial.replace(out)
    except OSError as error:
        raise UserError(f"Cannot write {out}: {error}") from error
    finally:
        scene.close()
        if writer is not None and not writer.closed:
            writer.close(save=False)
        partial.unlink(missing_ok=True)
    returns, steps = zip(*played, strict=True)
    return VideoResult(out, writer.frames, writer.fps, returns, steps)


def _play_episode(
    scene: _Scene, writer: _Writer, policy: Any, obs: Tensor, mode: str, chunk_exec: int
) -> tuple[float, int]:
    """One episode from ``obs`` (1, Do) to its end: (return, control steps)."""
    scene.capture(writer)
    total, count, done = 0.0, 0, False
    while not done:
        chunk = policy.act(obs, mode).reshape(chunk_exec, -1)  # (Ta_exec, Da)
        for action in chunk:
            obs, reward, done = scene.step(action[None])
            total, count = total + reward, count + 1
            scene.capture(writer)
            if done:  # the rest of the chunk is dropped, as evaluation's ActionChunk does
                break
    scene.end_episode(writer)
    return total, count


def _check_render(scene: _Scene) -> None:
    """Draw one frame; a backend that cannot start becomes a UserError that says what to do."""
    try:
        scene.probe()
    except Exception as error:  # EGL, OSMesa, GLFW and dm_control each raise their own types
        raise UserError(
            f"Rendering could not start ({type(error).__name__}: {error}; MUJOCO_GL="
            f"{os.environ.get('MUJOCO_GL', '')!r}). {_GL_HELP}"
        ) from error


def _fit_model(model: Any, size: Size) -> None:
    """Let a MuJoCo model's offscreen buffer hold frames of ``size`` (width, height) and cap
    its shadow map and anti-aliasing (:data:`SHADOW_SIZE`, :data:`MULTISAMPLES`). Visual
    settings only: the physics is untouched. Call before the first frame: the GL context reads
    them when it is made."""
    model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), size[0])
    model.vis.global_.offheight = max(int(model.vis.global_.offheight), size[1])
    model.vis.quality.shadowsize = min(int(model.vis.quality.shadowsize), SHADOW_SIZE)
    model.vis.quality.offsamples = min(int(model.vis.quality.offsamples), MULTISAMPLES)


def _no_renderer(label: str) -> UserError:
    return UserError(
        f"{label} has no renderer, so no video can be made of it. flowpolicy video draws "
        "MuJoCo envs: Gymnasium MuJoCo ids (e.g. Hopper-v5), dmc/<domain>-<task> and "
        "playground/<Name>; from Python, a factory of a Gymnasium env made with "
        "render_mode='rgb_array'. Use `flowpolicy eval` for the returns of other envs."
    )


class _GymScene:
    """A Gymnasium env (Gymnasium MuJoCo, DMC, or a user's factory) drawn after every step.
    Scenes: ``reset(seed)`` -> obs (1, Do) (seed None: the next episode), ``step(action (1,
    Da))`` -> (obs, reward, done), ``capture`` the current state's frame, ``end_episode``
    writes what capture kept, ``probe`` draws one frame to fail before any work."""

    def __init__(
        self, env: Any, seed: int, device: torch.device, size: Size, max_steps: int | None
    ) -> None:
        import gymnasium
        from gymnasium.envs.mujoco import MujocoEnv

        from flowpolicy.envs import DMCEnv, make_env

        self.device = device
        made = make_env(self._factory(env, size), seed=seed)
        if max_steps is not None:  # ends episodes like the env's own time limit: reset() works
            made = gymnasium.wrappers.TimeLimit(made, max_steps)
        self.env, inner = made, made.unwrapped
        self._draw = made.render
        if isinstance(inner, DMCEnv):
            self.fps = 1.0 / inner.control_timestep
            self._draw = lambda: self._draw_dmc(inner, size)
        elif made.render_mode != "rgb_array":
            made.close()
            raise _no_renderer(f"The env made by {getattr(env, '__qualname__', env)!r}")
        else:
            # Gymnasium's convention for the real-time rate; 30 where an env does not say.
            self.fps = float(made.metadata.get("render_fps") or 30)
            if isinstance(inner, MujocoEnv):
                _fit_model(inner.model, size)

    @staticmethod
    def _factory(env: Any, size: Size) -> Any:
        """What make_env makes: a Gymnasium MuJoCo id in rgb_array mode at the asked size,
        anything else as is (a DMC task draws through its physics)."""
        import gymnasium
        import mujoco
        from gymnasium.envs.mujoco import MujocoEnv

        from flowpolicy.envs import make_env

        if not isinstance(env, str) or env.startswith("dmc/"):
            return env
        if env.startswith("toy/"):
            raise _no_renderer(f"The toy task {env}")
        probe = make_env(env)  # an unknown id or unsupported spaces fail here, with their message
        inner, modes = probe.unwrapped, probe.metadata.get("render_modes", [])
        probe.close()
        if isinstance(inner, MujocoEnv):
            options = {"render_mode": "rgb_array", "width": size[0], "height": size[1]}
            # The locomotion models' "track" camera follows the robot; Gymnasium draws from a
            # still free camera by default, which a running Hopper leaves within a second.
            if mujoco.mj_name2id(inner.model, mujoco.mjtObj.mjOBJ_CAMERA, "track") >= 0:
                options["camera_name"] = "track"
            return lambda: gymnasium.make(env, **options)
        if "rgb_array" in modes:  # not MuJoCo, but it draws itself (at its own size)
            return lambda: gymnasium.make(env, render_mode="rgb_array")
        raise _no_renderer(env)

    @staticmethod
    def _draw_dmc(inner: Any, size: Size) -> np.ndarray:
        physics = inner.physics  # a new one after a seeded reset: fit it every time (cheap)
        _fit_model(physics.model, size)
        camera = 0 if physics.model.ncam > 0 else -1  # -1: the free camera
        return physics.render(height=size[1], width=size[0], camera_id=camera)

    def reset(self, seed: int | None) -> Tensor:
        obs, _ = self.env.reset(seed=seed)
        return torch.as_tensor(obs, dtype=torch.float32, device=self.device)[None]

    def step(self, action: Tensor) -> tuple[Tensor, float, bool]:
        obs, reward, terminated, truncated, _ = self.env.step(
            action[0].detach().to("cpu", torch.float32).numpy()
        )
        obs = torch.as_tensor(obs, dtype=torch.float32, device=self.device)[None]
        return obs, float(reward), bool(terminated or truncated)

    def capture(self, writer: _Writer) -> None:
        writer.add(self._draw())

    def end_episode(self, writer: _Writer) -> None:
        pass

    def probe(self) -> None:
        self._draw()

    def close(self) -> None:
        self.env.close()  # frees the GL context now, not in a destructor at exit


class _PlaygroundScene:
    """Env 0 of a one-env Playground batch; its states are drawn at the end of each episode
    (Playground's ``env.render`` makes one renderer per call)."""

    def __init__(
        self, env: str, seed: int, device: torch.device, size: Size, max_steps: int | None
    ) -> None:
        import mujoco

        from flowpolicy.envs.playground import PlaygroundVectorEnv  # imports JAX: only here

        # chunk_exec 1: the chunk is fed one action at a time, so every action gets a frame;
        # the batch ends episodes inside a chunk as the chunked one does.
        self.batch = PlaygroundVectorEnv(
            env, 1, seed=seed, chunk_exec=1, device=device, episode_length=max_steps
        )
        model = self.batch.env.mj_model
        _fit_model(model, size)
        self.fps = 1.0 / float(self.batch.env.dt)  # the control timestep (Playground's ctrl_dt)
        self._size = {"width": size[0], "height": size[1]}
        self._camera = (
            mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, 0) if model.ncam > 0 else None
        )
        self._states: list[Any] = []
        self._ended = False
        self._next_obs: Tensor | None = None

    def _render(self, states: list[Any]) -> list[np.ndarray]:
        return list(self.batch.env.render(states, camera=self._camera, **self._size))

    def reset(self, seed: int | None) -> Tensor:
        self._ended = False
        if seed is not None:
            return self.batch.reset(seed=seed)
        assert self._next_obs is not None, "reset(seed) starts the first episode"
        return self._next_obs  # the batch already started the next episode (same-step reset)

    def step(self, action: Tensor) -> tuple[Tensor, float, bool]:
        result = self.batch.step(action)
        self._ended = bool(result.done[0])
        self._next_obs = result.obs
        return result.obs, float(result.reward[0]), self._ended

    def capture(self, writer: _Writer) -> None:
        # After the step that ended an episode the state is already the next episode's first,
        # so the final state gets no frame: an episode has one frame per control step.
        if not self._ended:
            self._states.append(self.batch.sim_state(0))

    def end_episode(self, writer: _Writer) -> None:
        for state, frame in zip(self._states, self._render(self._states), strict=True):
            writer.add(with_command(frame, state))
        self._states.clear()

    def probe(self) -> None:
        self._render([self.batch.sim_state(0)])

    def close(self) -> None:
        self.batch.close()


_Scene = _GymScene | _PlaygroundScene


def with_command(frame: np.ndarray, state: Any) -> np.ndarray:
    """``frame`` (H, W, 3) with the velocity command written on it, for a task whose state
    carries one in ``info["command"]`` (vx, vy, yaw rate: the joystick task); else unchanged."""
    info = getattr(state, "info", None)
    if not isinstance(info, dict) or "command" not in info:
        return frame
    from PIL import Image, ImageDraw

    vx, vy, yaw = (float(v) for v in np.asarray(info["command"]).reshape(-1)[:3])
    text = f"command  vx {vx:+.2f} m/s  vy {vy:+.2f} m/s  yaw {yaw:+.2f} rad/s"
    image = Image.fromarray(np.ascontiguousarray(frame))
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((6, 4), text)
    draw.rectangle((left - 3, top - 2, right + 3, bottom + 2), fill=(0, 0, 0))
    draw.text((6, 4), text, fill=(255, 255, 255))
    return np.asarray(image)


class _Writer:
    """Frames in, a video file out, at ``fps`` (a GIF: thinned, see :func:`gif_timing`)."""

    def __init__(self, path: Path, fps: float) -> None:
        import imageio.v2 as imageio

        self.path, self.frames, self.closed = path, 0, False
        self._seen, self._gif = 0, path.suffix.lower() == ".gif"
        self._kept: list[np.ndarray] = []
        if self._gif:
            self._stride, self._delay_ms = gif_timing(fps)
            self.fps = 1000.0 / self._delay_ms
            return
        self._stride, self.fps = 1, fps
        # macro_block_size 2: H.264's 4:2:0 colour needs even sizes only, not imageio's
        # default multiples of 16 (which would rescale e.g. 240x180).
        self._ffmpeg = imageio.get_writer(
            path,
            format="FFMPEG",
            mode="I",
            fps=fps,
            codec=FFMPEG_CODECS[path.suffix.lower()],
            pixelformat="yuv420p",
            macro_block_size=2,
        )

    def add(self, frame: np.ndarray) -> None:
        self._seen += 1
        if (self._seen - 1) % self._stride:
            return
        self.frames += 1
        frame = np.ascontiguousarray(frame[..., :3], dtype=np.uint8)  # (H, W, 3)
        if self._gif:
            self._kept.append(frame)
            return
        with warnings.catch_warnings():
            # imageio starts ffmpeg at the first frame by fork + exec; JAX, when loaded, warns
            # at every fork, but the child execs at once and never touches JAX's threads.
            warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
            self._ffmpeg.append_data(frame)

    def close(self, save: bool = True) -> None:
        """Finish the file (``save=False``: only release ffmpeg, after a failure)."""
        self.closed = True
        if not self._gif:
            self._ffmpeg.close()
        elif self._kept and save:
            import imageio.v3 as iio

            iio.imwrite(self.path, self._kept, duration=self._delay_ms, loop=0)


def gif_timing(fps: float) -> tuple[int, int]:
    """(keep every n-th frame, frame delay in ms) for a GIF of a ``fps`` video: GIF delays are
    whole centiseconds and browsers slow those under 20 ms, so the smallest stride whose
    period is >= 20 ms and within 5% of a whole centisecond (Hopper's 8 ms: every 5th, 40 ms;
    DMC's 10 ms: every 2nd, 20 ms)."""
    period = 1000.0 / fps
    stride = max(1, math.ceil(GIF_MIN_DELAY_MS / period - 1e-9))
    for candidate in range(stride, stride + 10):
        delay = candidate * period
        if abs(delay - round(delay, -1)) <= 0.05 * delay:
            return candidate, int(round(delay, -1))
    return stride, int(max(GIF_MIN_DELAY_MS, round(stride * period, -1)))
