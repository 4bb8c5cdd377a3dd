"""Pieces every PPO-family method shares: reward scaling, advantages, the value loss, the
trust-region objectives (PPO's clip and FPO++'s ASPO), minibatching, the guarded optimiser
step. Each algorithm file stays readable top to bottom and only spells out what is its own
(the ratio and the surrogate)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from flowpolicy import distributed
from flowpolicy.buffers import RolloutBatch
from flowpolicy.critics import ValueNet
from flowpolicy.policies import RunningNorm
from flowpolicy.returns import gae


class ReturnScaler(nn.Module):
    """Divides rewards by the running std of the discounted return (Gymnasium's
    ``NormalizeReward``, which CleanRL's PPO uses), then clips them to ``[-clip, clip]``.

    The running return ``R_t = gamma (1 - done_{t-1}) R_{t-1} + r_t`` is carried across
    iterations per env. Statistics are updated with the whole batch before scaling it, so one
    batch is scaled with one std.
    """

    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0) -> None:
        super().__init__()
        self.gamma, self.clip = gamma, clip
        self.return_stats = RunningNorm(1)
        self.register_buffer("running_return", torch.zeros(num_envs))
        self.register_buffer("previous_done", torch.zeros(num_envs))

    def forward(self, rewards: Tensor, dones: Tensor) -> Tensor:
        """rewards, dones (T, N) -> scaled rewards (T, N)."""
        returns = torch.empty_like(rewards)
        running, previous_done = self.running_return, self.previous_done
        for t in range(rewards.shape[0]):
            running = self.gamma * (1.0 - previous_done) * running + rewards[t]
            returns[t], previous_done = running, dones[t]
        self.running_return.copy_(running)
        self.previous_done.copy_(previous_done)
        self.return_stats.update(returns.reshape(-1, 1))
        std = torch.sqrt(self.return_stats.var + 1e-8).float()
        return (rewards / std).clamp(-self.clip, self.clip)


EVAL_ROWS = 65_536
"""Rows per forward pass where a whole batch is evaluated without gradients: FPO's Playground
regime has batches of 983,040 steps, whose 5x256 critic activations would take gigabytes."""


@torch.no_grad()
def chunked(net: nn.Module, x: Tensor) -> Tensor:
    """``net`` applied to ``x`` (..., D) in slices of EVAL_ROWS rows along the flattened
    leading dims; same result as ``net(x)``, bounded memory."""
    flat = x.reshape(-1, x.shape[-1])
    out = torch.cat([net(part) for part in flat.split(EVAL_ROWS)])
    return out.reshape(*x.shape[:-1], *out.shape[1:])


@torch.no_grad()
def advantages_and_returns(
    batch: RolloutBatch,
    critic: ValueNet,
    obs_norm: RunningNorm,
    rewards: Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Values, GAE advantages and returns, each (T, N), for (possibly scaled) rewards (T, N).

    ``V(s'_t)`` is evaluated on the stored true next observations, so truncated episodes
    bootstrap from their real final observation (see :mod:`flowpolicy.returns`).
    """
    values = chunked(critic, obs_norm(batch.obs))
    next_values = chunked(critic, obs_norm(batch.next_obs))
    advantages, returns = gae(
        rewards, values, next_values, batch.terminated, batch.dones, gamma, gae_lambda
    )
    return values, advantages, returns


def value_loss(
    new_values: Tensor, old_values: Tensor, returns: Tensor, clip_coef: float | None
) -> Tensor:
    """``0.5 E[(V - R)^2]``, optionally with PPO's value clipping around the old values."""
    unclipped = (new_values - returns).square()
    if clip_coef is None:
        return 0.5 * unclipped.mean()
    clipped_values = old_values + (new_values - old_values).clamp(-clip_coef, clip_coef)
    return 0.5 * torch.max(unclipped, (clipped_values - returns).square()).mean()


def trust_region_objective(
    ratio: Tensor, advantages: Tensor, clip_coef: float, mode: Literal["ppo", "aspo"]
) -> Tensor:
    """Per-sample objective to maximise; ratio and advantages broadcast together.

    ppo:  min(r A, clip(r, 1 - c, 1 + c) A)
    aspo: the PPO term where A >= 0, and SPO's ``r A - |A| (r - 1)^2 / (2 c)`` where A < 0
          (a smooth quadratic penalty instead of a hard clip for bad actions).
    """
    ppo = torch.min(ratio * advantages, ratio.clamp(1 - clip_coef, 1 + clip_coef) * advantages)
    if mode == "ppo":
        return ppo
    spo = ratio * advantages - advantages.abs() / (2 * clip_coef) * (ratio - 1).square()
    return torch.where(advantages >= 0, ppo, spo)


def straight_through_clamp(x: Tensor, upper: float) -> Tensor:
    """Clamp the value from above at ``upper`` but pass the gradient as if unclamped (FPO++
    bounds only large ratios: a very negative log-ratio gives a ratio near 0, which is safe)."""
    return x + (x.clamp(max=upper) - x).detach()


def normalize_advantages(advantages: Tensor) -> Tensor:
    """Per-minibatch standardisation (CleanRL); a single-sample batch is left unchanged.

    In a torchrun job the minibatch is every rank's part together (its mean and unbiased std
    over all ranks), so N ranks on N parts compute what one process computes on the whole."""
    if distributed.active():
        mean, var, count = distributed.global_moments(advantages.reshape(-1, 1))
        std = (var * count / (count - 1).clamp(min=1)).sqrt().to(advantages.dtype)
        return (advantages - mean.to(advantages.dtype)) / (std + 1e-8)
    if advantages.numel() < 2:
        return advantages
    return (advantages - advantages.mean()) / (advantages.std() + 1e-8)


def minibatch_indices(
    batch_size: int, num_minibatches: int, device: torch.device | None = None
) -> Iterator[Tensor]:
    """A fresh random permutation cut into ``num_minibatches`` equal index sets, on ``device``.

    The permutation is drawn from the CPU generator on every device (then copied once), so a
    run's minibatches do not depend on where it trains."""
    permutation = torch.randperm(batch_size).to(device)
    yield from permutation.view(num_minibatches, -1)


ClipGroups = Sequence[nn.Parameter] | Sequence[Sequence[nn.Parameter]]
"""Parameters whose gradient norm is clipped together, or several such groups clipped each
on its own (an actor and a critic with separate optimisers, as fpo-control fine-tunes)."""


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    loss: Tensor,
    parameters: ClipGroups,
    max_grad_norm: float | None,
) -> float:
    """Backward + (clipped) step. Refuses a non-finite loss so no NaN reaches the weights.
    In a torchrun job the gradients are averaged over the ranks before clipping.

    Returns the gradient norm before clipping (over all groups together).
    """
    distributed.synced_backward(loss, [optimizer])  # the ranks' mean gradient; NaN guard
    limit = math.inf if max_grad_norm is None else max_grad_norm
    nested = len(parameters) > 0 and not isinstance(parameters[0], nn.Parameter)
    groups = parameters if nested else [parameters]
    norms = torch.stack([nn.utils.clip_grad_norm_(group, limit) for group in groups])
    optimizer.step()
    return float(norms.norm())


def annealed_lr(learning_rate: float, progress: float, anneal: bool) -> float:
    """Linear decay from ``learning_rate`` to 0 over the run (CleanRL ``anneal_lr``)."""
    return learning_rate * (1.0 - progress) if anneal else learning_rate


def cosine_restarts_lr(iteration: int, peak: float, floor: float, cycle: int, warmup: int) -> float:
    """Learning rate of ``iteration`` (0-based) under cosine annealing with warm restarts.

    Within a cycle at position ``c = iteration mod cycle``: linear from ``floor`` to ``peak``
    for ``c < warmup``, then ``floor + (peak - floor) (1 + cos(pi (c - warmup) / (cycle -
    warmup))) / 2`` (the scheduler DPPO and ReinFlow use, with cycle_mult = gamma = 1).
    """
    position = iteration % cycle
    if position < warmup:
        return floor + (peak - floor) * position / warmup
    angle = math.pi * (position - warmup) / (cycle - warmup)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(angle))


def explained_variance(predicted: Tensor, target: Tensor) -> float:
    """``1 - Var[target - predicted] / Var[target]``: 1 is a perfect critic, 0 a constant."""
    variance = target.var()
    return float("nan") if variance == 0 else float(1.0 - (target - predicted).var() / variance)


def run_epochs(
    update_epochs: int,
    batch_size: int,
    num_minibatches: int,
    minibatch_step: Callable[[Tensor], dict[str, Tensor | float]],
    device: torch.device | None = None,
) -> dict[str, float]:
    """Call ``minibatch_step(indices)`` for every minibatch of every epoch; average its metrics.

    Tensor metrics are summed on their device and read once at the end, so a GPU update does
    not wait for the host after every minibatch."""
    sums: dict[str, Tensor | float] = {}
    for _ in range(update_epochs):
        for indices in minibatch_indices(batch_size, num_minibatches, device):
            for name, value in minibatch_step(indices).items():
                value = value.detach().double() if isinstance(value, Tensor) else value
                sums[name] = sums.get(name, 0.0) + value
    steps = update_epochs * num_minibatches
    return {name: float(total) / steps for name, total in sums.items()}


@dataclass
class PreparedBatch:
    """A rollout flattened to (T*N, ...) with its advantages, ready for minibatching.

    Attributes:
        obs: (T*N, Do) normalised observations.
        records: the algorithm's records, each (T*N, ...).
        advantages, returns, values: (T*N,).
    """

    obs: Tensor
    records: dict[str, Tensor]
    advantages: Tensor
    returns: Tensor
    values: Tensor


def advantages_batch(
    batch: RolloutBatch,
    critic: ValueNet,
    obs_norm: RunningNorm,
    reward_scaler: ReturnScaler | None,
    gamma: float,
    gae_lambda: float,
    reward_scale: float = 1.0,
) -> PreparedBatch:
    """Multiply rewards by ``reward_scale`` (Brax's ``reward_scaling``), divide them by the
    return scale (if a scaler is given), run GAE, and flatten the batch to (T*N, ...)."""
    rewards = batch.rewards * reward_scale
    rewards = rewards if reward_scaler is None else reward_scaler(rewards, batch.dones)
    values, advantages, returns = advantages_and_returns(
        batch, critic, obs_norm, rewards, gamma, gae_lambda
    )
    return PreparedBatch(
        obs=obs_norm(batch.obs).flatten(0, 1),
        records={name: value.flatten(0, 1) for name, value in batch.records.items()},
        advantages=advantages.flatten(),
        returns=returns.flatten(),
        values=values.flatten(),
    )


def prepare_batch(
    batch: RolloutBatch,
    critic: ValueNet,
    obs_norm: RunningNorm,
    reward_scaler: ReturnScaler | None,
    optimizer: torch.optim.Optimizer,
    config: Any,
) -> PreparedBatch:
    """:func:`advantages_batch`, plus the (annealed) learning rate of each parameter group: its
    ``base_lr`` where it has one (a critic with its own rate), else ``config.learning_rate``."""
    if getattr(config, "desired_kl", None) is None:  # an adaptive rate keeps its own value
        for group in optimizer.param_groups:
            base = group.get("base_lr", config.learning_rate)
            group["lr"] = annealed_lr(base, batch.progress, config.anneal_lr)
    return advantages_batch(
        batch,
        critic,
        obs_norm,
        reward_scaler,
        config.gamma,
        config.gae_lambda,
        config.reward_scale,
    )


def critic_loss_and_step(
    prepared: PreparedBatch,
    idx: Tensor,
    policy_loss: Tensor,
    metrics: dict[str, Tensor | float],
    critic: ValueNet,
    optimizer: torch.optim.Optimizer,
    parameters: Sequence[nn.Parameter],
    config: Any,
) -> dict[str, Tensor | float]:
    """Add the value loss to a minibatch's policy loss, take the guarded optimiser step, and
    return the minibatch's metrics."""
    v_loss = value_loss(
        critic(prepared.obs[idx]),
        prepared.values[idx],
        prepared.returns[idx],
        config.clip_coef if config.clip_vloss else None,
    )
    loss = policy_loss + config.vf_coef * v_loss
    grad_norm = optimizer_step(optimizer, loss, parameters, config.max_grad_norm)
    return metrics | {"loss/policy": policy_loss, "loss/value": v_loss, "loss/grad_norm": grad_norm}


def minibatch_advantages(prepared: PreparedBatch, idx: Tensor, normalize: bool) -> Tensor:
    """The minibatch's advantages, standardised if asked (CleanRL's per-minibatch norm_adv)."""
    adv = prepared.advantages[idx]
    return normalize_advantages(adv) if normalize else adv
