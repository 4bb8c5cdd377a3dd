"""What a training run builds before its loop: the algorithm on the run's device and env, the
pretrained policy it fine-tunes (``--init``, checked against the env), and the offline dataset
of offline-to-online methods.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flowpolicy import distributed
from flowpolicy.algos.registry import spec_of_config
from flowpolicy.algos.spec import Algorithm
from flowpolicy.checkpoint import CHECKPOINT_NAME, load_checkpoint
from flowpolicy.data import Dataset, load_dataset
from flowpolicy.envs.tensor_env import TensorVectorEnv, make_tensor_env
from flowpolicy.errors import UserError
from flowpolicy.policy_io import POLICY_NAME, is_train_run_dir, load_policy_from
from flowpolicy.train_config import TrainConfig, read_run_config

INIT_POLICY_NAME = "init_policy.pt"


def require_wandb() -> None:
    """UserError with the install command when --wandb-project is given without wandb."""
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        raise UserError(
            "--wandb-project needs the wandb package, which is not installed. Install it with "
            "`pip install 'flowpolicy[wandb]'` (or `pip install wandb`), or leave out "
            "--wandb-project; TensorBoard events are written either way."
        )


def build_algorithm(
    config: TrainConfig,
    envs: TensorVectorEnv,
    policy: nn.Module | None = None,
    device: torch.device | str = "cpu",
) -> Algorithm:
    """Instantiate the algorithm on ``device`` for the envs' observation and (per-step) action
    spaces, starting from ``policy`` when fine-tuning.

    The algorithm is built inside ``torch.device(device)``, so every network, buffer and
    optimiser state it makes lands on the run's device without each file saying so.
    """
    action_dim = envs.action_dim // config.algo.chunk_exec
    low, high = envs.action_low[:action_dim], envs.action_high[:action_dim]
    if policy is not None:
        check_policy_fits_env(policy, envs.obs_dim, low, high, config)
    device = torch.device(device)
    with device:
        return spec_of_config(config.algo).algorithm(
            envs.obs_dim,
            low.to(device),
            high.to(device),
            config.algo,
            policy=None if policy is None else policy.to(device),
        )


def load_offline_dataset(config: TrainConfig, envs: TensorVectorEnv) -> Dataset | None:
    """The dataset named by the algorithm config's ``dataset`` field (offline-to-online
    methods), checked against the env's observation and action sizes; None when the config
    names none. The algorithm receives it through its ``load_offline_data(dataset)``."""
    path = getattr(config.algo, "dataset", "")
    if not path:
        return None
    dataset = load_dataset(path)  # DatasetError (a UserError) when unreadable
    obs_dim, action_dim = envs.obs_dim, envs.action_dim // config.algo.chunk_exec
    problems = []
    if dataset.obs_dim != obs_dim:
        problems.append(f"observation size {dataset.obs_dim} vs the env's {obs_dim}")
    if dataset.action_dim != action_dim:
        problems.append(f"action size {dataset.action_dim} vs the env's {action_dim}")
    if problems:
        recorded = dataset.metadata.get("env_id")
        hint = f" (it was recorded on {recorded})" if recorded else ""
        raise UserError(
            f"The dataset {path}{hint} does not fit {config.env}: {'; '.join(problems)}. "
            "Pass the --env the dataset was recorded on, or a dataset recorded on this env "
            "(`flowpolicy collect`)."
        )
    return dataset


# ----------------------------------------------------------------------------- fine-tuning


def load_init_policy(config: TrainConfig, run_dir: Path, resume: bool) -> nn.Module | None:
    """The pretrained policy a fine-tuning run starts from (None when training from scratch).

    A resumed run reads its own copy (``init_policy.pt``), so it never depends on the
    original file still being there.
    """
    expected = spec_of_config(config.algo).fine_tunes
    if config.init is None:
        if spec_of_config(config.algo).requires_init:
            names = " or ".join(cls.__name__ for cls in expected)
            raise UserError(
                f"{config.algo_name} fine-tunes a pretrained {names} and cannot train from "
                "scratch, but no --init was given. Pass --init POLICY: a policy.pt from "
                "`flowpolicy pretrain`, a pretrain run directory, or a `flowpolicy train` run "
                f"directory holding a {names}."
            )
        return None
    source = run_dir / INIT_POLICY_NAME if resume else Path(config.init)
    policy = load_any_policy(source)
    if not isinstance(policy, expected):
        names = " or ".join(cls.__name__ for cls in expected)
        raise UserError(
            f"{config.algo_name} fine-tunes a {names}, but {config.init} holds a "
            f"{type(policy).__name__}. Pretrain a {names} (`flowpolicy pretrain "
            "--policy ...`) or pick an algorithm for this policy class."
        )
    return policy


def with_policy_settings(config: TrainConfig, policy: nn.Module | None) -> TrainConfig:
    """The config with the pretrained policy's chunking and flow (or denoising) steps, which
    it must use, and its class where the algorithm takes more than one (DPPO)."""
    if policy is None:
        return config
    fields = {f.name for f in dataclasses.fields(config.algo)}
    settings = {
        name: getattr(policy, name)
        for name in ("chunk", "chunk_exec", "flow_steps", "denoising_steps")
        if name in fields and hasattr(policy, name)
    }
    if "policy_class" in fields:
        settings["policy_class"] = type(policy).__name__
    try:
        return dataclasses.replace(config, algo=dataclasses.replace(config.algo, **settings))
    except ValueError as error:  # the policy's settings conflict with another option
        described = ", ".join(f"{name} {value}" for name, value in settings.items())
        raise UserError(
            f"The pretrained policy {config.init} ({described}) does not fit the "
            f"{config.algo_name} options: {error}"
        ) from error


def check_policy_fits_env(
    policy: nn.Module, obs_dim: int, low: torch.Tensor, high: torch.Tensor, config: TrainConfig
) -> None:
    """A pretrained policy must have the env's observation size, action size and bounds."""
    problems = []
    if policy.obs_dim != obs_dim:
        problems.append(f"observation size {policy.obs_dim} vs the env's {obs_dim}")
    if policy.action_dim != len(low):
        problems.append(f"action size {policy.action_dim} vs the env's {len(low)}")
    elif not (
        torch.allclose(policy.action_low.cpu(), low.cpu())
        and torch.allclose(policy.action_high.cpu(), high.cpu())
    ):
        problems.append("different action bounds")
    if problems:
        raise UserError(
            f"The policy {config.init} does not fit {config.env}: {'; '.join(problems)}. "
            "Fine-tune it on the env it was pretrained for, or pretrain one for this env."
        )


# ----------------------------------------------------------------------------- loading runs


def load_algorithm(
    run_dir: str | Path, device: torch.device | str = "cpu"
) -> tuple[TrainConfig, Algorithm, dict[str, Any]]:
    """Rebuild a run's algorithm from its last checkpoint on ``device`` (whatever device it
    trained on): (config, algorithm, checkpoint)."""
    device = torch.device(device)
    config = read_run_config(run_dir)
    checkpoint = load_checkpoint(Path(run_dir) / CHECKPOINT_NAME, map_location=device)
    init_policy = load_init_policy(config, Path(run_dir), resume=True)
    envs = make_tensor_env(config.env, 1, seed=config.seed, chunk_exec=config.algo.chunk_exec)
    try:  # rank 0's algorithm (its share of the envs), whose state the checkpoint holds
        rank0 = distributed.rank_share(config.algo, distributed.run_world_size(run_dir))
        algo = build_algorithm(dataclasses.replace(config, algo=rank0), envs, init_policy, device)
    finally:
        envs.close()
    algo.load_state_dict(checkpoint["algo"])
    return config, algo, checkpoint


def load_policy(run_dir: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The policy a run evaluates (EMA weights where the algorithm keeps them), on ``device``,
    ready to ``act(obs, mode)``."""
    return load_algorithm(run_dir, device)[1].eval_policy


def load_any_policy(path: str | Path) -> nn.Module:
    """:func:`~flowpolicy.policy_io.load_policy_from`, and also a train run directory from
    before runs exported policy.pt (its policy rebuilt from the last checkpoint)."""
    path = Path(path)
    if path.is_dir() and is_train_run_dir(path) and not (path / POLICY_NAME).is_file():
        return load_policy(path)
    return load_policy_from(path)
