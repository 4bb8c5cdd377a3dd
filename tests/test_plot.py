"""Figures and tables of run directories (flowpolicy.plot) and `flowpolicy plot`, on fake runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from flowpolicy.cli import main
from flowpolicy.plot import (
    Panel,
    PlotConfig,
    draw_panel,
    format_returns,
    learning_curve_figure,
    panels_from_runs,
    plot,
    results_table,
    time_unit,
    write_csv,
    write_json,
)
from flowpolicy.results import load_runs, summarize_all
from tests.fake_runs import write_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    """Hopper-v5: ppo from scratch (seeds 0, 1; finals 100, 300 zero, 40, 60 random) and an
    unfinished fine-tuning run (BC 500 -> last evaluation 450); dmc/cheetah-run: one ppo run."""
    root = tmp_path / "runs"
    for seed, (zero, random) in enumerate([(100.0, 40.0), (300.0, 60.0)]):
        evals = [(0, 1.0, 0.0, 0.0), (1000, 10.0, zero / 2, random), (2000, 20.0, zero, random)]
        write_run(root / "Hopper-v5" / "ppo" / f"seed{seed}", evals, seed=seed)
    write_run(
        root / "Hopper-v5" / "ppo-ft" / "seed0",
        [(0, 1.0, 500.0, 200.0), (1000, 30.0, 450.0, 250.0)],
        init="runs/bc-flow",
        done=False,
    )
    write_run(root / "cheetah", [(0, 1.0, 5.0, 5.0), (500, 5.0, 7.0, 6.0)], env="dmc/cheetah-run")
    return root


def test_table_has_mean_std_bc_to_final_and_unfinished(runs_root: Path) -> None:
    summaries = summarize_all(load_runs([runs_root]))
    table = results_table(summaries)
    hopper_ppo, finetune, cheetah = table.splitlines()[2:]
    assert hopper_ppo.startswith("| Hopper-v5 | ppo | scratch | 2 | 2,000 |")
    assert finetune.startswith("| Hopper-v5 | ppo-finetune | finetune |")
    assert cheetah.startswith("| dmc/cheetah-run | ppo |")
    assert "| 200.0 ± 100.0 | 50.0 ± 10.0 |" in hopper_ppo  # population std over seeds
    assert hopper_ppo.endswith("| 20 | 100 |")  # wall-clock 20 s, 2000 steps / 20 s
    assert "1 (1 unfinished)" in finetune
    assert "| 500.0 → 450.0 | 200.0 → 250.0 |" in finetune
    assert "| — | — |" in hopper_ppo  # no BC return for runs from scratch
    zero_only = results_table(summaries, modes=("zero",))
    assert "return, zero" in zero_only and "random" not in zero_only


def test_csv_and_json_hold_every_number(runs_root: Path, tmp_path: Path) -> None:
    summaries = summarize_all(load_runs([runs_root]))
    with write_csv(summaries, tmp_path / "r.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert float(rows[0]["return_zero_mean"]) == pytest.approx(200.0)
    assert float(rows[0]["return_zero_std"]) == pytest.approx(100.0)
    assert rows[0]["bc_return_zero_mean"] == ""
    assert float(rows[1]["bc_return_random_mean"]) == pytest.approx(200.0)
    assert (rows[1]["num_unfinished"], rows[0]["seeds"]) == ("1", "0 1")

    def no_nan(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")

    data = json.loads(write_json(summaries, tmp_path / "r.json").read_text(), parse_constant=no_nan)
    assert data["summaries"][1]["per_seed"][0]["finished"] is False
    assert data["summaries"][0]["return_mean"]["random"] == pytest.approx(50.0)


def test_std_band_spans_mean_plus_minus_std(runs_root: Path) -> None:
    from matplotlib.figure import Figure

    # A third seed: with two, mean +/- population std is exactly the min-max band.
    evals = [(0, 1.0, 0.0, 0.0), (1000, 10.0, 100.0, 50.0), (2000, 20.0, 200.0, 50.0)]
    write_run(runs_root / "Hopper-v5" / "ppo" / "seed2", evals, seed=2)
    runs = load_runs([runs_root / "Hopper-v5" / "ppo"])
    panel = Panel("Hopper-v5", {"ppo": [r.curve for r in runs]})
    std = np.std([100.0, 300.0, 200.0])  # finals of the three seeds; mean 200
    for band, (low, high) in {"std": (200 - std, 200 + std), "minmax": (100.0, 300.0)}.items():
        ax = Figure().add_subplot()
        assert draw_panel(ax, panel, modes=("zero",), band=band)
        (fill,) = ax.collections
        y = np.concatenate([p.vertices[:, 1] for p in fill.get_paths()])
        assert (y.min(), y.max()) == pytest.approx((0.0, high))  # step 0: all seeds at 0
        at_end = y[np.isclose(np.concatenate([p.vertices[:, 0] for p in fill.get_paths()]), 2000)]
        assert sorted(set(np.round(at_end, 6))) == pytest.approx([low, high])


def test_figure_has_a_panel_per_env_and_marks_empty_ones(runs_root: Path, tmp_path: Path) -> None:
    empty = write_run(tmp_path / "empty", [(0, 1.0, 1.0, 1.0)], env="toy/bandit", done=False)
    (empty / "metrics.jsonl").write_text('{"step": 10, "wall_time": 1.0}\n')  # no evaluation yet
    runs = load_runs([runs_root, empty])
    panels = [Panel(env, {}) for env in ("a", "b")]
    fig = learning_curve_figure(panels)
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["a", "b"]
    titles = [p.title for p in panels_from_runs(runs)]
    assert titles == ["Hopper-v5", "dmc/cheetah-run", "toy/bandit"]
    fig = learning_curve_figure(panels_from_runs(runs), x="wall_time")
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts == ["no evaluations yet"]
    assert fig.axes[0].get_xlabel() == "wall-clock (s)"


def test_time_unit() -> None:
    assert time_unit(300.0) == (1.0, "s")
    assert time_unit(1800.0) == (60.0, "min")
    assert time_unit(5 * 3600.0) == (3600.0, "h")


def test_plot_writes_png_svg_and_tables(runs_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    output = plot(PlotConfig(run_dirs=(str(runs_root),), out=str(out)))
    for stem in ("learning_curves_steps", "learning_curves_wall_clock"):
        assert (out / f"{stem}.png").read_bytes()[:8] == PNG_MAGIC
        svg = (out / f"{stem}.svg").read_text()
        assert svg.startswith("<?xml") and "<svg" in svg and len(svg) > 1000
    assert {p.name for p in output.files} >= {"results.md", "results.csv", "results.json"}
    page = (out / "results.md").read_text()
    assert output.table in page and "![learning_curves_steps](learning_curves_steps.png)" in page
    assert output.warnings == []


def test_cli_plot_prints_the_table_and_respects_options(
    runs_root: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    hopper = runs_root / "Hopper-v5"
    args = ["plot", str(hopper / "ppo"), str(hopper / "ppo-ft"), "--out", str(out)]
    args += ["--label", "A", "B", "--mode", "random", "--format", "svg"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| Hopper-v5 | A | scratch | 2 | 2,000 | 50.0 ± 10.0 |" in printed
    assert "return, zero" not in printed and "| Hopper-v5 | B |" in printed
    assert sorted(p.suffix for p in out.iterdir()) == [".csv", ".json", ".md", ".svg", ".svg"]


def test_cli_plot_user_errors_exit_2(tmp_path: Path, runs_root: Path, capsys) -> None:
    missing = tmp_path / "no-such-runs"
    assert main(["plot", str(missing), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    # The message is wrapped to the terminal width, possibly inside the path: join the lines.
    assert "no-such-runs" in err.replace("\n", "") and "Traceback" not in err
    # Bad option values are caught by tyro (PlotConfig.__post_init__), which exits with 2.
    args = ["plot", str(runs_root), str(runs_root), "--out", str(tmp_path / "o"), "--label", "x"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert "label" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_unfinished_run_is_drawn(runs_root: Path) -> None:
    from matplotlib.figure import Figure

    (run,) = load_runs([runs_root / "Hopper-v5" / "ppo-ft"])
    assert not run.finished
    ax = Figure().add_subplot()
    assert draw_panel(ax, Panel("Hopper-v5", {run.method: [run.curve]}), modes=("zero",))
    (line,) = [line for line in ax.lines if line.get_xdata().size]
    np.testing.assert_allclose(line.get_ydata(), [500.0, 450.0])


def test_plot_help_documents_the_options(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--out", "--label", "--mode", "--format", "--band", "RUN_DIR"):
        assert option in text


def test_format_returns_keeps_toy_rewards_readable() -> None:
    # a cell's numbers share one precision: three decimals only when all are below 10
    assert format_returns(0.991, 0.0042) == ["0.991", "0.004"]
    assert format_returns(1563.04, 5.0) == ["1563.0", "5.0"]
    assert format_returns(None, float("nan"), 0.5) == ["n/a", "n/a", "0.500"]
