"""The on-policy training loop: rollouts -> algo.update -> metrics -> logger, with evaluation,
atomic checkpoints and exact resume in one place.

Data flows one way: env -> algo.act -> buffer -> algo.update(batch) -> metrics -> logger. The
loop never looks inside an algorithm's record; algorithms never touch envs, files or loggers.

A run directory holds ``config.json`` (resolved), ``metrics.jsonl``, ``tb/`` (TensorBoard),
``checkpoint.pt`` and, once finished, ``done.json``: enough to resume or evaluate the run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Union

import gymnasium as gym
import torch
import tyro
from torch import Tensor, nn

from flowpolicy import distributed
from flowpolicy.algos.fpo import FPOConfig
from flowpolicy.algos.presets import find_preset, overridden_values
from flowpolicy.algos.registry import ALGORITHMS, find_algorithm, spec_of_config
from flowpolicy.algos.spec import Algorithm
from flowpolicy.buffers import RolloutBuffer
from flowpolicy.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    record_stop,
    refuse_resume_if_stopped,
    save_checkpoint,
    save_json,
)
from flowpolicy.data import Dataset, load_dataset
from flowpolicy.device import (
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
)
from flowpolicy.envs.registry import VectorKind
from flowpolicy.envs.tensor_env import TensorVectorEnv, make_tensor_env
from flowpolicy.errors import NonFiniteLossError, UserError
from flowpolicy.evaluation import EVAL_SEED_OFFSET, evaluate_modes
from flowpolicy.logging import Logger, SilentLogger, WandbMode, start_wandb
from flowpolicy.policy_io import POLICY_NAME, is_train_run_dir, load_policy_from, save_policy

AlgoConfig = Union[tuple(spec.config for spec in ALGORITHMS.values())]  # noqa: UP007
"""Any registered algorithm's config (built from the registry, so a new algorithm needs no edit
here)."""
INIT_POLICY_NAME = "init_policy.pt"


@dataclass(frozen=True)
class TrainConfig:
    """One training run: an algorithm's config plus where, how long and how to log."""

    algo: AlgoConfig = field(default_factory=FPOConfig)
    """the algorithm and its hyper-parameters."""
    env: str = "Hopper-v5"
    """Gymnasium id (also user-registered ids and "module:EnvId"), "dmc/<domain>-<task>", "playground/<Name>[:impl=jax|warp,episode_length=N]" (MuJoCo Playground's DMC tasks as one JAX batch; docs/playground.md), or "toy/bandit", "toy/nav"."""
    seed: int = 0
    """drives torch, numpy, python's random and the envs: same seed, same machine, same numbers."""
    total_steps: int = 1_000_000
    """env steps to train for (every executed action counts)."""
    run_dir: str | None = None
    """run directory; default runs/<algo>-<env>-s<seed>-<time>."""
    eval_every: int = 50_000
    """env steps between evaluations (also at step 0 and at the end); 0 disables periodic evaluation."""
    eval_episodes: int = 10
    """episodes per evaluation, run once with zero and once with random sampling."""
    checkpoint_every: int = 5
    """iterations between checkpoints (and one at the end)."""
    torch_threads: int = 1
    """torch CPU threads; 1 is fastest for these small networks and lets runs share cores."""
    vector_env: VectorKind = "sync"
    """how Gymnasium, DMC and toy envs are stepped: sync (in this process) or async (one worker process per env; can pay off on many cores, measure with benchmarks/throughput.py)."""
    device: str = "auto"
    """where networks, optimisers, buffers and updates live: auto (CUDA when available), cpu,
    cuda or cuda:N. CPU simulators step on the CPU either way (one copy per step)."""
    tensorboard: bool = True
    """write TensorBoard events."""
    quiet: bool = False
    """no console output."""
    init: str | None = None
    """fine-tune this pretrained policy instead of starting from scratch: a policy file
    (policy.pt from `flowpolicy pretrain`), a pretrain run directory, or a `flowpolicy train` run
    directory. Its network, normalisers, chunk, chunk_exec and flow_steps are used (they replace
    the config's); a copy is kept in the run directory as init_policy.pt."""
    stop_at_return: float | None = None
    """end the run early at the first evaluation whose zero-sampling mean return reaches this
    (e.g. to stop an expert at a "medium" level); None trains for total_steps."""
    wandb_project: str | None = None
    """also log every metric to this Weights & Biases project (needs `pip install
    'flowpolicy[wandb]'`); the W&B files go to RUN_DIR/wandb and a resumed run continues the
    same W&B run."""
    wandb_mode: WandbMode = "online"
    """online, or offline (no network; upload later with `wandb sync RUN_DIR/wandb`)."""
    preset: Annotated[str | None, tyro.conf.Suppress] = None
    """the preset the algorithm config started from (``--preset``; flowpolicy.algos.presets);
    config.json records it with the values that options replaced. None: not from a preset."""

    def __post_init__(self) -> None:
        if self.preset is not None:
            find_preset(self.algo_name, self.preset)  # UserError naming the choices
        for name in ("total_steps", "eval_episodes", "checkpoint_every", "torch_threads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}.")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0, got {self.eval_every!r}.")

    @property
    def algo_name(self) -> str:
        return spec_of_config(self.algo).name


@dataclass
class TrainResult:
    """What :func:`train` returns: the run directory and the final metrics."""

    run_dir: Path
    metrics: dict[str, float]


# ----------------------------------------------------------------------------- config files


def config_to_dict(config: TrainConfig, world_size: int = 1) -> dict[str, Any]:
    """JSON-ready resolved config, with the algorithm's name, the number of processes that
    train it (``world_size``, torchrun's) and, for a run from a preset, the preset values that
    options replaced (``preset_overrides``, for readers; not read back)."""
    data = dataclasses.asdict(config)
    data["algo_name"] = config.algo_name
    data["world_size"] = world_size
    if config.preset is not None:
        preset = find_preset(config.algo_name, config.preset)
        data["preset_overrides"] = json_ready(overridden_values(preset, config.algo))
    return data


def json_ready(value: Any) -> Any:
    """Tuples as lists, recursively, so that a dict compares equal after a JSON round trip."""
    return json.loads(json.dumps(value))


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Inverse of :func:`config_to_dict` (tuples restored from JSON lists)."""
    data = dict(data)
    data.pop("preset_overrides", None)
    data.pop("world_size", None)
    algo_name = data.pop("algo_name")
    algo_class = find_algorithm(algo_name).config
    algo_fields = {f.name: f for f in dataclasses.fields(algo_class)}
    algo_data = {
        name: tuple(value) if isinstance(value, list) else value
        for name, value in data.pop("algo").items()
        if name in algo_fields
    }
    return TrainConfig(algo=algo_class(**algo_data), **data)


def read_run_config(run_dir: str | Path) -> TrainConfig:
    """The resolved config of an existing run directory; UserError if it is not one."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise UserError(
            f"{run_dir} is not a flowpolicy run directory (no config.json in it). Pass the "
            "directory that `flowpolicy train` printed when the run started."
        )
    if not is_train_run_dir(run_dir) and (Path(run_dir) / POLICY_NAME).is_file():
        raise UserError(
            f"{run_dir} is a `flowpolicy pretrain` run, not a `flowpolicy train` run. Continue "
            f"it with `flowpolicy pretrain --resume {run_dir}`, evaluate it with `flowpolicy "
            f"eval {run_dir}`, or fine-tune from it with `flowpolicy train ALGO --init {run_dir}`."
        )
    try:
        return config_from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(
            f"{path} could not be read as a flowpolicy run config ({type(error).__name__}: "
            f"{error}). Was it edited by hand? Restore it or start a new run."
        ) from error


# ----------------------------------------------------------------------------- helpers


def require_wandb() -> None:
    """UserError with the install command when --wandb-project is given without wandb."""
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        raise UserError(
            "--wandb-project needs the wandb package, which is not installed. Install it with "
            "`pip install 'flowpolicy[wandb]'` (or `pip install wandb`), or leave out "
            "--wandb-project; TensorBoard events are written either way."
        )


def run_world_size(run_dir: str | Path) -> int:
    """How many processes trained the run in ``run_dir`` (1 for runs from before torchrun)."""
    return int(json.loads((Path(run_dir) / "config.json").read_text()).get("world_size", 1))


def rank_config(config: TrainConfig, world_size: int) -> TrainConfig:
    """The config each of ``world_size`` ranks runs: its share of ``num_envs``, everything else
    unchanged (so each rank's batch, and each minibatch, is 1/world_size of the whole).

    Raises:
        UserError: the env count, or a rank's batch, does not split over the ranks.
    """
    if world_size == 1:
        return config
    num_envs = config.algo.num_envs
    if num_envs % world_size:
        raise UserError(
            f"--num-envs {num_envs} does not split over {world_size} processes: each rank "
            f"steps num_envs / world_size envs. Pass a multiple of {world_size} (e.g. "
            f"--num-envs {world_size * max(1, num_envs // world_size)}) or start "
            "torchrun with a --nproc-per-node (times --nnodes) that divides it."
        )
    try:
        algo = dataclasses.replace(config.algo, num_envs=num_envs // world_size)
    except ValueError as error:
        raise UserError(
            f"With {world_size} processes each rank steps {num_envs // world_size} of the "
            f"{num_envs} envs, and its share of the batch does not fit the update: {error} "
            "Use fewer processes, more envs, or fewer --num-minibatches."
        ) from error
    return dataclasses.replace(config, algo=algo)


def check_resume_world_size(run_dir: Path, world_size: int) -> None:
    """A run resumes only with the number of processes it was trained with: each rank's envs,
    RNG and replay are in the checkpoint."""
    trained_with = run_world_size(run_dir)
    if trained_with != world_size:
        how = (
            f"`torchrun --nproc-per-node {trained_with} -m flowpolicy train --resume {run_dir}`"
            if trained_with > 1
            else f"`flowpolicy train --resume {run_dir}` (one process, without torchrun)"
        )
        raise UserError(
            f"{run_dir} was trained with {trained_with} process(es) and cannot resume with "
            f"{world_size}: every rank's envs, random state and replay are in its checkpoint, "
            f"one per rank. Resume it with {how}, or start a new run."
        )


def default_run_dir(config: TrainConfig) -> Path:
    env = config.env.replace("/", "-").replace(":", "-")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.algo_name}-{env}-s{config.seed}-{stamp}"


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


class EpisodeStats:
    """Raw (unscaled) returns and lengths of the episodes that end during rollouts, kept as
    tensors on the env's device: the loop reads them once per iteration, not once per step.

    returns, lengths: (N,) of the running episodes; the finished ones are summed.
    """

    def __init__(self, num_envs: int, device: torch.device) -> None:
        self.returns = torch.zeros(num_envs, dtype=torch.float64, device=device)
        self.lengths = torch.zeros(num_envs, dtype=torch.int64, device=device)
        self._zero_sums()

    def _zero_sums(self) -> None:
        self.finished = torch.zeros((), dtype=torch.int64, device=self.returns.device)
        self.return_sum = torch.zeros((), dtype=torch.float64, device=self.returns.device)
        self.length_sum = torch.zeros((), dtype=torch.int64, device=self.returns.device)

    def add(self, rewards: Tensor, dones: Tensor, steps: int) -> None:
        """rewards (N,) and dones (N,) bool of one step that executed ``steps`` actions."""
        self.returns += rewards
        self.lengths += steps
        self.finished += dones.sum()
        self.return_sum += (self.returns * dones).sum()
        self.length_sum += (self.lengths * dones).sum()
        self.returns.masked_fill_(dones, 0.0)
        self.lengths.masked_fill_(dones, 0)

    def pop_metrics(self) -> dict[str, float]:
        """Mean over episodes finished since the last call (empty if none finished)."""
        # Every rank's episodes together in a torchrun job (one small all-reduce).
        sums = torch.stack([self.finished.double(), self.return_sum, self.length_sum.double()])
        finished, return_sum, length_sum = distributed.all_sum(sums).tolist()
        count = int(finished)
        metrics = {}
        if count:
            metrics = {
                "charts/episode_return": return_sum / count,
                "charts/episode_length": length_sum / count,
                "charts/episodes": float(count),
            }
        self._zero_sums()
        return metrics


# ----------------------------------------------------------------------------- the loop


def train(
    config: TrainConfig,
    env_factory: Callable[[], gym.Env] | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train one run; returns its directory and final metrics.

    Args:
        config: the run (``config.env`` is ignored when ``env_factory`` is given).
        env_factory: optional zero-argument callable returning a Gymnasium env.
        resume: continue the run in ``config.run_dir`` from its last checkpoint.

    Under ``torchrun`` (``WORLD_SIZE`` set) this is one rank of a data-parallel run
    (:mod:`flowpolicy.distributed`): it steps ``num_envs / world_size`` envs seeded after the
    ranks before it, averages gradients with the others at every optimiser step, and leaves
    the run directory, logging and evaluation to rank 0.

    Raises:
        UserError: bad env, unreadable run directory, or a loss that became NaN/inf (the last
            good checkpoint is left untouched and ``stopped.json`` records the stop), or a
            resume of a run that such a loss stopped, or with another number of processes.
    """
    ranks = distributed.ranks_from_environment()
    run_dir = Path(config.run_dir) if config.run_dir else default_run_dir(config)
    if not resume and (run_dir / CHECKPOINT_NAME).exists():
        raise UserError(
            f"{run_dir} already holds a run. Continue it with `flowpolicy train --resume "
            f"{run_dir}`, or pass another --run-dir."
        )
    if resume:
        refuse_resume_if_stopped(run_dir)
        check_resume_world_size(run_dir, ranks.world_size)
    if config.wandb_project is not None:
        require_wandb()
    device = distributed.rank_device(resolve_device(config.device), ranks)
    torch.set_num_threads(config.torch_threads)
    init_policy = load_init_policy(config, run_dir, resume)
    config = with_policy_settings(config, init_policy)
    cfg = rank_config(config, ranks.world_size).algo  # this rank's share of the envs
    saved_config = config_to_dict(config, ranks.world_size)
    distributed.start(device, ranks)
    seed_everything(config.seed)  # the same on every rank: the same initial weights
    env_seed = config.seed + ranks.rank * cfg.num_envs  # rank r's envs follow rank r-1's
    env_spec = env_factory if env_factory is not None else config.env
    envs = make_tensor_env(
        env_spec,
        cfg.num_envs,
        seed=env_seed,
        chunk_exec=cfg.chunk_exec,
        device=device,
        vector_env=config.vector_env,
    )
    algo = build_algorithm(dataclasses.replace(config, algo=cfg), envs, init_policy, device)
    if ranks.rank > 0:
        seed_everything(env_seed)  # then each rank draws its own actions and minibatches
    dataset = load_offline_dataset(config, envs)
    if dataset is not None:  # before a resume's load_state_dict: the replay is rebuilt from it
        algo.load_offline_data(dataset)
    obs = envs.reset(seed=env_seed)  # (N, Do) on the device
    # Env steps of all ranks together: --total-steps and the logged steps count them all.
    steps_per_vector_step = cfg.num_envs * cfg.chunk_exec * ranks.world_size
    steps_per_iteration = steps_per_vector_step * cfg.num_steps
    stats = EpisodeStats(cfg.num_envs, device)
    global_step, iteration, wall_offset = 0, 0, 0.0
    keep_lines = resume_step = None

    if resume:
        # Loaded straight onto this run's device: a run checkpointed on a GPU resumes on a CPU
        # and the other way round.
        checkpoint_state = load_checkpoint(run_dir / CHECKPOINT_NAME, map_location=device)
        if ranks.rank > 0:  # rank 0's state is the checkpoint's own, the others' are listed
            checkpoint_state = checkpoint_state["other_ranks"][ranks.rank - 1]
        algo.load_state_dict(checkpoint_state["algo"])
        loop = checkpoint_state["loop"]
        global_step, iteration, wall_offset = (
            loop["global_step"],
            loop["iteration"],
            loop["wall_time"],
        )
        # Checkpoints before the tensor env boundary hold numpy arrays here.
        obs = torch.as_tensor(loop["obs"], dtype=torch.float32, device=device)
        stats.returns = torch.as_tensor(loop["episode_returns"], device=device).double()
        stats.lengths = torch.as_tensor(loop["episode_lengths"], device=device).long()
        envs.load_state(loop["env_state"])
        set_rng_state(loop["rng"])
        keep_lines, resume_step = loop["metrics_lines"], global_step
    elif ranks.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(saved_config, indent=2) + "\n")
        if init_policy is not None:
            save_policy(run_dir / INIT_POLICY_NAME, init_policy, {"source": str(config.init)})

    wandb_run = None
    if config.wandb_project is not None and ranks.is_main:
        wandb_run = start_wandb(run_dir, config.wandb_project, config.wandb_mode, saved_config)
    if ranks.is_main:
        logger = Logger(
            run_dir, keep_lines, resume_step, config.tensorboard, config.quiet, wandb_run
        )
    else:
        logger = SilentLogger()
    start = time.perf_counter()

    def wall_time() -> float:
        return wall_offset + time.perf_counter() - start

    def evaluate() -> dict[str, float]:
        """Rank 0 evaluates; every rank gets its numbers (a stop_at_return stops them all)."""
        metrics = {}
        if ranks.is_main:
            metrics = evaluate_modes(
                algo.eval_policy,
                env_spec,
                config.eval_episodes,
                config.seed + EVAL_SEED_OFFSET,
                cfg.chunk_exec,
            )
            logger.log(global_step, wall_time(), metrics)
        return distributed.broadcast_from_main(metrics)

    checkpoint_step = global_step

    def checkpoint() -> None:
        nonlocal checkpoint_step
        loop_state = {
            "global_step": global_step,
            "iteration": iteration,
            "wall_time": wall_time(),
            "obs": obs,
            "episode_returns": stats.returns.clone(),
            "episode_lengths": stats.lengths.clone(),
            "env_state": envs.state(),
            "rng": rng_state(),
            "metrics_lines": logger.lines,
            "last_eval": last_eval,
        }
        # Rank 0 writes every rank's state (envs, RNG, replay) into the one checkpoint.
        own = {"algo": algo.state_dict(), "loop": loop_state}
        states = distributed.gather_to_main(None if ranks.is_main else distributed.to_cpu(own))
        if ranks.is_main:
            state = own | {"config": saved_config}
            if ranks.distributed:
                state["other_ranks"] = states[1:]
            save_checkpoint(run_dir / CHECKPOINT_NAME, state)
            export_policy()
        checkpoint_step = global_step

    def export_policy() -> None:
        """RUN_DIR/policy.pt: the policy the run evaluates, readable without the run's code
        (``flowpolicy eval``, ``--init``, ``load_policy_from``), on any device."""
        metadata = {
            "source": f"flowpolicy train {config.algo_name}",
            "env_id": config.env if env_factory is None else None,
            "run_dir": str(run_dir),
            "step": global_step,
            "eval_seed": config.seed + EVAL_SEED_OFFSET,
            "eval": last_eval,
        }
        save_policy(run_dir / POLICY_NAME, algo.eval_policy, metadata)

    if not resume:
        processes = f", {ranks.world_size} processes" if ranks.distributed else ""
        logger.print(
            f"[bold]flowpolicy[/] {config.algo_name} on {config.env} ({device}{processes}) "
            f"-> {run_dir}"
        )
        last_eval = evaluate()
        checkpoint()
    else:
        logger.print(f"[bold]flowpolicy[/] resuming {run_dir} at step {global_step:,}")
        # The last evaluation travels with the checkpoint so that a stop_at_return reached just
        # before a crash still ends the resumed run, and done.json reports it.
        last_eval = checkpoint_state["loop"].get("last_eval", {})
        if ranks.is_main and not (run_dir / POLICY_NAME).is_file():  # from before policy.pt
            export_policy()
    next_eval = (
        (global_step // config.eval_every + 1) * config.eval_every if config.eval_every else None
    )

    buffer = RolloutBuffer(cfg.num_steps, cfg.num_envs, envs.obs_dim, device)
    last_return = float("nan")

    def target_reached() -> bool:
        target = config.stop_at_return
        return target is not None and last_eval.get("eval/zero/return_mean", -math.inf) >= target

    try:
        # The offline phase of offline-to-online methods (FQL): gradient steps on the dataset
        # before the first rollout, checkpointed after each call so a resume continues it.
        while getattr(algo, "offline_steps_left", 0) > 0:
            logger.log(global_step, wall_time(), algo.offline_update())
            logger.print(f"offline phase: {algo.offline_steps_left:,} gradient steps left")
            if algo.offline_steps_left == 0:
                last_eval = evaluate()
            checkpoint()
        while global_step < config.total_steps and not target_reached():
            iteration_start = time.perf_counter()
            progress = global_step / config.total_steps
            buffer.reset()
            act_time = env_time = 0.0  # where an iteration's time goes (charts/time_*)
            for _ in range(cfg.num_steps):
                tick = time.perf_counter()
                action, record = algo.act(obs)
                tock = time.perf_counter()
                step = envs.step(action)
                act_time, env_time = act_time + tock - tick, env_time + time.perf_counter() - tock
                buffer.add(
                    obs,
                    record,
                    step.reward,
                    step.final_obs,
                    step.terminated.float(),
                    step.done.float(),
                )
                stats.add(step.reward, step.done, cfg.chunk_exec)
                obs = step.obs
                global_step += steps_per_vector_step
            tick = time.perf_counter()
            metrics = algo.update(buffer.batch(progress))
            update_time = time.perf_counter() - tick
            iteration += 1
            metrics |= stats.pop_metrics()
            metrics["charts/sps"] = steps_per_iteration / (time.perf_counter() - iteration_start)
            metrics |= {
                "charts/time_act": act_time,
                "charts/time_env": env_time,
                "charts/time_update": update_time,
            }
            metrics["charts/iteration"] = iteration
            logger.log(global_step, wall_time(), metrics)
            last_return = metrics.get("charts/episode_return", last_return)
            finished = global_step >= config.total_steps
            if finished or (next_eval is not None and global_step >= next_eval):
                last_eval = evaluate()
                while next_eval is not None and next_eval <= global_step:
                    next_eval += config.eval_every
            finished = finished or target_reached()
            if finished or iteration % config.checkpoint_every == 0:
                checkpoint()
            logger.progress(
                global_step,
                config.total_steps,
                metrics["charts/sps"],
                f"return {last_return:8.2f} | eval zero "
                f"{last_eval.get('eval/zero/return_mean', float('nan')):8.2f} random "
                f"{last_eval.get('eval/random/return_mean', float('nan')):8.2f}",
            )
    except NonFiniteLossError as error:
        # Resuming would replay the same numbers into the same stop: record it so that a
        # resume (and the benchmark harness) says so instead of repeating it.
        if not ranks.is_main:
            raise UserError(f"rank {ranks.rank}: {error}") from error
        raise record_stop(run_dir, global_step, checkpoint_step, str(error), "Training") from error
    finally:
        envs.close()
        logger.close()

    final = {"step": global_step, "wall_time": round(wall_time(), 3)} | last_eval
    if target_reached():
        final["stopped_at_return"] = config.stop_at_return
    if ranks.is_main:
        save_json(run_dir / "done.json", final)
    distributed.stop()
    return TrainResult(run_dir, final)


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
        rank0 = rank_config(config, run_world_size(run_dir))
        algo = build_algorithm(rank0, envs, init_policy, device)
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


def resume(
    run_dir: str | Path,
    env_factory: Callable[[], gym.Env] | None = None,
    device: str | None = None,
) -> TrainResult:
    """Continue the run in ``run_dir`` from its last checkpoint (same config, same numbers on
    the same machine). ``device`` moves it to another device (e.g. a GPU run continued on a
    CPU); config.json then records the new one."""
    config = dataclasses.replace(read_run_config(run_dir), run_dir=str(run_dir))
    if device is not None:
        resolve_device(device)  # a bad device fails before anything is written
        config = dataclasses.replace(config, device=device)
        if distributed.is_main_process():
            save_json(
                Path(run_dir) / "config.json", config_to_dict(config, run_world_size(run_dir))
            )
    return train(config, env_factory=env_factory, resume=True)
