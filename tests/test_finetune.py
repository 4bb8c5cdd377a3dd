"""Fine-tuning from a pretrained policy (``TrainConfig.init`` / ``flowpolicy train --init``):
the run starts from the policy's own return, takes the policy's chunking, keeps its fitted
normalisers, resumes without the original file, and refuses policies that do not fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from flowpolicy.algos.fpo import FPOConfig
from flowpolicy.algos.ppo import PPOConfig
from flowpolicy.cli import main
from flowpolicy.errors import UserError
from flowpolicy.evaluation import evaluate_modes
from flowpolicy.policies import DiffusionPolicy, FlowPolicy, GaussianPolicy
from flowpolicy.policy_io import load_policy_file, save_policy
from flowpolicy.train import load_policy, resume, train
from tests.test_train import SMALL, SMALL_FPO, metric_rows, small_config

NAV_LOW, NAV_HIGH = [-1.0, -1.0], [1.0, 1.0]


def pretrained_flow_policy(tmp_path: Path, obs_dim: int = 2) -> Path:
    """A flow policy shaped like a BC one (residual net, chunk 2, clip squash, normalisers
    fitted and frozen), with non-trivial weights, saved as a policy file."""
    torch.manual_seed(0)
    policy = FlowPolicy(
        obs_dim,
        NAV_LOW,
        NAV_HIGH,
        chunk=2,
        chunk_exec=2,
        flow_steps=5,
        network="residual",
        hidden=(32, 32, 32),
        squash="clip",
        obs_normalization="min_max",
    )
    policy.fit_normalizers(torch.rand(100, obs_dim) * 2 - 1, torch.rand(100, 2) * 1.6 - 0.8)
    with torch.no_grad():
        for parameter in policy.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    path = tmp_path / "policy.pt"
    save_policy(path, policy, {"env_id": "toy/nav"})
    return path


def test_fpo_starts_from_the_pretrained_policy_and_takes_its_settings(tmp_path):
    policy_file = pretrained_flow_policy(tmp_path)
    config = small_config(tmp_path, FPOConfig(**SMALL_FPO), init=str(policy_file), steps=256)
    result = train(config)
    run_dir = result.run_dir

    saved = json.loads((run_dir / "config.json").read_text())["algo"]
    assert (saved["chunk"], saved["chunk_exec"], saved["flow_steps"]) == (2, 2, 5)
    assert (run_dir / "init_policy.pt").is_file()

    # Step 0 is the unchanged policy's evaluation: every curve starts at the BC return.
    original = load_policy_file(policy_file)
    expected = evaluate_modes(original, "toy/nav", config.eval_episodes, config.seed + 10_000, 2)
    first = metric_rows(run_dir)[0]
    assert first["step"] == 0
    for key, value in expected.items():
        assert first[key] == pytest.approx(value)

    # The fitted normalisers stay fixed while the weights move.
    tuned = load_policy(run_dir)
    assert torch.equal(tuned.obs_norm.state_dict()["low"], original.obs_norm.state_dict()["low"])
    moved = [
        not torch.equal(a, b)
        for a, b in zip(tuned.parameters(), original.parameters(), strict=True)
    ]
    assert any(moved)


def test_resume_of_a_fine_tuning_run_needs_only_the_run_directory(tmp_path, monkeypatch):
    policy_file = pretrained_flow_policy(tmp_path)
    algo = FPOConfig(**SMALL_FPO)
    reference = train(
        small_config(tmp_path / "reference", algo, init=str(policy_file), steps=512)
    ).run_dir

    from flowpolicy.algos.fpo import FPO

    original_update, calls = FPO.update, {"n": 0}

    def crashing_update(self, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original_update(self, batch)

    monkeypatch.setattr(FPO, "update", crashing_update)
    config = small_config(tmp_path / "crashed", algo, init=str(policy_file), steps=512)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    monkeypatch.setattr(FPO, "update", original_update)
    policy_file.unlink()  # the run keeps its own copy
    resumed = resume(config.run_dir).run_dir
    assert metric_rows(resumed) == metric_rows(reference)


def test_ppo_fine_tunes_a_gaussian_policy(tmp_path):
    torch.manual_seed(0)
    policy = GaussianPolicy(2, NAV_LOW, NAV_HIGH, hidden=(16,), initial_log_std=-1.0)
    save_policy(tmp_path / "gauss.pt", policy)
    result = train(small_config(tmp_path, PPOConfig(**SMALL), init=str(tmp_path / "gauss.pt")))
    assert load_policy(result.run_dir).log_std.detach().mean() < -0.5  # started from -1, not 0


def test_a_policy_of_the_wrong_class_is_refused(tmp_path):
    diffusion = DiffusionPolicy(2, NAV_LOW, NAV_HIGH, chunk=1, chunk_exec=1, hidden=(16,) * 3)
    save_policy(tmp_path / "diffusion.pt", diffusion)
    config = small_config(tmp_path, FPOConfig(**SMALL_FPO), init=str(tmp_path / "diffusion.pt"))
    with pytest.raises(UserError, match="fine-tunes a FlowPolicy.*DiffusionPolicy"):
        train(config)


def test_a_policy_for_another_env_is_refused_through_the_cli(tmp_path, capsys):
    policy_file = pretrained_flow_policy(tmp_path, obs_dim=5)
    code = main(
        ["train", "fpo", "--env", "toy/nav", "--init", str(policy_file)]
        + ["--total-steps", "64", "--run-dir", str(tmp_path / "run")]
    )
    assert code == 2
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "does not fit toy/nav" in err and "observation size 5" in err
    assert "Traceback" not in err


def test_a_missing_init_path_is_a_user_error(tmp_path, capsys):
    code = main(["train", "fpo", "--env", "toy/nav", "--init", str(tmp_path / "nope.pt")])
    assert code == 2
    assert "does not exist" in " ".join(capsys.readouterr().err.split())
