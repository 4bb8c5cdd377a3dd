"""Reference run: stable-baselines3 PPO with its default hyper-parameters.

Writes a run directory in the same format as ``python -m flowpolicy train`` so that the benchmark
scripts read both the same way:

- ``config.json``: the settings below plus SB3's hyper-parameters and package versions;
- ``metrics.jsonl``: an evaluation line at step 0, every ``eval_every`` env steps and at the end
  (``eval/zero/...`` = deterministic actions, ``eval/random/...`` = sampled actions), and a
  training line per PPO iteration with ``charts/episode_return`` (mean return of the episodes
  that finished in that iteration, absent if none did) and ``charts/sps``;
- TensorBoard events (SB3's own ``train/`` scalars plus the evaluations);
- ``checkpoint.zip``: the final model in SB3's format (``PPO.load``);
- ``done.json``: step, wall_time, process_time (CPU seconds) and the final evaluation,
  written last.

``wall_time`` counts everything since the run began; ``charts/sps`` leaves evaluation time out.
The run stops at exactly ``total_steps`` env steps (a final partial rollout is not trained on).

Usage:
    python benchmarks/sb3_ppo.py --env Hopper-v5 --seed 0 --total-steps 1000000 \
        --run-dir runs/sb3/hopper/seed0 --eval-every 50000 --eval-episodes 10
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import stable_baselines3
import torch
import tyro
from dmc_gym import make_env
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import configure
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv


@dataclass(frozen=True)
class Args:
    """stable-baselines3 PPO (default hyper-parameters) writing a flowpolicy run directory."""

    env: str = "Hopper-v5"
    """Gymnasium env id, or ``dmc/<domain>-<task>`` for DeepMind Control."""
    seed: int = 0
    """Seeds SB3 (torch, numpy, random, training env); the eval env uses ``seed + 10_000``."""
    total_steps: int = 1_000_000
    """Env steps to train for."""
    run_dir: Path = Path("runs/sb3_ppo")
    """Output directory (created)."""
    eval_every: int = 50_000
    """Evaluate every this many env steps (and at step 0 and at the end)."""
    eval_episodes: int = 10
    """Episodes per evaluation, for each of the two modes."""
    torch_threads: int = 1
    """``torch.set_num_threads``."""

    def __post_init__(self) -> None:
        if self.total_steps <= 0 or self.eval_every <= 0 or self.eval_episodes <= 0:
            raise ValueError("total_steps, eval_every and eval_episodes must be positive")


class JsonlWriter:
    """Appends one JSON object per line and flushes, so a killed run keeps what it logged."""

    def __init__(self, path: Path, start_time: float) -> None:
        self._file = path.open("w")
        self._start = start_time

    def write(self, step: int, values: dict[str, float]) -> dict:
        record = {"step": int(step), "wall_time": time.perf_counter() - self._start, **values}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        return record

    def close(self) -> None:
        self._file.close()


def evaluate(model: PPO, eval_env: DummyVecEnv, episodes: int) -> dict[str, float]:
    """Mean and std of episode returns with deterministic (zero) and sampled (random) actions."""
    metrics = {}
    for mode, deterministic in (("zero", True), ("random", False)):
        mean, std = evaluate_policy(
            model, eval_env, n_eval_episodes=episodes, deterministic=deterministic, warn=False
        )
        metrics[f"eval/{mode}/return_mean"] = float(mean)
        metrics[f"eval/{mode}/return_std"] = float(std)
    return metrics


class MetricsCallback(BaseCallback):
    """Periodic evaluation, per-iteration training lines, and the exact step budget."""

    def __init__(self, args: Args, writer: JsonlWriter, eval_env: DummyVecEnv) -> None:
        super().__init__()
        self.args = args
        self.writer = writer
        self.eval_env = eval_env
        self.next_eval = args.eval_every
        self.eval_seconds = 0.0  # evaluation time since the last training line
        self.episode_returns: list[float] = []
        self.last_line_time = 0.0
        self.last_line_step = 0

    def run_eval(self) -> dict[str, float]:
        """Evaluate now, log a line, and keep evaluation time out of the next ``charts/sps``."""
        start = time.perf_counter()
        metrics = evaluate(self.model, self.eval_env, self.args.eval_episodes)
        self.eval_seconds += time.perf_counter() - start
        self.writer.write(self.num_timesteps, metrics)
        for key, value in metrics.items():
            self.logger.record(key, value)
        self.logger.dump(self.num_timesteps)
        print(
            f"step {self.num_timesteps:>9,}  eval zero {metrics['eval/zero/return_mean']:8.1f}"
            f"  random {metrics['eval/random/return_mean']:8.1f}",
            flush=True,
        )
        return metrics

    def _on_training_start(self) -> None:
        self.last_line_time = time.perf_counter()
        self.run_eval()

    def _on_step(self) -> bool:
        for info in self.locals["infos"]:
            if "episode" in info:
                self.episode_returns.append(float(info["episode"]["r"]))
        at_rollout_end = self.num_timesteps % self.model.n_steps == 0
        if self.num_timesteps >= self.args.total_steps:
            # Stop here unless this step completes a rollout, which SB3 then trains on and stops.
            return at_rollout_end
        if self.num_timesteps >= self.next_eval:
            self.run_eval()
            self.next_eval += self.args.eval_every
        return True

    def _on_rollout_end(self) -> None:
        now = time.perf_counter()
        train_seconds = now - self.last_line_time - self.eval_seconds
        values = {"charts/sps": (self.num_timesteps - self.last_line_step) / train_seconds}
        if self.episode_returns:
            values["charts/episode_return"] = float(np.mean(self.episode_returns))
        self.writer.write(self.num_timesteps, values)
        self.episode_returns.clear()
        self.eval_seconds = 0.0
        self.last_line_time = now
        self.last_line_step = self.num_timesteps


def make_vec_env(env_id: str, seed: int) -> DummyVecEnv:
    """One Monitor-wrapped env in a DummyVecEnv, seeded for its first reset."""
    vec_env = DummyVecEnv([lambda: Monitor(make_env(env_id))])
    vec_env.seed(seed)
    return vec_env


def sb3_config(model: PPO) -> dict:
    """The hyper-parameters SB3 actually used (its defaults unless changed here)."""
    return {
        "policy": "MlpPolicy",
        "net_arch": model.policy.net_arch,
        "activation_fn": model.policy.activation_fn.__name__,
        "n_steps": model.n_steps,
        "batch_size": model.batch_size,
        "n_epochs": model.n_epochs,
        "learning_rate": model.learning_rate,
        "gamma": model.gamma,
        "gae_lambda": model.gae_lambda,
        "clip_range": model.clip_range(1.0),
        "ent_coef": model.ent_coef,
        "vf_coef": model.vf_coef,
        "max_grad_norm": model.max_grad_norm,
        "normalize_advantage": model.normalize_advantage,
        "device": str(model.device),
    }


def prepare_run_dir(run_dir: Path) -> None:
    """Create the directory; refuse a completed run; clear what an interrupted one left."""
    if (run_dir / "done.json").exists():
        raise SystemExit(f"{run_dir} already holds a completed run (done.json); choose another")
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*run_dir.glob("events.out.tfevents.*"), run_dir / "checkpoint.zip"]:
        stale.unlink(missing_ok=True)


def main(args: Args) -> None:
    """Train, evaluate and write the run directory."""
    start_time = time.perf_counter()
    torch.set_num_threads(args.torch_threads)
    prepare_run_dir(args.run_dir)

    model = PPO(
        "MlpPolicy",
        make_vec_env(args.env, args.seed),
        seed=args.seed,
        device="cpu",
        verbose=0,
    )
    model.set_logger(configure(str(args.run_dir), ["tensorboard"]))
    config = {
        "algo": "sb3-ppo",
        **{k: str(v) if isinstance(v, Path) else v for k, v in asdict(args).items()},
        "sb3": sb3_config(model),
        "versions": {
            "python": sys.version.split()[0],
            "stable_baselines3": stable_baselines3.__version__,
            "torch": torch.__version__,
            "gymnasium": gym.__version__,
        },
        "command": " ".join(sys.argv),
    }
    (args.run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    writer = JsonlWriter(args.run_dir / "metrics.jsonl", start_time)
    eval_env = make_vec_env(args.env, args.seed + 10_000)
    callback = MetricsCallback(args, writer, eval_env)
    model.learn(total_timesteps=args.total_steps, callback=callback)

    final = callback.run_eval()
    writer.close()
    model.save(args.run_dir / "checkpoint.zip")
    done = {
        "step": model.num_timesteps,
        "wall_time": time.perf_counter() - start_time,
        # CPU seconds of this process: tells how much of wall_time a shared machine took away.
        "process_time": time.process_time(),
    }
    done.update(final)
    (args.run_dir / "done.json").write_text(json.dumps(done, indent=2) + "\n")
    print(f"done: {done['step']:,} steps in {done['wall_time']:.0f} s -> {args.run_dir}")


if __name__ == "__main__":
    main(tyro.cli(Args))
