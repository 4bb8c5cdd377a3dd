"""The RLDT mode-keeping sweep (benchmarks/rldt_mode_keeping.py): its known Q, its broad start
and its report, in the quick setting."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from rldt_mode_keeping import BANDIT, SETTINGS, bandit_q_gradient, main, populated


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_q_gradient_points_to_the_nearest_optimum_and_vanishes_on_it() -> None:
    optima = torch.as_tensor(BANDIT.optima, dtype=torch.float32)
    assert torch.allclose(bandit_q_gradient(None, optima), torch.zeros_like(optima), atol=1e-5)
    near = optima + 0.1 * torch.tensor([1.0, -1.0])  # 0.14 from each optimum, inside its bump
    gradient = bandit_q_gradient(None, near)
    towards = optima - near
    cosine = torch.nn.functional.cosine_similarity(gradient, towards, dim=-1)
    assert torch.all(cosine > 0.999)


def test_populated_counts_optima_at_or_above_the_threshold() -> None:
    assert populated([0.5, 0.1, 0.09, 0.0]) == 2


def test_quick_sweep_starts_broad_and_writes_its_report(tmp_path) -> None:
    results = main(quick=True, out=tmp_path)
    names = [SETTINGS[0].name, SETTINGS[-2].name, SETTINGS[-1].name]
    assert [r["setting"] for r in results] == names
    for r in results:  # the broad start: ~5% near each optimum, low reward
        assert r["start"]["reward"] < 0.2 and np.all(np.array(r["start"]["coverage"]) < 0.1)
        assert set(r) == {"setting", "seed", "start", "third", "end"}
    assert json.loads((tmp_path / "rldt_mode_keeping.json").read_text()) == results
    report = (tmp_path / "rldt_mode_keeping.md").read_text()
    assert "python benchmarks/rldt_mode_keeping.py --quick" in report
    assert all(f"| {name} | 0 |" in report for name in names)
