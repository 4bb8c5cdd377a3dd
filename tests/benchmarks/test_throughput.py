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
