"""The committed record of every run a benchmark page counts: ``<docs>/archive/<protocol>.json``.

Run directories are git-ignored and live on one machine. When they are gone (a new machine, a
cleaned disk) a results page could only be collected again by running every run again, and
adding one seed to a method would drop the seeds before it. So each collect also writes what it
counted of every run into this archive, which is committed with the page:

- a finished run: its final step, wall-clock, CPU time, final returns, whole evaluation curve
  and, on the toy tasks, the modes its final policy covers;
- a run that a NaN/inf loss stopped: its stop (step, checkpoint step, reason).

A later collect counts an archived run whose directory is not on disk (disk wins when both are
there), and ``bench.py`` does not launch it again unless asked (``--rerun-archived``). A record
counts only for the budget it was made with.

Pages collected before the archive existed kept only per-seed final numbers (``<protocol>.json``)
and their figures. The first collect into such a docs folder seeds the archive from them: the
runs' final numbers and, for fine-tuning, the step-0 (BC) return, marked ``curve_complete:
false``; the old figures are kept as ``archive/<protocol>_<env>[_wall_clock]_<date>.png``
and the page links them for the runs whose curves were not kept.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from protocols import Budget
from results import EVAL_MODES, Curve, RunResult, path_safe

from flowpolicy.errors import UserError

ARCHIVE_DIR = "archive"
Key = tuple[str, str, int]
"""(env, method, seed)."""


@dataclass
class Archive:
    """The archived runs of one protocol, by (env, method, seed)."""

    path: Path
    runs: dict[Key, dict] = field(default_factory=dict)
    launch_commands: list[str] = field(default_factory=list)
    """harness command lines that launched the archived runs."""
    seeded_from: str | None = None
    """where the archive was first seeded from, if from a page collected before it existed."""

    def find(self, env: str, method: str, seed: int, budget: Budget) -> dict | None:
        """The record of a run with this budget, or None."""
        record = self.runs.get((env, method, seed))
        return record if record is not None and record["budget"] == asdict(budget) else None

    def add(self, record: dict) -> None:
        """Add or replace the record of ``(record["env"], record["method"], record["seed"])``."""
        self.runs[(record["env"], record["method"], record["seed"])] = record

    def save(self) -> None:
        """Write the archive atomically, one run per line (readable diffs when runs change)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header = {"seeded_from": self.seeded_from, "launch_commands": self.launch_commands}
        head = json.dumps(header, indent=2)[:-2]  # without the closing brace: runs follow
        lines = [json.dumps(self.runs[key]) for key in sorted(self.runs, key=str)]
        text = (
            head + ',\n  "runs": [\n' + ",\n".join(f"    {line}" for line in lines) + "\n  ]\n}\n"
        )
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.path)


def archive_path(docs_dir: Path, protocol: str) -> Path:
    return docs_dir / ARCHIVE_DIR / f"{protocol}.json"


def load_archive(docs_dir: Path, protocol: str) -> Archive:
    """The protocol's archive in ``docs_dir``; seeded from ``<protocol>.json`` (a page collected
    before archives existed) when there is no archive yet but that page is there."""
    path = archive_path(docs_dir, protocol)
    if path.is_file():
        try:
            raw = json.loads(path.read_text())
            runs = {(r["env"], r["method"], int(r["seed"])): r for r in raw["runs"]}
        except (ValueError, KeyError, TypeError) as error:
            raise UserError(
                f"{path} is not a readable run archive ({error}). Restore it from git "
                f"(git checkout -- {path}); it holds the runs whose directories are gone."
            ) from error
        return Archive(path, runs, list(raw.get("launch_commands", [])), raw.get("seeded_from"))
    page = docs_dir / f"{protocol}.json"
    if page.is_file():
        return seed_from_page(path, json.loads(page.read_text()), docs_dir)
    return Archive(path)


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


def _plain(values: np.ndarray) -> list[float | None]:
    """JSON numbers, NaN as null (strict JSON has no NaN)."""
    return [None if math.isnan(v) else float(v) for v in np.asarray(values, dtype=float)]


def _floats(values: list) -> np.ndarray:
    return np.array([math.nan if v is None else v for v in values], dtype=float)


def result_record(
    result: RunResult,
    budget: Budget,
    *,
    coverage: dict | None,
    launched_by: list[str],
    commit: str | None,
    machine: str | None,
) -> dict:
    """What the archive keeps of a finished run (``coverage``: bench.Coverage as a dict;
    ``launched_by``, ``commit``, ``machine``: from the run's bench.json)."""
    curve = result.curve
    return {
        "env": result.env,
        "method": result.method,
        "seed": result.seed,
        "budget": asdict(budget),
        "kind": result.kind,
        "final_step": result.final_step,
        "wall_time": result.wall_time,
        "cpu_time": result.cpu_time,
        "final_returns": {mode: _plain([result.final_returns[mode]])[0] for mode in EVAL_MODES},
        "curve": {
            "step": [int(s) for s in curve.steps],
            "wall_time": _plain(curve.wall_times),
            **{mode: _plain(curve.returns[mode]) for mode in EVAL_MODES},
        },
        "curve_complete": True,
        "coverage": coverage,
        "launched_by": launched_by,
        "commit": commit,
        "machine": machine,
    }


def stop_record(env: str, method: str, seed: int, budget: Budget, stop: dict) -> dict:
    """What the archive keeps of a run that a NaN/inf loss stopped (its stopped.json)."""
    return {"env": env, "method": method, "seed": seed, "budget": asdict(budget), "stopped": stop}


def run_result(record: dict, run_dir: Path) -> RunResult:
    """The archived finished run as a RunResult (``run_dir``: where it would live on disk)."""
    curve = record["curve"]
    return RunResult(
        env=record["env"],
        method=record["method"],
        seed=record["seed"],
        run_dir=run_dir,
        final_step=record["final_step"],
        wall_time=_floats([record["wall_time"]])[0],
        final_returns={m: _floats([record["final_returns"][m]])[0] for m in EVAL_MODES},
        curve=Curve(
            steps=np.array(curve["step"], dtype=np.int64),
            returns={mode: _floats(curve[mode]) for mode in EVAL_MODES},
            wall_times=_floats(curve["wall_time"]),
        ),
        cpu_time=record["cpu_time"],
        finished=True,
        kind=record["kind"],
    )


# --------------------------------------------------------------------------------------------
# Seeding from a page collected before the archive
# --------------------------------------------------------------------------------------------


def seed_from_page(path: Path, page: dict, docs_dir: Path) -> Archive:
    """An archive made of what a ``<protocol>.json`` page kept: per seed the final numbers and,
    for fine-tuning, the step-0 (BC) return; the page's coverage per seed; its stopped runs.
    The page's figures are copied to ``archive/`` and named in the records."""
    provenance = page.get("provenance", {})
    date = provenance.get("date", "undated")
    source = f"{page['protocol']}.json of {provenance.get('commit', '?')}, {date}"
    archive = Archive(
        path, launch_commands=list(provenance.get("launch_commands", [])), seeded_from=source
    )
    coverage = {
        (env, row["method"]): row for env, rows in page.get("coverage", {}).items() for row in rows
    }
    for env, summaries in page["results"].items():
        budget = page["budgets"][env]
        figures = _keep_figures(docs_dir, page["protocol"], env, date, path.parent)
        for summary in summaries:
            cover = coverage.get((env, summary["method"]))
            for i, seed in enumerate(summary["per_seed"]):
                record = _seed_record(
                    env, summary, seed, budget, source, figures, provenance.get("machine")
                )
                if cover is not None:
                    shares = cover["shares_per_seed"][i]
                    record["coverage"] = {
                        "covered": cover["covered_per_seed"][i],
                        "shares": shares,
                        # nav: every episode that reaches the goal takes a route, so the share of
                        # successes is the sum of the route shares; the bandit's per-seed mean
                        # reward was not kept
                        "quality": sum(shares) if cover["modes"] == "routes" else None,
                    }
                archive.add(record)
    for stop in page.get("stopped", []):
        env, method, seed = stop["env"], stop["method"], stop["seed"]
        details = {k: v for k, v in stop.items() if k not in ("env", "method", "seed")}
        archive.add(stop_record(env, method, seed, Budget(**page["budgets"][env]), details))
    return archive


def _seed_record(
    env: str,
    summary: dict,
    seed: dict,
    budget: dict,
    source: str,
    figures: list[str],
    machine: str | None,
) -> dict:
    """The archive record of one per-seed row of a pre-archive page: its first evaluation (the
    BC return at step 0, fine-tuning only) and its last, nothing between."""
    steps, wall, returns = [], [], {mode: [] for mode in EVAL_MODES}
    if "bc_return_zero" in seed:
        steps.append(0)
        wall.append(None)
        for mode in EVAL_MODES:
            returns[mode].append(seed[f"bc_return_{mode}"])
    steps.append(seed["final_step"])
    wall.append(seed["wall_time"])
    for mode in EVAL_MODES:
        returns[mode].append(seed[f"return_{mode}"])
    return {
        "env": env,
        "method": summary["method"],
        "seed": seed["seed"],
        "budget": budget,
        "kind": summary["kind"],
        "final_step": seed["final_step"],
        "wall_time": seed["wall_time"],
        "cpu_time": seed["cpu_time"],
        "final_returns": {mode: seed[f"return_{mode}"] for mode in EVAL_MODES},
        "curve": {"step": steps, "wall_time": wall, **returns},
        "curve_complete": False,
        "coverage": None,
        "launched_by": [],
        "commit": None,
        "source": source,
        "machine": machine,
        "figures": figures,
    }


def _keep_figures(docs_dir: Path, protocol: str, env: str, date: str, into: Path) -> list[str]:
    """Copy the page's figures of ``env`` (against env steps, against wall-clock) into the
    archive folder; returns their paths relative to ``docs_dir``."""
    stem = f"{protocol}_{path_safe(env)}"
    kept = []
    for suffix in ("", "_wall_clock"):
        figure = docs_dir / f"{stem}{suffix}.png"
        if figure.is_file():
            into.mkdir(parents=True, exist_ok=True)
            target = into / f"{stem}{suffix}_{date}.png"
            shutil.copyfile(figure, target)
            kept.append(str(target.relative_to(docs_dir)))
    return kept
