"""How long ``flowpolicy video`` takes to render a 1000-step episode of Hopper-v5.

The issue's goal: under 60 s on a CPU. The episode goes through :func:`flowpolicy.video.
record_video`, the function the command calls, with everything the command does per step: a
flow policy acting (FPO's default 4x32 network, 10 Euler steps), the MuJoCo step, Gymnasium's
offscreen render, and ffmpeg encoding. Only the env differs from ``gymnasium.make("Hopper-v5")``:
``terminate_when_unhealthy=False``, so that the episode lasts its full 1000 steps whatever the
(untrained) policy does. Loading a run (a second or two) is not timed.

Examples::

    python benchmarks/video_speed.py                          # 640x480, the default size
    python benchmarks/video_speed.py --width 320 --height 240 --out /tmp/hopper.gif
    python benchmarks/video_speed.py --shadow-size 4096 --samples 4   # MuJoCo's own settings
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import gymnasium
import torch

import flowpolicy.video as video
from flowpolicy.policies import FlowPolicy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--out", default=None, help="the video (default: a temporary .mp4)")
    parser.add_argument(
        "--shadow-size", type=int, default=video.SHADOW_SIZE, help="cap on the shadow map"
    )
    parser.add_argument(
        "--samples", type=int, default=video.MULTISAMPLES, help="anti-aliasing samples (cap)"
    )
    args = parser.parse_args()
    video.SHADOW_SIZE, video.MULTISAMPLES = args.shadow_size, args.samples
    torch.set_num_threads(1)
    torch.manual_seed(0)
    policy = FlowPolicy(11, [-1.0] * 3, [1.0] * 3, flow_steps=10)

    def hopper() -> gymnasium.Env:
        return gymnasium.make(
            "Hopper-v5",
            render_mode="rgb_array",
            width=args.width,
            height=args.height,
            terminate_when_unhealthy=False,
        )

    with tempfile.TemporaryDirectory() as folder:
        out = Path(args.out or Path(folder) / "hopper.mp4")
        start = time.perf_counter()
        result = video.record_video(policy, hopper, out, seed=0, max_steps=args.steps)
        seconds = time.perf_counter() - start
        size = out.stat().st_size
    print(
        f"{result.steps[0]} steps, {result.frames} frames of {args.width}x{args.height} "
        f"(shadow map {args.shadow_size}, {args.samples} samples) in {seconds:.1f} s: {1000 * seconds / result.frames:.1f} "
        f"ms per frame, {size / 1e6:.1f} MB; MUJOCO_GL={os.environ['MUJOCO_GL']}, "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"load average {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
