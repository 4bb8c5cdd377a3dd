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
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
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


SHARE_GPUS = "FLOWPOLICY_SHARE_GPUS"
"""Set to 1 to let several ranks share a GPU (rank i on GPU i mod count), meeting over gloo:
NCCL refuses two ranks on one GPU. For trying a multi-GPU job on fewer GPUs, not for speed."""


def sharing_gpus() -> bool:
    return os.environ.get(SHARE_GPUS) == "1"


def rank_device(device: torch.device, ranks: Ranks) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` for CUDA runs (one GPU per process on a
    node; with ``FLOWPOLICY_SHARE_GPUS=1``, GPU ``LOCAL_RANK mod count``), the CPU otherwise.

    Raises:
        UserError: more processes on this node than GPUs (unless they may share).
    """
    if device.type != "cuda" or not ranks.distributed:
        return device
    count = torch.cuda.device_count()
    if sharing_gpus() and count > 0:
        return torch.device("cuda", ranks.local_rank % count)
    if ranks.local_world_size > count:
        raise UserError(
            f"--device cuda with {ranks.local_world_size} processes on this node, but it has "
            f"{count} GPU(s): each process needs its own (NCCL refuses two on one GPU). Start "
            f"at most {count} with `torchrun --nproc-per-node {count}`, train on the CPU with "
            f"--device cpu (gloo), or set {SHARE_GPUS}=1 to let the processes share the GPUs "
            "over gloo (slower: for trying a job, not for speed)."
        )
    return torch.device("cuda", ranks.local_rank)


def start(device: torch.device, ranks: Ranks) -> None:
    """Join the job's process group (NCCL on CUDA, gloo on the CPU or on shared GPUs); nothing
    for one rank."""
    if not ranks.distributed or active():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" and not sharing_gpus() else "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT)


def stop() -> None:
    """Leave the process group after every rank got here (the barrier avoids a rare abort at
    exit with gloo)."""
    if active():
        dist.barrier()
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- a rank's share

UPDATES_PER_ENV_STEP = "utd_ratio"
"""The config field of off-policy methods that sets their gradient steps per env step."""
REPLAY_BATCH = "batch_size"
"""The config field of off-policy methods that sets the transitions of one gradient step."""


def rank_share(algo: Any, world_size: int) -> Any:
    """The algorithm config each of ``world_size`` ranks runs, from the whole run's config.

    - ``num_envs`` is the run's total: each rank steps ``num_envs / world_size`` of them, so
      its batch, and each minibatch, is ``1 / world_size`` of the whole; the gradients
      averaged over the ranks are those of the whole minibatch.
    - ``utd_ratio`` (gradient steps per env step of off-policy methods) counts the env steps
      of all ranks: a rank collects ``1 / world_size`` of them, so its own ratio is
      ``world_size`` times larger and every rank takes as many gradient steps as one process
      on all the envs.
    - ``batch_size`` (their transitions per gradient step) is the whole step's: each rank
      samples ``batch_size / world_size`` from its own replay, so a step averages one batch of
      ``batch_size`` drawn across every rank's replay (stratified by rank).

    Raises:
        UserError: the env count, the replay batch, or a rank's batch does not split over the
            ranks.
    """
    if world_size == 1:
        return algo
    num_envs = algo.num_envs
    if num_envs % world_size:
        raise UserError(
            f"--num-envs {num_envs} does not split over {world_size} processes: each rank "
            f"steps num_envs / world_size envs. Pass a multiple of {world_size} (e.g. "
            f"--num-envs {world_size * max(1, num_envs // world_size)}) or start "
            "torchrun with a --nproc-per-node (times --nnodes) that divides it."
        )
    share = {"num_envs": num_envs // world_size}
    if hasattr(algo, UPDATES_PER_ENV_STEP):
        share[UPDATES_PER_ENV_STEP] = getattr(algo, UPDATES_PER_ENV_STEP) * world_size
        share[REPLAY_BATCH] = split_batch(
            getattr(algo, REPLAY_BATCH), world_size, "samples", "transitions from its replay"
        )
    try:
        return replace(algo, **share)
    except ValueError as error:
        raise UserError(
            f"With {world_size} processes each rank steps {num_envs // world_size} of the "
            f"{num_envs} envs, and its share of the batch does not fit the update: {error} "
            "Use fewer processes, more envs, or fewer --num-minibatches."
        ) from error


def split_batch(batch_size: int, world_size: int, verb: str, what: str) -> int:
    """Each rank's share of a ``--batch-size`` (``batch_size / world_size``), where a rank
    ``verb``s that many ``what`` per gradient step.

    Raises:
        UserError: the batch does not split evenly over the ranks.
    """
    if batch_size % world_size:
        raise UserError(
            f"--batch-size {batch_size} does not split over {world_size} processes: each rank "
            f"{verb} batch_size / world_size {what} per gradient step. Pass a multiple of "
            f"{world_size}, or start torchrun with fewer processes."
        )
    return batch_size // world_size


def run_world_size(run_dir: str | Path) -> int:
    """How many processes trained the run in ``run_dir`` (config.json's ``world_size``; 1 for
    runs from before torchrun)."""
    return int(json.loads((Path(run_dir) / "config.json").read_text()).get("world_size", 1))


def check_resume_world_size(run_dir: Path, world_size: int) -> None:
    """A run resumes only with the number of processes it was trained with: each rank's envs,
    RNG and replay are in the checkpoint.

    Raises:
        UserError: ``world_size`` is not the run's.
    """
    trained_with = run_world_size(run_dir)
    if trained_with != world_size:
        how = (
            f"`torchrun --nproc-per-node {trained_with} -m flowpolicy train --resume {run_dir}`"
            if trained_with > 1
            else f"`flowpolicy train --resume {run_dir}` (one process, without torchrun)"
        )
        raise UserError(
            f"{run_dir} was trained with {trained_with} process(es) and cannot resume with "
            f"{world_size}: every rank's envs, random state and replay are in its checkpoint, "
            f"one per rank. Resume it with {how}, or start a new run."
        )


# ----------------------------------------------------------------------------- collectives


@torch.no_grad()
def average_gradients(parameters: Iterable[Tensor], loss_is_finite: bool) -> bool:
    """Replace every gradient by its mean over the ranks; True when every rank's loss was
    finite (then the step may be taken on all of them).

    One all-reduce of all gradients, flattened, with one flag per parameter that a rank has
    its gradient and one number that counts the ranks with a non-finite loss. A parameter
    that no rank has a gradient for keeps none, as it would in one process: the optimiser then
    skips it (a zero gradient instead would let Adam move it with its momentum and count a
    step). The identity (returning ``loss_is_finite``) outside a multi-rank job.
    """
    if not active():
        return loss_is_finite
    params = [p for p in parameters if p.requires_grad]
    device = params[0].device
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    has_grad = torch.tensor([p.grad is not None for p in params], device=device)
    bad_loss = torch.tensor([0.0 if loss_is_finite else 1.0], device=device)
    flat = torch.cat([g.reshape(-1).float() for g in grads] + [has_grad.float(), bad_loss])
    dist.all_reduce(flat)
    world = dist.get_world_size()
    flags = flat[-1 - len(params) : -1]
    offset = 0
    for index, (param, grad) in enumerate(zip(params, grads, strict=True)):
        count = grad.numel()
        mean = (flat[offset : offset + count] / world).view_as(grad).to(grad.dtype)
        param.grad = mean if flags[index] > 0 else None
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
