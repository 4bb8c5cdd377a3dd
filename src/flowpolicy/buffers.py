"""Rollout storage for the on-policy methods, and a trajectory replay for TD(lambda) critics.

The loop writes one row per vector-env step; the algorithm's ``act`` decides what else is kept
per step (its *record*: e.g. log-probs for PPO, the (tau, eps) pairs and old CFM losses for
FPO). The loop never looks inside a record.

RLDT and QAM keep whole trajectory segments (one per env per iteration) of the last few
iterations in a :class:`TrajectoryReplay`, so their critics can run TD(lambda) along time.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, fields

import torch
from torch import Tensor


@dataclass
class RolloutBatch:
    """One iteration of experience, every tensor with leading dims (T, N).

    Attributes:
        obs: (T, N, Do) raw observations acted on.
        next_obs: (T, N, Do) the true next observations (final obs where an episode ended).
        rewards: (T, N) raw env rewards (algorithms apply their own scaling).
        terminated: (T, N) episode ended in an absorbing state.
        dones: (T, N) episode ended (terminated or truncated).
        records: the algorithm's own per-step tensors, each (T, N, ...).
        progress: fraction of the run's env-step budget done before this batch, in [0, 1).
    """

    obs: Tensor
    next_obs: Tensor
    rewards: Tensor
    terminated: Tensor
    dones: Tensor
    records: dict[str, Tensor]
    progress: float = 0.0


class RolloutBuffer:
    """Preallocated (T, N, ...) storage filled step by step, read as a :class:`RolloutBatch`."""

    def __init__(
        self, num_steps: int, num_envs: int, obs_dim: int, device: torch.device | str = "cpu"
    ) -> None:
        self.num_steps = num_steps
        self.device = torch.device(device)
        self.obs = torch.zeros(num_steps, num_envs, obs_dim, device=device)
        self.next_obs = torch.zeros(num_steps, num_envs, obs_dim, device=device)
        self.rewards = torch.zeros(num_steps, num_envs, device=device)
        self.terminated = torch.zeros(num_steps, num_envs, device=device)
        self.dones = torch.zeros(num_steps, num_envs, device=device)
        self.records: dict[str, Tensor] = {}
        self.step = 0

    def add(
        self,
        obs: Tensor,
        record: dict[str, Tensor],
        reward: Tensor,
        next_obs: Tensor,
        terminated: Tensor,
        done: Tensor,
    ) -> None:
        """Store one vector step; record tensors are (N, ...)."""
        t = self.step
        if t >= self.num_steps:
            raise RuntimeError("rollout buffer is full; call batch() and reset()")
        for name, value in record.items():
            if name not in self.records:
                self.records[name] = torch.zeros(
                    self.num_steps, *value.shape, dtype=value.dtype, device=self.device
                )
            self.records[name][t] = value
        self.obs[t], self.next_obs[t], self.rewards[t] = obs, next_obs, reward
        self.terminated[t], self.dones[t] = terminated, done
        self.step += 1

    def batch(self, progress: float = 0.0) -> RolloutBatch:
        """The full rollout; raises if it is not full yet."""
        if self.step != self.num_steps:
            raise RuntimeError(f"rollout has {self.step} of {self.num_steps} steps")
        return RolloutBatch(
            self.obs,
            self.next_obs,
            self.rewards,
            self.terminated,
            self.dones,
            dict(self.records),
            progress,
        )

    def reset(self) -> None:
        self.step = 0


@dataclass
class TrajectoryBatch:
    """Trajectory segments, every tensor with leading dims (S, T): S segments of T steps each
    (one segment per env per iteration, in time order).

    Attributes:
        obs: (S, T, Do) raw observations acted on.
        actions: (S, T, A) the executed actions (what the critic is trained on).
        rewards: (S, T) raw rewards.
        next_obs: (S, T, Do) true next observations (the final observation at an episode end).
        terminated: (S, T) absorbing end at the step.
        dones: (S, T) episode ended at the step (terminated or truncated).
    """

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    next_obs: Tensor
    terminated: Tensor
    dones: Tensor

    @classmethod
    def from_rollout(cls, batch: RolloutBatch, actions: Tensor) -> TrajectoryBatch:
        """One segment per env from a (T, N) rollout; ``actions`` is (T, N, A)."""

        def segments(x: Tensor) -> Tensor:
            return x.transpose(0, 1).contiguous()  # (T, N, ...) -> (N, T, ...)

        return cls(
            segments(batch.obs),
            segments(actions),
            segments(batch.rewards),
            segments(batch.next_obs),
            segments(batch.terminated.float()),
            segments(batch.dones.float()),
        )

    def __len__(self) -> int:
        return self.rewards.shape[0]

    def select(self, index: Tensor) -> TrajectoryBatch:
        """The segments at ``index`` (S',)."""
        return TrajectoryBatch(*(getattr(self, f.name)[index] for f in fields(self)))

    @classmethod
    def cat(cls, batches: list[TrajectoryBatch]) -> TrajectoryBatch:
        """Segments of several batches (equal T) stacked along S, in order."""
        return cls(*(torch.cat([getattr(b, f.name) for b in batches]) for f in fields(cls)))

    def state_dict(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class TrajectoryReplay:
    """FIFO replay of the trajectory segments of the last ``capacity`` iterations.

    The newest iteration's segments are the *fresh* data; all others are *old*. A training
    round (:meth:`sample_round`) draws as many segments as there are fresh ones, with at least
    ``min_fresh_fraction`` of them fresh (RLDT: 1/3), and otherwise in proportion to what is
    stored, without replacement.

    Args:
        capacity: iterations kept, the newest included (RLDT Gym: 20, Robomimic: 10).
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1 iteration, got {capacity}.")
        self.capacity = capacity
        self.iterations: deque[TrajectoryBatch] = deque(maxlen=capacity)
        # Every stored transition in one batch, built on first use (see _all_transitions);
        # None whenever the stored iterations changed since.
        self._transitions: TrajectoryBatch | None = None

    def add(self, segments: TrajectoryBatch) -> None:
        """Store one iteration's segments as the fresh data; the oldest iteration beyond
        ``capacity`` is dropped."""
        if self.iterations and segments.rewards.shape[1] != self.iterations[0].rewards.shape[1]:
            raise ValueError("every iteration's segments must have the same length T")
        self.iterations.append(segments)  # may drop the oldest iteration
        self._transitions = None

    def __len__(self) -> int:
        """Segments stored."""
        return sum(len(batch) for batch in self.iterations)

    @property
    def fresh(self) -> TrajectoryBatch:
        if not self.iterations:
            raise RuntimeError("the replay is empty; add an iteration first")
        return self.iterations[-1]

    @property
    def old(self) -> TrajectoryBatch | None:
        """All segments but the fresh ones, oldest first (None if there are none)."""
        older = list(self.iterations)[:-1]
        return TrajectoryBatch.cat(older) if older else None

    def round_sizes(self, num_segments: int, min_fresh_fraction: float) -> tuple[int, int]:
        """(fresh, old) segment counts of one round of ``num_segments`` segments.

        The fresh share is ``max(fresh / stored, min_fresh_fraction)``, rounded up, capped by
        what is stored; the old segments fill the rest.
        """
        num_fresh, num_stored = len(self.fresh), len(self)
        fraction = max(num_fresh / num_stored, min_fresh_fraction)
        take_fresh = min(num_fresh, num_segments, math.ceil(num_segments * fraction - 1e-9))
        take_old = min(num_stored - num_fresh, num_segments - take_fresh)
        return take_fresh, take_old

    def sample_round(
        self,
        num_segments: int,
        min_fresh_fraction: float,
        generator: torch.Generator | None = None,
    ) -> TrajectoryBatch:
        """Segments for one training round: the fresh ones first, then the old ones.

        Args:
            num_segments: segments to draw (RLDT: the number of envs).
            min_fresh_fraction: lower bound of the fresh share, in (0, 1].
            generator: RNG for the draw (default: torch's global RNG).
        """
        take_fresh, take_old = self.round_sizes(num_segments, min_fresh_fraction)
        fresh = self.fresh
        chosen = [fresh.select(torch.randperm(len(fresh), generator=generator)[:take_fresh])]
        older = list(self.iterations)[:-1]
        num_old = len(self) - len(fresh)
        if take_old > 0:
            # Draw over all old segments, then gather per iteration (no copy of the whole replay).
            picked = torch.randperm(num_old, generator=generator)[:take_old].sort().values
            start = 0
            for batch in older:
                stop = start + len(batch)
                inside = picked[(picked >= start) & (picked < stop)] - start
                if len(inside):
                    chosen.append(batch.select(inside))
                start = stop
        return TrajectoryBatch.cat(chosen)

    def sample_transitions(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> TrajectoryBatch:
        """``batch_size`` transitions drawn uniformly, with replacement, from every step of
        every stored segment (QAM's replay sampling), as one-step segments (B, 1, ...), in the
        order drawn.

        The draw is one ``torch.randint`` over the M stored transitions, numbered oldest
        iteration first, then segment, then step; it does not depend on how they are stored,
        so seeded runs reproduce.

        Args:
            batch_size: B.
            generator: RNG for the draw (default: torch's global RNG).
        """
        if not self.iterations:
            raise RuntimeError("the replay is empty; add an iteration first")
        transitions = self._all_transitions()
        index = torch.randint(len(transitions), (batch_size,), generator=generator)
        return transitions.select(index)

    def _all_transitions(self) -> TrajectoryBatch:
        """Every stored transition as a one-step segment (M, 1, ...), in the numbering of
        :meth:`sample_transitions`, so that a draw is one gather instead of a loop over the
        iterations.

        Built on the first draw after an add or a load and kept until the next. It is a second
        copy of the stored data: about 20 MB for QAM's replay at the end of a 500k-step Hopper
        run.
        """
        if self._transitions is None:
            self._transitions = TrajectoryBatch(
                *(
                    torch.cat(
                        [getattr(batch, f.name).flatten(0, 1) for batch in self.iterations]
                    ).unsqueeze(1)
                    for f in fields(TrajectoryBatch)
                )
            )
        return self._transitions

    def state_dict(self) -> dict:
        return {
            "capacity": self.capacity,
            "iterations": [batch.state_dict() for batch in self.iterations],
        }

    def load_state_dict(self, state: dict) -> None:
        self.capacity = state["capacity"]
        self.iterations = deque(
            (TrajectoryBatch(**batch) for batch in state["iterations"]), maxlen=self.capacity
        )
        self._transitions = None
