"""Return estimators: pure functions over (T, N) tensors, termination and truncation kept apart.

Under Gymnasium >= 1.0 an episode can end in two ways. *Termination* (the MDP reached an
absorbing state) means there is no future value. *Truncation* (a time limit) means the future
was cut off, so we bootstrap with the value of the true final observation. The caller passes
``next_values[t] = V(s'_t)`` where ``s'_t`` is the real next observation of step t (the final
observation when the episode ended there, never the first observation of the next episode).
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowpolicy import distributed


def gae(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    dones: Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation.

    ``delta_t = r_t + gamma (1 - term_t) V(s'_t) - V(s_t)``
    ``A_t = delta_t + gamma lambda (1 - done_t) A_{t+1}``, with ``done = term or trunc``: the
    recursion stops at every episode end, and only termination drops the bootstrap value.

    Args:
        rewards, values, next_values: (T, N).
        terminated: (T, N) bool/float, episode ended in an absorbing state at step t.
        dones: (T, N) bool/float, episode ended at step t (terminated or truncated).
        gamma: discount. gae_lambda: GAE lambda.

    Returns:
        advantages (T, N) and returns = advantages + values (T, N).
    """
    not_terminated = 1.0 - terminated.float()
    not_done = 1.0 - dones.float()
    deltas = rewards + gamma * not_terminated * next_values - values
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        running = deltas[t] + gamma * gae_lambda * not_done[t] * running
        advantages[t] = running
    return advantages, advantages + values


def td_lambda_targets(
    rewards: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    dones: Tensor,
    gamma: float,
    td_lambda: float,
) -> Tensor:
    """TD(lambda) targets for a Q critic over stored trajectory segments (RLDT, QAM).

    ``y_t = r_t + gamma (1 - term_t) [(1 - lambda) Qbar_t + lambda y_{t+1}]``, where
    ``Qbar_t = Qbar(s'_t, a')`` is the (target-network) value of the true next observation.
    The continuation ``y_{t+1}`` exists only inside one episode and one segment: at an episode
    end (``done_t``) and at the segment's last step it is replaced by ``Qbar_t`` (a full
    bootstrap), so a truncation bootstraps from its real final observation, while a termination
    drops the bootstrap altogether. ``lambda = 0`` is the 1-step target
    ``r_t + gamma (1 - term_t) Qbar_t``; ``lambda = 1`` sums rewards to the episode or segment
    end and bootstraps there.

    Args:
        rewards, next_values: (T, ...), time first; ``next_values[t] = Qbar(s'_t, a')``.
        terminated: (T, ...) bool/float, absorbing end at step t.
        dones: (T, ...) bool/float, episode ended at step t (terminated or truncated).
        gamma: discount (per vector step, i.e. per executed chunk).
        td_lambda: lambda in [0, 1].

    Returns:
        targets (T, ...).
    """
    not_terminated = 1.0 - terminated.float()
    if td_lambda == 0.0:
        return rewards + gamma * not_terminated * next_values
    continues = 1.0 - dones.float()
    continues[-1] = 0.0  # the segment ends here: bootstrap fully
    targets = torch.empty_like(rewards)
    following = torch.zeros_like(rewards[0])  # y_{t+1}
    for t in reversed(range(rewards.shape[0])):
        blend = next_values[t] + td_lambda * continues[t] * (following - next_values[t])
        following = rewards[t] + gamma * not_terminated[t] * blend
        targets[t] = following
    return targets


def update_abs_reward_ema(ema: float | None, rewards: Tensor, rate: float) -> float | None:
    """One step of the exponential moving average of the batch's mean ``|r|`` (RLDT's reward
    scale; the released code's ``EMARewardScaler``).

    In a torchrun job the batch is every rank's together. The first batch with a non-zero mean seeds the average; all-zero batches (a sparse task that
    has not succeeded yet) leave it unchanged so the scale cannot collapse.

    Args:
        ema: current average, or None before the first non-zero batch.
        rewards: raw rewards, any shape.
        rate: EMA rate in (0, 1]: ``ema <- (1 - rate) ema + rate * mean|r|``.

    Returns:
        The new average (None while every batch so far was all-zero).
    """
    batch_mean = distributed.all_mean(float(rewards.abs().mean()))  # over every rank's batch
    if batch_mean < 1e-8:
        return ema
    if ema is None:
        return batch_mean
    return (1.0 - rate) * ema + rate * batch_mean


def reward_scale_from_ema(ema: float | None) -> float:
    """Multiplier for raw rewards: ``1 / mean|r|`` (1 while no non-zero reward was seen)."""
    return 1.0 if ema is None else 1.0 / (ema + 1e-8)
