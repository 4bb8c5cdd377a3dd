"""--vector-env async: Gymnasium's AsyncVectorEnv behind the tensor boundary gives the sync
run's numbers, and a crashed async run resumes to the uninterrupted one."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from flowpolicy.algos.ppo import PPO, PPOConfig
from flowpolicy.cli import main
from flowpolicy.envs.tensor_env import make_tensor_env
from flowpolicy.errors import UserError
from flowpolicy.train import resume, train
from tests.test_train import SMALL, metric_rows, small_config


class _Crash(Exception):
    pass


def test_async_runs_give_the_sync_numbers_and_resume_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def config(name: str, vector_env: str):
        base = small_config(tmp_path / name, PPOConfig(**SMALL), env="Hopper-v5", steps=192)
        return dataclasses.replace(base, vector_env=vector_env)

    sync = metric_rows(train(config("sync", "sync")).run_dir)
    assert metric_rows(train(config("async", "async")).run_dir) == sync
    original, calls = PPO.update, {"n": 0}

    def crashing_update(self, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise _Crash
        return original(self, batch)

    monkeypatch.setattr(PPO, "update", crashing_update)
    with pytest.raises(_Crash):
        train(config("crashed", "async"))
    monkeypatch.setattr(PPO, "update", original)
    assert metric_rows(resume(config("crashed", "async").run_dir).run_dir) == sync


def test_bad_input_is_refused_before_any_worker_starts(tmp_path: Path, capsys) -> None:
    with pytest.raises(UserError, match="Unknown environment|not found|Hopperr"):
        make_tensor_env("Hopperr-v5", 2, seed=0, vector_env="async")
    with pytest.raises(UserError, match="already one batch"):
        make_tensor_env("playground/CartpoleBalance", 2, seed=0, vector_env="async")
    args = ["train", "ppo", "--env", "toy/nav", "--vector-env", "threads"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--run-dir", str(tmp_path / "run")])
    assert exit_info.value.code == 2
