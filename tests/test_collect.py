"""Collecting demonstrations: recording (determinism, episode bookkeeping, noise, chunks), the
medium-expert recipe (stop at the target, metadata, reuse and exact resume), and the CLI with
its error messages."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

import flowpolicy.collect as collect_module
import flowpolicy.train as train_module
from flowpolicy.algos.ppo import PPOConfig
from flowpolicy.cli import main
from flowpolicy.collect import CollectConfig, collect, record
from flowpolicy.data import load_dataset
from flowpolicy.envs import BanditEnv, NavEnv
from flowpolicy.errors import UserError
from flowpolicy.policies import FlowPolicy, GaussianPolicy
from flowpolicy.train import TrainConfig, train

SMALL_PPO = PPOConfig(num_envs=4, num_steps=16, num_minibatches=2, update_epochs=2)
SMALL_PPO_FLAGS = ["--num-envs", "4", "--num-steps", "16", "--num-minibatches", "2"]
SMALL_PPO_FLAGS += ["--update-epochs", "2"]
# With SMALL_PPO and seed 0, toy/nav's zero-sampling evaluation return starts near -0.5 and
# first reaches -0.3 after ~1.5k steps: a target the expert reaches in about a second.
NAV_TARGET = -0.3
ARRAYS = ("observations", "actions", "rewards", "terminals", "truncations", "episode_ends")


class ScriptedNav(nn.Module):
    """Goes round the obstacle on the right to the goal. ``mode="random"`` stands still with
    probability 1/2 per step (drawn from torch), so some episodes reach the goal (terminated)
    and others run out of time (truncated)."""

    obs_dim, action_dim = 2, 2

    def act(self, obs: torch.Tensor, mode: str = "random") -> torch.Tensor:
        x, y = obs[:, 0], obs[:, 1]
        to_goal = torch.stack([-x, 0.8 - y], dim=-1)
        to_goal = to_goal / to_goal.norm(dim=-1, keepdim=True).clamp(min=0.1)
        right, up = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
        action = torch.where(
            (y < 0.5)[:, None], torch.where((x < 0.45)[:, None], right, up), to_goal
        )
        if mode == "random":
            action = action * (torch.rand(obs.shape[0], 1) < 0.5)
        return action


class ChunkOfThree(nn.Module):
    """A chunked policy (chunk_exec 3) whose chunk is always x-velocities 0.1, 0.2, 0.3."""

    chunk_exec = 3

    def act(self, obs: torch.Tensor, mode: str = "random") -> torch.Tensor:
        chunk = torch.tensor([[0.1, 0.0, 0.2, 0.0, 0.3, 0.0]])  # (1, Ta_exec * Da)
        return chunk.expand(obs.shape[0], -1)


def gaussian(obs_dim: int = 2, low: float = -1.0, high: float = 1.0) -> GaussianPolicy:
    torch.manual_seed(0)
    return GaussianPolicy(obs_dim, [low, low], [high, high])


def arrays(dataset) -> dict[str, np.ndarray]:
    return {name: getattr(dataset, name) for name in (*ARRAYS, "next_observations")}


def assert_same_arrays(a, b) -> None:
    for name, array in arrays(a).items():
        np.testing.assert_array_equal(array, getattr(b, name), err_msg=name)


def small_collect(tmp_path: Path, out: str = "out", **options) -> CollectConfig:
    defaults = dict(
        env="toy/nav",
        out=str(tmp_path / out),
        target_return=NAV_TARGET,
        transitions=300,
        expert_steps=8192,
        expert_eval_every=512,
        expert_eval_episodes=4,
        expert=SMALL_PPO,
        quiet=True,
    )
    return CollectConfig(**(defaults | options))


# ----------------------------------------------------------------------------- record


def test_same_seed_same_arrays_other_seed_other_arrays():
    policy = gaussian()
    first = record(policy, "toy/nav", 400, seed=3, noise_std=0.2)
    torch.manual_seed(123)
    expected_next_draw = torch.rand(3)
    torch.manual_seed(123)
    again = record(policy, "toy/nav", 400, seed=3, noise_std=0.2)
    # Recording draws from a forked RNG: the caller's torch stream is untouched.
    torch.testing.assert_close(torch.rand(3), expected_next_draw)
    assert_same_arrays(first, again)
    assert first.metadata == again.metadata
    other = record(policy, "toy/nav", 400, seed=4, noise_std=0.2)
    assert not np.array_equal(first.observations, other.observations)
    assert not np.array_equal(first.actions, other.actions)


def test_episode_bookkeeping_terminals_truncations_and_the_cut_last_episode():
    long = record(ScriptedNav(), "toy/nav", 800, seed=0)
    ends = long.episode_ends
    # N falls inside an episode of the long recording; the same seed replays the same prefix.
    n = int(ends[4]) - 3
    data = record(ScriptedNav(), "toy/nav", n, seed=0)
    for name, array in arrays(data).items():
        if name != "episode_ends":  # the cut marks the last row truncated
            rows = n - 1 if name == "truncations" else n
            np.testing.assert_array_equal(array[:rows], getattr(long, name)[:rows], name)

    assert data.num_transitions == n
    np.testing.assert_array_equal(
        data.episode_ends, np.flatnonzero(data.terminals | data.truncations) + 1
    )
    np.testing.assert_array_equal(data.episode_ends[:-1], ends[:4])
    assert data.episode_ends[-1] == n
    # Both ways of ending occur, and never together on this task.
    assert data.terminals[:-1].any() and data.truncations[:-1].any()
    assert not (data.terminals & data.truncations).any()

    goal = np.array(NavEnv.GOAL)
    for episode in data.episode_slices():
        obs, next_obs = data.observations[episode], data.next_observations[episode]
        # Inside an episode the next observation is the next row's observation ...
        np.testing.assert_array_equal(next_obs[:-1], obs[1:])
        # ... and every episode starts at the (jittered) start, not where the last one ended.
        assert abs(obs[0, 1] - NavEnv.START[1]) <= 0.05 + 1e-6
        last = episode.stop - 1
        if data.terminals[last]:  # the real final observation, not the reset one
            assert np.linalg.norm(data.next_observations[last] - goal) < NavEnv.GOAL_RADIUS
        elif last != n - 1:  # time limit
            assert episode.stop - episode.start == 50
    # The episode running at N is cut there: truncated, shorter than the time limit, and the
    # return statistics leave it out.
    assert data.truncations[-1] and not data.terminals[-1]
    assert data.metadata["last_episode_cut"]
    assert n - data.episode_ends[-2] < ends[4] - ends[3]
    complete = data.episode_returns()[:-1]
    assert data.metadata["complete_episodes"] == 4
    assert data.metadata["return_mean"] == pytest.approx(complete.mean())
    assert data.metadata["return_std"] == pytest.approx(complete.std())


def test_noise_perturbs_actions_in_half_range_units_and_stays_within_bounds():
    def wide_bandit() -> gym.Env:  # actions in [-4, 4]: half the range is 4
        bound = np.full(2, 4.0, dtype=np.float32)
        return gym.wrappers.RescaleAction(BanditEnv(), -bound, bound)

    policy = gaussian(low=-4.0, high=4.0)  # zero sampling: the mean, 0 at initialisation
    clean = record(policy, wide_bandit, 4000, seed=0, mode="zero")
    assert np.ptp(clean.actions, axis=0).max() < 1e-6  # one action, repeated
    noisy = record(policy, wide_bandit, 4000, seed=0, mode="zero", noise_std=0.1)
    assert not np.allclose(noisy.actions, clean.actions)
    np.testing.assert_allclose(noisy.actions.std(axis=0), 0.4, rtol=0.1)  # 0.1 * 4
    wild = record(policy, wide_bandit, 4000, seed=0, mode="zero", noise_std=3.0)
    assert wild.actions.min() >= -4.0 and wild.actions.max() <= 4.0
    assert (np.abs(wild.actions) == 4.0).mean() > 0.5  # clipped, and stored clipped
    # The bandit scores the stored (executed) action.
    unwrapped = BanditEnv()
    np.testing.assert_allclose(wild.rewards, unwrapped.reward(wild.actions / 4.0), atol=1e-5)


def test_a_chunked_policy_is_recorded_one_env_step_at_a_time():
    data = record(ChunkOfThree(), "toy/nav", 130, seed=0, mode="zero")  # 50-step episodes
    assert data.num_transitions == 130 and data.actions.shape == (130, 2)
    np.testing.assert_array_equal(data.episode_ends, [50, 100, 130])
    for episode in data.episode_slices():  # every episode starts a fresh chunk
        length = episode.stop - episode.start
        expected = np.tile(np.float32([0.1, 0.2, 0.3]), 17)[:length]
        np.testing.assert_array_equal(data.actions[episode, 0], expected)
    assert data.metadata["chunk_exec"] == 3

    torch.manual_seed(0)
    flow = FlowPolicy(2, [-1, -1], [1, 1], chunk=4, chunk_exec=3, flow_steps=2)
    first = record(flow, "toy/nav", 100, seed=1)
    assert first.num_transitions == 100 and first.metadata["chunk_exec"] == 3
    assert_same_arrays(first, record(flow, "toy/nav", 100, seed=1))


def test_record_rejects_a_policy_for_another_env():
    with pytest.raises(UserError, match="observations of size 11"):
        record(GaussianPolicy(11, [-1] * 3, [1] * 3), "toy/nav", 10, seed=0)


# ----------------------------------------------------------------------------- the recipe


def test_expert_recipe_stops_at_the_target_and_the_metadata_says_so(tmp_path):
    config = small_collect(tmp_path, noise=0.1)
    path = collect(config)
    assert path == tmp_path / "out" / "dataset.hdf5"
    expert_dir = tmp_path / "out" / "expert"
    done = json.loads((expert_dir / "done.json").read_text())
    evals = [
        (row["step"], row["eval/zero/return_mean"])
        for row in map(json.loads, (expert_dir / "metrics.jsonl").read_text().splitlines())
        if "eval/zero/return_mean" in row
    ]
    # It stopped at the first evaluation that reached the target, well before expert_steps.
    first_reached = next(step for step, value in evals if value >= NAV_TARGET)
    assert 0 < done["step"] == first_reached < config.expert_steps
    assert evals[-1][0] == first_reached

    data = load_dataset(path)
    meta = data.metadata
    assert data.num_transitions == 300 and data.next_observations is not None
    assert meta["env_id"] == "toy/nav" and meta["seed"] == 0
    assert meta["mode"] == "random" and meta["noise_std"] == 0.1
    assert meta["policy_path"] == str(expert_dir)
    expert = meta["expert"]
    assert expert["run_dir"] == str(expert_dir) and expert["target_return"] == NAV_TARGET
    assert expert["stop_step"] == first_reached
    assert (
        expert["eval_return"] == pytest.approx(evals[-1][1]) and expert["eval_return"] >= NAV_TARGET
    )
    assert meta["return_mean"] == pytest.approx(data.episode_returns().mean())
    assert meta["command"].startswith("flowpolicy.collect.collect(CollectConfig(env='toy/nav'")
    assert meta["config"]["expert"]["num_steps"] == 16
    assert "torch" in meta["versions"]


def test_an_interrupted_expert_resumes_and_a_finished_one_is_reused(tmp_path, monkeypatch):
    reference = load_dataset(collect(small_collect(tmp_path, "reference")))

    config = small_collect(tmp_path, "crashed")
    real_evaluate, calls = train_module.evaluate_modes, []

    def crash_on_third_evaluation(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate_modes", crash_on_third_evaluation)
    with pytest.raises(KeyboardInterrupt):
        collect(config)
    monkeypatch.undo()
    assert not (config.expert_dir / "done.json").exists()
    resumed = load_dataset(collect(config))
    assert_same_arrays(resumed, reference)
    assert resumed.metadata["expert"]["stop_step"] == reference.metadata["expert"]["stop_step"]

    # A finished expert is reused as it is: no training, same data.
    config.dataset_path.unlink()
    metrics_before = (config.expert_dir / "metrics.jsonl").read_text()
    for name in ("train", "resume"):
        monkeypatch.setattr(collect_module, name, lambda *a, **k: pytest.fail("retrained"))
    assert_same_arrays(load_dataset(collect(config)), reference)
    assert (config.expert_dir / "metrics.jsonl").read_text() == metrics_before


def test_an_expert_trained_with_other_settings_is_not_reused(tmp_path):
    collect(small_collect(tmp_path))
    (tmp_path / "out" / "dataset.hdf5").unlink()
    with pytest.raises(UserError, match=r"other settings \(algo.num_steps, seed differ\)"):
        collect(small_collect(tmp_path, seed=1, expert=replace(SMALL_PPO, num_steps=32)))


def test_an_expert_that_misses_the_target_is_an_error(tmp_path):
    with pytest.raises(UserError, match="did not reach the target return 100") as error:
        collect(small_collect(tmp_path, target_return=100.0, expert_steps=128))
    assert "--policy" in str(error.value)
    assert not (tmp_path / "out" / "dataset.hdf5").exists()


# ----------------------------------------------------------------------------- the CLI


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    try:
        code = main(["collect", *args])
    except SystemExit as stop:  # tyro reports bad option values itself, with exit code 2
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_end_to_end_with_an_expert_and_with_a_saved_policy(tmp_path, capsys):
    out = tmp_path / "medium"
    args = ["--env", "toy/nav", "--out", str(out), "--target-return", str(NAV_TARGET)]
    args += ["--transitions", "250", "--noise", "0.05", "--mode", "zero", "--seed", "2"]
    args += ["--expert-steps", "8192", "--expert-eval-every", "512", "--expert-eval-episodes", "4"]
    code, stdout, stderr = run_cli(capsys, *args, *SMALL_PPO_FLAGS)
    assert code == 0, stderr
    data = load_dataset(out / "dataset.hdf5")
    meta = data.metadata
    assert meta["command"] == "flowpolicy collect " + " ".join(args + SMALL_PPO_FLAGS)
    assert meta["seed"] == 2 and meta["mode"] == "zero" and meta["noise_std"] == 0.05
    assert data.num_transitions == 250
    expert = meta["expert"]
    for text in (
        f"eval return {expert['eval_return']:.2f}",
        f"step {expert['stop_step']:,}",
        f"return {meta['return_mean']:.2f} +/- {meta['return_std']:.2f}",
        "250 transitions",
        f"{meta['complete_episodes']} episodes",
        str(out / "dataset.hdf5"),
    ):
        assert text in stdout, text

    # --policy records a saved policy, no expert training.
    again = tmp_path / "again"
    code, stdout, stderr = run_cli(
        capsys,
        "--env",
        "toy/nav",
        "--out",
        str(again),
        "--policy",
        str(out / "expert"),
        "--transitions",
        "250",
        "--noise",
        "0.05",
        "--mode",
        "zero",
        "--seed",
        "2",
    )
    assert code == 0, stderr
    assert not (again / "expert").exists()
    replay = load_dataset(again / "dataset.hdf5")
    assert replay.metadata["expert"] is None
    assert replay.metadata["policy_path"] == str(out / "expert")
    assert_same_arrays(replay, data)  # same policy, seed, mode and noise: same data


def test_cli_help_documents_every_option():
    result = subprocess.run(
        [sys.executable, "-m", "flowpolicy", "collect", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0
    for option in (
        "--env",
        "--out",
        "--policy",
        "--target-return",
        "--transitions",
        "--noise",
        "--mode",
        "--seed",
        "--expert-steps",
        "--num-envs",
    ):
        assert option in result.stdout, option
    words = " ".join(word for word in result.stdout.split() if word != "│")  # unwrap the boxes
    assert "in units of half the action range" in words  # field docstrings are the help


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--env", "toy/nav"], "no documented medium-level target return for 'toy/nav'"),
        (["--env", "toy/nav", "--transitions", "0"], "--transitions must be a positive integer"),
        (["--env", "toy/nav", "--noise", "-0.1"], "--noise must be a finite number >= 0"),
        (["--env", "toy/nav", "--expert-steps", "-5"], "--expert-steps must be a positive"),
        (["--env", "toy/nav", "--num-minibatches", "3"], "does not split into"),
        (["--env", "toy/nav", "--policy", "missing-policy"], "missing-policy"),
        (["--env", "toy/nav", "--policy", ".", "--target-return", "1"], "only one of them"),
        (["--env", "no-such-env-v0", "--target-return", "1"], "Unknown environment id"),
    ],
    ids=["no-target", "transitions", "noise", "expert-steps", "ppo", "policy", "both", "env"],
)
def test_cli_errors_exit_2_with_a_message(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = run_cli(capsys, *args, "--out", "out")
    assert code == 2
    assert message in " ".join(stderr.split()), stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "out" / "dataset.hdf5").exists()


def test_cli_refuses_a_directory_that_is_not_a_policy_and_a_policy_for_another_env(
    tmp_path, capsys
):
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    code, _, stderr = run_cli(
        capsys, "--env", "toy/nav", "--out", str(tmp_path / "a"), "--policy", str(not_a_run)
    )
    assert code == 2 and "empty" in stderr

    run = train(
        TrainConfig(
            algo=SMALL_PPO,
            env="toy/nav",
            total_steps=64,
            eval_episodes=1,
            tensorboard=False,
            quiet=True,
            run_dir=str(tmp_path / "nav"),
        )
    )
    code, _, stderr = run_cli(
        capsys, "--env", "Hopper-v5", "--out", str(tmp_path / "b"), "--policy", str(run.run_dir)
    )
    assert code == 2 and "observations of size 2" in " ".join(stderr.split())


def test_cli_refuses_to_overwrite_a_dataset(tmp_path, capsys):
    policy_dir = tmp_path / "nav"
    train(
        TrainConfig(
            algo=SMALL_PPO,
            env="toy/nav",
            total_steps=64,
            eval_episodes=1,
            tensorboard=False,
            quiet=True,
            run_dir=str(policy_dir),
        )
    )
    args = ["--env", "toy/nav", "--out", str(tmp_path / "d"), "--policy", str(policy_dir)]
    args += ["--transitions", "20"]
    assert run_cli(capsys, *args)[0] == 0
    code, _, stderr = run_cli(capsys, *args)
    assert code == 2 and "already exists" in stderr


def test_collect_records_a_standalone_chunked_policy_file(tmp_path):
    from flowpolicy.policy_io import save_policy

    torch.manual_seed(0)
    flow = FlowPolicy(2, [-1, -1], [1, 1], chunk=4, chunk_exec=3, flow_steps=2)
    save_policy(tmp_path / "policy.pt", flow, {"env_id": "toy/nav"})
    config = CollectConfig(
        env="toy/nav",
        out=str(tmp_path / "d"),
        policy=str(tmp_path / "policy.pt"),
        transitions=100,
        seed=5,
        quiet=True,
    )
    data = load_dataset(collect(config))
    assert data.metadata["chunk_exec"] == 3 and data.metadata["expert"] is None
    assert_same_arrays(data, record(flow, "toy/nav", 100, seed=5))
