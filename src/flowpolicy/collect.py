"""Make demonstration datasets reproducibly: train a "medium" expert, then record it.

RL fine-tuning methods (DPPO, ReinFlow, FPO fine-tuning, ...) start from a policy pretrained by
behaviour cloning on D4RL "medium" data. That data can't be downloaded here, so this module makes
its own with the D4RL recipe:

1. train a Gaussian PPO expert with the library itself (:func:`flowpolicy.train.train`) into
   ``<out>/expert/`` and stop it at the first evaluation whose zero-sampling mean return reaches
   a per-env target (:data:`MEDIUM_TARGETS`), i.e. a policy that is good but far from optimal;
2. record ``transitions`` env steps of that policy (:func:`record`), optionally with Gaussian
   action noise, into ``<out>/dataset.hdf5`` (:func:`flowpolicy.data.save_dataset`, atomic).

``--policy PATH`` skips step 1 and records any saved policy. One seed drives the expert's
training and the recording, so the same command gives the same arrays on the same machine; the
dataset's metadata records everything needed to rerun it (the command line included).

Shapes: ``N`` transitions, ``Do`` observation size, ``Da`` action size, ``Ta_exec`` actions a
policy executes per call (its ``chunk_exec``).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from rich.console import Console

from flowpolicy import train as train_module
from flowpolicy.algos.ppo import PPOConfig
from flowpolicy.checkpoint import CHECKPOINT_NAME
from flowpolicy.data import Dataset, save_dataset
from flowpolicy.device import resolve_device
from flowpolicy.envs import EnvSpec, env_dims, make_env
from flowpolicy.errors import UserError
from flowpolicy.evaluation import MODES
from flowpolicy.train import TrainConfig, config_to_dict, read_run_config, resume, train

DATASET_NAME = "dataset.hdf5"
EXPERT_DIR = "expert"

MEDIUM_TARGETS: dict[str, float] = {
    # Zero-sampling evaluation return at which the PPO expert is stopped (TrainConfig.
    # stop_at_return). D4RL's "medium" experts were SAC policies stopped at about a third of
    # expert performance; we aim at a third to a half of what a full 1M-step run of the
    # library's Gaussian PPO reaches, so the expert is clearly competent but far from optimal.
    # All three rest on full 1M-step runs of our PPO, seed 0, zero-sampling evaluation
    # (docs/collect.md).
    #
    # Hopper: 3625 at 1M steps (docs/benchmarks/from_scratch.md): 1500 is ~0.4 of it; D4RL
    # hopper-medium data averages ~1400-1500.
    "Hopper-v5": 1500.0,
    # Walker2d: 3352 +/- 2490 at 1M (peak 5555 at 800k): 1500 is ~0.45 of the final return.
    "Walker2d-v5": 1500.0,
    # HalfCheetah: 4226 +/- 231 at 1M: 1700 is ~0.4 of it. (The earlier provisional 1000 was
    # only ~0.24.) D4RL halfcheetah-medium (~4700) came from a SAC expert.
    "HalfCheetah-v5": 1700.0,
}
"""Per-env target returns of the "medium" expert; other envs need ``target_return``."""

Mode = Literal["random", "zero"]


@dataclass(frozen=True)
class CollectConfig:
    """Make a demonstration dataset: train a medium-level PPO expert (or load a policy), then
    record it."""

    env: str
    """env to record in: a Gymnasium id such as "Hopper-v5", "dmc/<domain>-<task>", "toy/nav"."""
    out: str
    """output directory: the dataset goes to OUT/dataset.hdf5, the expert run to OUT/expert/."""
    policy: str | None = None
    """record this saved policy (a policy file or run directory) instead of training an expert."""
    target_return: float | None = None
    """expert stops at the first evaluation whose zero-sampling mean return reaches this; default: flowpolicy.collect.MEDIUM_TARGETS[env]."""
    transitions: int = 200_000
    """env steps to record; the episode running when they are reached is cut and marked truncated."""
    noise: float = 0.0
    """std of Gaussian action noise, in units of half the action range; noisy actions are clipped to the bounds and stored."""
    mode: Mode = "random"
    """policy sampling while recording: "random" samples, "zero" takes the deterministic action."""
    seed: int = 0
    """drives the expert's training and the recording (envs, policy noise, action noise)."""
    expert_steps: int = 1_000_000
    """most env steps to train the expert for; it must reach the target within them."""
    expert_eval_every: int = 10_000
    """env steps between the expert's evaluations (where it can stop: how close to the target it ends)."""
    expert_eval_episodes: int = 10
    """episodes per expert evaluation (zero and random sampling each)."""
    expert: PPOConfig = field(default_factory=PPOConfig)
    """hyper-parameters of the Gaussian PPO expert."""
    device: str = "auto"
    """where the expert trains and acts: auto (CUDA when available), cpu, cuda or cuda:N."""
    quiet: bool = False
    """no console output."""

    def __post_init__(self) -> None:
        for name in ("transitions", "expert_steps", "expert_eval_every", "expert_eval_episodes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                option = "--" + name.replace("_", "-")
                raise ValueError(f"{option} must be a positive integer, got {value!r}.")
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"--noise must be a finite number >= 0, got {self.noise!r}.")
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}.")
        if self.target_return is not None and not math.isfinite(self.target_return):
            raise ValueError(
                f"--target-return must be a finite number, got {self.target_return!r}."
            )

    @property
    def dataset_path(self) -> Path:
        """Where the dataset is written: OUT/dataset.hdf5."""
        return Path(self.out) / DATASET_NAME

    @property
    def expert_dir(self) -> Path:
        """The expert's run directory: OUT/expert."""
        return Path(self.out) / EXPERT_DIR


# ----------------------------------------------------------------------------- recording


def record(
    policy: torch.nn.Module,
    env: EnvSpec,
    num_transitions: int,
    seed: int,
    mode: Mode = "random",
    noise_std: float = 0.0,
) -> Dataset:
    """Roll ``policy`` in one env for ``num_transitions`` env steps of whole episodes.

    A chunked policy (``policy.chunk_exec`` = Ta_exec > 1) is called once per chunk and its
    actions are executed, and recorded, one env step at a time; an episode that ends mid-chunk
    drops the rest of the chunk, as :class:`flowpolicy.envs.ActionChunk` does. Stored actions are
    the ones executed: ``clip(a + noise_std * (high - low) / 2 * eps, low, high)``, eps ~ N(0, I).
    Terminations and truncations (time limits) are kept apart as Gymnasium reports them; the
    episode still running at ``num_transitions`` is cut there and marked truncated.

    Deterministic for a seed: the env is reset with ``seed`` once (later episodes continue its
    RNG), torch (policy sampling) is seeded in a forked RNG, so the caller's RNG state is left
    alone, and the action noise comes from ``numpy.random.default_rng(seed)``.

    Args:
        policy: anything with ``act(obs (B, Do), mode) -> env actions (B, Ta_exec * Da)``.
        env: env id or zero-argument factory (see :func:`flowpolicy.envs.make_env`).
        num_transitions: N >= 1.
        seed: env, policy and noise seed.
        mode: ``"random"`` samples the policy, ``"zero"`` takes its deterministic action.
        noise_std: std of the Gaussian action noise in units of half the action range, >= 0.

    Returns:
        The dataset; ``metadata`` holds ``env_id``, ``seed``, ``mode``, ``noise_std``,
        ``chunk_exec``, ``return_mean``/``return_std`` over the complete episodes (None if none
        completed), ``complete_episodes`` and ``last_episode_cut``.

    Raises:
        ValueError: on a bad ``num_transitions``, ``mode`` or ``noise_std``.
        UserError: if the env can't be made or the policy does not fit it.
    """
    if isinstance(num_transitions, bool) or not isinstance(num_transitions, int):
        raise ValueError(f"num_transitions must be an integer, got {num_transitions!r}.")
    if num_transitions < 1:
        raise ValueError(f"num_transitions must be >= 1, got {num_transitions}.")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}.")
    if not (math.isfinite(noise_std) and noise_std >= 0):
        raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}.")

    chunk_exec = int(getattr(policy, "chunk_exec", 1))
    made = make_env(env, seed=seed)
    try:
        obs_dim, action_dim = env_dims(made)
        check_policy_fits(policy, obs_dim, action_dim, _env_name(env))
        arrays = _rollout(
            policy, made, num_transitions, seed, mode, noise_std, chunk_exec, action_dim
        )
    finally:
        made.close()

    observations, actions, rewards, terminals, truncations, next_observations = arrays
    last_episode_cut = not (terminals[-1] or truncations[-1])
    truncations[-1] |= last_episode_cut  # the end of the recording cuts the running episode
    dataset = Dataset(
        observations=observations,
        actions=actions,
        rewards=rewards,
        terminals=terminals,
        truncations=truncations,
        episode_ends=np.flatnonzero(terminals | truncations) + 1,
        next_observations=next_observations,
    )
    returns = dataset.episode_returns()
    complete = returns[:-1] if last_episode_cut else returns
    dataset.metadata = {
        "env_id": _env_name(env),
        "seed": seed,
        "mode": mode,
        "noise_std": float(noise_std),
        "chunk_exec": chunk_exec,
        "num_transitions": dataset.num_transitions,
        "num_episodes": dataset.num_episodes,
        "complete_episodes": int(complete.size),
        "last_episode_cut": bool(last_episode_cut),
        "return_mean": float(complete.mean()) if complete.size else None,
        "return_std": float(complete.std()) if complete.size else None,
    }
    return dataset


def _rollout(
    policy: torch.nn.Module,
    env: gym.Env,
    num_transitions: int,
    seed: int,
    mode: Mode,
    noise_std: float,
    chunk_exec: int,
    action_dim: int,
) -> tuple[np.ndarray, ...]:
    """The per-step arrays of :func:`record` (before the final cut is marked)."""
    n, obs_dim = num_transitions, env.observation_space.shape[0]
    observations = np.empty((n, obs_dim), dtype=np.float32)
    next_observations = np.empty((n, obs_dim), dtype=np.float32)
    actions = np.empty((n, action_dim), dtype=np.float32)
    rewards = np.empty(n, dtype=np.float32)
    terminals = np.zeros(n, dtype=bool)
    truncations = np.zeros(n, dtype=bool)
    low = env.action_space.low.astype(np.float64)
    high = env.action_space.high.astype(np.float64)
    noise_scale = noise_std * (high - low) / 2.0  # noise_std is in normalised [-1, 1] units
    noise_rng = np.random.default_rng(seed)
    device = next(iter(policy.parameters()), torch.empty(0)).device

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        obs, _ = env.reset(seed=seed)
        t = 0
        while t < n:
            obs_tensor = torch.as_tensor(obs, dtype=torch.float32, device=device)[None]  # (1, Do)
            chunk = policy.act(obs_tensor, mode).detach().cpu().numpy().astype(np.float64)
            if chunk.size != chunk_exec * action_dim:
                raise UserError(
                    f"The policy returned {chunk.size} action values per call, but with "
                    f"chunk_exec={chunk_exec} and {action_dim} action dimensions it should return "
                    f"{chunk_exec * action_dim}. Record with a policy made for this env."
                )
            for action in chunk.reshape(chunk_exec, action_dim):  # (Da,) one env step each
                if noise_std > 0:
                    action = action + noise_scale * noise_rng.standard_normal(action_dim)
                action = np.clip(action, low, high)
                next_obs, reward, terminated, truncated, _ = env.step(
                    action.astype(env.action_space.dtype)
                )
                observations[t], actions[t], rewards[t] = obs, action, reward
                next_observations[t] = next_obs
                terminals[t], truncations[t] = terminated, truncated
                t += 1
                if terminated or truncated:
                    obs, _ = env.reset()  # continues the env's RNG: still deterministic
                    break
                obs = next_obs
                if t == n:
                    break
    return observations, actions, rewards, terminals, truncations, next_observations


def check_policy_fits(policy: torch.nn.Module, obs_dim: int, action_dim: int, env: str) -> None:
    """UserError if the policy declares observation or action sizes other than the env's."""
    for what, declared, actual in (
        ("observation", getattr(policy, "obs_dim", None), obs_dim),
        ("action", getattr(policy, "action_dim", None), action_dim),
    ):
        if declared is not None and int(declared) != actual:
            raise UserError(
                f"The policy expects {what}s of size {declared}, but {env} has {what}s of "
                f"size {actual}. Record in the env the policy was trained on (see its run's "
                "config.json), or pass a policy trained on this env."
            )


def _env_name(env: EnvSpec) -> str:
    return env if isinstance(env, str) else getattr(env, "__qualname__", repr(env))


# ----------------------------------------------------------------------------- policies


def load_any_policy(path: str | Path) -> torch.nn.Module:
    """A saved policy ready to ``act(obs, mode)``: the one place collect loads policies (a
    policy file, a pretrain run directory or an RL run directory; see
    :func:`flowpolicy.train.load_any_policy`).

    Raises:
        UserError: the path does not exist or holds no readable policy.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(
            f"No policy at {path}: the path does not exist. Pass a saved policy file or the run "
            "directory that `flowpolicy train` printed."
        )
    return train_module.load_any_policy(path)


# ----------------------------------------------------------------------------- the expert


def resolve_target(config: CollectConfig) -> float:
    """The expert's stop return: ``config.target_return`` or the env's documented target."""
    if config.target_return is not None:
        return float(config.target_return)
    if config.env in MEDIUM_TARGETS:
        return MEDIUM_TARGETS[config.env]
    known = ", ".join(f"{env} {target:g}" for env, target in MEDIUM_TARGETS.items())
    raise UserError(
        f"There is no documented medium-level target return for {config.env!r} (known: "
        f"{known}). Pass --target-return R, the zero-sampling evaluation return at which the "
        "expert stops training (about a third to a half of what a full PPO run reaches), or "
        "record an existing policy with --policy PATH."
    )


def expert_train_config(config: CollectConfig, target: float) -> TrainConfig:
    """The expert's training run, fully determined by the collect config."""
    return TrainConfig(
        algo=config.expert,
        env=config.env,
        seed=config.seed,
        total_steps=config.expert_steps,
        run_dir=str(config.expert_dir),
        eval_every=config.expert_eval_every,
        eval_episodes=config.expert_eval_episodes,
        quiet=config.quiet,
        stop_at_return=target,
        device=config.device,
    )


# Fields that don't change a run's numbers: an existing expert may differ in them.
_COSMETIC = ("run_dir", "quiet", "tensorboard", "device")


def train_expert(
    config: CollectConfig, target: float, env_factory: Callable[[], gym.Env] | None = None
) -> dict[str, Any]:
    """Train the expert into OUT/expert, continue an interrupted one, or reuse a finished one.

    Returns:
        The expert run's ``done.json``: ``step`` (where it stopped), ``eval/zero/return_mean``,
        ``eval/random/return_mean``, ... and ``stopped_at_return`` (the target).

    Raises:
        UserError: OUT/expert holds something else, or an expert trained with other settings,
            or the expert did not reach the target within ``expert_steps``.
    """
    wanted = expert_train_config(config, target)
    run_dir = config.expert_dir
    if (run_dir / "config.json").is_file():
        _check_same_expert(read_run_config(run_dir), wanted, run_dir)
        if (run_dir / "done.json").is_file():
            pass  # finished before: reuse it
        elif (run_dir / CHECKPOINT_NAME).is_file():
            resume(run_dir, env_factory)
        else:  # stopped before its first checkpoint: nothing to keep
            shutil.rmtree(run_dir)
            train(wanted, env_factory)
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise UserError(
            f"{run_dir} exists but is not an expert run directory (no config.json). Move it away "
            "or pass another --out."
        )
    else:
        train(wanted, env_factory)

    done = json.loads((run_dir / "done.json").read_text())
    if "stopped_at_return" not in done:
        raise UserError(
            f"The expert in {run_dir} did not reach the target return {target:g} within "
            f"{config.expert_steps:,} steps (last evaluation, zero sampling: "
            f"{done.get('eval/zero/return_mean', float('nan')):.1f}). Record it anyway with "
            f"--policy {run_dir}, or start again in another --out with a larger --expert-steps "
            "or a lower --target-return."
        )
    return done


def _check_same_expert(existing: TrainConfig, wanted: TrainConfig, run_dir: Path) -> None:
    have, want = _flat_config(existing), _flat_config(wanted)
    differing = sorted(key for key in have.keys() | want.keys() if have.get(key) != want.get(key))
    if differing:
        raise UserError(
            f"{run_dir} holds an expert trained with other settings ({', '.join(differing)} "
            "differ), so continuing it would not reproduce this command. Pass another --out, "
            "delete that directory, or record it as it is with --policy."
        )


def _flat_config(config: TrainConfig) -> dict[str, Any]:
    """A run's config as ``{"seed": 0, "algo.gamma": 0.99, ...}`` without cosmetic fields."""
    data = config_to_dict(config)
    algo = {f"algo.{key}": value for key, value in data.pop("algo").items()}
    return {key: value for key, value in data.items() if key not in _COSMETIC} | algo


# ----------------------------------------------------------------------------- collect


def collect(
    config: CollectConfig,
    env_factory: Callable[[], gym.Env] | None = None,
    command: str | None = None,
) -> Path:
    """Train (or reuse, or load) the policy, record it and save the dataset; returns its path.

    Args:
        config: what to collect.
        env_factory: optional zero-argument callable returning the env, for the expert and the
            recording (``config.env`` then only picks the default target).
        command: the command line that made this call, stored in the metadata; default: the
            Python call ``flowpolicy.collect.collect(CollectConfig(...))``.

    Raises:
        UserError: a bad env, policy or output directory, no target for the env, an expert that
            missed its target, or a dataset already at OUT/dataset.hdf5.
    """
    console = Console(quiet=config.quiet, highlight=False, soft_wrap=True)
    env: EnvSpec = env_factory if env_factory is not None else config.env
    if config.dataset_path.exists():
        raise UserError(
            f"{config.dataset_path} already exists. Pass another --out, or delete it to collect "
            "again (an expert in the same directory is reused)."
        )
    if config.policy is not None and config.target_return is not None:
        raise UserError(
            "--target-return sets where a newly trained expert stops, but --policy records an "
            "existing policy: pass only one of them."
        )

    device = resolve_device(config.device)  # a bad --device fails before anything is written
    expert: dict[str, Any] | None = None
    if config.policy is None:
        target = resolve_target(config)
        console.print(
            f"[bold]collect[/] training a PPO expert on {config.env} until its evaluation "
            f"return reaches {target:g} -> {config.expert_dir}"
        )
        done = train_expert(config, target, env_factory)
        expert = {
            "run_dir": str(config.expert_dir),
            "target_return": target,
            "eval_return": done["eval/zero/return_mean"],
            "eval_return_random": done.get("eval/random/return_mean"),
            "stop_step": done["step"],
        }
        policy_path = config.expert_dir
    else:
        policy_path = Path(config.policy)
    policy = load_any_policy(policy_path).to(device)

    console.print(
        f"[bold]collect[/] recording {config.transitions:,} transitions of {policy_path} "
        f"({config.mode} sampling, noise {config.noise:g})"
    )
    dataset = record(policy, env, config.transitions, config.seed, config.mode, config.noise)
    dataset.metadata |= {
        "source": "flowpolicy collect",
        "command": command if command is not None else f"flowpolicy.collect.collect({config!r})",
        "policy_path": str(policy_path),
        "expert": expert,
        "config": dataclasses.asdict(config),
        "versions": _versions(),
    }
    save_dataset(config.dataset_path, dataset)
    console.print(summary(dataset, config.dataset_path), markup=False)
    return config.dataset_path


def summary(dataset: Dataset, path: str | Path) -> str:
    """A few human-readable lines about a collected dataset (from its metadata)."""
    meta = dataset.metadata
    lines = []
    expert = meta.get("expert")
    if expert:
        lines.append(
            f"expert   eval return {expert['eval_return']:.2f} (zero sampling) at step "
            f"{expert['stop_step']:,}, target {expert['target_return']:g}: {expert['run_dir']}"
        )
    else:
        lines.append(f"policy   {meta.get('policy_path')}")
    if meta["return_mean"] is None:
        returns = "no complete episode"
    else:
        returns = f"return {meta['return_mean']:.2f} +/- {meta['return_std']:.2f}"
    cut = " + 1 cut at the end" if meta["last_episode_cut"] else ""
    lines.append(
        f"data     {returns} over {meta['complete_episodes']:,} episodes{cut}, "
        f"{dataset.num_transitions:,} transitions ({meta['mode']} sampling, noise "
        f"{meta['noise_std']:g})"
    )
    lines.append(f"saved    {path}")
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    """Versions of the packages that decide the recorded numbers."""
    versions = {}
    for package in ("flowpolicy", "torch", "numpy", "gymnasium", "mujoco", "dm_control"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
