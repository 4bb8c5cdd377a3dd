"""Every registered algorithm updated by 2 gloo processes on halves of a batch, against one
process on the whole batch (flowpolicy.distributed.rank_share and the synchronised steps).

For each algorithm, the 2 ranks end with identical weights and optimiser states, and take as
many optimiser steps as one process on all the envs (off-policy methods too: their
``utd_ratio`` counts the env steps of every rank). For the PPO-family methods, whose update
draws nothing at random, one minibatch per epoch makes the whole update the same computation
as one process's, so their first update matches it to numerical tolerance.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from flowpolicy import distributed
from flowpolicy.algos.registry import ALGORITHMS
from flowpolicy.buffers import RolloutBatch
from tests.algos.test_contract import build, modules_of, rollout, tiny_config

NAMES = list(ALGORITHMS)
NUM_ENVS, WORLD_SIZE, UPDATES = 4, 2, 2


def whole_config(name: str):
    """4 envs; one minibatch per epoch where the method has minibatches."""
    config = dataclasses.replace(tiny_config(name), num_envs=NUM_ENVS)
    if hasattr(config, "num_minibatches"):
        config = dataclasses.replace(config, num_minibatches=1)
    return config


def half(batch: RolloutBatch, rank: int) -> RolloutBatch:
    """Rank ``rank``'s envs of a (T, N, ...) batch."""
    part = slice(rank * NUM_ENVS // WORLD_SIZE, (rank + 1) * NUM_ENVS // WORLD_SIZE)
    return dataclasses.replace(
        batch,
        obs=batch.obs[:, part],
        next_obs=batch.next_obs[:, part],
        rewards=batch.rewards[:, part],
        terminated=batch.terminated[:, part],
        dones=batch.dones[:, part],
        records={key: value[:, part] for key, value in batch.records.items()},
    )


def optimizer_steps(algo) -> list[int]:
    """Optimiser steps taken, per optimiser of the algorithm (Adam's per-parameter count)."""
    steps = []
    for value in vars(algo).values():
        if isinstance(value, torch.optim.Optimizer):
            counts = [int(state["step"]) for state in value.state.values() if "step" in state]
            steps.append(max(counts, default=0))
    return steps


def weights(algo) -> dict[str, torch.Tensor]:
    """Every module's parameters and buffers, named by module and key."""
    out = {}
    for index, module in enumerate(modules_of(algo)):
        for key, value in module.state_dict().items():
            out[f"{index}.{type(module).__name__}.{key}"] = value.detach().clone()
    return out


def first_weights_after(algo, batches: list[RolloutBatch]) -> tuple[dict, list[int]]:
    """Update on every batch; the weights after the first update and the steps after all."""
    first = None
    for batch in batches:
        algo.update(batch)
        first = weights(algo) if first is None else first
    return first, optimizer_steps(algo)


def _rank(rank: int, init_file: str, folder: str) -> None:
    """One of 2 ranks: every algorithm built as train() builds it, updated on its halves."""
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE
    )
    torch.set_num_threads(1)
    results = {}
    for name in NAMES:
        batches = torch.load(f"{folder}/{name}-batches.pt", weights_only=False)
        config = distributed.rank_share(whole_config(name), WORLD_SIZE)
        algo = build(name, config=config)  # seed 0 on every rank: the same initial weights
        torch.manual_seed(100 + rank)  # then each rank draws its own minibatches
        first, steps = first_weights_after(algo, [half(batch, rank) for batch in batches])
        results[name] = {"first": first, "last": weights(algo), "steps": steps}
    torch.save(results, f"{folder}/rank{rank}.pt")
    distributed.stop()


@pytest.fixture(scope="module")
def updates(tmp_path_factory) -> tuple[dict, list[dict]]:
    """(one process's results per algorithm, [rank 0's, rank 1's])."""
    folder = tmp_path_factory.mktemp("data_parallel")
    single = {}
    for name in NAMES:
        collector = build(name, config=whole_config(name))
        batches = [rollout(collector, seed) for seed in range(UPDATES)]
        torch.save(batches, folder / f"{name}-batches.pt")
        algo = build(name, config=whole_config(name))
        torch.manual_seed(100)
        first, steps = first_weights_after(algo, batches)
        single[name] = {"first": first, "last": weights(algo), "steps": steps}
    mp.spawn(_rank, args=(str(folder / "init"), str(folder)), nprocs=WORLD_SIZE)
    ranks = [torch.load(folder / f"rank{rank}.pt", weights_only=False) for rank in range(2)]
    return single, ranks


PER_ENV_STATE = ("running_return", "previous_done")
"""Buffers that belong to a rank's own envs (a reward scaler's running return)."""


@pytest.mark.parametrize("name", NAMES)
def test_both_ranks_end_with_the_same_weights(name: str, updates) -> None:
    _, ranks = updates
    rank0, rank1 = ranks[0][name]["last"], ranks[1][name]["last"]
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        if not key.endswith(PER_ENV_STATE):
            assert torch.equal(rank0[key], rank1[key]), key


@pytest.mark.parametrize("name", NAMES)
def test_two_ranks_take_as_many_optimiser_steps_as_one_process(name: str, updates) -> None:
    single, ranks = updates
    assert single[name]["steps"] and min(single[name]["steps"]) > 0
    assert ranks[0][name]["steps"] == ranks[1][name]["steps"] == single[name]["steps"]


@pytest.mark.parametrize(
    "name", [n for n in NAMES if hasattr(ALGORITHMS[n].algorithm, "policy_loss")]
)
def test_the_first_on_policy_update_matches_one_process(name: str, updates) -> None:
    single, ranks = updates
    expected, got = single[name]["first"], ranks[0][name]["first"]
    initial = weights(build(name, config=whole_config(name)))
    moved = [key for key in expected if not torch.equal(expected[key], initial[key])]
    assert moved, "the update changed nothing: the comparison would be empty"
    for key in expected:
        if not key.endswith(PER_ENV_STATE):
            torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5, msg=key)


# ----------------------------------------------------------------------------- BC


def _bc_rank(rank: int, init_file: str, folder: str) -> None:
    """Behaviour cloning as `flowpolicy pretrain` runs it on 2 ranks: same initial weights,
    each rank its own minibatches (and noise draws) of its own chunks."""
    from flowpolicy.algos.bc import BC, BCConfig
    from flowpolicy.policies import FlowPolicy

    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE
    )
    torch.set_num_threads(1)
    torch.manual_seed(0)
    policy = FlowPolicy(3, -torch.ones(2), torch.ones(2), hidden=(16, 16, 16), chunk=2)
    bc = BC(policy, BCConfig(ema_start=1, ema_every=1), 10)
    torch.manual_seed(1 + rank)
    for _ in range(5):
        bc.update(torch.randn(8, 3), torch.rand(8, 4) * 2 - 1)
    torch.save(bc.state_dict(), f"{folder}/bc{rank}.pt")
    distributed.stop()


def test_behaviour_cloning_ranks_keep_the_same_weights(tmp_path) -> None:
    from tests.test_distributed import tensors

    mp.spawn(_bc_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD_SIZE)
    rank0, rank1 = (tensors(torch.load(tmp_path / f"bc{r}.pt")) for r in range(2))
    assert rank0.keys() == rank1.keys() and any("optimizer" in key for key in rank0)
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key


# ----------------------------------------------------------------------------- a rank's share


def test_a_rank_steps_its_share_of_the_envs_and_the_replay_batch() -> None:
    qam = whole_config("qam")  # 4 envs, batch 8, utd 0.25
    share = distributed.rank_share(qam, 2)
    assert (share.num_envs, share.batch_size, share.utd_ratio) == (2, 4, 0.5)
    ppo = distributed.rank_share(whole_config("ppo"), 2)
    assert ppo.num_envs == 2 and ppo.num_minibatches == 1
    assert distributed.rank_share(qam, 1) is qam
    with pytest.raises(distributed.UserError, match="--batch-size 8 does not split over 3"):
        distributed.rank_share(dataclasses.replace(qam, num_envs=6), 3)
    with pytest.raises(distributed.UserError, match="--num-envs 4 does not split over 3"):
        distributed.rank_share(qam, 3)
