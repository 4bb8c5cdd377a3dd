"""The benchmark harness (benchmarks/bench.py): plan expansion, skip / resume / missing
prerequisite, bench.json tags, coverage counting, collecting fake runs into the results files,
and one real tiny run of PPO on the bandit through the command line."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import get_args

import bench
import numpy as np
import pytest
import torch
from bench import (
    REPO,
    ProtocolName,
    bandit_coverage,
    collect_and_write,
    launch,
    method_command,
    nav_coverage,
    plan,
    run_all,
    run_lock,
)
from protocols import (
    FINETUNE,
    FROM_SCRATCH,
    PROTOCOLS,
    Budget,
    Method,
    Prerequisite,
    Protocol,
)

from flowpolicy.checkpoint import record_stop
from flowpolicy.envs import BanditEnv
from flowpolicy.errors import UserError
from flowpolicy.train import load_policy
from tests.fake_runs import write_run

# --------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------


def test_plan_expands_envs_methods_seeds_in_order(tmp_path: Path) -> None:
    runs = plan(
        FINETUNE,
        tmp_path,
        envs=["Hopper-v5", "Walker2d-v5"],
        methods=["fpo++", "dppo"],
        seeds=[0, 1],
        steps=["Hopper-v5=5000"],
        eval_episodes=3,
    )
    assert [(r.env, r.method.name, r.seed) for r in runs] == [
        (env, method, seed)
        for env in ("Hopper-v5", "Walker2d-v5")
        for method in ("fpo++", "dppo")
        for seed in (0, 1)
    ]
    first = runs[0]
    assert first.run_dir == tmp_path.resolve() / "Hopper-v5" / "fpo++" / "seed0"
    assert first.budget == Budget(5000, 25_000, 3)
    assert runs[-1].budget == Budget(500_000, 25_000, 3)  # Walker2d keeps its total
    command = first.command()
    assert command[:7] == [sys.executable, "-m", "flowpolicy", "train", "fpo", "--preset", "fpo++"]
    assert command[command.index("--total-steps") + 1] == "5000"
    assert command[command.index("--torch-threads") + 1] == "1"
    assert command[-2:] == ["--init", str(REPO / "runs/reference/Hopper-v5/bc-flow")]
    dppo = runs[2].command()
    assert dppo[dppo.index("--init") + 1] == str(REPO / "runs/reference/Hopper-v5/bc-diffusion")


def test_an_offline_dataset_is_passed_and_checked_like_an_init_policy(tmp_path: Path) -> None:
    data = Prerequisite(str(tmp_path / "{env}" / "data.hdf5"), "make-data {env}")
    method = Method("offline", ("fql",), dataset=data)
    protocol = Protocol("p", "P", "", (method,), {}, Budget(100, 50, 2), (0,))
    (run,) = plan(protocol, tmp_path / "runs", envs=["toy/bandit"])
    path = tmp_path / "toy/bandit" / "data.hdf5"
    assert run.command()[-2:] == ["--dataset", str(path)]
    assert run.state() == "missing"
    assert run.missing_prerequisite() == (
        f"missing prerequisite: {path} (make it with make-data toy/bandit)"
    )
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    assert run.state() == "new"
    assert method_command(method) == "flowpolicy train fql --dataset " + data.path


def test_every_protocol_is_a_command_line_choice() -> None:
    assert set(get_args(ProtocolName)) == set(PROTOCOLS)
    for protocol in PROTOCOLS.values():
        names = [m.name for m in protocol.methods]
        assert len(names) == len(set(names)), protocol.name


def test_protocol_defaults_and_unlisted_env(tmp_path: Path) -> None:
    runs = plan(FROM_SCRATCH, tmp_path, envs=["dmc/cheetah-run", "Walker2d-v5"])
    everywhere = [m for m in FROM_SCRATCH.methods if m.envs is None]  # sb3-ppo: Hopper only
    assert len(runs) == 2 * len(everywhere) * len(FROM_SCRATCH.seeds)
    assert runs[0].run_dir.parts[-3] == "dmc_cheetah-run"  # path-safe env folder
    assert runs[0].budget == FROM_SCRATCH.budgets["dmc/cheetah-run"]
    assert runs[-1].budget == FROM_SCRATCH.default_budget


def test_from_scratch_command_lines_are_the_original_ones(tmp_path: Path) -> None:
    """The runs of benchmarks/runs/from_scratch were made by these exact command lines."""
    runs = plan(FROM_SCRATCH, tmp_path, envs=["Hopper-v5"], methods=["ppo", "sb3-ppo"], seeds=[1])
    tail = [
        *("--env", "Hopper-v5", "--seed", "1", "--total-steps", "1000000"),
        *("--run-dir", str(runs[0].run_dir)),
        *("--eval-every", "50000", "--eval-episodes", "10", "--torch-threads", "1"),
    ]
    assert runs[0].command() == [sys.executable, "-m", "flowpolicy", "train", "ppo", *tail]
    tail[tail.index(str(runs[0].run_dir))] = str(runs[1].run_dir)
    sb3 = [sys.executable, str(REPO / "benchmarks" / "sb3_ppo.py"), *tail]
    assert runs[1].command() == sb3


@pytest.mark.parametrize(
    "options",
    [{"methods": ["fpo", "nope"]}, {"steps": ["Walker2d-v5=10"]}, {"steps": ["Hopper-v5"]}],
    ids=["unknown-method", "unselected-env", "malformed-steps"],
)
def test_plan_rejects_bad_selections(tmp_path: Path, options: dict) -> None:
    with pytest.raises(UserError):
        plan(FINETUNE, tmp_path, envs=["Hopper-v5"], **options)


# --------------------------------------------------------------------------------------------
# Running: skip, resume, missing prerequisite, tags (the training subprocess is faked)
# --------------------------------------------------------------------------------------------


def tiny_protocol(reference: Path) -> Protocol:
    """A fine-tuning method whose prerequisite lives under ``reference``, and a script method."""
    prerequisite = Prerequisite(str(reference / "{env}" / "bc-flow"), "make-it {env}")
    return Protocol(
        name="tiny",
        title="Tiny",
        summary="Test protocol.",
        methods=(
            Method("tuned", ("fpo", "--num-envs", "2"), prerequisite),
            Method("script", script="benchmarks/sb3_ppo.py"),
        ),
        budgets={"toy/bandit": Budget(64, 32, 2), "toy/nav": Budget(64, 32, 2)},
        default_budget=Budget(64, 32, 2),
        seeds=(0,),
    )


def test_skip_resume_and_missing_prerequisite(tmp_path: Path, fake_training, capsys) -> None:
    protocol = tiny_protocol(tmp_path / "reference")
    ready = tmp_path / "reference" / "toy" / "bandit" / "bc-flow"  # env ids keep their "/"
    ready.mkdir(parents=True)
    (ready / "done.json").write_text("{}")
    runs = {
        (r.env, r.method.name): r
        for r in plan(protocol, tmp_path / "runs", envs=["toy/bandit", "toy/nav"])
    }
    done, stopped = runs["toy/bandit", "script"], runs["toy/nav", "tuned"]
    for run in (done, stopped):
        run.run_dir.mkdir(parents=True)
    (done.run_dir / "done.json").write_text("{}")
    (stopped.run_dir / "checkpoint.pt").write_bytes(b"")  # a stopped run: resumed, no --init
    assert {key: run.state() for key, run in runs.items()} == {
        ("toy/bandit", "tuned"): "new",
        ("toy/bandit", "script"): "done",
        ("toy/nav", "tuned"): "resume",
        ("toy/nav", "script"): "new",
    }
    # The nav prerequisite is missing but the stopped nav run does not need it any more.
    (stopped.run_dir / "checkpoint.pt").unlink()
    assert stopped.state() == "missing"
    assert stopped.missing_prerequisite() == (
        f"missing prerequisite: {tmp_path / 'reference' / 'toy' / 'nav' / 'bc-flow'} "
        "(make it with make-it toy/nav)"
    )
    (stopped.run_dir / "checkpoint.pt").write_bytes(b"")

    outcomes = run_all(list(runs.values()), jobs=2, nice=0, launched_by="pytest")
    launched = sorted(map(tuple, fake_training))
    new = runs["toy/bandit", "tuned"].command()
    assert launched == sorted([tuple(new), tuple(stopped.resume_command()),
                               tuple(runs["toy/nav", "script"].command())])  # fmt: skip
    assert new[-2:] == ["--init", str(ready)]
    assert sorted(o.status for o in outcomes) == ["done", "done", "done"]

    # A run whose prerequisite is missing is reported and gets no directory.
    (stopped.run_dir / "done.json").unlink()
    (stopped.run_dir / "checkpoint.pt").unlink()
    fake_training.clear()
    capsys.readouterr()
    outcomes = run_all(list(runs.values()), jobs=1, nice=0, launched_by="pytest")
    assert fake_training == []
    assert [o.status for o in outcomes] == ["skipped"]
    assert "skipped toy/nav tuned seed 0: missing prerequisite:" in capsys.readouterr().out


def test_bench_json_tags_every_launch(tmp_path: Path, fake_training) -> None:
    protocol = tiny_protocol(tmp_path / "reference")
    (run,) = plan(protocol, tmp_path / "runs", envs=["toy/nav"], methods=["script"])
    assert launch(run, nice=3, launched_by="python benchmarks/bench.py tiny").status == "done"
    tag = json.loads((run.run_dir / "bench.json").read_text())
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    assert tag["commit"] == (head or None) and isinstance(tag["dirty"], bool)
    assert (tag["protocol"], tag["method"], tag["env"], tag["seed"]) == (
        "tiny",
        "script",
        "toy/nav",
        0,
    )
    assert tag["budget"] == {"total_steps": 64, "eval_every": 32, "eval_episodes": 2}
    assert tag["command"].startswith("nice -n 3 ") and "--torch-threads 1" in tag["command"]
    assert tag["launched_by"] == "python benchmarks/bench.py tiny"
    assert "CPU cores" in tag["machine"] and not tag["resumed"]
    # A relaunch (here: after done.json disappeared) keeps the earlier launch.
    (run.run_dir / "done.json").unlink()
    launch(run, nice=0, launched_by="second")
    tag = json.loads((run.run_dir / "bench.json").read_text())
    assert [entry["launched_by"] for entry in tag["launches"]] == [
        "python benchmarks/bench.py tiny",
        "second",
    ]


def test_a_locked_run_is_left_alone(tmp_path: Path, fake_training) -> None:
    (run,) = plan(tiny_protocol(tmp_path), tmp_path / "runs", envs=["toy/nav"], methods=["script"])
    with run_lock(run.run_dir) as mine:
        assert mine
        assert launch(run, nice=0, launched_by="pytest").status == "busy"
    assert fake_training == []
    assert launch(run, nice=0, launched_by="pytest").status == "done"


# --------------------------------------------------------------------------------------------
# Coverage of modes
# --------------------------------------------------------------------------------------------


class Fixed:
    """A policy whose random-mode actions cycle through given actions."""

    def __init__(self, actions: list[list[float]]) -> None:
        self.actions = torch.tensor(actions)

    def act(self, obs: torch.Tensor, mode: str) -> torch.Tensor:
        return self.actions[torch.arange(len(obs)) % len(self.actions)]


class Steer:
    """Nav policy: pass the obstacle on the given side (default: the side of the start's x),
    then head for the goal."""

    def __init__(self, side: float | None = None) -> None:
        self.side = side

    def act(self, obs: torch.Tensor, mode: str) -> torch.Tensor:
        x = obs[:, :1]
        side = (
            torch.where(x >= 0, 1.0, -1.0) if self.side is None else torch.full_like(x, self.side)
        )
        waypoint = torch.cat([0.4 * side, torch.zeros_like(side)], dim=1)
        target = torch.where(obs[:, 1:] < 0, waypoint, torch.tensor([[0.0, 0.8]]))
        return ((target - obs) / 0.1).clamp(-1, 1)


def test_bandit_coverage_counts_optima() -> None:
    optima = BanditEnv().optima.tolist()
    everywhere = bandit_coverage(Fixed(optima), samples=400)
    assert everywhere.covered == 4 and everywhere.shares == [0.25] * 4
    assert everywhere.quality == pytest.approx(1.0)
    # 95% on one optimum, 5% on another: the second is below the 10% bar.
    mostly_one = bandit_coverage(Fixed([optima[0]] * 19 + [optima[1]]), samples=400)
    assert mostly_one.covered == 1
    assert np.allclose(mostly_one.shares, [0.95, 0.05, 0, 0])


def test_nav_coverage_counts_routes_and_successes() -> None:
    both = nav_coverage(Steer(), episodes=40)
    assert both.covered == 2 and both.quality == 1.0
    assert sum(both.shares) == pytest.approx(1.0) and min(both.shares) > 0.2
    left = nav_coverage(Steer(side=-1.0), episodes=10)
    assert left.covered == 1 and left.shares == [1.0, 0.0] and left.quality == 1.0
    # Swinging left without ever reaching the goal is no route.
    wander = nav_coverage(Fixed([[-1.0, 0.0]]), episodes=5)
    assert wander.covered == 0 and wander.shares == [0.0, 0.0] and wander.quality == 0.0


# --------------------------------------------------------------------------------------------
# Collecting fake completed runs
# --------------------------------------------------------------------------------------------


def fake_finetune_run(run_dir: Path, final_zero: float, final_random: float) -> None:
    """A finished fine-tuning run of 2000 steps in 10 s: BC (step 0) 10 / 5."""
    evals = [(0, 0.5, 10.0, 5.0), (2000, 10.0, final_zero, final_random)]
    write_run(run_dir, evals, algo_name="fpo", init="bc.pt")


def test_collect_writes_tables_json_csv_and_plots(tmp_path: Path) -> None:
    protocol = tiny_protocol(tmp_path / "reference")
    runs = plan(protocol, tmp_path / "runs", envs=["toy/nav"], methods=["tuned"], seeds=[0, 1, 2])
    fake_finetune_run(runs[0].run_dir, 100.0, 80.0)
    fake_finetune_run(runs[1].run_dir, 300.0, 120.0)  # seed 2: not run (prerequisite missing)
    docs = tmp_path / "docs"
    collected, _, files = collect_and_write(protocol, runs, docs, "pytest collect")
    assert [r.seed for r in collected.missing] == [2]
    names = {f.name for f in files}
    assert names == {
        "tiny.md",
        "tiny.json",
        "tiny.csv",
        "tiny_toy_nav.png",
        "tiny_toy_nav_wall_clock.png",
    }
    assert (docs / "tiny_toy_nav.png").read_bytes()[:4] == b"\x89PNG"

    markdown = (docs / "tiny.md").read_text()
    row = next(line for line in markdown.splitlines() if line.startswith("| tuned | 2 |"))
    # mean ± population std over the two seeds, BC -> final, wall-clock, steps/s
    assert row == (
        "| tuned | 2 | 2,000 | 200.0 ± 100.0 | 100.0 ± 20.0 | 10.0 → 200.0 | 5.0 → 100.0 "
        "| 10 | 200 |"
    )
    assert "- Collected by: `pytest collect`" in markdown
    assert "- toy/nav / tuned / seed 2: missing prerequisite:" in markdown
    assert "`flowpolicy train fpo --num-envs 2 --init " in markdown

    raw = json.loads((docs / "tiny.json").read_text())
    (summary,) = raw["results"]["toy/nav"]
    assert summary["return_mean"] == {"zero": 200.0, "random": 100.0}
    assert summary["bc_return_mean"] == {"zero": 10.0, "random": 5.0}
    assert raw["budgets"] == {"toy/nav": {"total_steps": 64, "eval_every": 32, "eval_episodes": 2}}
    assert raw["missing"][0]["seed"] == 2 and raw["missing"][0]["reason"].startswith("missing")

    (row,) = csv.DictReader((docs / "tiny.csv").open())
    assert (row["method"], row["kind"], row["seeds"]) == ("tuned", "finetune", "0 1")
    assert float(row["return_zero_std"]) == 100.0 and float(row["bc_return_zero_mean"]) == 10.0


def test_a_partial_launch_adds_to_the_page_instead_of_replacing_it(tmp_path: Path) -> None:
    """Collecting one method, seed and env also tabulates the protocol's other completed runs:
    other methods and seeds on that env, and the protocol's other envs."""
    protocol = tiny_protocol(tmp_path / "reference")
    root = tmp_path / "runs"
    for method, seed, final in (("tuned", 0, 100.0), ("tuned", 3, 300.0), ("script", 0, 50.0)):
        fake_finetune_run(root / "toy_nav" / method / f"seed{seed}", final, final)
    (root / "toy_nav" / "tuned" / "seed5").mkdir()  # stopped: no done.json, not counted
    fake_finetune_run(root / "toy_bandit" / "tuned" / "seed0", 7.0, 7.0)  # env not selected
    fake_finetune_run(root / "other_env" / "tuned" / "seed0", 9.0, 9.0)  # not the protocol's
    args = SimpleNamespace(
        envs=["toy/nav"], methods=["script"], seeds=[0], steps=(), eval_every=None,
        eval_episodes=None, docs_dir=tmp_path / "docs", jobs=1, nice=0, collect_only=True,
    )  # fmt: skip
    bench.plan_and_run(protocol, root, args)
    raw = json.loads((tmp_path / "docs" / "tiny.json").read_text())
    assert list(raw["results"]) == ["toy/bandit", "toy/nav"]  # the protocol's env order
    rows = {s["method"]: s for s in raw["results"]["toy/nav"]}
    assert list(rows) == ["tuned", "script"]  # the protocol's method order
    assert rows["tuned"]["seeds"] == [0, 3] and rows["tuned"]["return_mean"]["zero"] == 200.0
    assert rows["script"]["seeds"] == [0]
    (bandit,) = raw["results"]["toy/bandit"]
    assert bandit["method"] == "tuned" and bandit["return_mean"]["zero"] == 7.0
    assert raw["budgets"]["toy/bandit"] == {"total_steps": 64, "eval_every": 32, "eval_episodes": 2}
    assert raw["missing"] == []
    assert "## toy/bandit" in (tmp_path / "docs" / "tiny.md").read_text()


def test_a_run_stopped_by_a_nan_loss_is_listed_not_relaunched(
    tmp_path: Path, fake_training, capsys, monkeypatch
) -> None:
    """Resuming a run that a NaN/inf loss stopped replays the same stop: the harness reports
    it (command line and page, also when another selection is collected) and launches nothing."""
    protocol = tiny_protocol(tmp_path / "reference")
    root = tmp_path / "runs"
    runs = plan(protocol, root, envs=["toy/nav"], methods=["tuned"], seeds=[0, 1])
    fake_finetune_run(runs[0].run_dir, 100.0, 80.0)
    stopped = runs[1].run_dir
    fake_finetune_run(stopped, 50.0, 50.0)
    (stopped / "done.json").unlink()
    (stopped / "checkpoint.pt").write_bytes(b"")
    record_stop(stopped, 96, 64, "loss is nan", "Training")
    assert [run.state() for run in runs] == ["done", "stopped"]

    outcomes = run_all(runs, jobs=1, nice=0, launched_by="pytest")
    assert fake_training == [] and [o.status for o in outcomes] == ["skipped"]
    out = capsys.readouterr().out
    assert "skipped toy/nav tuned seed 1: stopped at step 96 (loss is nan); not relaunched" in out

    # a run that stops while the harness runs it is reported as such, not only as "FAILED"
    (stopped / "stopped.json").unlink()
    assert runs[1].state() == "resume"

    def stop_again(command: list[str], log_path: Path) -> int:
        record_stop(stopped, 96, 64, "loss is nan", "Training")
        return 2

    monkeypatch.setattr(bench, "execute", stop_again)
    (outcome,) = run_all(runs, jobs=1, nice=0, launched_by="pytest")
    assert outcome.status == "failed" and runs[1].state() == "stopped"
    out = capsys.readouterr().out
    assert "FAILED (exit 2, see train.log) toy/nav tuned seed 1 in" in out
    assert "s: stopped at step 96 (loss is nan); not relaunched" in out

    args = SimpleNamespace(
        envs=["toy/nav"], methods=["tuned"], seeds=[0], steps=(), eval_every=None,
        eval_episodes=None, docs_dir=tmp_path / "docs", jobs=1, nice=0, collect_only=True,
    )  # fmt: skip
    bench.plan_and_run(protocol, root, args)  # seed 1 is not selected: found on disk
    raw = json.loads((tmp_path / "docs" / "tiny.json").read_text())
    (summary,) = raw["results"]["toy/nav"]
    assert summary["seeds"] == [0]  # the stopped run is not counted
    assert raw["missing"] == []
    assert raw["stopped"] == [
        {
            "env": "toy/nav",
            "method": "tuned",
            "seed": 1,
            "step": 96,
            "checkpoint_step": 64,
            "reason": "loss is nan",
        }
    ]
    markdown = (tmp_path / "docs" / "tiny.md").read_text()
    assert "## Stopped by a NaN/inf loss" in markdown
    assert "- toy/nav / tuned / seed 1: at step 96 (loss is nan)" in markdown


def test_coverage_is_measured_once_per_finished_run(tmp_path: Path, monkeypatch) -> None:
    """measure_coverage keeps its result in coverage.json and measures again only when the
    run finished again, the cache is damaged, or COVERAGE_VERSION changed."""
    run_dir = tmp_path / "run"
    fake_finetune_run(run_dir, 1.0, 1.0)
    loads = []
    optima = BanditEnv().optima.tolist()

    def load_fixed(path: Path) -> torch.nn.Module:
        loads.append(path)
        return Fixed(optima[: 1 + len(loads) % 4])  # a different policy at each load

    monkeypatch.setattr(bench, "load_policy", load_fixed)
    first = bench.measure_coverage(run_dir, "toy/bandit")
    assert len(loads) == 1 and first.covered == 2
    assert bench.measure_coverage(run_dir, "toy/bandit") == first and len(loads) == 1
    assert bench.measure_coverage(run_dir, "Hopper-v5") is None and len(loads) == 1

    (run_dir / "done.json").write_text('{"step": 4000}')  # the run was finished again
    second = bench.measure_coverage(run_dir, "toy/bandit")
    assert len(loads) == 2 and second.covered == 3
    (run_dir / "coverage.json").write_text("{torn")
    assert bench.measure_coverage(run_dir, "toy/bandit").covered == 4 and len(loads) == 3
    assert bench.measure_coverage(run_dir, "toy/bandit").covered == 4 and len(loads) == 3
    monkeypatch.setattr(bench, "COVERAGE_VERSION", bench.COVERAGE_VERSION + 1)
    assert bench.measure_coverage(run_dir, "toy/bandit").covered == 1 and len(loads) == 4
    assert not (run_dir / "coverage.json.tmp").exists()


# --------------------------------------------------------------------------------------------
# End to end: a real (tiny) PPO run on the bandit through the command line
# --------------------------------------------------------------------------------------------


def test_bench_runs_and_collects_a_tiny_bandit_protocol(tmp_path: Path) -> None:
    command = [
        sys.executable, str(REPO / "benchmarks" / "bench.py"), "multimodality",
        "--methods", "ppo", "--envs", "toy/bandit", "--seeds", "0", "--jobs", "1",
        "--steps", "toy/bandit=300", "--eval-every", "300", "--eval-episodes", "20",
        "--runs-root", str(tmp_path / "runs"), "--docs-dir", str(tmp_path / "docs"),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = tmp_path / "runs" / "multimodality" / "toy_bandit" / "ppo" / "seed0"
    done = json.loads((run_dir / "done.json").read_text())
    assert done["step"] == 1024  # one iteration of the toy regime (64 envs x 16 steps)
    tag = json.loads((run_dir / "bench.json").read_text())
    assert tag["method"] == "ppo" and "--learning-rate 1e-3" in tag["command"]
    assert "$ " in (run_dir / "train.log").read_text()

    docs = tmp_path / "docs"
    for name in ("multimodality.md", "multimodality.json", "multimodality.csv"):
        assert (docs / name).is_file()
    for name in ("multimodality_toy_bandit.png", "multimodality_toy_bandit_wall_clock.png"):
        assert (docs / name).read_bytes()[:4] == b"\x89PNG"
    raw = json.loads((docs / "multimodality.json").read_text())
    (summary,) = raw["results"]["toy/bandit"]
    assert summary["return_mean"]["zero"] == pytest.approx(done["eval/zero/return_mean"])
    (coverage,) = raw["coverage"]["toy/bandit"]
    expected = bandit_coverage(load_policy(run_dir))
    assert coverage["covered_per_seed"] == [expected.covered]
    assert coverage["shares_per_seed"] == [pytest.approx(expected.shares)]
    (row,) = csv.DictReader((docs / "multimodality.csv").open())
    assert float(row["return_random_mean"]) == pytest.approx(done["eval/random/return_mean"])
    assert row["covered_per_seed"] == str(expected.covered)
    assert f"| ppo | 1 | {expected.covered} |" in (docs / "multimodality.md").read_text()

    # Run again: the finished run is skipped, not relaunched.
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "1 of 1 runs already done; 0 to run" in again.stdout
    assert len(json.loads((run_dir / "bench.json").read_text())["launches"]) == 1


def test_unknown_method_exits_with_code_2(tmp_path: Path) -> None:
    command = [sys.executable, str(REPO / "benchmarks" / "bench.py"), "finetune", "--methods", "x"]
    result = subprocess.run(command + ["--collect-only", "--docs-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2 and "Unknown method(s) x" in result.stderr


def test_a_method_limited_to_some_envs_is_planned_only_there(tmp_path):
    runs = bench.plan(
        PROTOCOLS["from_scratch"],
        tmp_path,
        envs=("Hopper-v5", "dmc/cartpole-balance"),
        methods=("ppo", "sb3-ppo"),
        seeds=(0,),
    )
    assert [(r.env, r.method.name) for r in runs] == [
        ("Hopper-v5", "ppo"),
        ("Hopper-v5", "sb3-ppo"),
        ("dmc/cartpole-balance", "ppo"),
    ]
