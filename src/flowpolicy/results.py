"""Read, group and summarise run directories: the numbers behind `flowpolicy plot` and the
benchmark pages.

A run directory (written by ``flowpolicy train``, ``flowpolicy pretrain`` or
``benchmarks/sb3_ppo.py``) holds:

- ``config.json``: the resolved config. ``env``, ``seed``, ``algo_name`` and ``init`` (a
  pretrained policy or null) say what the run is; a pretraining run has ``dataset``, ``policy``
  and ``bc`` instead, an SB3 run names its algorithm in ``algo``.
- ``metrics.jsonl``: one JSON object per line with ``"step"`` (env steps; gradient steps for a
  pretraining run) and ``"wall_time"`` (seconds of the run so far, resumed runs included).
  Evaluation lines carry ``eval/zero/return_mean``, ``eval/zero/return_std``,
  ``eval/random/return_mean`` and ``eval/random/return_std``. The step-0 evaluation of a
  fine-tuning run (``init`` set) is the return of the pretrained (BC) policy.
- ``done.json``: written when the run completed; ``step``, ``wall_time`` and the final
  evaluation's ``eval/...`` keys.

A run is identified by (env, method, seed); runs of one (env, method) are the seeds of one
curve and one table row. Seeds are aggregated with the population standard deviation
(``ddof=0``); the pages that quote these numbers say so. Everything here is a small function over
those files, with no plotting, so that the CLI and the benchmark scripts share one reading of the
numbers.

Shapes: ``E`` evaluations of one run, ``S`` runs (seeds) of one method, ``G`` points of a common
grid.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from flowpolicy.errors import UserError

EVAL_MODES = ("zero", "random")
"""Evaluation sampling modes: zero = deterministic (zero initial noise / Gaussian mean)."""

RUN_FILES = ("config.json", "metrics.jsonl")
"""Files that make a directory a run directory."""

XAxis = Literal["step", "wall_time"]
"""What a curve is drawn against: env steps or wall-clock seconds."""

Kind = Literal["scratch", "finetune", "pretrain"]
"""Trained from scratch, fine-tuned from a pretrained policy (``--init``), or BC pretraining."""


def return_key(mode: str, stat: str = "mean") -> str:
    """Name of an evaluation metric, e.g. ``return_key("zero") == "eval/zero/return_mean"``."""
    return f"eval/{mode}/return_{stat}"


def path_safe(name: str) -> str:
    """Turn an env id such as ``dmc/cheetah-run`` into a folder name (``dmc_cheetah-run``)."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name)


# --------------------------------------------------------------------------------------------
# Finding and reading run directories
# --------------------------------------------------------------------------------------------


def is_run_dir(path: Path) -> bool:
    """True if ``path`` holds ``config.json`` and ``metrics.jsonl``."""
    return all((Path(path) / name).is_file() for name in RUN_FILES)


def find_run_dirs(path: str | Path) -> list[Path]:
    """``path`` itself if it is a run directory, else every run directory below it (sorted).

    The search does not descend into run directories (a run's ``tb/`` is not a run).

    Raises:
        UserError: ``path`` does not exist or holds no run directory.
    """
    path = Path(path)
    if is_run_dir(path):
        return [path]
    found = []
    if path.is_dir():
        for folder, subfolders, _ in os.walk(path):
            if is_run_dir(Path(folder)):
                found.append(Path(folder))
                subfolders.clear()
            else:
                subfolders.sort()
    if not found:
        what = "does not exist" if not path.exists() else "is not a run directory and holds none"
        raise UserError(
            f"{path} {what} (a run directory holds config.json and metrics.jsonl). Pass run "
            "directories made by `flowpolicy train` or `flowpolicy pretrain`, or folders that "
            "contain them, e.g. `flowpolicy plot runs/ --out plots/`."
        )
    return sorted(found)


def read_config(run_dir: Path) -> dict:
    """The contents of ``run_dir/config.json`` ({} if there is none).

    Raises:
        UserError: the file is not a JSON object.
    """
    path = Path(run_dir) / "config.json"
    if not path.exists():
        return {}
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(
            f"{path} is not valid JSON ({error}). Restore it from the run's copy or leave this "
            "run directory out."
        ) from error
    if not isinstance(config, dict):
        raise UserError(f"{path} does not hold a JSON object; leave this run directory out.")
    return config


def read_metrics(run_dir: Path) -> list[dict]:
    """All records of ``run_dir/metrics.jsonl`` in file order (a torn last line is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a run killed mid-write leaves a partial last line
    return records


def read_done(run_dir: Path) -> dict | None:
    """The contents of ``run_dir/done.json``, or None while the run has not completed."""
    path = Path(run_dir) / "done.json"
    return json.loads(path.read_text()) if path.exists() else None


# --------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------


@dataclass
class Curve:
    """Evaluation returns of one run.

    Attributes:
        steps: env steps of each evaluation, increasing. Shape (E,).
        returns: mode -> mean evaluation return at each step, shape (E,) (NaN where a mode was
            not evaluated).
        wall_times: wall-clock seconds of each evaluation, shape (E,) (NaN if not recorded).
    """

    steps: np.ndarray
    returns: dict[str, np.ndarray]
    wall_times: np.ndarray = field(default_factory=lambda: np.array([]))

    def x(self, axis: XAxis) -> np.ndarray:
        """The evaluation positions along ``axis``, shape (E,)."""
        return self.steps if axis == "step" else self.wall_times


def eval_curve(records: Iterable[dict]) -> Curve:
    """Evaluation curve from metrics records; a step logged twice keeps its last value."""
    by_step: dict[int, dict] = {}
    for record in records:
        if any(return_key(mode) in record for mode in EVAL_MODES):
            by_step[int(record["step"])] = record
    steps = np.array(sorted(by_step), dtype=np.int64)
    returns = {
        mode: np.array([by_step[s].get(return_key(mode), np.nan) for s in steps], dtype=float)
        for mode in EVAL_MODES
    }
    wall_times = np.array([by_step[s].get("wall_time", np.nan) for s in steps], dtype=float)
    return Curve(steps=steps, returns=returns, wall_times=wall_times)


@dataclass
class RunResult:
    """One run: its identity, final numbers and evaluation curve.

    For a run without ``done.json`` (still running, killed or failed) the final numbers are
    those of its last evaluation, and ``final_step`` / ``wall_time`` those of its last record.
    """

    env: str
    method: str
    seed: int
    run_dir: Path
    final_step: int
    wall_time: float
    final_returns: dict[str, float]
    curve: Curve
    cpu_time: float | None = None
    """CPU seconds of the training process, if the run recorded ``process_time``."""
    finished: bool = True
    """True if the run wrote ``done.json``."""
    kind: Kind = "scratch"

    @property
    def steps_per_second(self) -> float:
        """Steps per wall-clock second over the whole run, evaluation included."""
        return self.final_step / self.wall_time if self.wall_time > 0 else float("nan")

    @property
    def bc_returns(self) -> dict[str, float] | None:
        """Return of the pretrained policy (the step-0 evaluation) of a fine-tuning run; None for
        other runs. NaN if the run has no step-0 evaluation."""
        if self.kind != "finetune":
            return None
        has_start = len(self.curve.steps) > 0 and self.curve.steps[0] == 0
        return {
            mode: float(self.curve.returns[mode][0]) if has_start else math.nan
            for mode in EVAL_MODES
        }


def infer_kind(config: dict) -> Kind:
    """Pretraining if the config names a dataset, fine-tuning if it names an ``init`` policy."""
    if "dataset" in config and "bc" in config:
        return "pretrain"
    return "finetune" if config.get("init") else "scratch"


def infer_preset(algo_name: str, algo_config: dict) -> str:
    """The preset (see ``flowpolicy train ALGO --preset``) a run's algorithm config comes from.

    Runs record their preset in config.json; for runs made before they did, compare the
    resolved hyper-parameters with each preset's values on the fields where the presets differ
    and take the preset that agrees on most of them (ties: the algorithm's own default).
    Options given on top of a preset do not change the answer unless they override most of
    what sets the presets apart.
    """
    from flowpolicy.algos.presets import PRESETS

    presets = [p.name for p in PRESETS.get(algo_name, ())]
    if len(presets) < 2:
        return algo_name
    # Through JSON so that tuples compare equal to the lists that config.json holds.
    defaults = {p.name: json.loads(json.dumps(asdict(p.config()))) for p in PRESETS[algo_name]}
    differing = [
        key
        for key in defaults[presets[0]]
        if len({json.dumps(d.get(key)) for d in defaults.values()}) > 1
    ]
    agreement = {
        p: sum(k in algo_config and algo_config[k] == defaults[p][k] for k in differing)
        for p in presets
    }
    return max(presets, key=lambda p: agreement[p])  # max keeps the first of equals


def infer_method(config: dict) -> str:
    """A method name from a run's config.

    ``<preset>`` for a run from scratch (``fpo``, ``fpo++``, ``ppo``, ...), ``<preset>-finetune``
    for a run started from a pretrained policy, ``bc-<policy>`` for a pretraining run, and the
    ``algo`` string of runs made by other tools (``sb3-ppo``).
    """
    kind = infer_kind(config)
    if kind == "pretrain":
        return f"bc-{config.get('policy', 'policy')}"
    algo = config.get("algo")
    if isinstance(algo, str):
        return algo
    name = config.get("algo_name")
    if not isinstance(name, str):
        return "unknown"
    method = config.get("preset")
    if not isinstance(method, str):
        method = infer_preset(name, algo) if isinstance(algo, dict) else name
    if kind == "finetune" and not method.endswith("-finetune"):
        return f"{method}-finetune"
    return method


def _pretrain_env(run_dir: Path) -> str | None:
    """The env id a pretraining run evaluated in, from its exported policy's metadata (its
    config.json has ``env: null`` when the dataset named the env)."""
    path = Path(run_dir) / "policy.pt"
    if not path.is_file():
        return None
    import pickle

    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError):
        return None
    env = payload.get("metadata", {}).get("env_id") if isinstance(payload, dict) else None
    return env if isinstance(env, str) else None


def _last_eval(records: Sequence[dict]) -> dict:
    """The last record with an evaluation return, or {}."""
    evals = [r for r in records if any(return_key(mode) in r for mode in EVAL_MODES)]
    return evals[-1] if evals else {}


def load_run(
    run_dir: str | Path,
    *,
    env: str | None = None,
    method: str | None = None,
    seed: int | None = None,
) -> RunResult:
    """Load a run directory, finished or not.

    Args:
        run_dir: a run directory.
        env, method, seed: override what config.json says (``method`` is a user's label or a
            benchmark's method name; by default :func:`infer_method`).

    Returns:
        The run. Final returns come from ``done.json`` if the run finished, else from its last
        evaluation (NaN if it has none yet).
    """
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    records = read_metrics(run_dir)
    done = read_done(run_dir)
    kind = infer_kind(config)
    if env is None:
        env = config.get("env") or (_pretrain_env(run_dir) if kind == "pretrain" else None)
    last = done if done is not None else (records[-1] if records else {})
    final = done if done is not None else _last_eval(records)
    final_returns = {mode: float(final.get(return_key(mode), np.nan)) for mode in EVAL_MODES}
    return RunResult(
        env=env or "unknown env",
        method=method or infer_method(config),
        seed=int(config.get("seed", 0)) if seed is None else seed,
        run_dir=run_dir,
        final_step=int(last.get("step", 0)),
        wall_time=float(last.get("wall_time", np.nan)),
        final_returns=final_returns,
        curve=eval_curve(records),
        cpu_time=float(done["process_time"]) if done and "process_time" in done else None,
        finished=done is not None,
        kind=kind,
    )


def load_runs(paths: Sequence[str | Path], labels: Sequence[str] = ()) -> list[RunResult]:
    """Load every run directory in or below ``paths`` (each run once, in the order found).

    Args:
        paths: run directories or folders that hold them.
        labels: empty, or one method label per path for every run found under it.

    Raises:
        UserError: a path holds no run directory, or ``labels`` does not match ``paths``.
    """
    if labels and len(labels) != len(paths):
        raise UserError(
            f"Got {len(labels)} label(s) for {len(paths)} run path(s). Give one --label per "
            "path (all runs under a path get its label), or none to name methods from configs."
        )
    runs, seen = [], set()
    for i, path in enumerate(paths):
        for run_dir in find_run_dirs(path):
            if run_dir.resolve() in seen:
                continue
            seen.add(run_dir.resolve())
            runs.append(load_run(run_dir, method=labels[i] if labels else None))
    return runs


def group_runs(runs: Iterable[RunResult]) -> dict[tuple[str, str], list[RunResult]]:
    """Runs by (env, method), envs and methods in order of first appearance."""
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for run in runs:
        groups.setdefault((run.env, run.method), []).append(run)
    envs = list(dict.fromkeys(env for env, _ in groups))
    return {key: groups[key] for env in envs for key in groups if key[0] == env}


def seed_clashes(runs: Iterable[RunResult]) -> list[str]:
    """One line per (env, method) in which a seed occurs more than once: usually runs of
    different experiments that ended up under one method name (give them labels)."""
    lines = []
    for (env, method), group in group_runs(runs).items():
        seeds = [r.seed for r in group]
        repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
        if repeated:
            dirs = ", ".join(str(r.run_dir) for r in group if r.seed in repeated)
            lines.append(
                f"{env} / {method}: seed(s) {', '.join(map(str, repeated))} occur more than once "
                f"({dirs}); if these are different experiments, give each path its own --label."
            )
    return lines


# --------------------------------------------------------------------------------------------
# Aggregating seeds
# --------------------------------------------------------------------------------------------


@dataclass
class Summary:
    """Final numbers of one (env, method) over seeds.

    ``*_std`` are population standard deviations over seeds (``ddof=0``). Unfinished runs count
    with their last evaluation (``num_unfinished`` says how many there are).
    """

    env: str
    method: str
    num_seeds: int
    seeds: list[int]
    final_step_mean: float
    return_mean: dict[str, float]
    return_std: dict[str, float]
    wall_time_mean: float
    steps_per_second_mean: float
    per_seed: list[dict] = field(default_factory=list)
    kind: str = "scratch"
    """scratch, finetune or pretrain; "mixed" if a label put runs of several kinds together."""
    num_unfinished: int = 0
    bc_return_mean: dict[str, float] | None = None
    """Mean return of the pretrained policy (step-0 evaluation) over fine-tuning runs."""
    bc_return_std: dict[str, float] | None = None

    def to_json(self) -> dict:
        """Plain-JSON form."""
        return asdict(self)


def summarize(runs: Sequence[RunResult]) -> Summary:
    """Mean and std over seeds of final returns, wall-clock and steps/s of runs of one method."""
    if not runs:
        raise ValueError("summarize() needs at least one run")
    if len({(r.env, r.method) for r in runs}) != 1:
        raise ValueError("summarize() expects runs of a single (env, method)")
    finals = {mode: np.array([r.final_returns[mode] for r in runs]) for mode in EVAL_MODES}
    bc = [r.bc_returns for r in runs if r.bc_returns is not None]
    bc_values = {mode: np.array([b[mode] for b in bc]) for mode in EVAL_MODES}
    kinds = {r.kind for r in runs}
    return Summary(
        env=runs[0].env,
        method=runs[0].method,
        num_seeds=len(runs),
        seeds=[r.seed for r in runs],
        final_step_mean=float(np.mean([r.final_step for r in runs])),
        return_mean={mode: float(np.mean(v)) for mode, v in finals.items()},
        return_std={mode: float(np.std(v)) for mode, v in finals.items()},
        wall_time_mean=float(np.mean([r.wall_time for r in runs])),
        steps_per_second_mean=float(np.mean([r.steps_per_second for r in runs])),
        per_seed=[_per_seed(r) for r in runs],
        kind=kinds.pop() if len(kinds) == 1 else "mixed",
        num_unfinished=sum(not r.finished for r in runs),
        bc_return_mean={m: float(np.mean(v)) for m, v in bc_values.items()} if bc else None,
        bc_return_std={m: float(np.std(v)) for m, v in bc_values.items()} if bc else None,
    )


def _per_seed(run: RunResult) -> dict:
    """The raw numbers of one run, as listed in :attr:`Summary.per_seed`."""
    row = {
        "seed": run.seed,
        "final_step": run.final_step,
        "wall_time": run.wall_time,
        "steps_per_second": run.steps_per_second,
        "cpu_time": run.cpu_time,
        **{f"return_{mode}": run.final_returns[mode] for mode in EVAL_MODES},
        "finished": run.finished,
        "run_dir": str(run.run_dir),
    }
    if run.bc_returns is not None:
        row.update({f"bc_return_{mode}": run.bc_returns[mode] for mode in EVAL_MODES})
    return row


def summarize_all(runs: Iterable[RunResult]) -> list[Summary]:
    """One :class:`Summary` per (env, method), in :func:`group_runs` order."""
    return [summarize(group) for group in group_runs(runs).values()]


@dataclass
class SeedBand:
    """Curves of several seeds on one grid: mean, std, min and max, each shape (G,).

    ``x`` is the grid: env steps or wall-clock seconds.
    """

    x: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    low: np.ndarray
    high: np.ndarray
    num_curves: int = 0


def seed_band(curves: Sequence[Curve], mode: str, x: XAxis = "step") -> SeedBand:
    """Aggregate one evaluation mode over seeds on a common grid.

    The grid is the union of the seeds' evaluation positions (env steps, or wall-clock seconds)
    inside the range that every seed covers, and each curve is linearly interpolated onto it.
    Runs of one method evaluate at the same steps, so against env steps the grid is normally
    exactly those steps and nothing is interpolated; against wall-clock it always is. A seed
    that stopped early (unfinished) therefore shortens the band of its method.
    """
    points = []  # (x (E,), returns (E,)) per curve with at least one evaluation of this mode
    for curve in curves:
        xs, ys = curve.x(x), curve.returns[mode]
        keep = np.isfinite(xs) & np.isfinite(ys)
        if keep.any():
            order = np.argsort(xs[keep], kind="stable")
            points.append((xs[keep][order], ys[keep][order]))
    if not points:
        empty = np.array([])
        return SeedBand(empty, empty, empty, empty, empty)
    start = max(xs[0] for xs, _ in points)
    stop = min(xs[-1] for xs, _ in points)
    grid = np.unique(np.concatenate([xs for xs, _ in points]))
    grid = grid[(grid >= start) & (grid <= stop)]
    values = np.stack([np.interp(grid, xs, ys) for xs, ys in points])  # (S, G)
    return SeedBand(
        x=grid,
        mean=values.mean(axis=0),
        std=values.std(axis=0),
        low=values.min(axis=0),
        high=values.max(axis=0),
        num_curves=len(points),
    )
