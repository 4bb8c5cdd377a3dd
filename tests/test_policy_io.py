"""policy_io.py: save/load round trips of every policy class, metadata, what
load_policy_from accepts, and the errors for missing or garbled files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flowpolicy.algos.dppo import DPPOPolicy
from flowpolicy.algos.ppo import PPOConfig
from flowpolicy.errors import UserError
from flowpolicy.policies import DiffusionPolicy, FlowPolicy, GaussianPolicy
from flowpolicy.policy_io import (
    load_policy_file,
    load_policy_from,
    read_policy_file,
    save_policy,
)
from flowpolicy.train import TrainConfig, load_any_policy, resume, train

LOW, HIGH = [0.0, -2.0], [1.0, 2.0]
TINY = dict(hidden=(16, 16, 16), network="residual", obs_normalization="min_max")


def _fitted(policy: torch.nn.Module) -> torch.nn.Module:
    """A policy with non-trivial normalisers, as after pretraining."""
    policy.fit_normalizers(torch.randn(50, 4) * 3.0 + 1.0, torch.rand(50, 2) * 0.5)
    return policy


POLICIES = {
    "flow": lambda: FlowPolicy(4, LOW, HIGH, chunk=2, flow_steps=3, squash="clip", **TINY),
    "diffusion": lambda: DiffusionPolicy(4, LOW, HIGH, chunk=2, denoising_steps=5, **TINY),
    "gaussian": lambda: GaussianPolicy(4, LOW, HIGH, chunk=2, initial_log_std=-1.0, **TINY),
}


@pytest.mark.parametrize("kind", sorted(POLICIES))
def test_round_trip_gives_identical_actions(tmp_path: Path, kind: str) -> None:
    torch.manual_seed(0)
    policy = _fitted(POLICIES[kind]())
    path = tmp_path / "policy.pt"
    save_policy(path, policy, {"env_id": "Hopper-v5", "eval": {"return": 12.5}})
    assert not (tmp_path / "policy.pt.tmp").exists()

    loaded = read_policy_file(path)
    assert type(loaded.policy) is type(policy)
    assert loaded.metadata == {"env_id": "Hopper-v5", "eval": {"return": 12.5}}
    assert loaded.policy.init_kwargs == policy.init_kwargs
    for name, value in policy.state_dict().items():
        assert torch.equal(loaded.policy.state_dict()[name], value), name
    obs = torch.randn(6, 4) * 3.0
    for mode in ("zero", "random"):
        torch.manual_seed(3)
        expected = policy.act(obs, mode)
        torch.manual_seed(3)
        assert torch.equal(loaded.policy.act(obs, mode), expected)
    # the fitted normaliser stays frozen after loading
    assert loaded.policy.obs_norm.frozen


def test_load_policy_from_a_file_and_a_pretrain_directory(tmp_path: Path) -> None:
    policy = _fitted(POLICIES["flow"]())
    save_policy(tmp_path / "policy.pt", policy)
    assert isinstance(load_policy_file(tmp_path / "policy.pt"), FlowPolicy)
    assert isinstance(load_policy_from(tmp_path / "policy.pt"), FlowPolicy)
    assert isinstance(load_policy_from(tmp_path), FlowPolicy)


def test_load_policy_from_a_train_run_directory(tmp_path: Path) -> None:
    algo = PPOConfig(num_envs=2, num_steps=8, num_minibatches=2, update_epochs=1)
    config = TrainConfig(
        algo=algo,
        env="toy/bandit",
        total_steps=16,
        eval_every=0,
        eval_episodes=1,
        run_dir=str(tmp_path / "run"),
        tensorboard=False,
        quiet=True,
    )
    train(config)
    policy = load_policy_from(tmp_path / "run")
    assert isinstance(policy, GaussianPolicy)
    assert policy.act(torch.ones(3, 2), "zero").shape == (3, 2)


@pytest.mark.parametrize("inner", ["diffusion", "flow"])
def test_dppos_split_chain_round_trips_through_a_file(tmp_path: Path, inner: str) -> None:
    torch.manual_seed(0)
    policy = DPPOPolicy(_fitted(POLICIES[inner]()), ft_steps=2)
    with torch.no_grad():  # the fine-tuned copy differs from the frozen one, as after training
        for parameter in policy.actor.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    save_policy(tmp_path / "policy.pt", policy, {"env_id": "Hopper-v5"})
    loaded = load_policy_from(tmp_path / "policy.pt")
    assert isinstance(loaded, DPPOPolicy) and loaded.ft_steps == 2
    for name, value in policy.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    obs = torch.randn(5, 4)
    for mode in ("zero", "random"):
        torch.manual_seed(3)
        expected = policy.act(obs, mode)
        torch.manual_seed(3)
        assert torch.equal(loaded.act(obs, mode), expected)


def test_a_train_run_from_before_policy_exports_is_still_read(tmp_path: Path) -> None:
    """Train runs write policy.pt at every checkpoint; one made before that is rebuilt from
    its checkpoint by flowpolicy.train.load_any_policy, and a resume exports it."""
    algo = PPOConfig(num_envs=2, num_steps=8, num_minibatches=2, update_epochs=1)
    run_dir = tmp_path / "run"
    config = TrainConfig(algo=algo, env="toy/bandit", total_steps=16, eval_every=0,
                         eval_episodes=1, run_dir=str(run_dir), tensorboard=False, quiet=True)  # fmt: skip
    train(config)
    (run_dir / "policy.pt").unlink()
    with pytest.raises(UserError, match="from before runs exported policy.pt"):
        load_policy_from(run_dir)
    assert isinstance(load_any_policy(run_dir), GaussianPolicy)
    resume(run_dir)  # finished: it only exports the policy
    assert isinstance(load_policy_from(run_dir), GaussianPolicy)


def test_errors_name_the_path_and_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="No policy file") as error:
        load_policy_file(tmp_path / "missing.pt")
    assert "missing.pt" in str(error.value) and "flowpolicy pretrain" in str(error.value)

    garbled = tmp_path / "garbled.pt"
    garbled.write_bytes(b"\x00not a torch file at all")
    with pytest.raises(UserError, match="damaged") as error:
        load_policy_from(garbled)
    assert "garbled.pt" in str(error.value)

    other = tmp_path / "checkpoint.pt"
    torch.save({"algo": {}, "loop": {}}, other)
    with pytest.raises(UserError, match="not a flowpolicy policy file"):
        load_policy_file(other)

    with pytest.raises(UserError, match="holds no policy"):
        load_policy_from(tmp_path)  # a directory without policy.pt or config.json
    with pytest.raises(UserError, match="does not exist"):
        load_policy_from(tmp_path / "nowhere")


def test_a_damaged_state_is_a_user_error(tmp_path: Path) -> None:
    policy = POLICIES["gaussian"]()
    save_policy(tmp_path / "p.pt", policy)
    payload = torch.load(tmp_path / "p.pt", weights_only=False)
    payload["init_kwargs"]["hidden"] = (8, 8, 8)  # weights no longer fit the network
    torch.save(payload, tmp_path / "p.pt")
    with pytest.raises(UserError, match="could not be rebuilt"):
        load_policy_file(tmp_path / "p.pt")


def test_save_refuses_other_modules_and_non_json_metadata(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        save_policy(tmp_path / "x.pt", torch.nn.Linear(2, 2))
    with pytest.raises(TypeError):
        save_policy(tmp_path / "x.pt", POLICIES["flow"](), {"bad": object()})
    assert not (tmp_path / "x.pt").exists()
