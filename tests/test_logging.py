"""The logger's console: a live bar on a terminal, plain lines otherwise, nothing when quiet."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import types

import pytest
from rich.console import Console

import flowpolicy.train as train_module
from flowpolicy.algos.ppo import PPOConfig
from flowpolicy.cli import main
from flowpolicy.logging import Logger
from flowpolicy.train import TrainConfig, resume, train


def _logger(tmp_path, terminal: bool, quiet: bool = False) -> tuple[Logger, io.StringIO]:
    logger = Logger(tmp_path, tensorboard=False, quiet=quiet)
    out = io.StringIO()
    logger.console = Console(
        file=out, force_terminal=terminal, width=160, quiet=quiet, highlight=False
    )
    return logger, out


def test_plain_lines_when_not_a_terminal(tmp_path) -> None:
    logger, out = _logger(tmp_path, terminal=False)
    logger.progress(2048, 10_000, 1234.4, "return 1.00 | eval zero 2.00 random 3.00")
    logger.progress(4096, 10_000, 999.6, "return 1.50 | eval zero 2.00 random 3.00")
    logger.close()
    assert out.getvalue().splitlines() == [
        "step     2,048/10,000  1,234/s return 1.00 | eval zero 2.00 random 3.00",
        "step     4,096/10,000  1,000/s return 1.50 | eval zero 2.00 random 3.00",
    ]


def test_live_bar_on_a_terminal_shows_steps_speed_eta_and_returns(tmp_path) -> None:
    logger, out = _logger(tmp_path, terminal=True)
    assert logger.bar is None
    logger.progress(2048, 10_000, 1234.4, "return 1.00 | eval zero 2.00")
    assert logger.bar is not None
    logger.progress(4096, 10_000, 1500.0, "return 7.25 | eval zero 2.00")
    task = logger.bar.tasks[0]
    assert (task.completed, task.total, task.fields["sps"]) == (4096, 10_000, 1500.0)
    logger.close()
    text = out.getvalue()
    assert "step 4,096/10,000" in text and "1,500 steps/s ETA" in text
    assert "return 7.25" in text


def test_quiet_prints_nothing(tmp_path) -> None:
    logger, out = _logger(tmp_path, terminal=True, quiet=True)
    logger.progress(2048, 10_000, 1.0, "return 1.00")
    logger.close()
    assert logger.bar is None and out.getvalue() == ""


class FakeWandbRun:
    def __init__(self, calls: dict) -> None:
        self.calls = calls

    def define_metric(self, name: str, step_metric: str | None = None) -> None:
        self.calls.setdefault("define_metric", []).append((name, step_metric))

    def log(self, data: dict) -> None:
        self.calls.setdefault("log", []).append(data)

    def finish(self) -> None:
        self.calls["finished"] = self.calls.get("finished", 0) + 1


def _fake_wandb(monkeypatch) -> dict:
    """A stand-in ``wandb`` module that records what the logger sends."""
    calls: dict = {}
    module = types.ModuleType("wandb")

    def init(**kwargs):
        calls.setdefault("init", []).append(kwargs)
        return FakeWandbRun(calls)

    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    monkeypatch.setattr(train_module, "require_wandb", lambda: None)
    return calls


def _tiny(tmp_path, **run) -> TrainConfig:
    algo = PPOConfig(num_envs=2, num_steps=8, num_minibatches=2, update_epochs=1)
    options = dict(algo=algo, env="toy/bandit", total_steps=32, eval_every=16, eval_episodes=2)
    options |= dict(quiet=True, checkpoint_every=1, run_dir=str(tmp_path / "run"))
    return TrainConfig(**(options | run))


def test_wandb_gets_the_same_metrics_and_a_resume_continues_its_run(tmp_path, monkeypatch):
    calls = _fake_wandb(monkeypatch)
    config = _tiny(tmp_path, wandb_project="flowpolicy-test", wandb_mode="offline")
    run_dir = train(config).run_dir
    (init,) = calls["init"]
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    assert (init["project"], init["id"], init["mode"]) == ("flowpolicy-test", run_id, "offline")
    assert init["dir"] == str(run_dir) and init["config"]["wandb_project"] == "flowpolicy-test"
    assert ("*", "step") in calls["define_metric"] and calls["finished"] == 1
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    expected = [
        {k: v for k, v in row.items() if k != "wall_time" and v is not None} for row in rows
    ]
    assert calls["log"] == expected  # what TensorBoard gets: every finite scalar, by env step
    # A killed run resumed later logs into the same W&B run.
    (run_dir / "done.json").unlink()
    calls.clear()
    resume(run_dir)
    assert calls["init"][0]["id"] == run_id and calls["init"][0]["resume"] == "allow"


def test_wandb_offline_needs_no_network(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = train(_tiny(tmp_path, wandb_project="flowpolicy-test", wandb_mode="offline")).run_dir
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and list(offline_runs[0].glob("*.wandb"))


def test_wandb_project_without_wandb_says_how_to_install(tmp_path, monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "wandb" else real_find_spec(name, *a),
    )
    run_dir = tmp_path / "run"
    args = [
        "train",
        "ppo",
        "--env",
        "toy/bandit",
        "--wandb-project",
        "x",
        "--run-dir",
        str(run_dir),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "pip install 'flowpolicy[wandb]'" in err and "Traceback" not in err
    assert not run_dir.exists()
