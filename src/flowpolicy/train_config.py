"""What a training run is: :class:`TrainConfig` (an algorithm's config plus where, how long and
how to log), its config.json (resolved, with the algorithm's name, the number of processes and
the preset values that options replaced) and the run directory's default name.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Union

import tyro

from flowpolicy.algos.fpo import FPOConfig
from flowpolicy.algos.presets import find_preset, overridden_values
from flowpolicy.algos.registry import ALGORITHMS, find_algorithm, spec_of_config
from flowpolicy.envs.registry import VectorKind
from flowpolicy.errors import UserError
from flowpolicy.logging import WandbMode
from flowpolicy.policy_io import POLICY_NAME, is_train_run_dir

AlgoConfig = Union[tuple(spec.config for spec in ALGORITHMS.values())]  # noqa: UP007
"""Any registered algorithm's config (built from the registry, so a new algorithm needs no edit
here)."""


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


def default_run_dir(config: TrainConfig) -> Path:
    env = config.env.replace("/", "-").replace(":", "-")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.algo_name}-{env}-s{config.seed}-{stamp}"
