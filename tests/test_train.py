"""The training loop through the Python API: smoke runs, run directories, exact resume,
NaN handling, and the errors a user can make."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from flowpolicy.algos.dppo import DPPOConfig
from flowpolicy.algos.fpo import FPO, FPOConfig
from flowpolicy.algos.fpo_presets import fpo_plus_plus
from flowpolicy.algos.ppo import PPOConfig
from flowpolicy.algos.qam import QAMConfig
from flowpolicy.algos.registry import spec_of_config
from flowpolicy.algos.rldt import RLDTConfig
from flowpolicy.checkpoint import load_checkpoint
from flowpolicy.envs import NavEnv
from flowpolicy.errors import UserError
from flowpolicy.train import TrainConfig, read_run_config, resume, train

SMALL = dict(num_envs=4, num_steps=16, num_minibatches=2, update_epochs=2)
SMALL_FPO = SMALL | dict(flow_steps=4, mc_samples=2)
TIMING = {"wall_time", "charts/sps", "charts/time_act", "charts/time_env", "charts/time_update"}


def small_config(
    tmp_path: Path, algo, env: str = "toy/nav", steps: int = 256, **run
) -> TrainConfig:
    options = dict(
        algo=algo,
        env=env,
        seed=3,
        total_steps=steps,
        eval_every=128,
        eval_episodes=2,
        checkpoint_every=1,
        tensorboard=False,
        quiet=True,
        run_dir=str(tmp_path / "run"),
    )
    return TrainConfig(**(options | run))


def metric_rows(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the timing columns, which legitimately differ between runs."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


@pytest.mark.parametrize(
    "algo",
    [PPOConfig(**SMALL), FPOConfig(**SMALL_FPO), fpo_plus_plus(**SMALL_FPO)],
    ids=["ppo", "fpo", "fpo++"],
)
def test_every_algorithm_trains_through_the_api(tmp_path, algo):
    result = train(small_config(tmp_path, algo, env="Hopper-v5", steps=128))
    run_dir = result.run_dir
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "done.json"):
        assert (run_dir / name).is_file(), name
    assert result.metrics["step"] == 128
    assert {"eval/zero/return_mean", "eval/random/return_mean"} <= result.metrics.keys()
    assert read_run_config(run_dir) == small_config(tmp_path, algo, env="Hopper-v5", steps=128)
    train_rows = [row for row in metric_rows(run_dir) if "loss/policy" in row]
    assert train_rows and all(row["loss/policy"] is not None for row in train_rows)


def test_iterations_record_where_their_time_goes(tmp_path):
    run_dir = train(small_config(tmp_path, PPOConfig(**SMALL), steps=128)).run_dir
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [row for row in rows if "charts/sps" in row]
    assert len(train_rows) == 2  # 128 steps of 4 envs x 16
    for row in train_rows:
        parts = [row[f"charts/time_{name}"] for name in ("act", "env", "update")]
        assert all(part > 0 for part in parts)
        # acting, stepping and updating fit inside the iteration the speed is measured over
        assert sum(parts) <= 64 / row["charts/sps"]


def test_tensorboard_events_are_written(tmp_path):
    train(small_config(tmp_path, PPOConfig(**SMALL), steps=64, tensorboard=True))
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))


def test_chunked_flow_policy_runs(tmp_path):
    algo = FPOConfig(**SMALL_FPO, chunk=3, chunk_exec=2)
    result = train(small_config(tmp_path, algo, steps=128))
    assert result.metrics["step"] == 128  # 4 envs x 16 steps x 2 executed actions


def test_env_factory_through_the_api(tmp_path):
    config = small_config(tmp_path, PPOConfig(**SMALL), env="ignored", steps=64)
    result = train(config, env_factory=lambda: NavEnv(max_episode_steps=10))
    assert result.metrics["step"] == 64


def test_same_seed_same_numbers(tmp_path):
    algo = FPOConfig(**SMALL_FPO)
    first = train(small_config(tmp_path / "a", algo)).run_dir
    second = train(small_config(tmp_path / "b", algo)).run_dir
    assert metric_rows(first) == metric_rows(second)


class Interrupted(Exception):
    pass


@pytest.mark.parametrize(
    "algo,env",
    [(FPOConfig(**SMALL_FPO), "toy/nav"), (PPOConfig(**SMALL), "Hopper-v5")],
    ids=["fpo-nav", "ppo-hopper"],
)
def test_resume_after_a_crash_gives_the_uninterrupted_numbers(tmp_path, monkeypatch, algo, env):
    reference = train(small_config(tmp_path / "reference", algo, env=env, steps=512)).run_dir

    # Crash in the middle of the 5th update: iterations 1-4 are checkpointed, the 5th is lost.
    original_update = spec_of_config(algo).algorithm.update
    calls = {"n": 0}

    def crashing_update(self, batch):
        calls["n"] += 1
        if calls["n"] == 5:
            raise Interrupted
        return original_update(self, batch)

    algo_class = spec_of_config(algo).algorithm
    monkeypatch.setattr(algo_class, "update", crashing_update)
    config = small_config(tmp_path / "crashed", algo, env=env, steps=512)
    with pytest.raises(Interrupted):
        train(config)
    monkeypatch.setattr(algo_class, "update", original_update)
    assert load_checkpoint(Path(config.run_dir) / "checkpoint.pt")["loop"]["iteration"] == 4

    resumed = resume(config.run_dir).run_dir
    assert metric_rows(resumed) == metric_rows(reference)


def test_a_nan_loss_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = FPO.policy_loss

    def poisoned(self, *args):
        calls["n"] += 1
        loss, metrics = original(self, *args)
        return (loss * float("nan") if calls["n"] > 8 else loss), metrics

    monkeypatch.setattr(FPO, "policy_loss", poisoned)
    config = small_config(tmp_path, FPOConfig(**SMALL_FPO))
    with pytest.raises(UserError, match="NaN|nan") as error:
        train(config)
    assert "checkpoint" in str(error.value) and "--max-grad-norm" in str(error.value)
    run_dir = Path(config.run_dir)
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    assert checkpoint["loop"]["iteration"] == 2  # 4 minibatch steps per update: 2 good updates
    for tensor in checkpoint["algo"]["policy"].values():
        assert torch.isfinite(tensor).all()
    stop = json.loads((run_dir / "stopped.json").read_text())
    steps_per_update = checkpoint["loop"]["global_step"] // 2
    assert stop["checkpoint_step"] == checkpoint["loop"]["global_step"]
    assert stop["step"] == 3 * steps_per_update and "nan" in stop["reason"]
    # Resuming would replay the same numbers into the same stop: refused with the reason.
    with pytest.raises(UserError, match="stopped at step .*--learning-rate"):
        resume(run_dir)


def test_refuses_to_overwrite_an_existing_run(tmp_path):
    config = small_config(tmp_path, PPOConfig(**SMALL), steps=64)
    train(config)
    with pytest.raises(UserError, match="--resume"):
        train(config)


def test_unreadable_run_directory(tmp_path):
    with pytest.raises(UserError, match="not a flowpolicy run directory"):
        resume(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="could not be read"):
        resume(tmp_path)
    # a pretrain run (config without algo_name, a policy.pt): said so, with what to do instead
    (tmp_path / "config.json").write_text('{"dataset": "d.hdf5", "policy": "flow"}')
    (tmp_path / "policy.pt").write_bytes(b"")
    with pytest.raises(UserError, match="is a `flowpolicy pretrain` run.*pretrain --resume"):
        resume(tmp_path)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: PPOConfig(learning_rate=0.0), "learning_rate must be positive"),
        (lambda: FPOConfig(clip_coef=-0.1), "clip_coef must be positive"),
        (lambda: FPOConfig(flow_steps=0), "flow_steps must be positive"),
        (lambda: PPOConfig(num_envs=3, num_steps=10, num_minibatches=4), "does not split"),
        (lambda: TrainConfig(total_steps=0), "total_steps must be positive"),
        (lambda: PPOConfig(vf_coef=-0.5), r"PPOConfig.vf_coef must be >= 0, got -0.5"),
        (lambda: FPOConfig(action_noise_std=-1.0), "FPOConfig.action_noise_std must be >= 0"),
        (lambda: FPOConfig(critic_warmup_iterations=-1), "critic_warmup_iterations must be >= 0"),
        (lambda: DPPOConfig(ddim_eta=-0.1), "DPPOConfig.ddim_eta must be >= 0"),
        (lambda: QAMConfig(beta=-1.0), "QAMConfig.beta must be >= 0"),
        (lambda: RLDTConfig(constraint_coef=-0.2), "RLDTConfig.constraint_coef must be >= 0"),
    ],
)
def test_invalid_hyper_parameters(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_stop_at_return_ends_the_run_at_the_first_evaluation_that_reaches_it(tmp_path):
    # toy/nav returns are negative distances, so -inf-ish targets are met at once and a
    # target above the best possible return (0) never is.
    reached = train(small_config(tmp_path, PPOConfig(**SMALL), stop_at_return=-1e9, steps=512))
    assert reached.metrics["step"] == 0
    assert reached.metrics["stopped_at_return"] == -1e9
    not_reached = train(
        small_config(tmp_path, PPOConfig(**SMALL), stop_at_return=1.0, run_dir=str(tmp_path / "b"))
    )
    assert not_reached.metrics["step"] == 256
    assert "stopped_at_return" not in not_reached.metrics
