"""benchmarks/bandit_raw_actions.py reads a bandit run's policy and reports its raw actions."""

from __future__ import annotations

import re

import bandit_raw_actions  # benchmarks/ is on sys.path (conftest.py)

from flowpolicy.cli import main


def test_reports_raw_actions_and_shares_of_a_trained_bandit_run(tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    args = ["train", "fpo", "--env", "toy/bandit", "--num-envs", "4", "--num-steps", "4"]
    args += ["--num-minibatches", "2", "--update-epochs", "1", "--total-steps", "16"]
    args += ["--eval-every", "0", "--eval-episodes", "1", "--quiet", "True"]
    args += ["--tensorboard", "False", "--run-dir", str(run_dir)]
    assert main(args) == 0
    capsys.readouterr()
    bandit_raw_actions.main(str(run_dir))
    out = capsys.readouterr().out
    largest = float(re.search(r"largest \|a\| ([\d.]+)", out).group(1))
    assert 0 < largest < 10  # a fresh FPO actor (output scale 0.25) stays near the noise
    shares = re.search(r"optimum: \[([^\]]*)\]", out).group(1).split()
    assert len(shares) == 4 and all(0 <= float(x) <= 1 for x in shares)
