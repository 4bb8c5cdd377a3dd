"""playground/<Name>: MuJoCo Playground's DMC envs as one JAX batch behind the tensor env
boundary: episode ends, the true final observation, chunks, seeds, state, errors, training."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from flowpolicy.cli import main
from flowpolicy.envs import make_env
from flowpolicy.errors import UserError
from tests.test_train import metric_rows

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mujoco_playground") is None,
    reason="MuJoCo Playground is not installed (pip install 'flowpolicy[playground]')",
)

ENV = "playground/CartpoleBalance"


@pytest.fixture(scope="module")
def short_env():
    """4 envs, chunks of 4 actions, episodes of 6 control steps: truncation inside a chunk."""
    from flowpolicy.envs.playground import PlaygroundVectorEnv

    return PlaygroundVectorEnv(ENV, 4, seed=0, chunk_exec=4, episode_length=6)


def test_steps_speak_tensors_and_truncate_inside_a_chunk(short_env) -> None:
    obs = short_env.reset(seed=0)
    assert obs.shape == (4, 5) and obs.dtype == torch.float32
    assert short_env.action_dim == 4 * 1
    assert torch.equal(short_env.action_low, -torch.ones(4))
    first = short_env.step(torch.zeros(4, 4))  # 4 control steps
    assert not first.done.any()
    assert torch.equal(first.final_obs, first.obs)
    second = short_env.step(torch.zeros(4, 4))  # steps 5 and 6, then the time limit
    assert second.truncated.all() and not second.terminated.any()
    # the episode ended in final_obs; obs is the first of the next episode
    assert not torch.allclose(second.final_obs, second.obs)
    # only the two executed actions of the chunk were rewarded (CartpoleBalance: r <= 1)
    assert (second.reward <= 2.0 + 1e-5).all() and (second.reward > 0).all()
    assert (first.reward > 2.0).all()
    third = short_env.step(torch.zeros(4, 4))  # a new episode: its clock restarted
    assert not third.done.any()


def test_the_seed_fixes_the_numbers_and_the_state_round_trips(short_env) -> None:
    actions = [
        2 * torch.rand(4, 4, generator=torch.Generator().manual_seed(i)) - 1 for i in range(3)
    ]

    def rollout(seed: int) -> list[torch.Tensor]:
        out = [short_env.reset(seed=seed)]
        for action in actions:
            step = short_env.step(action)
            out += [step.obs, step.reward]
        return out

    first, again, other = rollout(1), rollout(1), rollout(2)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])
    short_env.reset(seed=3)
    short_env.step(actions[0])
    saved = short_env.state()
    expected = short_env.step(actions[1])
    short_env.reset(seed=9)
    short_env.load_state(saved)
    got = short_env.step(actions[1])
    assert torch.equal(got.obs, expected.obs) and torch.equal(got.reward, expected.reward)


def test_bad_names_and_the_gym_path_say_what_to_do() -> None:
    from flowpolicy.envs.playground import PlaygroundVectorEnv

    with pytest.raises(UserError, match="keys impl, episode_length"):
        PlaygroundVectorEnv(ENV + ":length=5", 2, seed=0)
    with pytest.raises(UserError, match="episode_length must be an integer >= 1"):
        PlaygroundVectorEnv(ENV + ":episode_length=0", 2, seed=0)
    with pytest.raises(UserError, match="needs an NVIDIA GPU"):
        PlaygroundVectorEnv(ENV + ":impl=warp", 2, seed=0)

    with pytest.raises(UserError, match="Did you mean playground/CartpoleBalance"):
        PlaygroundVectorEnv("playground/CartpolBalance", 2, seed=0)
    with pytest.raises(UserError, match="downloaded on first use"):
        PlaygroundVectorEnv("playground/Go1JoystickFlatTerrain", 2, seed=0)
    with pytest.raises(UserError, match="choose jax or warp"):
        PlaygroundVectorEnv(ENV, 2, seed=0, impl="cuda")
    with pytest.raises(UserError, match="dmc/cartpole-balance"):
        make_env(ENV)


def test_without_the_extra_the_error_gives_the_install_command(monkeypatch) -> None:
    from flowpolicy.envs import playground

    real = importlib.util.find_spec
    monkeypatch.setattr(
        playground.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "mujoco_playground" else real(name, *a),
    )
    with pytest.raises(UserError, match=r"pip install 'flowpolicy\[playground\]'"):
        playground.PlaygroundVectorEnv(ENV, 2, seed=0)


class _Crash(Exception):
    pass


def test_a_crashed_run_resumes_to_the_uninterrupted_numbers(tmp_path: Path, monkeypatch) -> None:
    """The checkpoint holds the whole JAX batch (states, step counters, reset key): resuming a
    run that crashed reproduces the uninterrupted one, through episode ends and resets."""
    from flowpolicy.algos.fpo import FPO

    # 4 envs x 4 steps per iteration, episodes of 5 steps, evaluation on 4 envs: one compiled
    # batch (the every-env test's, on this task) serves all of it.
    env = f"{ENV}:episode_length=5"

    def run(run_dir: Path) -> list[str]:
        return ["train", "fpo", *SMALL, "--env", env, "--run-dir", str(run_dir)] + [
            "--total-steps", "64", "--checkpoint-every", "1", "--eval-every", "32"
        ]  # fmt: skip

    assert main(run(tmp_path / "reference")) == 0
    original, calls = FPO.update, {"n": 0}

    def crashing_update(self, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise _Crash
        return original(self, batch)

    monkeypatch.setattr(FPO, "update", crashing_update)
    with pytest.raises(_Crash):
        main(run(tmp_path / "crashed"))
    monkeypatch.setattr(FPO, "update", original)
    assert main(["train", "--resume", str(tmp_path / "crashed")]) == 0
    assert metric_rows(tmp_path / "crashed") == metric_rows(tmp_path / "reference")
    assert main(["eval", str(tmp_path / "crashed"), "--episodes", "4"]) == 0


def test_options_in_the_env_id_set_the_episode_length() -> None:
    from flowpolicy.envs.playground import PlaygroundVectorEnv

    env = PlaygroundVectorEnv(ENV + ":episode_length=6,impl=jax", 4, seed=0, chunk_exec=4)
    assert env.episode_length == 6
    env.reset(seed=0)
    env.step(torch.zeros(4, 4))
    assert env.step(torch.zeros(4, 4)).truncated.all()


# Every on-policy algorithm, small: 4 envs x 4 steps, one update. Evaluation runs 4 envs too,
# so that it reuses the training batch's compiled programs (compiling costs 5-40 s per task).
ON_POLICY: dict[str, list[str]] = {
    "ppo": ["ppo"],
    "fpo": ["fpo", "--flow-steps", "4", "--mc-samples", "2"],
    "fpo++": ["fpo", "--preset", "fpo++", "--flow-steps", "4"],
    "dppo": ["dppo", "--chunk", "2", "--chunk-exec", "1"],
    "reinflow": ["reinflow", "--chunk", "2", "--chunk-exec", "1"],
}
SMALL = ["--num-envs", "4", "--num-steps", "4", "--num-minibatches", "2", "--update-epochs", "1"]
SMALL += ["--actor-hidden", "16", "16", "16", "--critic-hidden", "16", "16", "16"]
SMALL += ["--total-steps", "16", "--eval-episodes", "4"]
SMALL += ["--tensorboard", "False", "--quiet", "True", "--device", "cpu"]


def dmc_envs() -> list[str]:
    if importlib.util.find_spec("mujoco_playground") is None:
        return []
    from flowpolicy.envs.playground import dmc_names

    return list(dmc_names())


@pytest.fixture
def compiled_batches_released():
    """A task's compiled batches are released after its test: 25 tasks' programs in one
    process would otherwise add up to gigabytes."""
    yield
    from flowpolicy.envs.playground import clear_compiled

    clear_compiled()


@pytest.mark.parametrize("name", dmc_envs())
def test_every_dmc_env_trains_with_every_on_policy_algorithm(
    tmp_path: Path, name: str, compiled_batches_released
) -> None:
    env = f"playground/{name}:episode_length=5"
    for algo, flags in ON_POLICY.items():
        run_dir = tmp_path / algo
        assert main(["train", *flags, *SMALL, "--env", env, "--run-dir", str(run_dir)]) == 0
        done = json.loads((run_dir / "done.json").read_text())
        assert done["step"] == 16, algo
        assert math.isfinite(done["eval/zero/return_mean"]), algo
        assert (run_dir / "policy.pt").is_file(), algo
