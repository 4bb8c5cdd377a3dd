"""The replay of FQL / QC-FQL (``flowpolicy.algos.fql``): chunk transitions
``(s, a_{t:t+h}, R, s', term)`` with ``R = sum_k gamma^k r_{t+k}``, the dataset's windows first
(kept for the whole run, as the released code keeps its dataset as the replay), then a ring of
online rows.

Shapes: ``C`` rows, ``h`` chunk, ``Do`` observation size, ``A = h * Da`` flat chunk.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from flowpolicy.data import Dataset
from flowpolicy.errors import UserError


class ChunkReplay:
    """Rows ``(obs, actions, rewards, next_obs, terminated)`` of chunk transitions: the dataset's
    in ``[0, offline)``, kept for the whole run, then a FIFO ring of online rows that grows
    (doubling) up to ``capacity``. Its state holds the online rows only: a resumed run reads the
    dataset again (:meth:`FQL.load_offline_data`)."""

    def __init__(self, capacity: int, device: torch.device) -> None:
        self.capacity, self.device = capacity, device
        self.data: dict[str, Tensor] = {}
        self.offline = self.size = self.pointer = 0

    def __len__(self) -> int:
        return self.offline + self.size

    def _reserve(self, rows: int, example: dict[str, Tensor]) -> None:
        allocated = len(next(iter(self.data.values()))) if self.data else 0
        if rows <= allocated:
            return
        rows = min(self.capacity, max(rows, 2 * allocated))
        grown = {k: v.new_zeros((rows, *v.shape[1:])) for k, v in example.items()}
        for name, old in self.data.items():
            grown[name][: len(old)] = old
        self.data = grown

    def set_offline(self, rows: dict[str, Tensor], online_rows: int) -> None:
        """Put the dataset's rows first; the capacity grows to hold them and ``online_rows``."""
        self.offline = len(rows["rewards"])
        self.capacity = max(self.capacity, self.offline + online_rows)
        self.data = {}
        self._reserve(self.offline, rows)
        for name, value in rows.items():
            self.data[name][: self.offline] = value

    def add(self, rows: dict[str, Tensor]) -> None:
        """Append online rows, overwriting the oldest online rows once full."""
        count, ring = len(rows["rewards"]), self.capacity - self.offline
        self._reserve(self.offline + min(self.size + count, ring), rows)
        index = self.offline + (self.pointer + torch.arange(count, device=self.device)) % ring
        for name, value in rows.items():
            self.data[name][index] = value
        self.pointer, self.size = (self.pointer + count) % ring, min(self.size + count, ring)

    def sample(self, batch_size: int) -> dict[str, Tensor]:
        """``batch_size`` rows drawn uniformly with replacement from every stored row."""
        index = torch.randint(len(self), (batch_size,), device=self.device)
        return {name: value[index] for name, value in self.data.items()}

    def state_dict(self) -> dict:
        online = slice(self.offline, self.offline + self.size)
        rows = {k: v[online].clone() for k, v in self.data.items()}
        return {"offline": self.offline, "pointer": self.pointer, "size": self.size, "rows": rows}

    def load_state_dict(self, state: dict) -> None:
        # offline == 0 with dataset rows in the state: restored without its dataset to be
        # evaluated (flowpolicy eval); a resumed run always reads its dataset first.
        if self.offline and state["offline"] != self.offline:
            raise UserError(
                f"The run's checkpoint was made with {state['offline']} dataset rows in its "
                f"replay but the dataset now gives {self.offline}: the dataset file changed. "
                "Restore the file the run started with, or start a new run."
            )
        if state["size"]:
            self._reserve(self.offline + state["size"], state["rows"])
            for name, value in state["rows"].items():
                self.data[name][self.offline : self.offline + state["size"]] = value
        self.pointer, self.size = state["pointer"], state["size"]


def dataset_chunks(dataset: Dataset, chunk: int, gamma: float) -> dict[str, np.ndarray]:
    """The dataset's chunk transitions: every window of ``chunk`` steps inside one episode
    (QC gives windows that cross an episode end zero critic weight; here they are left out),
    with ``R = sum_k gamma^k r_{t+k}``, the next observation and termination of the window's
    last step. Without recorded next observations, ``s'_t = s_{t+1}``, and windows that end
    at a truncated last step (whose true next observation is unknown) are left out."""
    windows = dataset.chunk_indices(chunk, pad=False)  # (C, h) step indices
    next_obs, known = dataset.next_observations, np.ones(dataset.num_transitions, dtype=bool)
    if next_obs is None:
        next_obs = np.concatenate([dataset.observations[1:], dataset.observations[-1:]])
        last = dataset.episode_ends - 1
        next_obs[last] = dataset.observations[last]  # terminal: never bootstrapped from
        known[last] = dataset.terminals[last]
    windows = windows[known[windows[:, -1]]]
    if len(windows) == 0:
        raise UserError(
            f"The dataset has no window of {chunk} steps inside one episode (with a known next "
            "observation), so it gives FQL nothing to learn from. Pass a smaller --chunk or a "
            "dataset of longer episodes."
        )
    last = windows[:, -1]
    return {
        "obs": dataset.observations[windows[:, 0]],
        "actions": dataset.actions[windows].reshape(len(windows), -1),  # env units
        "rewards": (dataset.rewards[windows] * gamma ** np.arange(chunk)).sum(1),
        "next_obs": next_obs[last],
        "terminated": dataset.terminals[last].astype(np.float32),
    }
