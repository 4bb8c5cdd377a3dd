"""Atomic checkpoints: a crash mid-write never leaves a torn or missing checkpoint."""

from __future__ import annotations

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


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; a clear UserError if it can't be."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"No checkpoint at {path}. A run directory gets its first checkpoint after the "
            "initial evaluation; point at a run directory made by `flowpolicy train`."
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for a damaged file
        raise UserError(
            f"Could not read the checkpoint {path} ({type(error).__name__}: {error}). The file "
            "is damaged or was not written by flowpolicy; restore it from a backup or start a "
            "new run."
        ) from error
