"""The contract every registered algorithm keeps with the runner (flowpolicy.algos.spec),
tested for each entry of the registry: a new algorithm is covered as soon as it is registered.

- it builds on the run's device, and acts and updates there;
- where it has a likelihood ratio, the ratio is 1 on the first minibatch of an update;
- its state survives serialisation: a restored copy makes the same update;
- a run that crashes mid-update resumes to the uninterrupted run's numbers;
- the CLI trains it, exports policy.pt, and evaluates the run;
- every preset builds.

Each runs on the CPU everywhere and also on CUDA where the machine has it.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from flowpolicy.algos.registry import ALGORITHMS
from flowpolicy.algos.spec import Algorithm, AlgorithmConfig, AlgorithmSpec
from flowpolicy.buffers import RolloutBatch, RolloutBuffer
from flowpolicy.cli import main
from flowpolicy.policies import GaussianPolicy
from flowpolicy.policy_io import load_policy_from, save_policy
from flowpolicy.train import TrainConfig, load_policy, resume, train
from tests.algos import test_dppo, test_dsrl, test_fql, test_qam, test_reinflow, test_rldt
from tests.test_train import metric_rows

OBS_DIM = 3
LOW, HIGH = torch.tensor([-1.0, -2.0]), torch.tensor([1.0, 2.0])
SMALL_ON_POLICY = dict(num_envs=2, num_steps=8, num_minibatches=2, update_epochs=2)
TINY: dict[str, dict] = {
    "ppo": SMALL_ON_POLICY,
    "fpo": SMALL_ON_POLICY | dict(flow_steps=4, mc_samples=2),
    "rldt": test_rldt.TINY,
    "reinflow": test_reinflow.TINY,
    "dppo": test_dppo.TINY,
    "qam": test_qam.TINY,
    "dsrl": test_dsrl.TINY,
    "fql": test_fql.TINY,
}
"""Small settings per algorithm (a newly registered one starts from 2 envs x 8 steps)."""
NAMES = list(ALGORITHMS)
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(
            not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)"
        ),
    ),
]


def tiny_config(name: str):
    spec = ALGORITHMS[name]
    return dataclasses.replace(
        spec.presets[0].config(), **TINY.get(name, dict(num_envs=2, num_steps=8))
    )


def initial_policy(name: str, config) -> nn.Module | None:
    """A small untrained policy for an algorithm that only fine-tunes (None for the others)."""
    spec = ALGORITHMS[name]
    if not spec.requires_init:
        return None
    sizes = dict(chunk=config.chunk, chunk_exec=config.chunk_exec, flow_steps=config.flow_steps)
    return spec.fine_tunes[0](OBS_DIM, LOW, HIGH, hidden=(16,), **sizes)


def build(name: str, device: str = "cpu", seed: int = 0, config=None):
    torch.manual_seed(seed)
    config = tiny_config(name) if config is None else config
    with torch.device(device):
        return ALGORITHMS[name].algorithm(
            OBS_DIM, LOW.to(device), HIGH.to(device), config, initial_policy(name, config)
        )


def rollout(algo, seed: int, device: str = "cpu") -> RolloutBatch:
    """Real records from ``algo.act`` on made-up env data (2 envs: env 0 terminates at t = 3,
    env 1 is truncated at t = 5), on ``device``."""
    cfg = algo.config
    generator = torch.Generator().manual_seed(seed)
    buffer = RolloutBuffer(cfg.num_steps, cfg.num_envs, OBS_DIM, device)
    for t in range(cfg.num_steps):
        obs = (2.0 + 3.0 * torch.randn(cfg.num_envs, OBS_DIM, generator=generator)).to(device)
        _, record = algo.act(obs)
        ends = torch.zeros(cfg.num_envs, device=device)
        terminated, done = ends.clone(), ends.clone()
        terminated[0] = done[0] = float(t == 3)
        done[-1] = max(done[-1].item(), float(t == 5))
        reward = torch.randn(cfg.num_envs, generator=generator).to(device)
        next_obs = obs + torch.randn(cfg.num_envs, OBS_DIM, generator=generator).to(device)
        buffer.add(obs, record, reward, next_obs, terminated, done)
    return buffer.batch()


def modules_of(algo) -> list[nn.Module]:
    return [value for value in vars(algo).values() if isinstance(value, nn.Module)]


def optimizer_state_tensors(algo) -> list[torch.Tensor]:
    found = []
    for value in vars(algo).values():
        if isinstance(value, torch.optim.Optimizer):
            for state in value.state.values():
                found += [v for v in state.values() if isinstance(v, torch.Tensor) and v.dim()]
    return found


@pytest.mark.parametrize("name", NAMES)
def test_the_registration_is_complete(name: str) -> None:
    spec = ALGORITHMS[name]
    assert isinstance(spec, AlgorithmSpec) and spec.name == name
    assert spec.presets and spec.fine_tunes
    assert isinstance(spec.presets[0].config(), spec.config)
    assert isinstance(spec.config(), AlgorithmConfig)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
def test_builds_acts_and_updates_on_the_device(name: str, device: str) -> None:
    algo = build(name, device)
    assert isinstance(algo, Algorithm)
    for module in modules_of(algo):
        for tensor in (*module.parameters(), *module.buffers()):
            assert tensor.device.type == device, (type(module).__name__, tensor.shape)
    cfg = algo.config
    obs = torch.randn(cfg.num_envs, OBS_DIM, device=device)
    action, record = algo.act(obs)
    assert action.shape == (cfg.num_envs, cfg.chunk_exec * len(LOW))
    assert action.device.type == device
    for key, value in record.items():
        assert value.shape[0] == cfg.num_envs and value.device.type == device, key
    metrics = {}
    for seed in range(2):
        metrics = algo.update(rollout(algo, seed, device))
    assert metrics and all(isinstance(v, float) for v in metrics.values())
    assert all(t.device.type == device for t in optimizer_state_tensors(algo))
    evaluated = algo.eval_policy.act(obs, "zero")
    assert evaluated.shape == action.shape and torch.isfinite(evaluated).all()


@pytest.mark.parametrize("name", NAMES)
def test_the_ratio_is_one_on_the_first_minibatch(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    algo = build(name)
    if not hasattr(algo, "policy_loss"):
        pytest.skip(f"{name} has no likelihood ratio (it is not a PPO-family method)")
    # Statistics far from the defaults, so that acting and learning with different
    # normalisations would show.
    algo.eval_policy.obs_norm.update(5.0 + 2.0 * torch.randn(100, OBS_DIM))
    seen: list[dict] = []
    original = algo.policy_loss

    def policy_loss(*args, **kwargs):
        loss, metrics = original(*args, **kwargs)
        seen.append({k: float(torch.as_tensor(v).detach()) for k, v in metrics.items()})
        return loss, metrics

    monkeypatch.setattr(algo, "policy_loss", policy_loss)
    for seed in range(2):  # also after an update moved the statistics
        seen.clear()
        algo.update(rollout(algo, seed))
        assert seen[0]["policy/ratio"] == pytest.approx(1.0, abs=1e-5)
        # the check can fail: by the last minibatch the policy has moved
        assert seen[-1]["policy/ratio"] != pytest.approx(1.0, abs=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_a_restored_state_makes_the_same_update(name: str) -> None:
    algo = build(name)
    for seed in range(3):
        algo.update(rollout(algo, seed))
    buffer = io.BytesIO()  # through serialisation, as a checkpoint does
    torch.save(algo.state_dict(), buffer)
    buffer.seek(0)
    restored = build(name, seed=99)  # other initial weights, all overwritten by the state
    restored.load_state_dict(torch.load(buffer, weights_only=False))
    batch = rollout(algo, seed=9)
    torch.manual_seed(123)
    expected = algo.update(batch)
    torch.manual_seed(123)
    assert restored.update(batch) == expected
    for ours, theirs in zip(modules_of(algo), modules_of(restored), strict=True):
        for a, b in zip(ours.state_dict().values(), theirs.state_dict().values(), strict=True):
            assert torch.equal(a, b)


class _Interrupted(Exception):
    pass


def saved_policy(path: Path, name: str) -> Path:
    """A small untrained policy of the class ``name`` fine-tunes, for toy/nav, in a file."""
    policy_class = ALGORITHMS[name].fine_tunes[0]
    torch.manual_seed(1)
    kwargs = dict(chunk=1) if policy_class is not GaussianPolicy else {}
    policy = policy_class(2, [-1.0, -1.0], [1.0, 1.0], hidden=(16,), network="mlp", **kwargs)
    save_policy(path, policy, {"env_id": "toy/nav"})
    return path


def run_config(run_dir: Path, name: str, device: str, init: Path | None = None) -> TrainConfig:
    return TrainConfig(
        algo=tiny_config(name),
        init=None if init is None else str(init),
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


@pytest.mark.parametrize("start", ["scratch", "init"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
def test_a_crashed_run_resumes_to_the_uninterrupted_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, device: str, start: str
) -> None:
    """From scratch, and fine-tuning a saved policy (its copy, frozen parts and reference
    copies are part of the checkpoint)."""
    if start == "scratch" and ALGORITHMS[name].requires_init:
        pytest.skip(f"{name} only fine-tunes (the init case covers it)")
    init = saved_policy(tmp_path / "init.pt", name) if start == "init" else None
    reference = train(run_config(tmp_path / "reference", name, device, init)).run_dir
    config = run_config(tmp_path / "crashed", name, device, init)
    algo_class = ALGORITHMS[name].algorithm
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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
def test_the_exported_policy_is_the_evaluated_one_on_any_device(
    tmp_path: Path, name: str, device: str
) -> None:
    init = saved_policy(tmp_path / "init.pt", name) if ALGORITHMS[name].requires_init else None
    result = train(run_config(tmp_path / "run", name, device, init))
    exported = load_policy_from(result.run_dir)  # RUN_DIR/policy.pt, on the CPU
    rebuilt = load_policy(result.run_dir, device)  # from the checkpoint, on the run's device
    assert type(exported) is type(rebuilt)
    obs = torch.randn(4, exported.obs_dim)
    with torch.random.fork_rng():
        got = exported.act(obs, "zero")
    assert torch.allclose(got, rebuilt.act(obs.to(device), "zero").cpu(), atol=1e-4)
    metadata = torch.load(result.run_dir / "policy.pt", weights_only=False)["metadata"]
    assert metadata["source"] == f"flowpolicy train {name}" and metadata["step"] == 160


def cli_flags(name: str) -> list[str]:
    """The tiny settings as command-line options."""
    flags = []
    for key, value in TINY.get(name, {}).items():
        values = value if isinstance(value, tuple) else (value,)
        flags += [f"--{key.replace('_', '-')}", *map(str, values)]
    return flags


@pytest.mark.parametrize("name", NAMES)
def test_the_cli_trains_it_and_evaluates_the_run(tmp_path: Path, name: str, capsys) -> None:
    run_dir = tmp_path / "run"
    run = ["--env", "toy/nav", "--total-steps", "32", "--eval-every", "16"]
    run += ["--eval-episodes", "1", "--tensorboard", "False", "--quiet", "True"]
    run += ["--device", "cpu", "--run-dir", str(run_dir)]
    if ALGORITHMS[name].requires_init:
        run += ["--init", str(saved_policy(tmp_path / "init.pt", name))]
    assert main(["train", name, *cli_flags(name), *run]) == 0
    config = json.loads((run_dir / "config.json").read_text())
    assert config["algo_name"] == name and config["device"] == "cpu"
    assert (run_dir / "done.json").is_file() and (run_dir / "policy.pt").is_file()
    assert main(["eval", str(run_dir), "--episodes", "1", "--device", "cpu"]) == 0
    assert "zero sampling" in capsys.readouterr().out


@pytest.mark.parametrize(
    "name,preset",
    [(name, preset) for name, spec in ALGORITHMS.items() for preset in spec.presets],
    ids=lambda value: getattr(value, "name", value),
)
def test_every_preset_builds(name: str, preset) -> None:
    algo = build(name, config=preset.config())
    assert isinstance(algo, Algorithm)
