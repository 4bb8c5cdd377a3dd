"""Reading, grouping and summarising run directories (flowpolicy.results) on small fake runs."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from flowpolicy.errors import UserError
from flowpolicy.results import (
    eval_curve,
    find_run_dirs,
    group_runs,
    infer_method,
    load_run,
    load_runs,
    read_metrics,
    seed_band,
    seed_clashes,
    summarize,
    summarize_all,
)
from tests.fake_runs import eval_row, write_run


@pytest.fixture
def three_seeds(tmp_path: Path) -> Path:
    """ppo on Hopper-v5, seeds 0-2, 200 env steps each; final zero returns 10, 20, 30."""
    root = tmp_path / "runs"
    for seed, (final, wall) in enumerate([(10.0, 10.0), (20.0, 20.0), (30.0, 40.0)]):
        evals = [
            (0, 1.0, 0.0, 1.0),
            (100, wall / 2, final / 2, 2.0),
            (200, wall, final, 3.0 * seed),
        ]
        write_run(root / "ppo" / f"seed{seed}", evals, seed=seed)
    return root


def test_summary_of_seeds_against_hand_computed_numbers(three_seeds: Path) -> None:
    runs = load_runs([three_seeds])
    assert [r.seed for r in runs] == [0, 1, 2]
    (summary,) = summarize_all(runs)
    assert (summary.env, summary.method, summary.kind) == ("Hopper-v5", "ppo", "scratch")
    assert summary.num_seeds == 3 and summary.num_unfinished == 0
    assert summary.return_mean["zero"] == pytest.approx(20.0)
    assert summary.return_std["zero"] == pytest.approx(math.sqrt(200 / 3))  # population std
    assert summary.return_mean["random"] == pytest.approx(3.0)  # finals 0, 3, 6
    assert summary.return_std["random"] == pytest.approx(math.sqrt(6.0))
    assert summary.final_step_mean == 200
    assert summary.wall_time_mean == pytest.approx(70 / 3)
    # steps/s per seed: 200/10, 200/20, 200/40 -> mean of 20, 10, 5
    assert summary.steps_per_second_mean == pytest.approx(35 / 3)
    assert summary.bc_return_mean is None


def test_finetune_run_reports_bc_return_then_final(tmp_path: Path) -> None:
    for seed, (bc, final) in enumerate([(100.0, 150.0), (120.0, 110.0)]):
        evals = [(0, 2.0, bc, bc / 2), (100, 5.0, final, final / 2)]
        write_run(tmp_path / f"s{seed}", evals, seed=seed, init="runs/bc-flow")
    (summary,) = summarize_all(load_runs([tmp_path]))
    assert summary.method == "ppo-finetune" and summary.kind == "finetune"
    assert summary.bc_return_mean == pytest.approx({"zero": 110.0, "random": 55.0})
    assert summary.bc_return_std == pytest.approx({"zero": 10.0, "random": 5.0})
    assert summary.return_mean["zero"] == pytest.approx(130.0)
    assert [row["bc_return_zero"] for row in summary.per_seed] == [100.0, 120.0]


def test_unfinished_run_counts_with_its_last_evaluation(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "r", [(0, 1.0, 5.0, 4.0), (100, 9.0, 50.0, 40.0)], done=False)
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 150, "wall_time": 12.0, "charts/sps": 1.0}) + "\n")
        f.write('{"step": 17')  # torn line of a killed run
    assert len(read_metrics(run_dir)) == 4  # the torn line is skipped
    run = load_run(run_dir)
    assert not run.finished
    assert run.final_returns == {"zero": 50.0, "random": 40.0}
    assert (run.final_step, run.wall_time) == (150, 12.0)  # progress: the last record
    assert summarize([run]).num_unfinished == 1


def test_done_json_gives_the_final_numbers(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "r", [(0, 1.0, 5.0, 4.0), (100, 9.0, 50.0, 40.0)])
    (run_dir / "done.json").write_text(json.dumps({**eval_row(104, 10.0, 60.0, 45.0)}))
    run = load_run(run_dir)
    assert run.finished
    assert (run.final_step, run.wall_time, run.final_returns["zero"]) == (104, 10.0, 60.0)


def curve_of(points: list[tuple[int, float, float]]):
    """A Curve from (step, wall_time, zero return) points (random return 0)."""
    return eval_curve([eval_row(step, wall, zero, 0.0) for step, wall, zero in points])


def test_seed_band_interpolates_onto_the_common_grid() -> None:
    a = curve_of([(0, 0.0, 0.0), (100, 10.0, 100.0), (200, 20.0, 300.0)])
    b = curve_of([(0, 0.0, 10.0), (50, 10.0, 20.0), (150, 40.0, 60.0)])
    band = seed_band([a, b], "zero")
    # Common range [0, 150]; grid = union of steps inside it; a and b interpolated by hand.
    np.testing.assert_array_equal(band.x, [0, 50, 100, 150])
    a_on_grid = np.array([0.0, 50.0, 100.0, 200.0])
    b_on_grid = np.array([10.0, 20.0, 40.0, 60.0])
    np.testing.assert_allclose(band.mean, (a_on_grid + b_on_grid) / 2)
    np.testing.assert_allclose(band.std, np.abs(a_on_grid - b_on_grid) / 2)
    np.testing.assert_allclose(band.low, np.minimum(a_on_grid, b_on_grid))
    np.testing.assert_allclose(band.high, np.maximum(a_on_grid, b_on_grid))
    assert band.num_curves == 2
    # Against wall-clock: a evaluated at 0, 10, 20 s and b at 0, 10, 40 s -> range [0, 20];
    # b at 20 s = 20 + (10 / 30) * 40.
    wall = seed_band([a, b], "zero", x="wall_time")
    np.testing.assert_array_equal(wall.x, [0.0, 10.0, 20.0])
    np.testing.assert_allclose(wall.mean, [5.0, 60.0, (300.0 + 20.0 + 40.0 / 3) / 2])


def test_seed_band_skips_curves_without_the_mode() -> None:
    only_zero = eval_curve([{"step": 0, "wall_time": 0.0, "eval/zero/return_mean": 1.0}])
    assert len(seed_band([only_zero], "random").x) == 0
    np.testing.assert_allclose(seed_band([only_zero], "zero").mean, [1.0])


def test_find_run_dirs_searches_folders_but_not_inside_runs(three_seeds: Path) -> None:
    nested = three_seeds / "ppo" / "seed0" / "tb"  # not a run, even if it looked like one
    write_run(nested, [(0, 1.0, 1.0, 1.0)])
    found = find_run_dirs(three_seeds)
    assert found == [three_seeds / "ppo" / f"seed{s}" for s in range(3)]
    assert find_run_dirs(found[1]) == [found[1]]


@pytest.mark.parametrize("make", ["missing", "empty_dir", "file"])
def test_a_path_without_runs_is_a_user_error_naming_it(tmp_path: Path, make: str) -> None:
    path = tmp_path / "not-runs"
    if make == "empty_dir":
        (path / "sub").mkdir(parents=True)
    elif make == "file":
        path.write_text("x")
    with pytest.raises(UserError, match="not-runs") as error:
        find_run_dirs(path)
    assert "config.json and metrics.jsonl" in str(error.value)


def test_labels_group_runs_and_must_match_paths(three_seeds: Path, tmp_path: Path) -> None:
    other = write_run(tmp_path / "other", [(0, 1.0, 7.0, 7.0)], seed=0)
    runs = load_runs([three_seeds, other], labels=["a", "b"])
    groups = group_runs(runs)
    assert list(groups) == [("Hopper-v5", "a"), ("Hopper-v5", "b")]
    assert [len(g) for g in groups.values()] == [3, 1]
    with pytest.raises(UserError, match="label"):
        load_runs([three_seeds, other], labels=["a"])
    # Without labels the same seed twice in one group is reported.
    assert seed_clashes(load_runs([three_seeds])) == []
    (clash,) = seed_clashes(load_runs([three_seeds, other]))
    assert "seed(s) 0" in clash and "--label" in clash


def test_a_path_given_twice_loads_its_runs_once(three_seeds: Path) -> None:
    runs = load_runs([three_seeds, three_seeds / "ppo" / "seed1"])
    assert len(runs) == 3


def test_group_runs_orders_by_env_then_first_appearance(tmp_path: Path) -> None:
    write_run(tmp_path / "a", [(0, 1.0, 1.0, 1.0)], env="Hopper-v5", algo_name="ppo")
    write_run(tmp_path / "b", [(0, 1.0, 1.0, 1.0)], env="dmc/cheetah-run", algo_name="ppo")
    write_run(tmp_path / "c", [(0, 1.0, 1.0, 1.0)], env="Hopper-v5", algo_name="rldt")
    keys = list(group_runs(load_runs([tmp_path])))
    assert keys == [("Hopper-v5", "ppo"), ("Hopper-v5", "rldt"), ("dmc/cheetah-run", "ppo")]


def test_method_names_from_configs() -> None:
    from flowpolicy.algos.fpo import FPOConfig
    from flowpolicy.algos.fpo_presets import fpo_plus_plus

    def train_config(algo, **extra) -> dict:
        return {"algo": json.loads(json.dumps(asdict(algo))), "algo_name": "fpo", **extra}

    assert infer_method(train_config(FPOConfig())) == "fpo"
    assert infer_method(train_config(fpo_plus_plus())) == "fpo++"
    # An option on top of a preset does not change which preset it is.
    assert infer_method(train_config(fpo_plus_plus(learning_rate=3e-4))) == "fpo++"
    assert infer_method(train_config(FPOConfig(learning_rate=1e-4))) == "fpo"
    assert infer_method(train_config(fpo_plus_plus(), init="bc/policy.pt")) == "fpo++-finetune"
    assert infer_method({"algo": "sb3-ppo", "env": "Hopper-v5"}) == "sb3-ppo"
    assert infer_method({"dataset": "d.hdf5", "bc": {}, "policy": "flow"}) == "bc-flow"


def test_pretraining_run_is_its_own_kind(tmp_path: Path) -> None:
    config = {"dataset": "d.hdf5", "bc": {}, "policy": "diffusion", "env": "Hopper-v5", "seed": 3}
    run_dir = write_run(tmp_path / "bc", [(1000, 5.0, 80.0, 60.0)], config=config)
    run = load_run(run_dir)
    assert (run.env, run.method, run.seed, run.kind) == ("Hopper-v5", "bc-diffusion", 3, "pretrain")
    assert run.bc_returns is None
