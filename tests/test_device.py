"""--device: resolution, clear errors for bad input, generator state, and (with CUDA) training,
resuming and moving runs between devices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from flowpolicy.algos.ppo import PPOConfig
from flowpolicy.algos.registry import spec_of_config
from flowpolicy.cli import main
from flowpolicy.device import (
    forked_rng_devices,
    module_device,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
)
from flowpolicy.errors import UserError
from flowpolicy.train import TrainConfig, load_policy, resume, train

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (none on this machine)")


def test_auto_and_cpu_resolve_to_a_device_this_machine_has() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:x", "CPU", "cuda:0:1", "", "mps0"])
def test_a_malformed_device_names_the_accepted_forms(spec: str) -> None:
    with pytest.raises(UserError, match="auto, cpu, cuda or cuda:N"):
        resolve_device(spec)


def test_cuda_without_cuda_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="torch sees none.*--device cpu"):
        resolve_device("cuda")


def test_a_gpu_index_past_the_machine_names_the_ones_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match="GPU 7, but this machine has 1 .cuda:0 to cuda:0"):
        resolve_device("cuda:7")
    assert resolve_device("cuda") == torch.device("cuda", 0)


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "ppo", "--env", "toy/bandit", "--device", "cuda:7"],
        ["train", "ppo", "--env", "toy/bandit", "--device", "tpu"],
        ["eval", "RUN", "--device", "tpu"],
        ["collect", "--env", "toy/bandit", "--out", "OUT", "--device", "tpu"],
    ],
)
def test_cli_rejects_a_bad_device_with_exit_2_and_writes_nothing(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if argv[0] == "eval":
        run = tmp_path / "RUN"
        train(
            TrainConfig(
                algo=PPOConfig(num_envs=2, num_steps=8, num_minibatches=2),
                env="toy/bandit",
                total_steps=16,
                eval_episodes=1,
                run_dir=str(run),
                quiet=True,
            )
        )
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    run_dir = ["--run-dir", "R"] if argv[0] == "train" else []
    assert main(argv + run_dir) == 2
    err = capsys.readouterr().err
    assert "--device" in err and "Traceback" not in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_resume_on_another_device_is_checked_before_anything_changes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = TrainConfig(
        algo=PPOConfig(num_envs=2, num_steps=8, num_minibatches=2),
        env="toy/bandit",
        total_steps=16,
        eval_episodes=1,
        run_dir=str(run),
        quiet=True,
    )
    train(config)
    before = (run / "config.json").read_text()
    assert main(["train", "--resume", str(run), "--device", "cuda:x"]) == 2
    assert (run / "config.json").read_text() == before
    assert main(["train", "--resume", str(run), "--device"]) == 2  # usage


def test_rng_state_round_trip_restores_the_draws() -> None:
    seed_everything(3)
    state = rng_state()
    first = torch.rand(4), torch.randn(2, device="cuda") if CUDA else None
    set_rng_state(state)
    second = torch.rand(4), torch.randn(2, device="cuda") if CUDA else None
    assert torch.equal(first[0], second[0])
    if CUDA:
        assert torch.equal(first[1], second[1])


def test_forked_devices_and_module_device() -> None:
    assert forked_rng_devices(torch.device("cpu")) == []
    assert forked_rng_devices(torch.device("cuda", 0)) == [torch.device("cuda", 0)]
    assert module_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert module_device(torch.nn.Identity()) == torch.device("cpu")


def test_config_json_records_the_device_and_old_runs_without_it_still_load(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    config = TrainConfig(
        algo=PPOConfig(num_envs=2, num_steps=8, num_minibatches=2),
        env="toy/bandit",
        total_steps=16,
        eval_episodes=1,
        run_dir=str(run),
        quiet=True,
        device="cpu",
    )
    train(config)
    data = json.loads((run / "config.json").read_text())
    assert data["device"] == "cpu"
    del data["device"]  # a run directory from before --device
    (run / "config.json").write_text(json.dumps(data))
    assert load_policy(run).act(torch.zeros(1, 1), "zero").shape == (1, 2)  # the bandit


# ----------------------------------------------------------------------------- with CUDA
# Every algorithm building, acting, updating, resuming and exporting its policy on CUDA is in
# tests/algos/test_contract.py (parametrised over the registry and the devices).


class _Interrupted(Exception):
    pass


@needs_cuda
def test_a_cpu_run_continues_on_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.algos.test_contract import run_config

    config = run_config(tmp_path / "run", "fpo", "cpu")
    algo_class = spec_of_config(config.algo).algorithm
    original_update, calls = algo_class.update, {"n": 0}

    def crashing_update(self, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise _Interrupted
        return original_update(self, batch)

    monkeypatch.setattr(algo_class, "update", crashing_update)
    with pytest.raises(_Interrupted):
        train(config)
    monkeypatch.setattr(algo_class, "update", original_update)
    result = resume(config.run_dir, device="cuda")
    assert result.metrics["step"] >= 160
    assert json.loads((Path(config.run_dir) / "config.json").read_text())["device"] == "cuda"
    assert module_device(load_policy(config.run_dir, "cuda")).type == "cuda"
