"""From-scratch comparison: FPO, FPO++, our Gaussian PPO and stable-baselines3 PPO.

Runs every (env, method, seed) as its own subprocess with one torch thread, ``--jobs`` at a time,
into ``<runs-root>/<env>/<method>/seed<k>`` (the subprocess's output goes to ``train.log`` there;
runs whose ``done.json`` exists are skipped). Then it collects every completed run of the selected
envs and methods and writes

- ``<docs-dir>/from_scratch.md``: a table per env, the commands, machine, commit and date;
- ``<docs-dir>/from_scratch.json``: the raw numbers;
- ``<docs-dir>/from_scratch_<env>.png``: evaluation return vs env steps per env.

Examples:
    # everything (3 envs x 4 methods x 2 seeds), two runs at a time
    nice -n 10 python benchmarks/from_scratch.py
    # only the SB3 reference on Hopper, one run at a time
    nice -n 10 python benchmarks/from_scratch.py --methods sb3-ppo --envs Hopper-v5 --jobs 1
    # a smoke run that touches neither the real runs nor the docs
    python benchmarks/from_scratch.py --methods sb3-ppo --envs Hopper-v5 --seeds 0 \
        --steps Hopper-v5=5000 --eval-every 2500 --runs-root /tmp/fs --docs-dir /tmp/fs/docs
    # re-collect tables and plots from the runs on disk
    python benchmarks/from_scratch.py --collect-only
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import tyro
from results import (
    RunResult,
    Summary,
    git_commit,
    load_run,
    machine_info,
    markdown_seed_table,
    markdown_table,
    path_safe,
    plot_learning_curves,
    summarize,
)

REPO = Path(__file__).resolve().parents[1]

Method = Literal["fpo", "fpo++", "ppo", "sb3-ppo"]
METHODS: tuple[Method, ...] = ("fpo", "fpo++", "ppo", "sb3-ppo")


@dataclass(frozen=True)
class Budget:
    """How long to train on one env and how often to evaluate."""

    total_steps: int
    eval_every: int
    eval_episodes: int


# Hopper at the CleanRL / SB3 budget; two DMC tasks from the FPO paper's list (its budget was
# 60M steps on GPU; these are CPU-sized). DMC episodes always last 1000 steps, hence 5 episodes.
DEFAULT_BUDGETS: dict[str, Budget] = {
    "Hopper-v5": Budget(total_steps=1_000_000, eval_every=50_000, eval_episodes=10),
    "dmc/cartpole-balance": Budget(total_steps=500_000, eval_every=25_000, eval_episodes=5),
    "dmc/cheetah-run": Budget(total_steps=500_000, eval_every=25_000, eval_episodes=5),
}


@dataclass(frozen=True)
class Args:
    """Run and collect the from-scratch comparison."""

    methods: tuple[Method, ...] = METHODS
    """Methods to run and collect."""
    envs: tuple[str, ...] = tuple(DEFAULT_BUDGETS)
    """Env ids (gymnasium ids or ``dmc/<domain>-<task>``)."""
    seeds: tuple[int, ...] = (0, 1)
    """Seeds per (env, method)."""
    steps: tuple[str, ...] = ()
    """Per-env step budget overrides, ``ENV=N`` (e.g. ``Hopper-v5=5000``)."""
    eval_every: int | None = None
    """Evaluate every this many env steps, for every env (default: the env's own)."""
    eval_episodes: int | None = None
    """Episodes per evaluation and mode, for every env (default: the env's own)."""
    jobs: int = 2
    """Runs at a time (each uses one torch thread)."""
    nice: int = 0
    """Extra niceness for each run, on top of this script's (which the runs inherit)."""
    collect_only: bool = False
    """Do not run anything; only collect, tabulate and plot the runs on disk."""
    runs_root: Path = REPO / "benchmarks" / "runs" / "from_scratch"
    """Where run directories go."""
    docs_dir: Path = REPO / "docs" / "benchmarks"
    """Where the markdown, JSON and PNG results go."""


@dataclass(frozen=True)
class Run:
    """One (env, method, seed) with its budget and directory."""

    env: str
    method: Method
    seed: int
    budget: Budget
    run_dir: Path

    def command(self) -> list[str]:
        """The training command line for this run."""
        if self.method == "sb3-ppo":
            head = [sys.executable, str(REPO / "benchmarks" / "sb3_ppo.py")]
        elif self.method == "fpo++":
            head = [sys.executable, "-m", "flowpolicy", "train", "fpo", "--preset", "fpo++"]
        else:
            head = [sys.executable, "-m", "flowpolicy", "train", self.method]
        return [
            *head,
            *("--env", self.env),
            *("--seed", str(self.seed)),
            *("--total-steps", str(self.budget.total_steps)),
            *("--run-dir", str(self.run_dir)),
            *("--eval-every", str(self.budget.eval_every)),
            *("--eval-episodes", str(self.budget.eval_episodes)),
            *("--torch-threads", "1"),
        ]


def parse_step_overrides(items: tuple[str, ...]) -> dict[str, int]:
    """``("Hopper-v5=5000",)`` -> ``{"Hopper-v5": 5000}``."""
    overrides = {}
    for item in items:
        env, sep, value = item.rpartition("=")
        if not sep or not env or not value.replace("_", "").isdigit():
            raise SystemExit(f"--steps expects ENV=N (e.g. Hopper-v5=1000000), got {item!r}")
        overrides[env] = int(value)
    return overrides


def budget_for(env: str, args: Args, step_overrides: dict[str, int]) -> Budget:
    """The env's default budget with the command line's overrides applied."""
    base = DEFAULT_BUDGETS.get(env, Budget(1_000_000, 50_000, 10))
    return Budget(
        total_steps=step_overrides.get(env, base.total_steps),
        eval_every=args.eval_every or base.eval_every,
        eval_episodes=args.eval_episodes or base.eval_episodes,
    )


def plan(args: Args) -> list[Run]:
    """Every selected (env, method, seed), in that order."""
    overrides = parse_step_overrides(args.steps)
    unknown = set(overrides) - set(args.envs)
    if unknown:
        raise SystemExit(f"--steps names envs that are not selected: {sorted(unknown)}")
    return [
        Run(
            env=env,
            method=method,
            seed=seed,
            budget=budget_for(env, args, overrides),
            run_dir=args.runs_root.resolve() / path_safe(env) / method / f"seed{seed}",
        )
        for env in args.envs
        for method in args.methods
        for seed in args.seeds
    ]


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


def launch(run: Run, nice: int) -> tuple[Run, int, float]:
    """Run one training subprocess to completion, its output into ``run_dir/train.log``."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    command = run.command()
    if run.method != "sb3-ppo" and (run.run_dir / "checkpoint.pt").exists():
        # An interrupted flowpolicy run continues from its checkpoint (same numbers as if it
        # had never stopped) instead of being refused as an existing run.
        command = [sys.executable, "-m", "flowpolicy", "train", "--resume", str(run.run_dir)]
    if nice:
        command = ["nice", "-n", str(nice), *command]
    launch_info = {
        "command": shlex.join(command),
        "launched_by": shlex.join(["python", *sys.argv]),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "load_average": os.getloadavg(),
    }
    (run.run_dir / "launch.json").write_text(json.dumps(launch_info, indent=2) + "\n")
    # One thread per run for every numeric library, not only torch: runs share few cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with (run.run_dir / "train.log").open("a") as log:
        log.write(f"$ {launch_info['command']}\n")
        log.flush()
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    return run, code.returncode, time.perf_counter() - start


def run_all(runs: list[Run], jobs: int, nice: int) -> None:
    """Launch the runs without a ``done.json``, ``jobs`` at a time, and report each ending."""
    pending = [r for r in runs if not (r.run_dir / "done.json").exists()]
    print(f"{len(runs) - len(pending)} of {len(runs)} runs already done; {len(pending)} to run")
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(launch, run, nice) for run in pending]
        for run in pending:
            print(f"queued  {run.env} {run.method} seed {run.seed}: {shlex.join(run.command())}")
        for future in as_completed(futures):
            run, code, seconds = future.result()
            ok = code == 0 and (run.run_dir / "done.json").exists()
            status = "done   " if ok else f"FAILED (exit {code}, see train.log)"
            print(f"{status} {run.env} {run.method} seed {run.seed} in {seconds:.0f} s", flush=True)


# --------------------------------------------------------------------------------------------
# Collecting
# --------------------------------------------------------------------------------------------


def collect(runs: list[Run]) -> tuple[dict[str, list[Summary]], dict[str, dict], list[Run]]:
    """Load completed runs: per env the summaries, per env the curves, and the missing runs."""
    summaries: dict[str, list[Summary]] = {}
    curves: dict[str, dict] = {}
    missing: list[Run] = []
    for env in dict.fromkeys(r.env for r in runs):
        summaries[env], curves[env] = [], {}
        for method in dict.fromkeys(r.method for r in runs if r.env == env):
            results: list[RunResult] = []
            for run in (r for r in runs if r.env == env and r.method == method):
                result = load_run(run.run_dir, env, method, run.seed)
                if result is None:
                    missing.append(run)
                else:
                    results.append(result)
            if results:
                summaries[env].append(summarize(results))
                curves[env][method] = [r.curve for r in results]
    return summaries, curves, missing


def launch_commands(summaries: dict[str, list[Summary]]) -> list[str]:
    """The distinct ``from_scratch.py`` command lines that launched the collected runs."""
    commands = []
    for env_summaries in summaries.values():
        for summary in env_summaries:
            for seed in summary.per_seed:
                path = Path(seed["run_dir"]) / "launch.json"
                if path.exists():
                    commands.append(json.loads(path.read_text())["launched_by"])
    return list(dict.fromkeys(commands))


def write_markdown(
    path: Path,
    summaries: dict[str, list[Summary]],
    missing: list[Run],
    plots: dict[str, Path],
    provenance: dict,
) -> None:
    """The results page: provenance, then a table, a per-seed table and a plot per env."""
    lines = [
        "# From-scratch comparison",
        "",
        "Final evaluation return (mean ± population std over seeds) after the full budget; "
        "zero sampling = deterministic actions (zero initial noise for flow policies, the mean "
        "for Gaussian policies), random sampling = sampled actions. Wall-clock includes "
        "evaluation; env steps/s = final step / wall-clock. Each run used one torch thread. "
        "The machine may be shared: where a run recorded it, the per-seed table also gives the "
        "training process's CPU time, and a wall-clock well above it means the run waited for "
        "a core.",
        "",
        f"- Collected by: `{provenance['command']}`",
        *(f"- Runs launched by: `{c}`" for c in provenance["launch_commands"]),
        f"- Machine: {provenance['machine']}",
        f"- Commit: {provenance['commit']}",
        f"- Date: {provenance['date']}",
        "",
    ]
    for env, env_summaries in summaries.items():
        lines += [f"## {env}", ""]
        if not env_summaries:
            lines += ["No completed runs yet.", ""]
            continue
        lines += [markdown_table(env_summaries), "", "Per seed:", ""]
        lines += [markdown_seed_table(env_summaries), ""]
        if env in plots:
            lines += [f"![{env} learning curves]({plots[env].name})", ""]
    if missing:
        lines += ["## Not completed (no done.json)", ""]
        lines += [f"- {r.env} / {r.method} / seed {r.seed}" for r in missing]
        lines += [""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main(args: Args) -> None:
    """Run what is missing (unless ``--collect-only``), then collect, tabulate and plot."""
    runs = plan(args)
    docs_dir = args.docs_dir.resolve()
    if not args.collect_only:
        run_all(runs, args.jobs, args.nice)

    summaries, curves, missing = collect(runs)
    plots = {
        env: plot_learning_curves(by_method, env, docs_dir / f"from_scratch_{path_safe(env)}.png")
        for env, by_method in curves.items()
        if by_method
    }
    provenance = {
        "command": shlex.join(["python", *sys.argv]),
        "launch_commands": launch_commands(summaries),
        "machine": machine_info(),
        "commit": git_commit(REPO),
        "date": datetime.date.today().isoformat(),
    }
    write_markdown(docs_dir / "from_scratch.md", summaries, missing, plots, provenance)
    raw = {
        "provenance": provenance,
        "budgets": {r.env: asdict(r.budget) for r in runs},
        "results": {env: [s.to_json() for s in ss] for env, ss in summaries.items()},
        "missing": [{"env": r.env, "method": r.method, "seed": r.seed} for r in missing],
    }
    (docs_dir / "from_scratch.json").write_text(json.dumps(raw, indent=2) + "\n")

    for env, env_summaries in summaries.items():
        print(f"\n{env}\n{markdown_table(env_summaries) if env_summaries else '(no runs)'}")
    print(f"\nwrote {docs_dir / 'from_scratch.md'} and {len(plots)} plot(s)")
    if missing:
        print(f"{len(missing)} selected run(s) not completed")


if __name__ == "__main__":
    main(tyro.cli(Args))
