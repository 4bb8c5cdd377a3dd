"""Benchmark harness: run a protocol's methods x envs x seeds, then collect results pages.

One entry point for every protocol of ``benchmarks/protocols.py`` (``from_scratch``,
``finetune``, ``multimodality``). Each (env, method, seed) is its own subprocess with one torch
thread (``python -m flowpolicy train ...``), ``--jobs`` at a time, writing into
``<runs-root>/<protocol>/<env>/<method>/seed<k>`` with its output in ``train.log`` there:

- a run directory with ``done.json`` is complete and skipped;
- one with a checkpoint but no ``done.json`` (killed, crashed) continues with
  ``flowpolicy train --resume RUN_DIR`` (same numbers as if it had never stopped);
- one that a NaN/inf loss stopped (``stopped.json``, written by ``flowpolicy train``) is not
  relaunched, because resuming would replay the same numbers into the same stop; the results
  page lists it with its step and reason (delete ``stopped.json`` to resume it anyway);
- a run whose pretrained policy (``--init``) is missing is skipped with the command that makes
  it;
- a run that another ``bench.py`` is running (its ``bench.lock`` is held) is left alone.

Every launch writes ``bench.json`` into the run directory: protocol, method, env, seed, budget,
the training command, the harness command line, git commit and dirty flag, machine and time
(earlier launches of the same run are kept under ``launches``).

Then it collects every completed run of the selection (stopped runs and runs without
``done.json`` are listed, not counted) together with the protocol's other completed and
stopped runs found on disk (other methods, other seeds, the protocol's other envs), so that launching one more method, seed or env adds
to the results page instead of replacing it, and writes into ``--docs-dir``:

- ``<protocol>.md``: per env a table (final return mean ± std over seeds in zero and random
  sampling, BC → final for fine-tuning, wall-clock, env steps/s), a per-seed table and the
  learning curves; the commands, machine, commit and date; for ``multimodality`` also the
  optima / routes each method's final policies cover;
- ``<protocol>.json`` (every number), ``<protocol>.csv`` (a row per env and method);
- ``<protocol>_<env>.png`` (return vs env steps), ``<protocol>_<env>_wall_clock.png``;
- ``archive/<protocol>.json``: what the page counted of every run (final numbers, whole
  evaluation curve, coverage, stop), committed with the page. Run directories are git-ignored
  and stay on one machine; a run that is archived but not on disk still counts, is not launched
  again (unless ``--rerun-archived``), and a new seed joins the archived ones (see
  ``archive.py``).

Measuring the modes a final toy policy covers rolls out its policy; the result is kept in the
run directory (``coverage.json``) so that collecting again does not repeat it.

Examples:
    # the whole fine-tuning protocol, two runs at a time, at low priority
    python benchmarks/bench.py finetune --jobs 2 --nice 10
    # one method on one env, seed 0 only
    python benchmarks/bench.py finetune --methods reinflow --envs Hopper-v5 --seeds 0
    # a smoke run that touches neither the real runs nor the docs
    python benchmarks/bench.py multimodality --methods ppo --envs toy/bandit --seeds 0 \
        --steps toy/bandit=2048 --runs-root /tmp/bench --docs-dir /tmp/bench/docs
    # re-collect tables and plots from the runs on disk
    python benchmarks/bench.py from_scratch --collect-only
"""

from __future__ import annotations

import csv
import datetime
import fcntl
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
import tyro
from archive import Archive, load_archive, result_record, run_result, stop_record
from protocols import PROTOCOLS, Budget, Method, Prerequisite, Protocol
from results import (
    Curve,
    RunResult,
    Summary,
    git_commit,
    git_state,
    load_run,
    machine_info,
    markdown_seed_table,
    markdown_table,
    path_safe,
    summarize,
)

from flowpolicy.checkpoint import STOPPED_NAME, read_stop, save_json
from flowpolicy.envs import BanditEnv, NavEnv, optimum_coverage, route_of
from flowpolicy.errors import UserError
from flowpolicy.plot import CSV_COLUMNS, Panel, csv_row, learning_curve_figure, save_figure
from flowpolicy.train import load_policy

REPO = Path(__file__).resolve().parents[1]
ProtocolName = Literal["from_scratch", "finetune", "multimodality", "fpo-dmc", "humanoid-joystick"]
State = Literal["done", "stopped", "resume", "new", "missing"]


def default_jobs() -> int:
    """The cores this process may run on (``taskset`` / cgroup affinity)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@dataclass(frozen=True)
class Args:
    """Run a benchmark protocol (methods x envs x seeds), then collect its results page."""

    protocol: Annotated[ProtocolName, tyro.conf.Positional]
    """which protocol of benchmarks/protocols.py."""
    envs: tuple[str, ...] | None = None
    """env ids; default: the protocol's."""
    methods: tuple[str, ...] | None = None
    """method names; default: all of the protocol's."""
    seeds: tuple[int, ...] | None = None
    """seeds per (env, method); default: the protocol's."""
    steps: tuple[str, ...] = ()
    """per-env step budget overrides, ``ENV=N`` (e.g. ``Hopper-v5=5000``)."""
    eval_every: int | None = None
    """evaluate every this many env steps, for every env (default: the env's budget)."""
    eval_episodes: int | None = None
    """episodes per evaluation and mode, for every env (default: the env's budget)."""
    jobs: int = field(default_factory=default_jobs)
    """runs at a time, each with one torch thread (default: the cores this process may use)."""
    nice: int = 0
    """extra niceness of each run, on top of this script's (which the runs inherit)."""
    device: str | None = None
    """``--device`` of every run (default: each run's own default, auto)."""
    train_args: str = ""
    """more ``flowpolicy train`` options for every run, one string (e.g. ``--train-args="--num-envs
    256"``); they are recorded in each run's bench.json and config.json."""
    collect_only: bool = False
    """run nothing; only collect, tabulate and plot the runs on disk and in the archive."""
    rerun_archived: bool = False
    """run again the selected runs that are archived (docs-dir/archive/) but not on disk."""
    runs_root: Path = REPO / "benchmarks" / "runs"
    """runs go to <runs-root>/<protocol>/<env>/<method>/seed<k>."""
    docs_dir: Path = REPO / "docs" / "benchmarks"
    """where <protocol>.md / .json / .csv and the PNGs go."""


# --------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One (env, method, seed) of a protocol, with its budget and directory."""

    protocol: str
    env: str
    method: Method
    seed: int
    budget: Budget
    run_dir: Path
    extra: tuple[str, ...] = ()
    """more ``flowpolicy train`` options for this launch (``--device``, ``--train-args``)."""

    def _prerequisite_path(self, prerequisite: Prerequisite | None) -> Path | None:
        if prerequisite is None:
            return None
        path = Path(prerequisite.path.format(env=self.env))
        return path if path.is_absolute() else REPO / path

    @property
    def init(self) -> Path | None:
        """The pretrained policy this run starts from (absolute), or None."""
        return self._prerequisite_path(self.method.init)

    @property
    def dataset(self) -> Path | None:
        """The offline dataset this run learns from first (absolute), or None."""
        return self._prerequisite_path(self.method.dataset)

    def command(self) -> list[str]:
        """The command line that starts this run."""
        if self.method.script is not None:
            head = [sys.executable, str(REPO / self.method.script)]
        else:
            head = [sys.executable, "-m", "flowpolicy", "train", *self.method.train]
        return [
            *head,
            *("--env", self.env),
            *("--seed", str(self.seed)),
            *("--total-steps", str(self.budget.total_steps)),
            *("--run-dir", str(self.run_dir)),
            *("--eval-every", str(self.budget.eval_every)),
            *("--eval-episodes", str(self.budget.eval_episodes)),
            *("--torch-threads", "1"),
            *(("--init", str(self.init)) if self.init is not None else ()),
            *(("--dataset", str(self.dataset)) if self.dataset is not None else ()),
            *self.extra,
        ]

    def resume_command(self) -> list[str]:
        """The command line that continues this run from its checkpoint."""
        return [sys.executable, "-m", "flowpolicy", "train", "--resume", str(self.run_dir)]

    def missing_prerequisite(self) -> str | None:
        """Why the run cannot start (its --init policy or --dataset is not there), or None."""
        needed = ((self.init, self.method.init), (self.dataset, self.method.dataset))
        for path, prerequisite in needed:
            if path is None or prerequisite is None:
                continue
            ready = (path / "done.json").is_file() if path.is_dir() else path.is_file()
            if not ready:
                shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
                make = prerequisite.make.format(env=self.env)
                return f"missing prerequisite: {shown} (make it with {make})"
        return None

    def state(self) -> State:
        """done (skip), stopped (by a NaN/inf loss: skip), resume (continue from the checkpoint),
        new, or missing (prerequisite)."""
        if (self.run_dir / "done.json").exists():
            return "done"
        if read_stop(self.run_dir) is not None:
            return "stopped"
        if self.method.script is None and (self.run_dir / "checkpoint.pt").exists():
            return "resume"  # a resumed run reads its own copy of the --init policy
        return "missing" if self.missing_prerequisite() else "new"

    def label(self) -> str:
        return f"{self.env} {self.method.name} seed {self.seed}"


def parse_step_overrides(items: Sequence[str]) -> dict[str, int]:
    """``("Hopper-v5=5000",)`` -> ``{"Hopper-v5": 5000}``."""
    overrides = {}
    for item in items:
        env, sep, value = item.rpartition("=")
        if not sep or not env or not value.replace("_", "").isdigit() or int(value) <= 0:
            raise UserError(f"--steps expects ENV=N (e.g. Hopper-v5=1000000), got {item!r}.")
        overrides[env] = int(value)
    return overrides


def method_dir(root: Path, env: str, method: str) -> Path:
    """Where a method's runs on an env live: ``root/<env>/<method>``, one ``seed<k>`` each."""
    return root.resolve() / path_safe(env) / method


def plan(
    protocol: Protocol,
    root: Path,
    *,
    envs: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    steps: Sequence[str] = (),
    eval_every: int | None = None,
    eval_episodes: int | None = None,
    extra: Sequence[str] = (),
) -> list[Run]:
    """Every selected (env, method, seed) of ``protocol``, in that order, under ``root``.

    Args:
        protocol: the protocol.
        root: the protocol's runs folder (runs go to ``root/<env>/<method>/seed<k>``).
        envs, methods, seeds: the selection; None selects the protocol's defaults.
        steps: ``ENV=N`` overrides of the total steps.
        eval_every, eval_episodes: overrides for every env.
        extra: more ``flowpolicy train`` options for every run (after the per-run flags).

    Raises:
        UserError: an unknown method, a bad or unselected ``--steps`` entry, or a
            non-positive override.
    """
    envs = tuple(protocol.budgets) if envs is None else tuple(envs)
    names = [m.name for m in protocol.methods] if methods is None else list(methods)
    unknown = [name for name in names if name not in {m.name for m in protocol.methods}]
    if unknown:
        raise UserError(
            f"Unknown method(s) {', '.join(unknown)} for the {protocol.name} protocol. Its "
            f"methods are: {', '.join(m.name for m in protocol.methods)}."
        )
    overrides = parse_step_overrides(steps)
    unselected = sorted(set(overrides) - set(envs))
    if unselected:
        raise UserError(
            f"--steps names env(s) that are not selected: {', '.join(unselected)}. Select "
            "them with --envs, or drop the override."
        )
    for name, value in (("--eval-every", eval_every), ("--eval-episodes", eval_episodes)):
        if value is not None and value <= 0:
            raise UserError(f"{name} must be positive, got {value}.")
    runs = []
    for env in envs:
        base = protocol.budget(env)
        budget = Budget(
            total_steps=overrides.get(env, base.total_steps),
            eval_every=eval_every or base.eval_every,
            eval_episodes=eval_episodes or base.eval_episodes,
        )
        for name in names:
            if protocol.method(name).envs is not None and env not in protocol.method(name).envs:
                continue  # this method is only benchmarked on some envs
            for seed in protocol.seeds if seeds is None else seeds:
                run_dir = method_dir(root, env, name) / f"seed{seed}"
                method = protocol.method(name)
                runs.append(Run(protocol.name, env, method, seed, budget, run_dir, tuple(extra)))
    return runs


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


@contextmanager
def run_lock(run_dir: Path) -> Iterator[bool]:
    """Hold ``run_dir/bench.lock`` for as long as the block runs; yields False if another
    process holds it (the lock goes away with its process, however that process ends)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "bench.lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_tag(run: Run, command: list[str], launched_by: str, resumed: bool) -> dict:
    """Write ``run_dir/bench.json`` for this launch (earlier launches kept in ``launches``)."""
    commit, dirty = git_state(REPO)
    launch = {
        "command": shlex.join(command),
        "launched_by": launched_by,
        "resumed": resumed,
        "commit": commit,
        "dirty": dirty,
        "machine": machine_info(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "load_average": list(os.getloadavg()),
    }
    path = run.run_dir / "bench.json"
    earlier = json.loads(path.read_text()).get("launches", []) if path.exists() else []
    tag = {
        "protocol": run.protocol,
        "method": run.method.name,
        "env": run.env,
        "seed": run.seed,
        "budget": asdict(run.budget),
        **launch,
        "launches": [*earlier, launch],
    }
    path.write_text(json.dumps(tag, indent=2) + "\n")
    return tag


@dataclass(frozen=True)
class Outcome:
    """How one launch ended: ``status`` is done, failed, busy (locked) or skipped."""

    run: Run
    status: Literal["done", "failed", "busy", "skipped"]
    code: int | None = None
    seconds: float = 0.0


def launch(run: Run, nice: int, launched_by: str) -> Outcome:
    """Start or continue one run as a subprocess and wait for it (output to train.log)."""
    with run_lock(run.run_dir) as mine:
        if not mine:
            return Outcome(run, "busy")
        state = run.state()  # again under the lock: another process may have finished it
        if state in ("done", "stopped", "missing"):
            return Outcome(run, "skipped")
        command = run.resume_command() if state == "resume" else run.command()
        if nice:
            command = ["nice", "-n", str(nice), *command]
        write_tag(run, command, launched_by, resumed=state == "resume")
        start = time.perf_counter()
        code = execute(command, run.run_dir / "train.log")
        seconds = time.perf_counter() - start
    ok = code == 0 and (run.run_dir / "done.json").exists()
    return Outcome(run, "done" if ok else "failed", code, seconds)


def execute(command: list[str], log_path: Path) -> int:
    """Run ``command`` in the repository with one thread per numeric library (runs share few
    cores), its output appended to ``log_path``; returns the exit code."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with log_path.open("a") as log:
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    return done.returncode


def stop_text(run_dir: Path) -> str:
    """Why and where a NaN/inf loss stopped the run in ``run_dir`` (its ``stopped.json``)."""
    stop = read_stop(run_dir)
    return (
        f"stopped at step {stop['step']:,} ({stop['reason']}); not relaunched, since resuming "
        f"would replay the same stop (delete {run_dir / STOPPED_NAME} to resume it anyway)"
    )


def run_all(runs: Sequence[Run], jobs: int, nice: int, launched_by: str) -> list[Outcome]:
    """Launch every run that is not done and has its prerequisite, ``jobs`` at a time, and
    report each ending."""
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}.")
    states = {run: run.state() for run in runs}
    pending = [run for run in runs if states[run] in ("new", "resume")]
    skipped = [run for run in runs if states[run] in ("missing", "stopped")]
    done = sum(state == "done" for state in states.values())
    print(f"{done} of {len(runs)} runs already done; {len(pending)} to run", flush=True)
    for run in skipped:
        why = run.missing_prerequisite() if states[run] == "missing" else stop_text(run.run_dir)
        print(f"skipped {run.label()}: {why}", flush=True)
    outcomes = [Outcome(run, "skipped") for run in skipped]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(launch, run, nice, launched_by) for run in pending]
        for run in pending:
            how = "resume" if states[run] == "resume" else "queued"
            command = run.resume_command() if states[run] == "resume" else run.command()
            print(f"{how:<7} {run.label()}: {shlex.join(command)}", flush=True)
        for future in as_completed(futures):
            outcome = future.result()
            outcomes.append(outcome)
            text = {
                "done": "done   ",
                "failed": f"FAILED (exit {outcome.code}, see train.log)",
                "busy": "busy    (another bench.py is running it)",
                "skipped": "skipped (finished meanwhile, or its prerequisite went away)",
            }[outcome.status]
            ending = f"{text} {outcome.run.label()} in {outcome.seconds:.0f} s"
            if outcome.status == "failed" and read_stop(outcome.run.run_dir) is not None:
                # the method's own NaN/inf loss, not a crash of the harness or the run
                ending += f": {stop_text(outcome.run.run_dir)}"
            print(ending, flush=True)
    return outcomes


# --------------------------------------------------------------------------------------------
# Multimodality: optima and routes covered by a final policy
# --------------------------------------------------------------------------------------------

MIN_SHARE = 0.10
"""An optimum / route is covered when it holds at least this share of the samples."""
COVERAGE_ENVS = {"toy/bandit": "optima", "toy/nav": "routes"}
"""Envs whose modes can be counted, and what the modes are called."""


@dataclass
class Coverage:
    """Which modes one final policy covers, from random-sampling actions or episodes."""

    covered: int
    """modes holding at least MIN_SHARE of the samples."""
    shares: list[float]
    """share of the samples at each mode (bandit: the four optima; nav: the episodes that reach
    the goal by the left, by the right route)."""
    quality: float | None
    """bandit: mean reward of the sampled actions; nav: share of episodes reaching the goal
    (None where an archived run did not keep it)."""


@torch.no_grad()
def bandit_coverage(policy: torch.nn.Module, samples: int = 4000, seed: int = 0) -> Coverage:
    """Optima of the default bandit covered by ``samples`` random-sampling actions."""
    env = BanditEnv()
    obs = torch.as_tensor(env.reset(seed=seed)[0]).repeat(samples, 1)  # (samples, 2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        actions = policy.act(obs, "random").numpy()[:, :2]  # the first action of each chunk
    shares = optimum_coverage(actions, env.optima)
    return Coverage(
        int((shares >= MIN_SHARE).sum()), shares.tolist(), float(env.reward(actions).mean())
    )


@torch.no_grad()
def nav_coverage(policy: torch.nn.Module, episodes: int = 100, seed: int = 0) -> Coverage:
    """Routes (left, right) by which ``episodes`` random-sampling episodes of the navigation
    task reach the goal (an episode that does not reach it takes no route)."""
    envs = [NavEnv() for _ in range(episodes)]
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])  # (N, 2)
    paths = [[o] for o in obs]
    running, success = np.ones(episodes, dtype=bool), np.zeros(episodes, dtype=bool)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        while running.any():
            chunks = policy.act(torch.as_tensor(obs, dtype=torch.float32), "random").numpy()
            for i in np.flatnonzero(running):
                for action in chunks[i].reshape(-1, 2):  # every executed action of the chunk
                    obs[i], _, terminated, truncated, info = envs[i].step(action)
                    paths[i].append(obs[i].copy())
                    if terminated or truncated:
                        running[i], success[i] = False, info["is_success"]
                        break
    # A route counts only where the episode reached the goal along it: wandering to one side
    # and back is not a way round the obstacle.
    routes = np.array([route_of(np.array(path)) for path in paths]) * success
    shares = [float((routes == -1).mean()), float((routes == 1).mean())]
    return Coverage(sum(s >= MIN_SHARE for s in shares), shares, float(success.mean()))


COVERAGE_FILE = "coverage.json"
COVERAGE_VERSION = 1
"""Stored with each run's coverage.json; bump it when bandit_coverage or nav_coverage changes
what it measures, so that collecting measures every run again."""


def measure_coverage(run_dir: Path, env: str) -> Coverage | None:
    """Coverage of a finished run's final policy (None for envs without countable modes).

    The measurement is cached in ``run_dir/coverage.json`` (nav rolls out 100 episodes of the
    final policy, minutes for some methods) and reused while the run's ``done.json`` and
    :data:`COVERAGE_VERSION` are the ones it was measured with.
    """
    if env not in COVERAGE_ENVS:
        return None
    cache = run_dir / COVERAGE_FILE
    key = {
        "version": COVERAGE_VERSION,
        "env": env,
        "done": json.loads((run_dir / "done.json").read_text()),
    }
    if cache.is_file():
        try:
            saved = json.loads(cache.read_text())
            if saved["key"] == key:
                return Coverage(**saved["coverage"])
        except (ValueError, KeyError, TypeError):
            pass  # a damaged or older cache: measure again and overwrite it
    policy = load_policy(run_dir)
    coverage = bandit_coverage(policy) if env == "toy/bandit" else nav_coverage(policy)
    # atomic: a collect killed mid-write leaves no torn cache
    save_json(cache, {"key": key, "coverage": asdict(coverage)})
    return coverage


def coverage_row(method: str, coverages: Sequence[Coverage], env: str) -> dict:
    """Coverage of one (env, method) over seeds: per seed, mean and population std."""
    covered = np.array([c.covered for c in coverages], dtype=float)
    qualities = [c.quality for c in coverages if c.quality is not None]
    return {
        "method": method,
        "modes": COVERAGE_ENVS[env],
        "covered_per_seed": [c.covered for c in coverages],
        "covered_mean": float(covered.mean()),
        "covered_std": float(covered.std()),
        "shares_per_seed": [c.shares for c in coverages],
        "quality_mean": float(np.mean(qualities)) if qualities else None,
        "quality_seeds": len(qualities),
    }


def coverage_table(rows: Sequence[dict], env: str) -> str:
    """Markdown table of :func:`coverage_row` rows of one env."""
    modes = COVERAGE_ENVS[env]
    quality = "mean reward of the samples" if env == "toy/bandit" else "episodes reaching the goal"
    count = 4 if env == "toy/bandit" else 2
    lines = [
        f"| method | seeds | {modes} covered (of {count}), per seed | {modes} covered, mean ± std "
        f"| {quality} |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        per_seed = ", ".join(str(c) for c in row["covered_per_seed"])
        seeds = len(row["covered_per_seed"])
        if row["quality_mean"] is None:
            quality = "n/a"
        else:
            quality = f"{row['quality_mean']:.3f}"
            if row["quality_seeds"] < seeds:  # archived runs from before it was kept per seed
                quality += f" ({row['quality_seeds']} of {seeds} seeds)"
        lines.append(
            f"| {row['method']} | {seeds} | {per_seed} "
            f"| {row['covered_mean']:.2f} ± {row['covered_std']:.2f} | {quality} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Collecting
# --------------------------------------------------------------------------------------------


@dataclass
class Collected:
    """The completed runs of a selection, by env."""

    summaries: dict[str, list[Summary]] = field(default_factory=dict)
    curves: dict[str, dict[str, list[Curve]]] = field(default_factory=dict)
    results: dict[str, dict[str, list[RunResult]]] = field(default_factory=dict)
    missing: list[Run] = field(default_factory=list)
    """selected runs without done.json that were not stopped."""
    stopped: list[tuple[Run, dict]] = field(default_factory=list)
    """selected runs that a NaN/inf loss stopped, with their stopped.json."""
    counted: dict[Run, RunResult] = field(default_factory=dict)
    """every counted run (on disk or archived) with its result."""
    archived: dict[Run, dict] = field(default_factory=dict)
    """the counted or stopped runs that came from the archive (not on disk), with their record."""

    def partial_curves(self, env: str) -> list[tuple[Run, dict]]:
        """Archived runs of ``env`` counted without their whole evaluation curve."""
        return [
            (run, record)
            for run, record in self.archived.items()
            if run.env == env and "stopped" not in record and not record["curve_complete"]
        ]


def collect(runs: Sequence[Run], archive: Archive) -> Collected:
    """Load the completed runs: from disk (``done.json``) or, for a run not on disk, from the
    archive; per env the summaries and curves per method."""
    out = Collected()
    for env in dict.fromkeys(r.env for r in runs):
        out.summaries[env], out.curves[env], out.results[env] = [], {}, {}
        for method in dict.fromkeys(r.method.name for r in runs if r.env == env):
            results, curves = [], []
            for run in (r for r in runs if r.env == env and r.method.name == method):
                result = load_run(run.run_dir, env, method, run.seed)
                stop = read_stop(run.run_dir) if result is None else None
                record = None
                if result is None and stop is None:  # not on disk: archived?
                    record = archive.find(env, method, run.seed, run.budget)
                if record is not None:
                    out.archived[run] = record
                    stop = record.get("stopped")
                    result = None if stop is not None else run_result(record, run.run_dir)
                if stop is not None:
                    out.stopped.append((run, stop))
                elif result is None:
                    out.missing.append(run)
                else:
                    results.append(result)
                    out.counted[run] = result
                    if record is None or record["curve_complete"]:  # a whole curve to draw
                        curves.append(result.curve)
            if results:
                out.summaries[env].append(summarize(results))
                out.curves[env][method] = curves
                out.results[env][method] = results
    return out


def archive_runs(
    archive: Archive, runs: Sequence[Run], collected: Collected, coverage: dict[Run, Coverage]
) -> None:
    """Put every counted or stopped run of ``runs`` that is on disk into the archive, replacing
    the record of an earlier run of the same env, method and seed."""
    stopped = dict(collected.stopped)
    for run in runs:
        if run in collected.archived:
            continue
        if run in stopped:
            archive.add(stop_record(run.env, run.method.name, run.seed, run.budget, stopped[run]))
            continue
        if run not in collected.counted:
            continue  # not completed
        launched_by, commit, machine = launch_tag(run.run_dir)
        cover = coverage.get(run)
        record = result_record(
            collected.counted[run],
            run.budget,
            coverage=asdict(cover) if cover is not None else None,
            launched_by=launched_by,
            commit=commit,
            machine=machine,
        )
        archive.add(record)
        archive.launch_commands = list(dict.fromkeys([*archive.launch_commands, *launched_by]))


def launch_tag(run_dir: Path) -> tuple[list[str], str | None, str | None]:
    """The harness command lines that launched the run in ``run_dir``, and the commit and
    machine of its last launch (bench.json, or launch.json of runs made by the older
    from_scratch.py)."""
    if (run_dir / "bench.json").exists():
        tag = json.loads((run_dir / "bench.json").read_text())
        commands = [launch["launched_by"] for launch in tag["launches"]]
        return commands, tag.get("commit"), tag.get("machine")
    if (run_dir / "launch.json").exists():
        tag = json.loads((run_dir / "launch.json").read_text())
        return [tag["launched_by"]], tag.get("commit"), tag.get("machine")
    return [], None, None


def run_machines(collected: Collected) -> list[str]:
    """The machines the counted runs were launched on (as their tags or records say)."""
    machines = []
    for run in collected.counted:
        record = collected.archived.get(run)
        machines.append(record.get("machine") if record else launch_tag(run.run_dir)[2])
    return list(dict.fromkeys(m for m in machines if m))


def launch_commands(collected: Collected, archive: Archive) -> list[str]:
    """The distinct harness command lines that launched the collected runs: those on disk and,
    for the archived ones, the archive's."""
    commands = list(archive.launch_commands) if collected.archived else []
    for env_summaries in collected.summaries.values():
        for summary in env_summaries:
            for seed in summary.per_seed:
                commands += launch_tag(Path(seed["run_dir"]))[0]
    return list(dict.fromkeys(commands))


def plot_env(curves_by_method: dict[str, list[Curve]], env: str, stem: Path) -> list[Path]:
    """Learning curves of one env: ``stem.png`` against env steps and ``stem_wall_clock.png``
    against wall-clock (flowpolicy.plot's figures, one panel)."""
    panel = Panel(env, dict(curves_by_method))
    paths = []
    for x, suffix in (("step", ""), ("wall_time", "_wall_clock")):
        fig = learning_curve_figure([panel], x=x, panel_size=(7.0, 4.5))
        paths += save_figure(fig, stem.with_name(stem.name + suffix), ["png"])
    return paths


def partial_curves_note(collected: Collected, env: str, drawn: bool) -> list[str]:
    """Page lines naming the runs of ``env`` counted from the archive without their curves,
    with the figures their curves were in."""
    partial = collected.partial_curves(env)
    if not partial:
        return []
    names = ", ".join(f"{run.method.name} seed {run.seed}" for run, _ in partial)
    lines = [
        f"Counted from the run archive (`archive/{partial[0][0].protocol}.json`) without their "
        f"evaluation curves: {names}. Their run directories were gone before the archive kept "
        "curves; it has their final (and, fine-tuning, step-0) returns only"
        + (", so the figure above leaves them out." if drawn else "."),
        "",
    ]
    figures = list(dict.fromkeys(f for _, record in partial for f in record.get("figures", [])))
    for figure in figures:
        source = next(r["source"] for _, r in partial if figure in r.get("figures", []))
        lines += [f"Their curves on the page collected before ({source}):", ""]
        lines += [f"![{env} learning curves before the archive]({figure})", ""]
    return lines


def method_command(method: Method) -> str:
    """A method's command without the per-run flags, for the results page."""
    head = (
        f"python {method.script}"
        if method.script
        else shlex.join(["flowpolicy", "train", *method.train])
    )
    init = f" --init {method.init.path}" if method.init else ""
    dataset = f" --dataset {method.dataset.path}" if method.dataset else ""
    return f"{head}{init}{dataset}"


TABLE_NOTE = (
    "Final evaluation return (mean ± population std over seeds) after the full budget; "
    "zero sampling = deterministic actions (zero initial noise for flow policies, the mean "
    "for Gaussian policies), random sampling = sampled actions. Wall-clock includes "
    "evaluation; env steps/s = final step / wall-clock. Each run used one torch thread. "
    "The machine may be shared: where a run recorded it, the per-seed table also gives the "
    "training process's CPU time, and a wall-clock well above it means the run waited for "
    "a core."
)


def page(
    protocol: Protocol,
    runs: Sequence[Run],
    collected: Collected,
    coverage: dict[str, list[dict]],
    plots: dict[str, list[Path]],
    provenance: dict,
) -> str:
    """The results page: provenance, commands and budgets, then per env the tables and plots."""
    lines = [f"# {protocol.title}", "", protocol.summary, "", TABLE_NOTE, ""]
    lines += [note for text in protocol.notes for note in (text, "")]
    lines += [
        f"- Collected by: `{provenance['command']}`",
        *(f"- Runs launched by: `{c}`" for c in provenance["launch_commands"]),
        *(f"- Runs made on: {machine}" for machine in provenance["run_machines"]),
        f"- Collected on: {provenance['machine']}",
        f"- Commit: {provenance['commit']}",
        f"- Date: {provenance['date']}",
        "",
        "## Commands",
        "",
        "Each run is the method's command plus `--env ENV --seed SEED --total-steps N --run-dir "
        "DIR --eval-every E --eval-episodes M --torch-threads 1`, with the budget from the table "
        "below"
        + (
            "; `{env}` is the env id."
            if any(m.init or m.dataset for m in protocol.methods)
            else "."
        ),
        "",
        "| method | command | settings |",
        "|---|---|---|",
        *(
            f"| {m.name} | `{method_command(m)}` | {m.source} |"
            for m in protocol.methods
            if m.name in {r.method.name for r in runs}
        ),
        "",
        "| env | total steps | eval every | eval episodes |",
        "|---|---|---|---|",
        *(
            f"| {env} | {b.total_steps:,} | {b.eval_every:,} | {b.eval_episodes} |"
            for env, b in {r.env: r.budget for r in runs}.items()
        ),
        "",
    ]
    for env, summaries in collected.summaries.items():
        lines += [f"## {env}", ""]
        if not summaries:
            lines += ["No completed runs yet.", ""]
            continue
        lines += [markdown_table(summaries), "", "Per seed:", ""]
        lines += [markdown_seed_table(summaries), ""]
        if coverage.get(env):
            lines += ["Modes covered by the final policies (random sampling):", ""]
            lines += [coverage_table(coverage[env], env), ""]
        if env in plots:
            lines += [f"![{env} learning curves]({plots[env][0].name})", ""]
            lines += [f"![{env} learning curves, wall-clock]({p.name})" for p in plots[env][1:]]
            lines += [""]
        lines += partial_curves_note(collected, env, drawn=env in plots)
    if collected.stopped:
        lines += ["## Stopped by a NaN/inf loss (stopped.json; not counted above)", ""]
        lines += [
            f"- {run.env} / {run.method.name} / seed {run.seed}: at step {stop['step']:,} "
            f"({stop['reason']})"
            for run, stop in collected.stopped
        ]
        lines += [""]
    if collected.missing:
        lines += ["## Not completed (no done.json)", ""]
        for run in collected.missing:
            reason = run.missing_prerequisite() if run.state() == "missing" else None
            lines.append(
                f"- {run.env} / {run.method.name} / seed {run.seed}"
                + (f": {reason}" if reason else "")
            )
        lines += [""]
    return "\n".join(lines)


def write_csv(path: Path, collected: Collected, coverage: dict[str, list[dict]]) -> Path:
    """A row per (env, method): flowpolicy.plot's results.csv columns, plus the coverage."""
    extra = ("modes", "covered_mean", "covered_std", "covered_per_seed", "quality_mean")
    columns = (*CSV_COLUMNS, *extra) if coverage else CSV_COLUMNS
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        for env, summaries in collected.summaries.items():
            by_method = {row["method"]: row for row in coverage.get(env, [])}
            for summary in summaries:
                row = csv_row(summary)
                if summary.method in by_method:
                    cov = by_method[summary.method]
                    row |= {key: cov[key] for key in extra}
                    row["covered_per_seed"] = " ".join(map(str, cov["covered_per_seed"]))
                writer.writerow(row)
    return path


def collect_and_write(
    protocol: Protocol,
    runs: Sequence[Run],
    docs_dir: Path,
    command: str,
    archive: Archive | None = None,
) -> tuple[Collected, dict[str, list[dict]], list[Path]]:
    """Collect the completed runs (on disk or archived) and write <protocol>.md / .json / .csv,
    the PNGs and the archive (``archive``: default, the one in ``docs_dir``).

    Returns:
        What was collected, the coverage rows per env, and the files written.
    """
    docs_dir = docs_dir.resolve()
    docs_dir.mkdir(parents=True, exist_ok=True)
    # before the page is rewritten: a first archive is seeded from the page's json
    archive = archive if archive is not None else load_archive(docs_dir, protocol.name)
    collected = collect(runs, archive)
    run_coverage = {
        run: run_coverage_of(run, collected)
        for run in collected.counted
        if protocol.coverage and run.env in COVERAGE_ENVS
    }
    coverage: dict[str, list[dict]] = {}
    for env, by_method in collected.results.items():
        rows = []
        for method in by_method:
            found = [c for r, c in run_coverage.items() if (r.env, r.method.name) == (env, method)]
            if found := [c for c in found if c is not None]:
                rows.append(coverage_row(method, found, env))
        if rows:
            coverage[env] = rows
    plots = {
        env: plot_env(drawn, env, docs_dir / f"{protocol.name}_{path_safe(env)}")
        for env, by_method in collected.curves.items()
        if (drawn := {method: curves for method, curves in by_method.items() if curves})
    }
    provenance = {
        "command": command,
        "launch_commands": launch_commands(collected, archive),
        "machine": machine_info(),
        "run_machines": run_machines(collected),
        "commit": git_commit(REPO),
        "date": datetime.date.today().isoformat(),
    }
    stem = docs_dir / protocol.name
    stem.with_suffix(".md").write_text(page(protocol, runs, collected, coverage, plots, provenance))
    raw = {
        "protocol": protocol.name,
        "provenance": provenance,
        "commands": {m.name: method_command(m) for m in protocol.methods},
        "budgets": {r.env: asdict(r.budget) for r in runs},
        "results": {env: [s.to_json() for s in ss] for env, ss in collected.summaries.items()},
        "coverage": coverage,
        "missing": [
            {
                "env": r.env,
                "method": r.method.name,
                "seed": r.seed,
                "reason": r.missing_prerequisite(),
            }
            for r in collected.missing
        ],
        "stopped": [
            {"env": r.env, "method": r.method.name, "seed": r.seed, **stop}
            for r, stop in collected.stopped
        ],
    }
    stem.with_suffix(".json").write_text(json.dumps(raw, indent=2) + "\n")
    write_csv(stem.with_suffix(".csv"), collected, coverage)
    archive_runs(archive, runs, collected, run_coverage)
    archive.save()
    files = [*(stem.with_suffix(s) for s in (".md", ".json", ".csv")), archive.path]
    return collected, coverage, files + [p for paths in plots.values() for p in paths]


def run_coverage_of(run: Run, collected: Collected) -> Coverage | None:
    """The modes a counted run's final policy covers: measured on disk, or as archived."""
    record = collected.archived.get(run)
    if record is None:
        return measure_coverage(run.run_dir, run.env)
    return Coverage(**record["coverage"]) if record.get("coverage") else None


def run_protocol(
    protocol: Protocol,
    runs: Sequence[Run],
    *,
    docs_dir: Path,
    jobs: int,
    nice: int = 0,
    collect_only: bool = False,
    command: str | None = None,
    also_collect: Sequence[Run] = (),
    archive: Archive | None = None,
    rerun_archived: bool = False,
) -> Collected:
    """Run what is missing (unless ``collect_only``), then collect, tabulate and plot ``runs``
    and the completed runs ``also_collect``. A run that is not on disk but archived (in
    ``docs_dir``) counts as done unless ``rerun_archived``."""
    command = command or shlex.join(["python", *sys.argv])
    archive = archive if archive is not None else load_archive(docs_dir.resolve(), protocol.name)
    if not collect_only:
        archived = [
            run
            for run in runs
            if run.state() in ("new", "missing")
            and archive.find(run.env, run.method.name, run.seed, run.budget) is not None
        ]
        if archived and not rerun_archived:
            print(
                f"{len(archived)} selected run(s) not on disk are archived in {archive.path} "
                "and count as done (--rerun-archived runs them again)",
                flush=True,
            )
        run_all([r for r in runs if rerun_archived or r not in archived], jobs, nice, command)
    # the protocol's env order, so that the page's layout does not depend on the selection
    envs = list(dict.fromkeys([*protocol.budgets, *(run.env for run in [*runs, *also_collect])]))
    methods = [method.name for method in protocol.methods]
    report = sorted(
        [*runs, *also_collect],
        key=lambda run: (envs.index(run.env), methods.index(run.method.name), run.seed),
    )
    collected, coverage, files = collect_and_write(protocol, report, docs_dir, command, archive)
    for env, summaries in collected.summaries.items():
        print(f"\n{env}\n{markdown_table(summaries) if summaries else '(no runs)'}")
        if coverage.get(env):
            print(coverage_table(coverage[env], env))
    names = ", ".join(str(f.relative_to(docs_dir.resolve())) for f in files)
    print(f"\nwrote {len(files)} files to {docs_dir}: {names}")
    if collected.stopped:
        print(f"{len(collected.stopped)} run(s) stopped by a NaN/inf loss (listed on the page)")
    if collected.missing:
        print(f"{len(collected.missing)} selected run(s) not completed")
    return collected


def completed_elsewhere(
    protocol: Protocol, root: Path, selected: Sequence[Run], archive: Archive | None = None
) -> list[Run]:
    """The protocol's completed or stopped runs under ``root`` or in ``archive`` that the
    selection left out: other methods, any ``seed<k>`` directory on disk, and the protocol's
    other envs (budgets as planned: the selection's on its envs, the protocol's on the
    others)."""
    chosen = {run.run_dir for run in selected}
    budgets = {run.env: run.budget for run in selected}
    extra = []
    for env in dict.fromkeys([*budgets, *protocol.budgets]):
        budget = budgets.get(env) or protocol.budget(env)
        for method in protocol.methods:
            if method.envs is not None and env not in method.envs:
                continue
            seeds = {
                seed
                for (e, m, seed) in (archive.runs if archive else {})
                if (e, m) == (env, method.name) and archive.find(e, m, seed, budget)
            }
            for run_dir in method_dir(root, env, method.name).glob("seed*"):
                seed = run_dir.name.removeprefix("seed")
                ended = (run_dir / "done.json").exists() or (run_dir / STOPPED_NAME).exists()
                if seed.isdigit() and ended:
                    seeds.add(int(seed))
            for seed in sorted(seeds):
                run_dir = method_dir(root, env, method.name) / f"seed{seed}"
                if run_dir not in chosen:
                    extra.append(Run(protocol.name, env, method, seed, budget, run_dir))
    return extra


def train_extra(args: Any) -> list[str]:
    """The ``--device`` and ``--train-args`` of ``args`` as ``flowpolicy train`` options
    (from_scratch.py's Args have neither)."""
    extra = shlex.split(getattr(args, "train_args", ""))
    device = getattr(args, "device", None)
    return [*extra, "--device", device] if device else extra


def plan_and_run(protocol: Protocol, root: Path, args: Any) -> None:
    """Plan the selection of ``args`` (this script's or from_scratch.py's Args: the same
    selection and running options) under ``root``, run what is missing, then collect the
    selection and the protocol's other completed runs (every env)."""
    runs = plan(
        protocol,
        root,
        envs=args.envs,
        methods=args.methods,
        seeds=args.seeds,
        steps=args.steps,
        eval_every=args.eval_every,
        eval_episodes=args.eval_episodes,
        extra=train_extra(args),
    )
    archive = load_archive(args.docs_dir.resolve(), protocol.name)
    run_protocol(
        protocol,
        runs,
        docs_dir=args.docs_dir,
        jobs=args.jobs,
        nice=args.nice,
        collect_only=args.collect_only,
        also_collect=completed_elsewhere(protocol, root, runs, archive),
        archive=archive,
        rerun_archived=getattr(args, "rerun_archived", False),
    )


def main(args: Args) -> None:
    """``bench.py PROTOCOL [options]``."""
    protocol = PROTOCOLS[args.protocol]
    plan_and_run(protocol, args.runs_root / protocol.name, args)


def cli(main_function, args_class) -> int:
    """Parse with tyro and run; a UserError prints its message and gives exit code 2."""
    try:
        main_function(tyro.cli(args_class))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli(main, Args))
