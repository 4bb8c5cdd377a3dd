"""Atomic checkpoints: a crash mid-write never leaves a torn or missing checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from flowpolicy.errors import UserError

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to a temporary file beside ``path``, flush it to disk, then rename it
    over ``path`` (``os.replace`` is atomic on POSIX and Windows)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, its tensors on ``map_location``
    (any device, whatever device wrote it); a clear UserError if it can't be read."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"No checkpoint at {path}. A run directory gets its first checkpoint after the "
            "initial evaluation; point at a run directory made by `flowpolicy train`."
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # torch raises many types for a damaged file
        raise UserError(
            f"Could not read the checkpoint {path} ({type(error).__name__}: {error}). The file "
            "is damaged or was not written by flowpolicy; restore it from a backup or start a "
            "new run."
        ) from error


STOPPED_NAME = "stopped.json"
"""Written into a run directory when a NaN/inf loss stopped the run (see :func:`record_stop`)."""


def save_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON through a temporary file and an atomic rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def record_stop(
    run_dir: str | Path, step: int, checkpoint_step: int | None, reason: str, what: str
) -> UserError:
    """Record in ``run_dir/stopped.json`` that a non-finite loss stopped the run at ``step``,
    and return the error to raise (``what``: "Training" or "Pretraining").

    Resuming repeats the same numbers from the last checkpoint (``checkpoint_step``, None if
    none was written), so the run would stop at the same step again:
    :func:`refuse_resume_if_stopped` turns that into a clear error, and the benchmark harness
    reports the run as stopped instead of relaunching it.
    """
    path = Path(run_dir) / STOPPED_NAME
    save_json(path, {"step": step, "checkpoint_step": checkpoint_step, "reason": reason})
    kept = (
        f"The checkpoint at step {checkpoint_step:,} in {run_dir} is intact"
        if checkpoint_step is not None
        else f"No checkpoint had been written to {run_dir} yet"
    )
    return UserError(
        f"{what} stopped at step {step:,}: {reason}. {kept}; {path} records the stop. Resuming "
        "would replay the same numbers and stop here again, so start a new run with a lower "
        "--learning-rate or a --max-grad-norm."
    )


def read_stop(run_dir: str | Path) -> dict[str, Any] | None:
    """The record :func:`record_stop` wrote into ``run_dir``, or None if the run did not stop."""
    path = Path(run_dir) / STOPPED_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(
            f"Could not read {path} ({error}). It records that a NaN/inf loss stopped the run; "
            "delete it to resume the run anyway."
        ) from error


def refuse_resume_if_stopped(run_dir: str | Path) -> None:
    """Raise a UserError if a non-finite loss stopped the run in ``run_dir``: resuming would
    replay the same numbers into the same stop."""
    stop = read_stop(run_dir)
    if stop is None:
        return
    path = Path(run_dir) / STOPPED_NAME
    raise UserError(
        f"{run_dir} stopped at step {stop['step']:,} ({stop['reason']}), as recorded in {path}. "
        "Resuming replays the same numbers from its last checkpoint and would stop there again. "
        f"Start a new run with the settings in {Path(run_dir) / 'config.json'} and a lower "
        "--learning-rate or a --max-grad-norm; to resume anyway (for instance after fixing a "
        f"bug in the code), delete {path}."
    )
