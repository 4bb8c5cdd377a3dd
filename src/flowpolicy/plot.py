"""Learning-curve figures and results tables of run directories: ``flowpolicy plot``.

Figures (one panel per env, one colour per method, the same colour in every panel):

- ``learning_curves_steps``: evaluation return against env steps;
- ``learning_curves_wall_clock``: the same curves against wall-clock time.

Each method's line is the mean over its seeds on a common grid (:func:`flowpolicy.results.
seed_band`); the shaded band spans the min and max over seeds (``--band minmax``) or the mean
+/- one population std (``--band std``). Solid lines are zero (deterministic) sampling, dashed
lines random sampling. BC pretraining runs count gradient steps, not env steps, so they get their
own panel per env.

Tables: ``results.md`` (a row per (env, method), then a row per run), ``results.csv`` and
``results.json`` (every number, both sampling modes). Column meanings: docs/plot.md.

matplotlib is imported only when a figure is drawn, through its object-oriented API (no pyplot:
no global state, no GUI backend).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import tyro

from flowpolicy.errors import UserError
from flowpolicy.results import (
    EVAL_MODES,
    Curve,
    RunResult,
    Summary,
    XAxis,
    group_runs,
    load_runs,
    seed_band,
    seed_clashes,
    summarize,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

ModeChoice = Literal["zero", "random", "both"]
BandChoice = Literal["minmax", "std"]
ImageFormat = Literal["png", "svg"]

MODES: dict[str, tuple[str, ...]] = {"zero": ("zero",), "random": ("random",), "both": EVAL_MODES}
"""``--mode`` -> the evaluation modes drawn and tabulated."""
LINE_STYLES = {"zero": "-", "random": "--"}
BAND_NAMES = {"minmax": "min-max over seeds", "std": "mean ± std over seeds"}
FIGURE_STEMS: dict[XAxis, str] = {
    "step": "learning_curves_steps",
    "wall_time": "learning_curves_wall_clock",
}


@dataclass(frozen=True)
class PlotConfig:
    """Plot learning curves (mean over seeds with a shaded band) against env steps and against
    wall-clock, and tabulate final returns, of any set of run directories."""

    run_dirs: Annotated[
        tuple[str, ...], tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR [RUN_DIR ...]")
    ]
    """run directories made by `flowpolicy train` (or `pretrain`), or folders to search for them."""
    out: str
    """folder for the figures and results.md / results.csv / results.json (created)."""
    label: tuple[str, ...] = ()
    """one method name per RUN_DIR for every run under it; default: from each run's config (fpo, fpo++, ppo, <algo>-finetune for --init runs, bc-<policy> for pretraining)."""
    mode: ModeChoice = "both"
    """evaluation sampling to plot and tabulate: zero (deterministic), random, or both."""
    format: tuple[ImageFormat, ...] = ("png", "svg")
    """image formats of the figures."""
    band: BandChoice = "minmax"
    """shaded band: minmax = min to max over seeds, std = mean +/- population std over seeds."""

    def __post_init__(self) -> None:
        if not self.run_dirs:
            raise ValueError("give at least one run directory (or a folder that holds some).")
        if self.label and len(self.label) != len(self.run_dirs):
            raise ValueError(
                f"got {len(self.label)} --label value(s) for {len(self.run_dirs)} run path(s); "
                "give one label per path or none."
            )
        if not self.format:
            raise ValueError("--format needs at least one of png, svg.")


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


@dataclass
class Panel:
    """One subplot: the curves of several methods on one env.

    Attributes:
        title: the panel's title (the env id).
        curves: method -> one Curve per seed.
        step_label: what the runs' ``step`` counts (env steps, or gradient steps for BC).
    """

    title: str
    curves: dict[str, list[Curve]]
    step_label: str = "env steps"


def panels_from_runs(runs: Sequence[RunResult]) -> list[Panel]:
    """A panel per env for RL runs and, separately, one per env for BC pretraining runs."""
    panels: dict[tuple[str, bool], Panel] = {}
    for (env, method), group in group_runs(runs).items():
        pretraining = all(r.kind == "pretrain" for r in group)
        key = (env, pretraining)
        if key not in panels:
            title = f"{env} (BC pretraining)" if pretraining else env
            step_label = "gradient steps" if pretraining else "env steps"
            panels[key] = Panel(title, {}, step_label)
        panels[key].curves[method] = [r.curve for r in group]
    return list(panels.values())


def method_colours(panels: Sequence[Panel]) -> dict[str, str]:
    """One matplotlib colour per method, the same in every panel and figure."""
    methods = dict.fromkeys(m for panel in panels for m in panel.curves)
    return {m: f"C{i % 10}" for i, m in enumerate(methods)}


def time_unit(seconds: float) -> tuple[float, str]:
    """(divisor, name) of a readable unit for a time axis that ends at ``seconds``."""
    if not math.isfinite(seconds) or seconds <= 600:
        return 1.0, "s"
    return (60.0, "min") if seconds <= 3 * 3600 else (3600.0, "h")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def draw_panel(
    ax: Axes,
    panel: Panel,
    *,
    x: XAxis = "step",
    modes: Sequence[str] = EVAL_MODES,
    band: BandChoice = "minmax",
    colours: dict[str, str] | None = None,
    seconds_per_unit: tuple[float, str] = (1.0, "s"),
) -> bool:
    """Draw a panel's mean curves and seed bands on ``ax``; False if there was nothing to draw."""
    from matplotlib.ticker import EngFormatter

    colours = colours or method_colours([panel])
    divisor = seconds_per_unit[0] if x == "wall_time" else 1.0
    drawn = False
    for method, curves in panel.curves.items():
        colour = colours[method]
        for i, mode in enumerate(modes):
            seeds = seed_band(curves, mode, x)
            if len(seeds.x) == 0:
                continue
            low, high = (
                (seeds.low, seeds.high)
                if band == "minmax"
                else (seeds.mean - seeds.std, seeds.mean + seeds.std)
            )
            grid = seeds.x / divisor
            label = f"{method} ({_count(len(curves), 'seed')})" if i == 0 else None
            ax.plot(grid, seeds.mean, LINE_STYLES[mode], color=colour, label=label, linewidth=1.6)
            ax.fill_between(grid, low, high, color=colour, alpha=0.15, linewidth=0)
            drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no evaluations yet", ha="center", va="center", transform=ax.transAxes)
    if drawn and len(modes) > 1:  # legend entries for the line styles
        for mode in modes:
            ax.plot([], [], LINE_STYLES[mode], color="0.3", label=f"{mode} sampling")
    if x == "step":
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 200k, 1M rather than an 1e6 offset
    ax.set_title(panel.title)
    ax.set_xlabel(panel.step_label if x == "step" else f"wall-clock ({seconds_per_unit[1]})")
    ax.set_ylabel("evaluation return")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize="small", loc="best")
    return drawn


def learning_curve_figure(
    panels: Sequence[Panel],
    *,
    x: XAxis = "step",
    modes: Sequence[str] = EVAL_MODES,
    band: BandChoice = "minmax",
    title: str | None = None,
    panel_size: tuple[float, float] = (5.4, 3.9),
) -> Figure:
    """A figure with one panel per entry of ``panels`` (up to three per row).

    Args:
        panels: what to draw, see :func:`panels_from_runs`.
        x: "step" (env steps) or "wall_time" (wall-clock, in s, min or h by the longest run).
        modes: evaluation modes to draw (solid: zero, dashed: random).
        band: "minmax" or "std" (see :class:`PlotConfig`).
        title: figure title; default says what the lines and bands are; "" for none.
        panel_size: (width, height) of one panel in inches.
    """
    from matplotlib.figure import Figure

    ncols = max(1, min(len(panels), 3))
    nrows = max(1, math.ceil(len(panels) / ncols))
    width, height = panel_size
    fig = Figure(figsize=(width * ncols, height * nrows + 0.4), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colours = method_colours(panels)
    times = [
        t
        for panel in panels
        for curves in panel.curves.values()
        for curve in curves
        for t in curve.wall_times
    ]
    unit = time_unit(max((t for t in times if math.isfinite(t)), default=math.nan))
    for ax, panel in zip(axes, panels, strict=False):
        draw_panel(ax, panel, x=x, modes=modes, band=band, colours=colours, seconds_per_unit=unit)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    against = "env steps" if x == "step" else "wall-clock"
    default = (
        f"Evaluation return ({' and '.join(modes)} sampling) vs {against}\n"
        f"mean over seeds, band = {BAND_NAMES[band]}"
    )
    if title != "":
        fig.suptitle(title or default)
    return fig


def save_figure(fig: Figure, stem: Path, formats: Sequence[str]) -> list[Path]:
    """Write ``fig`` to ``stem.<format>`` for each format; returns the paths."""
    import matplotlib

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = stem.parent / f"{stem.name}.{fmt}"
        # No creation date and fixed element ids in SVGs: the same runs give the same file.
        with matplotlib.rc_context({"svg.hashsalt": "flowpolicy"}):
            fig.savefig(path, dpi=120, metadata={"Date": None} if fmt == "svg" else None)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)


def format_returns(*values: float | None) -> list[str]:
    """Format returns that share a cell with one decimal, or three when every finite one is
    below 10 in magnitude (toy rewards in [0, 1] would otherwise all read 0.0 or 1.0)."""
    finite = [abs(v) for v in values if v is not None and math.isfinite(v)]
    spec = ".3f" if finite and max(finite) < 10 else ".1f"
    return [_fmt(v, spec) for v in values]


def format_mean_std(mean: float, std: float) -> str:
    """``"mean ± std"`` at the precision of :func:`format_returns`."""
    return " ± ".join(format_returns(mean, std))


def _seeds_cell(summary: Summary) -> str:
    if summary.num_unfinished:
        return f"{summary.num_seeds} ({summary.num_unfinished} unfinished)"
    return str(summary.num_seeds)


def results_table(summaries: Sequence[Summary], modes: Sequence[str] = EVAL_MODES) -> str:
    """Markdown table with a row per (env, method): final returns (mean ± std over seeds),
    BC -> final for fine-tuning runs, wall-clock and steps/s (columns: docs/plot.md)."""
    with_bc = any(s.bc_return_mean is not None for s in summaries)
    header = ["env", "method", "kind", "seeds", "final step"]
    header += [f"return, {mode}" for mode in modes]
    header += [f"BC → final, {mode}" for mode in modes] if with_bc else []
    header += ["wall-clock (s)", "steps/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summaries:
        cells = [s.env, s.method, s.kind, _seeds_cell(s), _fmt(s.final_step_mean, ",.0f")]
        cells += [format_mean_std(s.return_mean[mode], s.return_std[mode]) for mode in modes]
        if with_bc:
            cells += [
                "—"
                if s.bc_return_mean is None
                else " → ".join(format_returns(s.bc_return_mean[mode], s.return_mean[mode]))
                for mode in modes
            ]
        cells += [_fmt(s.wall_time_mean, ",.0f"), _fmt(s.steps_per_second_mean, ",.0f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def runs_table(summaries: Sequence[Summary], modes: Sequence[str] = EVAL_MODES) -> str:
    """Markdown table with a row per run: the numbers behind :func:`results_table`."""
    with_bc = any(s.bc_return_mean is not None for s in summaries)
    header = ["env", "method", "seed", "finished", "final step"]
    header += [f"return, {mode}" for mode in modes]
    header += [f"BC, {mode}" for mode in modes] if with_bc else []
    header += ["wall-clock (s)", "steps/s", "run directory"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summaries:
        for r in s.per_seed:
            cells = [s.env, s.method, str(r["seed"]), "yes" if r["finished"] else "no"]
            cells += [_fmt(r["final_step"], ",.0f")]
            cells += [format_returns(r[f"return_{mode}"])[0] for mode in modes]
            if with_bc:
                cells += [format_returns(r.get(f"bc_return_{mode}"))[0] for mode in modes]
            cells += [_fmt(r["wall_time"], ",.0f"), _fmt(r["steps_per_second"], ",.0f")]
            cells += [f"`{r['run_dir']}`"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


CSV_COLUMNS = (
    "env",
    "method",
    "kind",
    "num_seeds",
    "num_unfinished",
    "seeds",
    "final_step_mean",
    *(f"return_{mode}_{stat}" for mode in EVAL_MODES for stat in ("mean", "std")),
    *(f"bc_return_{mode}_{stat}" for mode in EVAL_MODES for stat in ("mean", "std")),
    "wall_time_mean",
    "steps_per_second_mean",
)
"""Columns of results.csv; empty cells where a number does not apply (BC of a scratch run)."""


def csv_row(summary: Summary) -> dict[str, object]:
    """One results.csv row (every mode, whatever ``--mode`` selected)."""
    row: dict[str, object] = {
        "env": summary.env,
        "method": summary.method,
        "kind": summary.kind,
        "num_seeds": summary.num_seeds,
        "num_unfinished": summary.num_unfinished,
        "seeds": " ".join(str(seed) for seed in summary.seeds),
        "final_step_mean": summary.final_step_mean,
        "wall_time_mean": summary.wall_time_mean,
        "steps_per_second_mean": summary.steps_per_second_mean,
    }
    for mode in EVAL_MODES:
        row[f"return_{mode}_mean"] = summary.return_mean[mode]
        row[f"return_{mode}_std"] = summary.return_std[mode]
        if summary.bc_return_mean is not None and summary.bc_return_std is not None:
            row[f"bc_return_{mode}_mean"] = summary.bc_return_mean[mode]
            row[f"bc_return_{mode}_std"] = summary.bc_return_std[mode]
    return {k: "" if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


def write_csv(summaries: Sequence[Summary], path: Path) -> Path:
    """Write results.csv (columns: :data:`CSV_COLUMNS`)."""
    with Path(path).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(csv_row(s) for s in summaries)
    return Path(path)


def _json_safe(value: object) -> object:
    """NaN and inf -> None, so that the file is standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_json(summaries: Sequence[Summary], path: Path) -> Path:
    """Write results.json: every summary with its per-run numbers (NaN written as null)."""
    data = {"summaries": [_json_safe(s.to_json()) for s in summaries]}
    Path(path).write_text(json.dumps(data, indent=2) + "\n")
    return Path(path)


# --------------------------------------------------------------------------------------------
# flowpolicy plot
# --------------------------------------------------------------------------------------------


@dataclass
class PlotOutput:
    """What :func:`plot` made: the printed table, the files written and warnings."""

    table: str
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def plot(config: PlotConfig) -> PlotOutput:
    """Load the runs, write the figures and tables into ``config.out``.

    Raises:
        UserError: a path holds no run directory, or matplotlib is not installed.
    """
    runs = load_runs(config.run_dirs, config.label)
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise UserError(
            "flowpolicy plot needs matplotlib, a dependency of flowpolicy that is missing from "
            "this environment: `pip install matplotlib`, then run it again."
        ) from error
    modes = MODES[config.mode]
    summaries = [summarize(group) for group in group_runs(runs).values()]
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    panels = panels_from_runs(runs)
    files = []
    for x, stem in FIGURE_STEMS.items():
        fig = learning_curve_figure(panels, x=x, modes=modes, band=config.band)
        files += save_figure(fig, out / stem, config.format)
    table = results_table(summaries, modes)
    (out / "results.md").write_text(results_markdown(config, summaries, modes, files))
    files += [out / "results.md", write_csv(summaries, out / "results.csv")]
    files.append(write_json(summaries, out / "results.json"))
    return PlotOutput(table=table, files=files, warnings=seed_clashes(runs))


def results_markdown(
    config: PlotConfig, summaries: Sequence[Summary], modes: Sequence[str], figures: list[Path]
) -> str:
    """The results.md page: what was read, the summary table, the per-run table, the figures."""
    lines = [
        "# Results",
        "",
        "Final evaluation return, mean ± population std over seeds (zero sampling = "
        "deterministic actions, random sampling = sampled actions). BC → final: return of the "
        "pretrained policy (step-0 evaluation) and at the end, for fine-tuning runs. Wall-clock "
        "includes evaluation; steps/s = final step / wall-clock. Unfinished runs (no done.json) "
        "count with their last evaluation. Columns: docs/plot.md.",
        "",
        "Run paths: " + ", ".join(f"`{p}`" for p in config.run_dirs),
        "",
        results_table(summaries, modes),
        "",
        "Per run:",
        "",
        runs_table(summaries, modes),
        "",
    ]
    shown = f".{config.format[0]}"
    lines += [f"![{p.stem}]({p.name})" for p in figures if p.suffix == shown] + [""]
    return "\n".join(lines)
