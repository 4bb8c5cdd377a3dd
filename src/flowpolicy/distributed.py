"""Data-parallel training on torch.distributed: the few places where ranks meet.

``torchrun --nproc-per-node N -m flowpolicy train ALGO ...`` starts N copies of the ordinary
run. Each rank steps its own share of the envs (``num_envs / N``, seeded after the ranks
before it) on its own device (``cuda:LOCAL_RANK``, or the CPU with gloo) and keeps its own
replay; the ranks meet only where they must agree:

- **gradients**: :func:`average_gradients` at the optimiser-step sites (one all-reduce of
  every gradient, flattened, together with a flag that any rank's loss is not finite, so all
  ranks stop together instead of one waiting forever);
- **running statistics**: :func:`global_moments` gives the mean and variance of a batch spread
  over the ranks, for observation normalisers, return scalers and advantage standardisation;
  :func:`all_mean` averages a scalar (a KL early stop, RLDT's reward scale) so every rank
  takes the same decision;
- **checkpoints**: :func:`gather_to_main` brings each rank's own state (RNG, envs, replay) to
  rank 0, which alone writes the run directory; a resumed rank reads its part of the file.

Without torchrun (no ``WORLD_SIZE`` in the environment) every function here is the identity
and nothing is initialised: a one-process run computes exactly what it did before.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from flowpolicy.errors import NonFiniteLossError, UserError

TIMEOUT = datetime.timedelta(minutes=10)
"""How long a rank waits for the others at a collective before failing (evaluation and
checkpoints on rank 0 take far less)."""


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in the job (read from torchrun's environment variables).

    rank: 0..world_size-1 over all nodes; local_rank: index on this node (its GPU);
    local_world_size: processes on this node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run directory, logs and evaluates."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def ranks_from_environment() -> Ranks:
    """This process's place in a torchrun job; one rank of one when not under torchrun."""
    if "WORLD_SIZE" not in os.environ:
        return Ranks()
    return Ranks(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])),
    )


def is_main_process() -> bool:
    """True except on the ranks 1.. of a torchrun job (what error reporting asks)."""
    return ranks_from_environment().is_main


def active() -> bool:
    """True when a process group of more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_device(device: torch.device, ranks: Ranks) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` for CUDA runs (one GPU per process on a
    node), the CPU otherwise.

    Raises:
        UserError: more processes on this node than GPUs, or a ``cuda:N`` index with several
            ranks (each rank takes its own GPU).
    """
    if device.type != "cuda" or not ranks.distributed:
        return device
    count = torch.cuda.device_count()
    if ranks.local_world_size > count:
        raise UserError(
            f"--device cuda with {ranks.local_world_size} processes on this node, but it has "
            f"{count} GPU(s): each process needs its own. Start at most {count} with "
            f"`torchrun --nproc-per-node {count}`, or train on the CPU with --device cpu (gloo)."
        )
    return torch.device("cuda", ranks.local_rank)


def start(device: torch.device, ranks: Ranks) -> None:
    """Join the job's process group (NCCL on CUDA, gloo on the CPU); nothing for one rank."""
    if not ranks.distributed or active():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT)


def stop() -> None:
    """Leave the process group after every rank got here (the barrier avoids a rare abort at
    exit with gloo)."""
    if active():
        dist.barrier()
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- collectives


@torch.no_grad()
def average_gradients(parameters: Iterable[Tensor], loss_is_finite: bool) -> bool:
    """Replace every gradient by its mean over the ranks; True when every rank's loss was
    finite (then the step may be taken on all of them).

    One all-reduce of all gradients, flattened, plus one number that counts the ranks with a
    non-finite loss. A parameter without a gradient counts as zero. The identity (returning
    ``loss_is_finite``) outside a multi-rank job.
    """
    if not active():
        return loss_is_finite
    params = [p for p in parameters if p.requires_grad]
    device = params[0].device
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads] + [torch.zeros(1, device=device)])
    flat[-1] = 0.0 if loss_is_finite else 1.0
    dist.all_reduce(flat)
    world = dist.get_world_size()
    offset = 0
    for param, grad in zip(params, grads, strict=True):
        count = grad.numel()
        param.grad = (flat[offset : offset + count] / world).view_as(grad).to(grad.dtype)
        offset += count
    return bool(flat[-1] == 0)


NON_FINITE_LOSS = "loss is {value}; the update was not applied"
"""The default message of a refused step; ``{value}`` is the loss, or where it went bad."""


def synced_backward(
    loss: Tensor, optimizers: Sequence[torch.optim.Optimizer], message: str = NON_FINITE_LOSS
) -> None:
    """The optimiser-step site's first half: zero the optimisers' gradients, backpropagate
    ``loss`` and average the gradients over the ranks, so the step that follows is the same on
    every rank.

    Raises:
        NonFiniteLossError: on every rank, when the loss is NaN or infinite on any of them
            (``message`` with the value); no weight has changed yet.
    """
    finite = bool(torch.isfinite(loss))
    if not finite and not active():  # alone: refuse before the backward pass
        raise NonFiniteLossError(message.format(value=loss.item()))
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    loss.backward()
    sync_gradients(optimizers, None if finite else loss.detach(), message)


def sync_gradients(
    optimizers: Sequence[torch.optim.Optimizer],
    bad_loss: Tensor | None,
    message: str = NON_FINITE_LOSS,
) -> None:
    """Average the optimisers' gradients over the ranks (after one or several backward
    passes). ``bad_loss``: this rank's non-finite loss, None when its losses were finite.

    Raises:
        NonFiniteLossError: on every rank when any rank had a non-finite loss.
    """
    params = [p for optimizer in optimizers for p in optimizer_parameters(optimizer)]
    if not average_gradients(params, bad_loss is None):
        value = "NaN or infinite on another rank" if bad_loss is None else bad_loss.item()
        raise NonFiniteLossError(message.format(value=value))


def optimizer_parameters(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """Every parameter an optimiser updates, in its groups' order (the same on every rank)."""
    return [p for group in optimizer.param_groups for p in group["params"]]


@torch.no_grad()
def global_moments(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, population variance and count of the rows of ``x`` (M, D) on all ranks together,
    in float64: ``(D,), (D,), ()``. One all-gather of each rank's (count, mean, M2), folded
    with the parallel-variance formula (Chan et al.)."""
    x = x.double()
    count = torch.tensor(float(x.shape[0]), dtype=torch.float64, device=x.device)
    mean = x.mean(0)
    m2 = (x - mean).square().sum(0)
    if not active():
        return mean, m2 / count, count
    local = torch.cat([count.reshape(1), mean, m2])
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    size = mean.shape[0]
    total, mean, m2 = gathered[0][0], gathered[0][1 : 1 + size], gathered[0][1 + size :]
    for part in gathered[1:]:
        n, part_mean, part_m2 = part[0], part[1 : 1 + size], part[1 + size :]
        delta = part_mean - mean
        new_total = total + n
        mean = mean + delta * n / new_total
        m2 = m2 + part_m2 + delta.square() * total * n / new_total
        total = new_total
    return mean, m2 / total, total


def all_mean(value: float) -> float:
    """The mean of a scalar over the ranks (the value itself outside a job)."""
    if not active():
        return value
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor) / dist.get_world_size()


def all_sum(tensor: Tensor) -> Tensor:
    """``tensor`` summed over the ranks (a copy; the tensor itself outside a job)."""
    if not active():
        return tensor
    total = tensor.clone()
    dist.all_reduce(total)
    return total


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` (picklable, best on the CPU), as a list on rank 0 and None on the
    others; ``[obj]`` outside a job."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself outside a job)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in its dicts, lists and tuples moved to the CPU (what travels
    between ranks, so rank 0 never receives another GPU's tensors)."""
    if isinstance(obj, Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {key: to_cpu(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(value) for value in obj)
    return obj
