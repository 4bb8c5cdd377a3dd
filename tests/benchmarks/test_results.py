"""Aggregation and plotting of benchmark run directories, on fake runs (no training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from results import (
    eval_curve,
    load_run,
    markdown_table,
    path_safe,
    plot_learning_curves,
    read_metrics,
    seed_band,
    summarize,
)

from tests.fake_runs import eval_row, write_run


def fake_run(run_dir: Path, final_zero: float, final_random: float, wall_time: float) -> Path:
    """A completed run of 2000 env steps with evaluations at 0, 1000 and 2000 (BC 10 / 5)."""
    evals = [(0, 0.5, 10.0, 5.0), (1000, 5.0, final_zero / 2, final_random / 2)]
    return write_run(run_dir, [*evals, (2000, wall_time, final_zero, final_random)])


@pytest.fixture
def two_seeds(tmp_path: Path):
    root = tmp_path / path_safe("dmc/cheetah-run") / "fpo"
    return [
        load_run(fake_run(root / "seed0", 100.0, 80.0, 10.0), "dmc/cheetah-run", "fpo", 0),
        load_run(fake_run(root / "seed1", 300.0, 120.0, 20.0), "dmc/cheetah-run", "fpo", 1),
    ]


def test_path_safe_env_id() -> None:
    assert path_safe("dmc/cheetah-run") == "dmc_cheetah-run"
    assert path_safe("Hopper-v5") == "Hopper-v5"


def test_summary_mean_std_and_steps_per_second(two_seeds) -> None:
    summary = summarize(two_seeds)
    assert summary.num_seeds == 2
    assert summary.seeds == [0, 1]
    assert summary.return_mean["zero"] == pytest.approx(200.0)
    assert summary.return_std["zero"] == pytest.approx(100.0)  # population std (ddof=0)
    assert summary.return_mean["random"] == pytest.approx(100.0)
    assert summary.return_std["random"] == pytest.approx(20.0)
    assert summary.wall_time_mean == pytest.approx(15.0)
    # steps/s per seed: 2000 / 10 = 200 and 2000 / 20 = 100
    assert summary.steps_per_second_mean == pytest.approx(150.0)
    assert "200.0 ± 100.0" in markdown_table([summary])


def test_incomplete_run_is_not_loaded(tmp_path: Path) -> None:
    run_dir = fake_run(tmp_path / "seed0", 1.0, 1.0, 1.0)
    (run_dir / "done.json").unlink()
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 30')  # torn line of a killed run
    assert load_run(run_dir, "Hopper-v5", "ppo", 0) is None
    assert len(read_metrics(run_dir)) == 5


def test_eval_curve_and_seed_band(two_seeds) -> None:
    curve = two_seeds[0].curve
    np.testing.assert_array_equal(curve.steps, [0, 1000, 2000])
    np.testing.assert_allclose(curve.returns["zero"], [10.0, 50.0, 100.0])
    band = seed_band([r.curve for r in two_seeds], "zero")
    np.testing.assert_allclose(band.mean, [10.0, 100.0, 200.0])
    np.testing.assert_allclose(band.low, [10.0, 50.0, 100.0])
    np.testing.assert_allclose(band.high, [10.0, 150.0, 300.0])


def test_eval_curve_keeps_last_duplicate_step() -> None:
    curve = eval_curve([eval_row(0, 0.0, 1.0, 1.0), eval_row(0, 1.0, 2.0, 3.0)])
    np.testing.assert_allclose(curve.returns["zero"], [2.0])


def test_plot_writes_png(two_seeds, tmp_path: Path) -> None:
    path = plot_learning_curves(
        {"fpo": [r.curve for r in two_seeds]}, "dmc/cheetah-run", tmp_path / "out" / "c.png"
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
