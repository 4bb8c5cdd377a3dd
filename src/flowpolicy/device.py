"""The run's device and its random generators: the one place that knows about CUDA.

The runner resolves ``--device`` once and builds every network, optimiser, buffer and
generator on it; algorithms create tensors with ``device=`` or ``*_like`` of their inputs.
Random state covers python, numpy, the torch CPU generator and, when CUDA is in use, every
CUDA device's generator, so a resumed run draws the numbers the uninterrupted one would.
"""

from __future__ import annotations

import random
import re
from typing import Any

import numpy as np
import torch

from flowpolicy import distributed
from flowpolicy.errors import UserError

DEVICE_FORMS = "auto, cpu, cuda or cuda:N"
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve_device(spec: str) -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` ->
    a ``torch.device`` that exists on this machine.

    Raises:
        UserError: a malformed string, CUDA asked for without CUDA, or a CUDA index past the
            machine's GPUs.
    """
    if not isinstance(spec, str) or not _DEVICE_PATTERN.match(spec):
        raise UserError(
            f"--device {spec!r} is not a device flowpolicy understands. Use {DEVICE_FORMS} "
            "(auto picks CUDA when this machine has it, otherwise the CPU)."
        )
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(
            f"--device {spec} asks for a CUDA GPU, but torch sees none on this machine "
            f"(torch {torch.__version__}, built for CUDA: {torch.version.cuda or 'no'}). Run "
            "with --device cpu (or auto), or install a CUDA build of torch on a machine with "
            "an NVIDIA GPU."
        )
    device = torch.device(spec)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise UserError(
            f"--device {spec} asks for GPU {device.index}, but this machine has {count} "
            f"(cuda:0 to cuda:{count - 1}). Pick one of those, or --device cuda for the first."
        )
    return torch.device("cuda", device.index if device.index is not None else 0)


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for one with neither)."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """One seed for python, numpy and torch (``torch.manual_seed`` seeds every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every generator a run draws from; CUDA's only once CUDA has been initialised."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        if distributed.ranks_from_environment().distributed:  # a rank draws on its own GPU:
            state["cuda_own"] = torch.cuda.get_rng_state()  # touching others opens contexts
        else:
            state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`. A checkpoint made on CUDA restores its CPU generators on
    a machine without CUDA (the CUDA draws then differ, as they must)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda_own" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_own"].cpu())  # this rank's (current) GPU
    cuda_states = state.get("cuda")
    if cuda_states and torch.cuda.is_available():
        count = min(len(cuda_states), torch.cuda.device_count())
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states[:count]])


def forked_rng_devices(device: torch.device) -> list[torch.device]:
    """The CUDA devices whose generator ``torch.random.fork_rng`` must save for work on
    ``device`` (none on the CPU), so evaluation never moves the training run's draws."""
    return [device] if device.type == "cuda" else []
