"""The command line: every algorithm for one short iteration, resume after a real kill, eval,
and error messages with exit code 2 and no traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flowpolicy.cli import main

SMALL = ["--num-envs", "4", "--num-steps", "16", "--num-minibatches", "2", "--update-epochs", "2"]
RUN = ["--eval-every", "64", "--eval-episodes", "2", "--tensorboard", "False", "--quiet", "True"]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flowpolicy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ | {"MUJOCO_GL": "disable"},
    )


@pytest.mark.parametrize(
    "algo",
    [
        ["ppo"],
        ["fpo", "--flow-steps", "4", "--mc-samples", "2"],
        ["fpo", "--preset", "fpo++", "--mc-samples", "2"],
    ],
    ids=["ppo", "fpo", "fpo++"],
)
def test_train_and_eval_every_algorithm(tmp_path, algo):
    run_dir = tmp_path / "run"
    args = ["train", *algo, "--env", "Hopper-v5", "--total-steps", "64", "--run-dir", str(run_dir)]
    assert main([*args, *SMALL, *RUN]) == 0
    assert (run_dir / "done.json").is_file()
    config = json.loads((run_dir / "config.json").read_text())
    if "fpo++" in algo:
        assert config["algo"]["trust_region"] == "aspo" and config["algo"]["mc_samples"] == 2
    result = cli("eval", str(run_dir), "--episodes", "2")
    assert result.returncode == 0, result.stderr
    assert "zero sampling" in result.stdout and "random sampling" in result.stdout


def test_help_lists_documented_options():
    result = cli("train", "fpo", "--preset", "fpo++", "--help")
    assert result.returncode == 0
    for option in ("--clip-coef", "--mc-samples", "--trust-region", "--ema-decay", "--env"):
        assert option in result.stdout
    assert "trust-region clip" in result.stdout  # field docstrings become help text


def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path):
    common = ["--env", "toy/nav", "--total-steps", "3072", "--seed", "7", "--checkpoint-every", "1"]
    flags = [*common, *SMALL, *RUN, "--flow-steps", "4", "--mc-samples", "2"]
    reference = tmp_path / "reference"
    assert cli("train", "fpo", "--run-dir", str(reference), *flags).returncode == 0

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "flowpolicy", "train", "fpo", "--run-dir", str(killed), *flags],
        env=os.environ | {"MUJOCO_GL": "disable"},
    )
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and process.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 6:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed; make it longer"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "done.json").exists()

    result = cli("train", "--resume", str(killed))
    assert result.returncode == 0, result.stderr

    def rows(run_dir: Path) -> list[dict]:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        drop = {"wall_time", "charts/sps", "charts/time_act", "charts/time_env"}
        drop |= {"charts/time_update"}
        return [{k: v for k, v in json.loads(x).items() if k not in drop} for x in lines]

    assert rows(killed) == rows(reference)


@pytest.mark.parametrize(
    "args,words",
    [
        (["train", "fpo", "--env", "NoSuchEnv-v9"], ["NoSuchEnv-v9"]),
        (["train", "ppo", "--env", "CartPole-v1"], ["continuous"]),
        (["train", "fpo", "--env", "dmc/cheetah"], ["dmc/<domain>-<task>"]),
        (["train", "fpo", "--learning-rate", "-1"], ["learning_rate", "positive"]),
        (["train", "fpo", "--flow-steps", "0"], ["flow_steps", "positive"]),
        (["train", "ppo", "--num-steps", "100", "--num-minibatches", "3"], ["minibatches"]),
        (["train", "sac"], ["Unknown algorithm", "ppo, fpo"]),
        (["train", "fpo", "--preset", "dppo"], ["Unknown preset"]),
        (["train", "--resume", "/no/such/run"], ["not a flowpolicy run directory"]),
        (["eval", "/no/such/run"], ["does not exist", "policy file"]),
    ],
)
def test_user_errors_exit_2_with_a_message_and_no_traceback(tmp_path, args, words):
    result = (
        cli(*args, "--run-dir", str(tmp_path / "r"))
        if args[0] == "train" and args[1] != "--resume"
        else cli(*args)
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr
