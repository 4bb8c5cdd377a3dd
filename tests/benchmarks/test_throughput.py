"""benchmarks/throughput.py: a real short run per method, its time split into parts."""

from __future__ import annotations

import pytest
import throughput  # benchmarks/ is on sys.path (conftest.py)


def test_measures_a_method_and_tabulates_its_split() -> None:
    result = throughput.measure("ppo", "toy/bandit", 3 * 2048, threads=1)
    assert result.method == "ppo" and result.steps == 2 * 2048  # the iterations after the first
    shares = [result.share(part) for part in throughput.PARTS]
    assert all(0 < share < 1 for share in shares) and sum(shares) <= 1.0 + 1e-6
    assert result.steps_per_second > 0
    row = throughput.table([result]).splitlines()[-1]
    assert row.startswith("| toy/bandit | ppo | ") and row.count("%") == 4


def test_a_method_with_a_preset_runs_that_preset(monkeypatch) -> None:
    seen = []

    def fake_run(command, **kwargs):
        seen.append(command)
        raise SystemExit("stop here")

    monkeypatch.setattr(throughput.subprocess, "run", fake_run)
    with pytest.raises(SystemExit, match="stop here"):
        throughput.measure("fpo:fpo++", "Hopper-v5", 4096, threads=1)
    assert seen[0][3:8] == ["train", "fpo", "--env", "Hopper-v5", "--preset"]
    assert seen[0][8] == "fpo++"


def _fake(method: str, env: str, rate: float) -> throughput.Throughput:
    return throughput.Throughput(method, env, 1000, 1000 / rate, dict(act=0.1, env=0.2, update=0.3))


def test_a_baseline_alternates_with_this_library_and_the_table_gives_the_ratio(
    monkeypatch, tmp_path
) -> None:
    calls = []

    def fake_measure(
        method, env, steps, threads, device, init, src=throughput.REPO / "src", train_args=""
    ):
        calls.append(src)
        rate = 100.0 if src == throughput.REPO / "src" else 80.0 + len(calls)
        return _fake(method, env, rate)

    monkeypatch.setattr(throughput, "measure", fake_measure)
    args = throughput.Args(methods=("ppo",), envs=("Hopper-v5",), baseline_src=tmp_path,
                           repeats=3)  # fmt: skip
    (measured,) = throughput.measure_all(args)
    assert calls == [throughput.REPO / "src", tmp_path] * 3  # alternating, A B A B A B
    assert [r.steps_per_second for r in measured.baseline] == [82.0, 84.0, 86.0]
    assert measured.ratio == 100.0 / 84.0  # the median of the three pairs' ratios
    row = throughput.table([measured]).splitlines()[-1]
    assert row.endswith("| 84 | 1.190 |")


def test_device_and_init_reach_the_training_command(monkeypatch, tmp_path) -> None:
    seen = []

    def fake_run(command, **kwargs):
        seen.append(command)
        raise SystemExit("stop here")

    monkeypatch.setattr(throughput.subprocess, "run", fake_run)
    with pytest.raises(SystemExit):
        throughput.measure(
            "rldt", "Hopper-v5", 4096, 1, "cuda", tmp_path / "p.pt", train_args="--num-envs 64"
        )
    command = seen[0]
    assert command[command.index("--num-envs") + 1] == "64"
    assert command[command.index("--device") + 1] == "cuda"
    assert command[command.index("--init") + 1] == str(tmp_path / "p.pt")
    with pytest.raises(SystemExit):  # an older library, which has no --device, on the CPU
        throughput.measure("ppo", "Hopper-v5", 4096, 1, "cpu", None, src=tmp_path)
    assert "--device" not in seen[1]


def test_iterations_are_sized_from_the_preset_the_policy_and_the_options(tmp_path) -> None:
    from flowpolicy.policies import FlowPolicy
    from flowpolicy.policy_io import save_policy

    assert throughput.iteration_steps("ppo", None, "") == 8 * 256
    assert throughput.iteration_steps("reinflow", None, "") == 40 * 500 * 4
    assert throughput.iteration_steps("qam:qam-cpu", None, "--num-envs 2") == 2 * 50 * 4
    policy = FlowPolicy(3, [-1.0], [1.0], chunk=4, chunk_exec=2, hidden=(8,))
    save_policy(tmp_path / "p.pt", policy)
    assert throughput.iteration_steps("rldt", tmp_path / "p.pt", "") == 10 * 250 * 2
