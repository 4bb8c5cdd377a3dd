"""pretrain.py: BC pretraining through the API and the CLI, the exported policy, the episode
split, exact resume after a crash, and the errors a user can make."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import flowpolicy.pretrain as pretrain_module
from flowpolicy.algos.bc import BC, BCConfig
from flowpolicy.checkpoint import load_checkpoint
from flowpolicy.cli import main
from flowpolicy.data import Dataset, save_dataset
from flowpolicy.errors import UserError
from flowpolicy.policies import DiffusionPolicy, FlowPolicy, GaussianPolicy
from flowpolicy.policy_io import load_policy_from, read_policy_file, save_policy
from flowpolicy.pretrain import (
    PretrainConfig,
    pretrain,
    read_pretrain_config,
    resume,
    split_episodes,
)

TIMING = {"wall_time", "charts/sps"}
CLUSTERS = np.array([[0.5, 0.5], [-0.5, -0.5]])


def bandit_dataset(path: Path, episodes: int = 100, env_id: str | None = "toy/bandit") -> str:
    """One-step episodes of toy/bandit: constant observation, actions near two optima."""
    rng = np.random.default_rng(0)
    actions = CLUSTERS[rng.integers(0, 2, episodes)] + 0.03 * rng.normal(size=(episodes, 2))
    metadata = {"env_id": env_id} if env_id else {}
    dataset = Dataset(
        observations=np.ones((episodes, 2)),
        actions=actions,
        rewards=np.ones(episodes),
        terminals=np.ones(episodes, dtype=bool),
        truncations=np.zeros(episodes, dtype=bool),
        episode_ends=np.arange(1, episodes + 1),
        metadata=metadata,
    )
    save_dataset(path, dataset)
    return str(path)


def pendulum_dataset(path: Path, episodes: int = 3) -> str:
    """Random-action episodes of Pendulum-v1 (200 steps each, ended by the time limit)."""
    env = gym.make("Pendulum-v1")
    env.action_space.seed(0)
    obs_rows, action_rows, rewards, ends = [], [], [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=episode)
        done = False
        while not done:
            action = env.action_space.sample()
            obs_rows.append(obs)
            action_rows.append(action)
            obs, reward, terminated, truncated, _ = env.step(action)
            rewards.append(reward)
            done = terminated or truncated
        ends.append(len(rewards))
    env.close()
    n = len(rewards)
    truncations = np.zeros(n, dtype=bool)
    truncations[np.asarray(ends) - 1] = True
    dataset = Dataset(
        observations=np.asarray(obs_rows),
        actions=np.asarray(action_rows),
        rewards=np.asarray(rewards),
        terminals=np.zeros(n, dtype=bool),
        truncations=truncations,
        episode_ends=np.asarray(ends),
        metadata={"env_id": "Pendulum-v1", "seed": 0, "policy": "random"},
    )
    save_dataset(path, dataset)
    return str(path)


def small_config(tmp_path: Path, dataset: str, **overrides) -> PretrainConfig:
    options = dict(
        dataset=dataset,
        chunk=1,
        hidden=(16, 16, 16),
        gradient_steps=60,
        log_every=10,
        eval_every=30,
        eval_episodes=4,
        checkpoint_every=20,
        seed=3,
        bc=BCConfig(ema_start=10, ema_every=1),
        run_dir=str(tmp_path / "run"),
        tensorboard=False,
        quiet=True,
    )
    return PretrainConfig(**(options | overrides))


def metric_rows(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the timing columns, which legitimately differ between runs."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


@pytest.mark.parametrize(
    "kind,policy_class",
    [("flow", FlowPolicy), ("diffusion", DiffusionPolicy), ("gaussian", GaussianPolicy)],
)
def test_every_policy_pretrains_through_the_api(tmp_path, kind, policy_class):
    dataset = bandit_dataset(tmp_path / "bandit.hdf5")
    config = small_config(tmp_path, dataset, policy=kind)
    result = pretrain(config)
    run_dir = result.run_dir
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "policy.pt", "done.json"):
        assert (run_dir / name).is_file(), name
    assert result.metrics["step"] == 60
    assert {"eval/zero/return_mean", "eval/random/return_mean"} <= result.metrics.keys()
    assert read_pretrain_config(run_dir) == config

    rows = metric_rows(run_dir)
    train_rows = [row for row in rows if "loss/bc" in row]
    assert [row["step"] for row in train_rows] == [10, 20, 30, 40, 50, 60]
    assert all(
        np.isfinite(row["loss/bc"]) and np.isfinite(row["loss/bc_val"]) for row in train_rows
    )
    assert [row["step"] for row in rows if "eval/zero/return_mean" in row] == [30, 60]

    exported = read_policy_file(run_dir / "policy.pt")
    assert type(exported.policy) is policy_class
    assert type(load_policy_from(run_dir)) is policy_class
    meta = exported.metadata
    assert meta["env_id"] == "toy/bandit" and meta["policy"] == kind
    assert meta["gradient_steps"] == 60
    assert meta["eval"]["eval/zero/return_mean"] == result.metrics["eval/zero/return_mean"]
    assert meta["dataset"]["path"] == dataset
    assert meta["dataset"]["metadata"] == {"env_id": "toy/bandit"}
    assert meta["dataset"]["train_episodes"] + meta["dataset"]["validation_episodes"] == 100


def test_exported_policy_is_fitted_on_the_training_episodes(tmp_path):
    dataset = bandit_dataset(tmp_path / "bandit.hdf5")
    run_dir = pretrain(small_config(tmp_path, dataset, gradient_steps=20)).run_dir
    policy = load_policy_from(run_dir)
    assert policy.obs_norm.frozen
    # the data's actions span about [-0.6, 0.6]: the policy's [-1, 1] maps onto that range
    half_range = policy.action_norm.half_range
    assert ((half_range > 0.5) & (half_range < 0.7)).all(), half_range
    env = policy.env_action(torch.tensor([[-5.0, -5.0], [5.0, 5.0]]))
    assert (env.abs() < 0.7).all()
    # ...and the normalisers are the ones fitted on the training episodes only
    train_ids, _ = split_episodes(100, 0.1, seed=3)
    data = np.ones((100, 2))  # constant observations: min = max = 1
    assert torch.equal(
        policy.obs_norm.low, torch.as_tensor(data[train_ids].min(0), dtype=torch.float32)
    )


def test_split_episodes_is_seeded_disjoint_and_complete():
    train, val = split_episodes(50, 0.1, seed=0)
    assert len(val) == 5 and len(train) == 45
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(50))
    assert np.array_equal(split_episodes(50, 0.1, seed=0)[1], val)
    assert not np.array_equal(split_episodes(50, 0.1, seed=1)[1], val)
    assert len(split_episodes(3, 0.01, seed=0)[1]) == 1  # at least one held out
    assert len(split_episodes(1, 0.5, seed=0)[1]) == 0  # a single episode is kept for training
    assert len(split_episodes(10, 0.0, seed=0)[1]) == 0


def test_no_validation_split(tmp_path):
    dataset = bandit_dataset(tmp_path / "bandit.hdf5")
    run_dir = pretrain(small_config(tmp_path, dataset, validation_fraction=0.0)).run_dir
    assert not any("loss/bc_val" in row for row in metric_rows(run_dir))


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("kind", ["flow", "diffusion"])
def test_resume_after_a_crash_gives_the_uninterrupted_numbers(tmp_path, monkeypatch, kind):
    dataset = bandit_dataset(tmp_path / "bandit.hdf5")
    # Checkpoints every 15 steps, lines every 10: a checkpoint can fall between two lines, with
    # the running means of the training metrics half accumulated.
    config = small_config(tmp_path / "reference", dataset, policy=kind, checkpoint_every=15)
    reference = pretrain(config).run_dir

    # Crash in the 57th gradient step: steps 1-45 are checkpointed; 46-56 (and the line logged
    # at 50) are lost.
    original_update = BC.update
    calls = {"n": 0}

    def crashing_update(self, obs, actions):
        calls["n"] += 1
        if calls["n"] == 57:
            raise Interrupted
        return original_update(self, obs, actions)

    monkeypatch.setattr(BC, "update", crashing_update)
    crashed = small_config(tmp_path / "crashed", dataset, policy=kind, checkpoint_every=15)
    with pytest.raises(Interrupted):
        pretrain(crashed)
    monkeypatch.setattr(BC, "update", original_update)
    assert load_checkpoint(Path(crashed.run_dir) / "checkpoint.pt")["loop"]["step"] == 45
    assert len(metric_rows(Path(crashed.run_dir))) == 6  # a line after the checkpoint exists

    resumed = resume(crashed.run_dir).run_dir
    assert metric_rows(resumed) == metric_rows(reference)
    ours, theirs = (
        read_policy_file(resumed / "policy.pt"),
        read_policy_file(reference / "policy.pt"),
    )
    for name, value in theirs.policy.state_dict().items():
        assert torch.equal(ours.policy.state_dict()[name], value), name


def test_refuses_to_overwrite_an_existing_run(tmp_path):
    config = small_config(tmp_path, bandit_dataset(tmp_path / "b.hdf5"), gradient_steps=10)
    pretrain(config)
    with pytest.raises(UserError, match="--resume"):
        pretrain(config)


def test_env_errors(tmp_path):
    no_env = bandit_dataset(tmp_path / "no_env.hdf5", env_id=None)
    with pytest.raises(UserError, match="--env"):
        pretrain(small_config(tmp_path, no_env))
    with pytest.raises(UserError, match="size 2") as error:
        pretrain(small_config(tmp_path, no_env, env="Pendulum-v1"))  # obs 3, action 1
    assert "Pendulum-v1 has 3 and 1" in str(error.value)


def test_a_nan_loss_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    original = pretrain_module.BC.update
    calls = {"n": 0}

    def poisoned(self, obs, actions):
        calls["n"] += 1
        return original(self, obs, actions * float("nan") if calls["n"] > 25 else actions)

    monkeypatch.setattr(pretrain_module.BC, "update", poisoned)
    config = small_config(tmp_path, bandit_dataset(tmp_path / "b.hdf5"))
    with pytest.raises(UserError, match="nan|NaN") as error:
        pretrain(config)
    assert "--learning-rate" in str(error.value) and "stopped.json" in str(error.value)
    run_dir = Path(config.run_dir)
    assert load_checkpoint(run_dir / "checkpoint.pt")["loop"]["step"] == 20
    stop = json.loads((run_dir / "stopped.json").read_text())
    assert stop["step"] == 25 and stop["checkpoint_step"] == 20 and "nan" in stop["reason"]
    # Resuming would replay the same numbers into the same stop: refused, unless the record goes.
    with pytest.raises(UserError, match="stopped at step 25"):
        resume(run_dir)
    (run_dir / "stopped.json").unlink()
    with pytest.raises(UserError, match="^Pretraining stopped at step 20"):  # resumed, poisoned
        resume(run_dir)


def test_invalid_config():
    with pytest.raises(ValueError, match="chunk_exec"):
        PretrainConfig(dataset="x", chunk=2, chunk_exec=3)
    with pytest.raises(ValueError, match="validation_fraction"):
        PretrainConfig(dataset="x", validation_fraction=1.0)
    assert PretrainConfig(dataset="x").executed == 4


# ----------------------------------------------------------------------------- command line


def test_cli_pretrains_resumes_and_the_policy_loads(tmp_path, capsys):
    dataset = pendulum_dataset(tmp_path / "pendulum.hdf5")
    run_dir = tmp_path / "run"
    args = [
        "pretrain", "--dataset", dataset, "--policy", "diffusion", "--chunk", "4",
        "--chunk-exec", "2", "--denoising-steps", "5", "--hidden", "16", "16", "16",
        "--gradient-steps", "20", "--log-every", "10", "--eval-every", "0",
        "--eval-episodes", "1", "--checkpoint-every", "10", "--ema-start", "5",
        "--run-dir", str(run_dir), "--tensorboard", "False", "--quiet", "True", "--seed", "3",
    ]  # fmt: skip
    assert main(args) == 0
    assert "done:" in capsys.readouterr().out
    config = json.loads((run_dir / "config.json").read_text())
    assert config["policy"] == "diffusion" and config["bc"]["ema_start"] == 5
    policy = load_policy_from(run_dir / "policy.pt")
    assert isinstance(policy, DiffusionPolicy) and policy.chunk == 4 and policy.chunk_exec == 2
    assert policy.act(torch.zeros(3, 3), "zero").shape == (3, 2)  # Ta_exec * Da
    # resuming a finished run changes nothing
    rows = metric_rows(run_dir)
    assert main(["pretrain", "--resume", str(run_dir)]) == 0
    assert metric_rows(run_dir) == rows

    # `flowpolicy eval` takes the pretrain run (or its policy file, also away from its run) and,
    # with the run's episodes and evaluation seed, gives the run's own final evaluation
    final = json.loads((run_dir / "done.json").read_text())
    capsys.readouterr()
    shutil.copy(run_dir / "policy.pt", tmp_path / "moved.pt")
    for target in (run_dir, run_dir / "policy.pt", tmp_path / "moved.pt"):
        assert main(["eval", str(target), "--episodes", "1"]) == 0
        out = capsys.readouterr().out
        assert "DiffusionPolicy from flowpolicy pretrain on Pendulum-v1" in out
        for mode in ("zero", "random"):
            assert f"{mode} sampling: return {final[f'eval/{mode}/return_mean']:10.2f}" in out
    save_policy(tmp_path / "bare.pt", policy)  # no metadata: the env must be given
    assert main(["eval", str(tmp_path / "bare.pt"), "--episodes", "1"]) == 2
    assert "pass --env" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "bare.pt"), "--episodes", "1", "--env", "Pendulum-v1"]) == 0


def test_cli_help_and_user_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--dataset", "--policy", "--chunk-exec", "--ema-decay", "--validation-fraction"):
        assert option in out
    assert "EMA decay of the weights" in out  # field docstrings become help text

    dataset = bandit_dataset(tmp_path / "b.hdf5")
    with pytest.raises(SystemExit) as exit_info:  # tyro reports __post_init__ errors itself
        main(["pretrain", "--dataset", dataset, "--chunk", "2", "--chunk-exec", "3"])
    assert exit_info.value.code == 2
    assert "chunk_exec (3) must be between 1 and chunk (2)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # found before any network is built
        main(["pretrain", "--dataset", dataset, "--hidden", "16", "16"])
    assert exit_info.value.code == 2
    assert "(1 + 2 * blocks) of equal" in " ".join(capsys.readouterr().err.split())
    assert main(["pretrain", "--dataset", str(tmp_path / "missing.hdf5")]) == 2
    assert main(["pretrain", "--resume", str(tmp_path / "nothing")]) == 2
    assert "not a pretrain run directory" in capsys.readouterr().err


def test_cli_resume_after_a_real_kill_matches_an_uninterrupted_run(tmp_path):
    dataset = bandit_dataset(tmp_path / "bandit.hdf5")
    flags = [
        "--dataset", dataset, "--chunk", "1", "--hidden", "16", "16", "16",
        "--gradient-steps", "1000", "--log-every", "10", "--eval-every", "300",
        "--eval-episodes", "2", "--checkpoint-every", "30", "--seed", "5",
        "--tensorboard", "False", "--quiet", "True",
    ]  # fmt: skip
    reference = tmp_path / "reference"
    assert main(["pretrain", *flags, "--run-dir", str(reference)]) == 0

    killed = tmp_path / "killed"
    environment = os.environ | {"MUJOCO_GL": "disable"}
    command = [sys.executable, "-m", "flowpolicy", "pretrain", *flags, "--run-dir", str(killed)]
    process = subprocess.Popen(command, env=environment)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and process.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 15:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before it could be killed; make it longer"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "done.json").exists()

    assert main(["pretrain", "--resume", str(killed)]) == 0
    assert metric_rows(killed) == metric_rows(reference)
