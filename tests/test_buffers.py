"""RolloutBuffer: shapes, per-name records, fullness checks."""

from __future__ import annotations

import pytest
import torch

from flowpolicy.buffers import RolloutBatch, RolloutBuffer

T, N, DO = 3, 2, 4


def _fill(buffer: RolloutBuffer, steps: int) -> None:
    for t in range(steps):
        buffer.add(
            obs=torch.full((N, DO), float(t)),
            record={
                "action": torch.full((N, 5), 10.0 + t),
                "tau": torch.full((N, 2, 3), 20.0 + t),
                "flag": torch.tensor([t % 2 == 0] * N),
            },
            reward=torch.tensor([t, -t], dtype=torch.float32),
            next_obs=torch.full((N, DO), t + 0.5),
            terminated=torch.tensor([0.0, float(t == 1)]),
            done=torch.tensor([float(t == 2), float(t == 1)]),
        )


def test_add_and_batch_shapes_and_values() -> None:
    buffer = RolloutBuffer(T, N, DO)
    _fill(buffer, T)
    batch = buffer.batch(progress=0.25)
    assert isinstance(batch, RolloutBatch)
    assert batch.obs.shape == batch.next_obs.shape == (T, N, DO)
    for x in (batch.rewards, batch.terminated, batch.dones):
        assert x.shape == (T, N)
    assert batch.progress == 0.25
    assert torch.equal(batch.obs[:, 0, 0], torch.tensor([0.0, 1.0, 2.0]))
    assert torch.equal(batch.next_obs[:, 1, 3], torch.tensor([0.5, 1.5, 2.5]))
    assert torch.equal(batch.rewards, torch.tensor([[0.0, 0.0], [1.0, -1.0], [2.0, -2.0]]))
    assert torch.equal(batch.terminated, torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    assert torch.equal(batch.dones, torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0]]))


def test_records_are_stored_per_name_with_their_shapes_and_dtypes() -> None:
    buffer = RolloutBuffer(T, N, DO)
    _fill(buffer, T)
    records = buffer.batch().records
    assert set(records) == {"action", "tau", "flag"}
    assert records["action"].shape == (T, N, 5)
    assert records["tau"].shape == (T, N, 2, 3)
    assert records["flag"].dtype == torch.bool
    assert torch.equal(records["action"][:, 1, 0], torch.tensor([10.0, 11.0, 12.0]))
    assert torch.equal(records["tau"][2], torch.full((N, 2, 3), 22.0))
    assert torch.equal(records["flag"][:, 0], torch.tensor([True, False, True]))


def test_batch_before_full_raises_and_overfill_raises() -> None:
    buffer = RolloutBuffer(T, N, DO)
    with pytest.raises(RuntimeError):
        buffer.batch()
    _fill(buffer, T - 1)
    with pytest.raises(RuntimeError, match="2 of 3"):
        buffer.batch()
    _fill(buffer, 1)
    buffer.batch()
    with pytest.raises(RuntimeError, match="full"):
        _fill(buffer, 1)


def test_reset_allows_refilling() -> None:
    buffer = RolloutBuffer(T, N, DO)
    _fill(buffer, T)
    buffer.reset()
    with pytest.raises(RuntimeError):
        buffer.batch()
    _fill(buffer, T)
    assert buffer.batch().obs.shape == (T, N, DO)
