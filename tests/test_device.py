"""--device: resolution, clear errors for bad input, generator state, and (with CUDA) training,
resuming and moving runs between devices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from flowpolicy.algos.fpo import FPOConfig
from flowpolicy.algos.ppo import PPOConfig
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


def _tiny_algorithms() -> dict[str, object]:
    from flowpolicy.algos.dppo import DPPOConfig
    from flowpolicy.algos.qam import QAMConfig
    from flowpolicy.algos.reinflow import ReinFlowConfig
    from flowpolicy.algos.rldt import RLDTConfig
    from tests.algos import test_dppo, test_qam, test_reinflow, test_rldt

    small = dict(num_envs=4, num_steps=16, num_minibatches=2, update_epochs=2)
    return {
        "ppo": PPOConfig(**small),
        "fpo": FPOConfig(**small, flow_steps=4, mc_samples=2),
        "rldt": RLDTConfig(**test_rldt.TINY),
        "reinflow": ReinFlowConfig(**test_reinflow.TINY),
        "dppo": DPPOConfig(**test_dppo.TINY),
        "qam": QAMConfig(**test_qam.TINY),
    }


ALGORITHM_NAMES = ["ppo", "fpo", "rldt", "reinflow", "dppo", "qam"]
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]
"""The CUDA tests also run on the CPU, so that their code is exercised on every machine."""


def _device_config(run_dir: Path, name: str, device: str) -> TrainConfig:
    return TrainConfig(
        algo=_tiny_algorithms()[name],
        env="toy/nav",
        seed=3,
        total_steps=160,
        eval_every=80,
        eval_episodes=2,
        checkpoint_every=1,
        run_dir=str(run_dir),
        quiet=True,
        tensorboard=False,
        device=device,
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ALGORITHM_NAMES)
def test_every_algorithm_trains_on_the_device_and_its_policy_evaluates_on_a_cpu(
    tmp_path: Path, name: str, device: str
) -> None:
    result = train(_device_config(tmp_path / "run", name, device))
    assert result.metrics["step"] >= 160
    trained = load_policy(result.run_dir, device)
    cpu_policy = load_policy(result.run_dir, "cpu")
    assert module_device(trained).type == device
    assert module_device(cpu_policy).type == "cpu"
    obs = torch.zeros(3, trained.obs_dim)
    assert torch.allclose(
        trained.act(obs.to(device), "zero").cpu(), cpu_policy.act(obs, "zero"), atol=1e-4
    )


class _Interrupted(Exception):
    pass


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ALGORITHM_NAMES)
def test_a_crashed_run_resumes_to_the_uninterrupted_numbers_on_the_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, device: str
) -> None:
    import flowpolicy.train as train_module
    from tests.test_train import metric_rows

    reference = train(_device_config(tmp_path / "reference", name, device)).run_dir
    config = _device_config(tmp_path / "crashed", name, device)
    algo_class = train_module.ALGORITHMS[type(config.algo)][1]
    original_update, calls = algo_class.update, {"n": 0}

    def crashing_update(self, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise _Interrupted
        return original_update(self, batch)

    monkeypatch.setattr(algo_class, "update", crashing_update)
    with pytest.raises(_Interrupted):
        train(config)
    monkeypatch.setattr(algo_class, "update", original_update)
    resumed = resume(config.run_dir).run_dir
    if device == "cpu":
        assert metric_rows(resumed) == metric_rows(reference)
        return
    # The same kernels in the same order: equal up to the few CUDA ops (atomic adds in some
    # backward passes) that do not promise bit-identical sums.
    for got, want in zip(metric_rows(resumed), metric_rows(reference), strict=True):
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


@needs_cuda
def test_a_cpu_run_continues_on_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import flowpolicy.train as train_module

    config = _device_config(tmp_path / "run", "fpo", "cpu")
    algo_class = train_module.ALGORITHMS[type(config.algo)][1]
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
