"""Behaviour-cloning pretraining: dataset -> normalisers -> BC gradient steps -> EMA policy,
with validation, evaluation in the env, atomic checkpoints and exact resume.

    flowpolicy pretrain --dataset hopper.hdf5 --policy flow     # or diffusion, gaussian

Data flows one way: the dataset's episodes are split into training and validation episodes,
the policy's observation and action normalisers are fitted on the training episodes (then
frozen), every training transition starts one action chunk of ``Ta`` actions that never
crosses an episode end (:meth:`flowpolicy.data.Dataset.chunk_indices`, padded with the
episode's last action), and :class:`flowpolicy.algos.bc.BC` takes minibatches of (normalised
observation, raw-space chunk). Its EMA policy is what is validated, evaluated in the env
(``eval/<mode>/return_mean``, as in RL runs) and exported.

A run directory holds ``config.json``, ``metrics.jsonl``, ``tb/``, ``checkpoint.pt`` (everything
needed to resume exactly), ``policy.pt`` (the EMA policy, rewritten at every checkpoint; see
:mod:`flowpolicy.policy_io`) and, once finished, ``done.json``. ``step`` in metrics.jsonl
counts gradient steps.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from flowpolicy import distributed
from flowpolicy.algos.bc import BC, BCConfig, Policy
from flowpolicy.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    record_stop,
    refuse_resume_if_stopped,
    save_checkpoint,
    save_json,
)
from flowpolicy.data import Dataset, DatasetFormat, load_dataset
from flowpolicy.device import (
    forked_rng_devices,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
)
from flowpolicy.envs import env_dims, make_env
from flowpolicy.errors import NonFiniteLossError, UserError
from flowpolicy.evaluation import EVAL_SEED_OFFSET, evaluate_modes
from flowpolicy.logging import Logger, SilentLogger
from flowpolicy.nets import Activation, residual_shape
from flowpolicy.policies import (
    DiffusionPolicy,
    FlowPolicy,
    GaussianPolicy,
    Network,
    ObsNormalization,
)
from flowpolicy.policy_io import POLICY_NAME, save_policy

PolicyKind = Literal["flow", "diffusion", "gaussian"]
VALIDATION_SEED_OFFSET = 20_000


@dataclass(frozen=True)
class PretrainConfig:
    """Behaviour-cloning pretraining of a flow, diffusion or Gaussian policy. Defaults:
    DPPO's and ReinFlow's Gym pretraining, with a CPU-sized number of gradient steps."""

    dataset: str
    """dataset file in flowpolicy, D4RL, Minari or robomimic format (or a Minari directory)."""
    dataset_format: DatasetFormat = "auto"
    """format of the dataset file; auto detects it."""
    obs_keys: tuple[str, ...] | None = None
    """for dict observations (robomimic, Minari): the keys to concatenate, in order."""
    env: str | None = None
    """env to check dimensions against and evaluate in; default: the dataset's metadata env_id."""
    policy: PolicyKind = "flow"
    """policy class: flow (CFM), diffusion (DDPM, for DPPO) or gaussian (max-likelihood baseline)."""
    chunk: int = 4
    """Ta, actions per policy sample (DPPO/ReinFlow Gym: 4)."""
    chunk_exec: int | None = None
    """Ta_exec <= Ta, actions executed per sample; default: all of the chunk (DPPO Gym)."""
    flow_steps: int = 10
    """K Euler steps of the flow policy's sampler (the CFM loss itself has no steps)."""
    denoising_steps: int = 20
    """K DDPM steps of the diffusion policy (DPPO Gym)."""
    ddim_steps: int | None = None
    """sample the diffusion policy with this many DDIM steps instead of the K-step DDPM chain."""
    ddim_eta: float = 1.0
    """DDIM noise level of random sampling when ddim_steps is set."""
    network: Network = "residual"
    """network of the policy: residual MLP (DPPO/ReinFlow Gym) or plain MLP."""
    hidden: tuple[int, ...] = (512, 512, 512)
    """hidden sizes; residual: an odd number of equal widths (1 + 2 per residual block)."""
    activation: Activation = "relu"
    """hidden activation (ReLU in the Gym configs)."""
    layer_norm: bool = False
    """LayerNorm inside the residual blocks."""
    time_dim: int = 16
    """size of the sinusoidal time embedding (flow and diffusion)."""
    initial_log_std: float = 0.0
    """initial log-std of the Gaussian policy."""
    obs_normalization: ObsNormalization = "min_max"
    """observation scaling fitted on the training episodes: min_max to [-1, 1] (DPPO) or running (mean/std); frozen after fitting."""
    bc: BCConfig = field(default_factory=BCConfig)
    """optimisation hyper-parameters."""
    gradient_steps: int = 100_000
    """gradient steps to train for."""
    validation_fraction: float = 0.1
    """fraction of whole episodes held out for the validation loss (0 disables it)."""
    validation_size: int = 10_000
    """at most this many held-out chunks are used for the validation loss."""
    log_every: int = 1_000
    """gradient steps between metric lines (train loss mean, validation loss)."""
    eval_every: int = 20_000
    """gradient steps between evaluations in the env (also at the end); 0: only at the end."""
    eval_episodes: int = 10
    """episodes per evaluation, run once with zero and once with random sampling."""
    checkpoint_every: int = 5_000
    """gradient steps between checkpoints (and policy.pt exports); also at the end."""
    seed: int = 0
    """drives the split, the initialisation, the minibatches and the evaluation envs."""
    run_dir: str | None = None
    """run directory; default runs/pretrain-<policy>-<dataset>-s<seed>-<time>."""
    torch_threads: int = 1
    """torch CPU threads."""
    device: str = "auto"
    """where the policy trains and the dataset lives: auto (CUDA when available), cpu, cuda
    or cuda:N."""
    tensorboard: bool = True
    """write TensorBoard events."""
    quiet: bool = False
    """no console output."""

    def __post_init__(self) -> None:
        positive = (
            "chunk", "flow_steps", "denoising_steps", "time_dim", "gradient_steps",
            "validation_size", "log_every", "eval_episodes", "checkpoint_every", "torch_threads",
        )  # fmt: skip
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}.")
        if self.chunk_exec is not None and not 1 <= self.chunk_exec <= self.chunk:
            raise ValueError(
                f"chunk_exec ({self.chunk_exec}) must be between 1 and chunk ({self.chunk})."
            )
        if self.ddim_steps is not None and not 1 <= self.ddim_steps <= self.denoising_steps:
            raise ValueError(
                f"ddim_steps ({self.ddim_steps}) must be between 1 and denoising_steps "
                f"({self.denoising_steps})."
            )
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(
                f"validation_fraction must be in [0, 1), got {self.validation_fraction}."
            )
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0, got {self.eval_every}.")
        if self.time_dim % 2 or self.time_dim < 4:
            raise ValueError(f"time_dim must be even and >= 4, got {self.time_dim}.")
        if self.network == "residual":
            residual_shape(self.hidden)  # ValueError with the expected shape

    @property
    def executed(self) -> int:
        """Ta_exec."""
        return self.chunk if self.chunk_exec is None else self.chunk_exec


@dataclass
class PretrainResult:
    """What :func:`pretrain` returns: the run directory and the final metrics."""

    run_dir: Path
    metrics: dict[str, Any]


# ----------------------------------------------------------------------------- config files


def config_to_dict(config: PretrainConfig, world_size: int = 1) -> dict[str, Any]:
    """JSON-ready resolved config, with the number of processes that run it (``world_size``,
    torchrun's)."""
    return dataclasses.asdict(config) | {"world_size": world_size}


def config_from_dict(data: dict[str, Any]) -> PretrainConfig:
    """Inverse of :func:`config_to_dict` (tuples restored from JSON lists)."""
    data = dict(data)
    data.pop("world_size", None)
    bc = BCConfig(**data.pop("bc"))
    for name in ("hidden", "obs_keys"):
        if isinstance(data.get(name), list):
            data[name] = tuple(data[name])
    return PretrainConfig(bc=bc, **data)


def read_pretrain_config(run_dir: str | Path) -> PretrainConfig:
    """The resolved config of a pretrain run directory; UserError if it is not one."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise UserError(
            f"{run_dir} is not a pretrain run directory (no config.json in it). Pass the "
            "directory that `flowpolicy pretrain` printed when the run started."
        )
    try:
        return config_from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(
            f"{path} could not be read as a pretrain config ({type(error).__name__}: {error}). "
            "Is it a `flowpolicy train` run, or was it edited by hand? Restore it or start a "
            "new run."
        ) from error


def default_run_dir(config: PretrainConfig) -> Path:
    stem = Path(config.dataset).stem or "dataset"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"pretrain-{config.policy}-{stem}-s{config.seed}-{stamp}"


# ----------------------------------------------------------------------------- data


def resolve_env(config: PretrainConfig, dataset: Dataset) -> str:
    """The env id: ``config.env``, else the dataset's ``env_id`` metadata."""
    env_id = config.env or dataset.metadata.get("env_id")
    if not isinstance(env_id, str) or not env_id:
        raise UserError(
            f"The dataset {config.dataset} does not say which env it comes from (no env_id in "
            "its metadata). Pass the env to evaluate in with --env, e.g. --env Hopper-v5."
        )
    return env_id


def env_action_bounds(env_id: str, dataset: Dataset) -> tuple[int, np.ndarray, np.ndarray]:
    """(obs_dim, action low (Da,), action high (Da,)) of the env, checked against the data."""
    env = make_env(env_id)
    try:
        obs_dim, action_dim = env_dims(env)
        low, high = env.action_space.low.copy(), env.action_space.high.copy()
    finally:
        env.close()
    if (obs_dim, action_dim) != (dataset.obs_dim, dataset.action_dim):
        raise UserError(
            f"The dataset has observations of size {dataset.obs_dim} and actions of size "
            f"{dataset.action_dim}, but {env_id} has {obs_dim} and {action_dim}. Pass the env "
            "the data was recorded in with --env (or, for dict observations, choose the "
            "matching --obs-keys)."
        )
    return obs_dim, low, high


def split_episodes(num_episodes: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) episode indices: a seeded shuffle, ``round(fraction * E)``
    validation episodes (at least 1 if fraction > 0, at most E - 1)."""
    order = np.random.default_rng(seed).permutation(num_episodes)
    held_out = 0
    if fraction > 0 and num_episodes > 1:
        held_out = min(max(round(fraction * num_episodes), 1), num_episodes - 1)
    return np.sort(order[held_out:]), np.sort(order[:held_out])


def chunk_tensors(policy: Policy, dataset: Dataset, chunk: int) -> tuple[Tensor, Tensor]:
    """Normalised observations (n, Do) and raw-space action chunks (n, Ta * Da), one chunk
    starting at every transition, padded at episode ends."""
    rows = dataset.chunk_indices(chunk, pad=True)  # (n, Ta)
    with torch.no_grad():
        obs = policy.obs_norm(torch.as_tensor(dataset.observations[rows[:, 0]]))
        raw = policy.raw_from_env(torch.as_tensor(dataset.actions))  # (N, Da)
    actions = raw[torch.as_tensor(rows)].reshape(len(rows), -1)
    return obs, actions


def build_policy(config: PretrainConfig, obs_dim: int, low: np.ndarray, high: np.ndarray) -> Policy:
    """An untrained policy of ``config.policy``."""
    common = dict(
        chunk=config.chunk,
        chunk_exec=config.executed,
        network=config.network,
        hidden=config.hidden,
        activation=config.activation,
        layer_norm=config.layer_norm,
        obs_normalization=config.obs_normalization,
    )
    if config.policy == "flow":
        return FlowPolicy(
            obs_dim,
            low,
            high,
            flow_steps=config.flow_steps,
            time_dim=config.time_dim,
            output_scale=1.0,
            squash="clip",
            **common,
        )
    if config.policy == "diffusion":
        return DiffusionPolicy(
            obs_dim,
            low,
            high,
            denoising_steps=config.denoising_steps,
            ddim_steps=config.ddim_steps,
            ddim_eta=config.ddim_eta,
            time_dim=config.time_dim,
            **common,
        )
    return GaussianPolicy(obs_dim, low, high, initial_log_std=config.initial_log_std, **common)


def _jsonable(value: Any) -> Any:
    """A JSON round trip that turns numpy scalars and arrays into lists and numbers."""

    def default(item: Any) -> Any:
        if isinstance(item, np.generic | np.ndarray):
            return item.tolist()
        return str(item)

    return json.loads(json.dumps(value, default=default))


class _Mean:
    """Running means of scalar metrics between two log lines (saved in checkpoints)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.count += 1

    def pop(self) -> dict[str, float]:
        means = {name: total / max(self.count, 1) for name, total in self.sums.items()}
        self.sums, self.count = {}, 0
        return means


# ----------------------------------------------------------------------------- the loop


def pretrain(config: PretrainConfig, resume: bool = False) -> PretrainResult:
    """Pretrain one policy by behaviour cloning; returns its run directory and final metrics.

    Args:
        config: the run.
        resume: continue the run in ``config.run_dir`` from its last checkpoint.

    Under ``torchrun`` (``WORLD_SIZE`` set) this is one rank of a data-parallel run
    (:mod:`flowpolicy.distributed`): every rank fits the same normalisers on all the training
    episodes, then keeps every ``world_size``-th training chunk (rank r: chunks r, r + W, ...)
    and draws ``batch_size / world_size`` of them per step, so the averaged gradient is that of
    one minibatch of ``batch_size`` from the whole dataset. Rank 0 alone writes the run
    directory, logs, validates and evaluates.

    Raises:
        UserError: unreadable dataset, unknown env or mismatched dimensions, an existing run
            directory (without ``resume``), a batch the ranks cannot share, a resume with
            another number of processes, or a loss that became NaN/inf.
    """
    ranks = distributed.ranks_from_environment()
    run_dir = Path(config.run_dir) if config.run_dir else default_run_dir(config)
    if not resume and (run_dir / CHECKPOINT_NAME).exists():
        raise UserError(
            f"{run_dir} already holds a run. Continue it with `flowpolicy pretrain --resume "
            f"{run_dir}`, or pass another --run-dir."
        )
    if resume:
        refuse_resume_if_stopped(run_dir)
        distributed.check_resume_world_size(run_dir, ranks.world_size)
    rank_batch = distributed.split_batch(config.bc.batch_size, ranks.world_size, "draws", "chunks")
    if not resume:
        # An absolute dataset path, so that `pretrain --resume` works from any directory.
        config = dataclasses.replace(
            config, dataset=str(Path(config.dataset).expanduser().absolute())
        )
    device = distributed.rank_device(resolve_device(config.device), ranks)
    torch.set_num_threads(config.torch_threads)
    seed_everything(config.seed)  # the same on every rank: the same split and initial weights
    dataset = load_dataset(config.dataset, config.dataset_format, config.obs_keys)
    env_id = resolve_env(config, dataset)
    obs_dim, low, high = env_action_bounds(env_id, dataset)
    train_ids, val_ids = split_episodes(
        dataset.num_episodes, config.validation_fraction, config.seed
    )
    train_data = dataset.subset(train_ids)
    policy = build_policy(config, obs_dim, low, high)
    policy.fit_normalizers(
        torch.as_tensor(train_data.observations), torch.as_tensor(train_data.actions)
    )
    train_obs, train_actions = chunk_tensors(policy, train_data, config.chunk)
    train_chunks = len(train_obs)  # of all ranks together
    # Each rank's share of the chunks, after the normalisers saw them all (the same on every
    # rank: fitted before the process group starts, so without collectives).
    train_obs = train_obs[ranks.rank :: ranks.world_size]
    train_actions = train_actions[ranks.rank :: ranks.world_size]
    validation = None
    if len(val_ids):
        val_obs, val_actions = chunk_tensors(policy, dataset.subset(val_ids), config.chunk)
        keep = np.random.default_rng(config.seed).permutation(len(val_obs))
        keep = torch.as_tensor(np.sort(keep[: config.validation_size]))
        validation = (val_obs[keep].to(device), val_actions[keep].to(device))
    # Normalisers are fitted and chunks cut on the CPU; the policy and the training data then
    # move to the run's device once, so a gradient step never copies.
    policy.to(device)
    train_obs, train_actions = train_obs.to(device), train_actions.to(device)
    with device:
        bc = BC(policy, config.bc, config.gradient_steps)
    distributed.start(device, ranks)
    if ranks.rank > 0:
        seed_everything(config.seed + ranks.rank)  # each rank draws its own minibatches
    saved_config = config_to_dict(config, ranks.world_size)
    step, wall_offset, means, last_eval = 0, 0.0, _Mean(), {}
    keep_lines = resume_step = None

    if resume:
        checkpoint = load_checkpoint(run_dir / CHECKPOINT_NAME, map_location=device)
        bc.load_state_dict(checkpoint["bc"])
        loop = checkpoint["loop"]
        step, wall_offset, last_eval = loop["step"], loop["wall_time"], loop["last_eval"]
        means.sums, means.count = loop["mean_sums"], loop["mean_count"]
        own = checkpoint["other_ranks"][ranks.rank - 1] if ranks.rank > 0 else loop
        set_rng_state(own["rng"])
        keep_lines, resume_step = loop["metrics_lines"], step
    elif ranks.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(saved_config, indent=2) + "\n")

    if ranks.is_main:
        logger = Logger(run_dir, keep_lines, resume_step, config.tensorboard, config.quiet)
    else:
        logger = SilentLogger()
    start = time.perf_counter()
    metadata = {
        "source": "flowpolicy pretrain",
        "policy": config.policy,
        "env_id": env_id,
        "obs_dim": obs_dim,
        "action_dim": dataset.action_dim,
        "chunk": config.chunk,
        "chunk_exec": config.executed,
        "run_dir": str(run_dir),
        "eval_seed": config.seed + EVAL_SEED_OFFSET,  # lets `flowpolicy eval` repeat our evaluation
        "dataset": {
            "path": str(config.dataset),
            "format": config.dataset_format,
            "num_episodes": dataset.num_episodes,
            "num_transitions": dataset.num_transitions,
            "train_episodes": len(train_ids),
            "validation_episodes": len(val_ids),
            "episode_return_mean": float(dataset.episode_returns().mean()),
            "metadata": _jsonable(dataset.metadata),
        },
    }

    def wall_time() -> float:
        return wall_offset + time.perf_counter() - start

    def evaluate() -> dict[str, float]:
        metrics = evaluate_modes(
            bc.eval_policy,
            env_id,
            config.eval_episodes,
            config.seed + EVAL_SEED_OFFSET,
            config.executed,
        )
        logger.log(step, wall_time(), metrics)
        return metrics

    def validation_loss() -> dict[str, float]:
        if validation is None or not ranks.is_main:
            return {}
        # The same draws of (tau or k, eps) every time, without touching the training RNG.
        with torch.random.fork_rng(devices=forked_rng_devices(device)):
            torch.manual_seed(config.seed + VALIDATION_SEED_OFFSET)
            return {"loss/bc_val": bc.loss(*validation)}

    checkpoint_step = step if resume else None  # the first one comes after checkpoint_every

    def checkpoint() -> None:
        """Rank 0 writes the weights (the same on every rank) and every rank's RNG state."""
        nonlocal checkpoint_step
        checkpoint_step = step
        rngs = distributed.gather_to_main(None if ranks.is_main else {"rng": rng_state()})
        if not ranks.is_main:
            return
        loop_state = {
            "step": step,
            "wall_time": wall_time(),
            "last_eval": last_eval,
            "mean_sums": dict(means.sums),
            "mean_count": means.count,
            "rng": rng_state(),
            "metrics_lines": logger.lines,
        }
        state = {"bc": bc.state_dict(), "loop": loop_state, "config": saved_config}
        if ranks.distributed:
            state["other_ranks"] = rngs[1:]
        save_checkpoint(run_dir / CHECKPOINT_NAME, state)
        export = metadata | {"gradient_steps": step, "eval": last_eval}
        save_policy(run_dir / POLICY_NAME, bc.eval_policy, export)

    if resume:
        logger.print(f"[bold]flowpolicy[/] resuming {run_dir} at gradient step {step:,}")
    else:
        logger.print(
            f"[bold]flowpolicy[/] pretrain {config.policy} on {config.dataset} "
            f"({train_chunks:,} training chunks, env {env_id}"
            + (f", {ranks.world_size} processes" if ranks.distributed else "")
            + f") -> {run_dir}"
        )
    interval_start = time.perf_counter()
    try:
        while step < config.gradient_steps:
            # Drawn from the CPU generator on every device: the same minibatches everywhere.
            batch = torch.randint(0, len(train_obs), (rank_batch,)).to(device)
            means.add(bc.update(train_obs[batch], train_actions[batch]))
            step += 1
            finished = step >= config.gradient_steps
            log_due = step % config.log_every == 0 or finished
            if log_due:
                interval_steps = means.count
                # Every rank's mean loss, averaged: the whole minibatch's numbers.
                metrics = {k: distributed.all_mean(v) for k, v in means.pop().items()}
                metrics |= validation_loss()
                metrics["charts/sps"] = interval_steps / (time.perf_counter() - interval_start)
                metrics["charts/epoch"] = step * config.bc.batch_size / train_chunks
                logger.log(step, wall_time(), metrics)
            if ranks.is_main and (
                finished or (config.eval_every and step % config.eval_every == 0)
            ):
                last_eval = evaluate()  # the other ranks wait at the next gradient step
            if finished or step % config.checkpoint_every == 0:
                checkpoint()
            if log_due:
                logger.print(
                    f"step {step:>9,}/{config.gradient_steps:,} loss {metrics['loss/bc']:.4f} "
                    f"val {metrics.get('loss/bc_val', float('nan')):.4f} | eval zero "
                    f"{last_eval.get('eval/zero/return_mean', float('nan')):8.2f} random "
                    f"{last_eval.get('eval/random/return_mean', float('nan')):8.2f}"
                )
                interval_start = time.perf_counter()
    except NonFiniteLossError as error:
        # Resuming would replay the same numbers into the same stop: record it so that a
        # resume (and the benchmark harness) says so instead of repeating it.
        if not ranks.is_main:
            raise UserError(f"rank {ranks.rank}: {error}") from error
        raise record_stop(run_dir, step, checkpoint_step, str(error), "Pretraining") from error
    finally:
        logger.close()

    final = {"step": step, "wall_time": round(wall_time(), 3)} | last_eval
    if ranks.is_main:
        save_json(run_dir / "done.json", final)
    distributed.stop()
    return PretrainResult(run_dir, final)


def resume(run_dir: str | Path) -> PretrainResult:
    """Continue the pretrain run in ``run_dir`` from its last checkpoint (same numbers)."""
    config = dataclasses.replace(read_pretrain_config(run_dir), run_dir=str(run_dir))
    return pretrain(config, resume=True)
