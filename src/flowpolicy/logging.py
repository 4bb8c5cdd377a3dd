"""One logger for every run: metrics.jsonl, TensorBoard events, and the console: a live progress
bar (steps, steps/s, ETA, latest returns) on a terminal, one plain line per iteration otherwise
(a log file, the benchmark harness's train.log); optionally Weights & Biases with the same
metrics as TensorBoard.

Metric names are namespaced: ``charts/`` (returns, speed), ``loss/``, ``policy/``,
``critic/``, ``eval/<mode>/`` (mode ``zero`` or ``random``). Every line of metrics.jsonl has
``step`` (env steps) and ``wall_time`` (seconds since the run began, across resumes).
"""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Column

METRICS_NAME = "metrics.jsonl"
WANDB_ID_NAME = "wandb_run_id"
WandbMode = Literal["online", "offline"]


def start_wandb(run_dir: Path, project: str, mode: WandbMode, config: dict[str, Any]) -> Any:
    """A W&B run for ``run_dir``: the same W&B run again when the run resumes (its id is kept
    in ``run_dir/wandb_run_id``), files under ``run_dir/wandb``, env steps as the x-axis."""
    import wandb  # optional: pip install 'flowpolicy[wandb]'

    id_path = run_dir / WANDB_ID_NAME
    run_id = id_path.read_text().strip() if id_path.is_file() else uuid.uuid4().hex[:12]
    id_path.write_text(run_id + "\n")
    run = wandb.init(
        project=project,
        id=run_id,
        resume="allow",
        name=run_dir.name,
        dir=str(run_dir),
        config=config,
        mode=mode,
    )
    # A resumed run logs its steps after the checkpoint again: a custom x-axis accepts that.
    run.define_metric("step")
    run.define_metric("*", step_metric="step")
    return run


def _plain(value: object) -> object:
    """JSON-safe scalar (NaN/inf become None so the file stays valid JSON)."""
    value = float(value) if not isinstance(value, int | str | bool) else value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Logger:
    """Writes metrics to ``run_dir``; on resume, drops what was logged after the checkpoint.

    Args:
        run_dir: the run directory.
        keep_lines: number of metrics.jsonl lines to keep (from the checkpoint), None = all.
        resume_step: env step of the checkpoint; TensorBoard events after it are purged.
        tensorboard: also write TensorBoard events under ``run_dir/tb``.
        quiet: no console output.
        wandb_run: a run from :func:`start_wandb` that gets the same scalars, or None.
    """

    def __init__(
        self,
        run_dir: Path,
        keep_lines: int | None = None,
        resume_step: int | None = None,
        tensorboard: bool = True,
        quiet: bool = False,
        wandb_run: Any = None,
    ) -> None:
        self.path = run_dir / METRICS_NAME
        if keep_lines is not None and self.path.exists():
            lines = self.path.read_text().splitlines(keepends=True)[:keep_lines]
            self.path.write_text("".join(lines))
        self.lines = len(self.path.read_text().splitlines()) if self.path.exists() else 0
        self.file = open(self.path, "a")  # noqa: SIM115 - lives as long as the logger
        self.console = Console(quiet=quiet, highlight=False)
        self.bar: Progress | None = None
        self.bar_task: TaskID | None = None
        self.wandb_run = wandb_run
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=purge)

    def log(self, step: int, wall_time: float, metrics: dict[str, float]) -> None:
        """Append one line to metrics.jsonl and the scalars to TensorBoard."""
        row = {"step": step, "wall_time": round(wall_time, 3)}
        row |= {name: _plain(value) for name, value in metrics.items()}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        self.lines += 1
        scalars = {
            name: value
            for name, value in metrics.items()
            if isinstance(value, int | float) and math.isfinite(value)
        }
        if self.writer is not None:
            for name, value in scalars.items():
                self.writer.add_scalar(name, value, step)
        if self.wandb_run is not None:
            self.wandb_run.log({"step": step} | scalars)

    def print(self, message: str) -> None:
        self.console.print(message, soft_wrap=True)

    def progress(self, step: int, total: int, steps_per_second: float, status: str) -> None:
        """After an iteration: on a terminal, move the live bar (steps, steps/s, ETA, status);
        otherwise print ``step N/TOTAL SPS/s STATUS`` as one plain line."""
        if self.console.quiet:
            return
        if not self.console.is_terminal:
            self.print(f"step {step:>9,}/{total:,} {steps_per_second:>6,.0f}/s {status}")
            return
        if self.bar is None:
            # The numbers first and the bar short, so a narrow terminal cuts only the status.
            self.bar = Progress(
                TextColumn("step {task.completed:,}/{task.total:,}"),
                TextColumn("{task.fields[sps]:,.0f} steps/s ETA"),
                TimeRemainingColumn(table_column=Column(no_wrap=True, min_width=7)),
                BarColumn(bar_width=12, table_column=Column(min_width=12)),
                TextColumn(
                    "{task.description}",
                    table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1),
                ),
                console=self.console,
            )
            self.bar.start()
            self.bar_task = self.bar.add_task(status, total=total, completed=step, sps=0.0)
        compact = " ".join(status.split())  # the plain lines' column padding, squeezed
        self.bar.update(self.bar_task, completed=step, description=compact, sps=steps_per_second)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
        self.file.close()
        if self.writer is not None:
            self.writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


class SilentLogger:
    """The logger of ranks 1.. of a torchrun job: rank 0 alone writes the run's metrics."""

    lines = 0

    def log(self, step: int, wall_time: float, metrics: dict[str, float]) -> None:
        """Nothing: rank 0 logs."""

    def print(self, message: str) -> None:
        """Nothing: rank 0 prints."""

    def progress(self, step: int, total: int, steps_per_second: float, status: str) -> None:
        """Nothing: rank 0 shows the progress."""

    def close(self) -> None:
        """Nothing to close."""
