"""RolloutBuffer: shapes, per-name records, fullness checks. TrajectoryReplay: FIFO, the fresh
fraction of a round, state round trip, transition draws equal to a by-hand reference (fill-up,
eviction, reload) and never stale."""

from __future__ import annotations

import pytest
import torch

from flowpolicy.buffers import RolloutBatch, RolloutBuffer, TrajectoryBatch, TrajectoryReplay

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


# ----------------------------------------------------------------------------- trajectory replay


def _segments(iteration: int, num: int = 4, steps: int = 3) -> TrajectoryBatch:
    """``num`` segments whose every entry encodes (iteration, segment) as 100 * it + seg."""
    tag = (100.0 * iteration + torch.arange(num, dtype=torch.float32)).view(num, 1)
    return TrajectoryBatch(
        obs=tag.expand(num, steps).unsqueeze(-1).repeat(1, 1, 2),
        actions=tag.expand(num, steps).unsqueeze(-1).clone(),
        rewards=tag.expand(num, steps).clone(),
        next_obs=tag.expand(num, steps).unsqueeze(-1).repeat(1, 1, 2),
        terminated=torch.zeros(num, steps),
        dones=torch.zeros(num, steps),
    )


def _tags(batch: TrajectoryBatch) -> list[int]:
    return [int(x) for x in batch.rewards[:, 0]]


def test_trajectory_batch_from_rollout_is_one_segment_per_env() -> None:
    buffer = RolloutBuffer(T, N, DO)
    _fill(buffer, T)
    rollout = buffer.batch()
    segments = TrajectoryBatch.from_rollout(rollout, rollout.records["action"])
    assert len(segments) == N
    assert segments.obs.shape == (N, T, DO) and segments.actions.shape == (N, T, 5)
    # env 1's segment, in time order
    assert torch.equal(segments.rewards[1], torch.tensor([0.0, -1.0, -2.0]))
    assert torch.equal(segments.dones[1], torch.tensor([0.0, 1.0, 0.0]))
    assert torch.equal(segments.terminated[1], torch.tensor([0.0, 1.0, 0.0]))
    assert torch.equal(segments.next_obs[0, :, 0], torch.tensor([0.5, 1.5, 2.5]))
    assert torch.equal(segments.actions[0, :, 0], torch.tensor([10.0, 11.0, 12.0]))


def test_replay_is_fifo_over_iterations() -> None:
    replay = TrajectoryReplay(capacity=3)
    for iteration in range(5):
        replay.add(_segments(iteration))
    assert len(replay) == 12  # 3 iterations x 4 segments
    assert _tags(replay.fresh) == [400, 401, 402, 403]
    assert _tags(replay.old) == [200, 201, 202, 203, 300, 301, 302, 303]  # 0 and 1 dropped
    with pytest.raises(ValueError, match="same length"):
        replay.add(_segments(5, steps=4))


def test_round_sizes_keep_the_minimum_fresh_fraction() -> None:
    replay = TrajectoryReplay(capacity=3)
    replay.add(_segments(0))
    assert replay.round_sizes(4, 1 / 3) == (4, 0)  # only fresh data exists
    replay.add(_segments(1))
    assert replay.round_sizes(4, 1 / 3) == (2, 2)  # 4 of 8 stored are fresh: 1/2
    replay.add(_segments(2))
    assert replay.round_sizes(4, 1 / 3) == (2, 2)  # 4/12 = 1/3 of 4 = 1.33 -> at least 2
    assert replay.round_sizes(4, 0.75) == (3, 1)
    assert replay.round_sizes(4, 1.0) == (4, 0)
    assert replay.round_sizes(3, 1 / 3) == (1, 2)  # exactly 1/3 stays 1


def test_sample_round_draws_fresh_first_without_replacement() -> None:
    torch.manual_seed(0)
    replay = TrajectoryReplay(capacity=3)
    for iteration in range(3):
        replay.add(_segments(iteration))
    seen_old = set()
    for _ in range(50):
        tags = _tags(replay.sample_round(4, 0.5))
        assert len(tags) == 4 and len(set(tags)) == 4
        assert all(t >= 200 for t in tags[:2]) and all(t < 200 for t in tags[2:])
        seen_old |= set(tags[2:])
    assert seen_old == {0, 1, 2, 3, 100, 101, 102, 103}  # every old segment can be drawn
    round_ = replay.sample_round(4, 0.5)
    assert torch.equal(round_.obs[:, :, 0], round_.rewards)  # fields stay aligned per segment


def test_replay_state_dict_round_trip() -> None:
    replay = TrajectoryReplay(capacity=2)
    for iteration in range(3):
        replay.add(_segments(iteration))
    restored = TrajectoryReplay(capacity=7)
    restored.load_state_dict(replay.state_dict())
    assert restored.capacity == 2 and len(restored) == 8
    assert _tags(restored.fresh) == _tags(replay.fresh)
    restored.add(_segments(3))
    assert _tags(restored.old) == [200, 201, 202, 203]  # FIFO capacity survived the round trip


# ----------------------------------------------------------------------------- replay transitions


def _random_segments(generator: torch.Generator, num: int, steps: int = 5) -> TrajectoryBatch:
    """``num`` segments of random, distinct values in every field."""
    return TrajectoryBatch(
        obs=torch.randn(num, steps, 3, generator=generator),
        actions=torch.randn(num, steps, 2, generator=generator),
        rewards=torch.randn(num, steps, generator=generator),
        next_obs=torch.randn(num, steps, 3, generator=generator),
        terminated=torch.rand(num, steps, generator=generator),
        dones=torch.rand(num, steps, generator=generator),
    )


def _reference_transitions(
    stored: list[TrajectoryBatch], batch_size: int, generator: torch.Generator | None
) -> TrajectoryBatch:
    """What ``sample_transitions`` returns, the slow way: one ``randint`` over all stored
    transitions (oldest iteration first, then segment, then step), each looked up by hand."""
    total = sum(batch.rewards.numel() for batch in stored)
    rows: list[tuple[TrajectoryBatch, int, int]] = []
    for m in torch.randint(total, (batch_size,), generator=generator).tolist():
        for batch in stored:
            if m < batch.rewards.numel():
                break
            m -= batch.rewards.numel()
        rows.append((batch, *divmod(m, batch.rewards.shape[1])))
    names = ("obs", "actions", "rewards", "next_obs", "terminated", "dones")
    return TrajectoryBatch(
        *(torch.stack([getattr(b, name)[s, t : t + 1] for b, s, t in rows]) for name in names)
    )


def _assert_same(got: TrajectoryBatch, want: TrajectoryBatch) -> None:
    for name, expected in want.state_dict().items():
        assert torch.equal(getattr(got, name), expected), name


def _check_draws(replay: TrajectoryReplay, stored: list[TrajectoryBatch]) -> None:
    """Seeded draws (own generators and the global RNG) equal the reference's, and use the
    global RNG exactly as it does."""
    for seed, batch_size in ((0, 1), (1, 7), (2, 64)):
        got = replay.sample_transitions(batch_size, torch.Generator().manual_seed(seed))
        _assert_same(
            got, _reference_transitions(stored, batch_size, torch.Generator().manual_seed(seed))
        )
        assert got.obs.shape == (batch_size, 1, 3) and got.rewards.shape == (batch_size, 1)
    torch.manual_seed(3)
    got, after = replay.sample_transitions(40), torch.rand(3)
    torch.manual_seed(3)
    _assert_same(got, _reference_transitions(stored, 40, None))
    assert torch.equal(torch.rand(3), after)


def test_sample_transitions_matches_a_reference_through_fill_up_eviction_and_reload() -> None:
    generator = torch.Generator().manual_seed(0)
    replay = TrajectoryReplay(capacity=3)
    added: list[TrajectoryBatch] = []
    for num in (2, 3, 1, 4, 2):  # fill up, then two evictions; S varies per iteration
        added.append(_random_segments(generator, num))
        replay.add(added[-1])
        _check_draws(replay, added[-3:])
    restored = TrajectoryReplay(capacity=1)
    restored.load_state_dict(replay.state_dict())
    _check_draws(restored, added[-3:])
    added.append(_random_segments(generator, 3))
    restored.add(added[-1])  # evicts again after the reload
    _check_draws(restored, added[-3:])


def test_sample_transitions_sees_every_add_eviction_and_load() -> None:
    def drawn_tags(replay: TrajectoryReplay) -> set[int]:
        sample = replay.sample_transitions(400, torch.Generator().manual_seed(0))
        return {int(x) for x in sample.rewards[:, 0]}

    replay = TrajectoryReplay(capacity=2)
    replay.add(_segments(0))
    assert drawn_tags(replay) == {0, 1, 2, 3}
    replay.add(_segments(1))
    assert drawn_tags(replay) == {0, 1, 2, 3, 100, 101, 102, 103}
    replay.add(_segments(2))  # drops iteration 0
    assert drawn_tags(replay) == {100, 101, 102, 103, 200, 201, 202, 203}
    other = TrajectoryReplay(capacity=2)
    other.add(_segments(7, num=2))
    replay.load_state_dict(other.state_dict())
    assert drawn_tags(replay) == {700, 701}


def test_sampling_leaves_the_stored_data_unchanged() -> None:
    generator = torch.Generator().manual_seed(1)
    replay = TrajectoryReplay(capacity=2)
    for num in (2, 3, 4):
        replay.add(_random_segments(generator, num))
    before = [
        {k: v.clone() for k, v in batch.items()} for batch in replay.state_dict()["iterations"]
    ]
    replay.sample_transitions(10)
    after = replay.state_dict()["iterations"]
    assert [batch.keys() for batch in after] == [batch.keys() for batch in before]
    for got, want in zip(after, before, strict=True):
        for name in want:
            assert torch.equal(got[name], want[name]) and got[name].shape == want[name].shape
