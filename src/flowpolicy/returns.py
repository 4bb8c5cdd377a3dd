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
