"""benchmarks/qam_update_speed.py on a tiny saved flow policy: it builds QAM as ``--init``
does, fills the replay, times both kinds of step and prints the breakdown."""

from __future__ import annotations

import pytest
import torch
from qam_update_speed import Args, build, main

from flowpolicy.policies import FlowPolicy
from flowpolicy.policy_io import save_policy


@pytest.fixture
def tiny_policy_file(tmp_path):
    policy = FlowPolicy(3, [-1.0, -1.0], [1.0, 1.0], chunk=2, flow_steps=3, hidden=(16,))
    path = tmp_path / "policy.pt"
    save_policy(path, policy)
    return path


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_build_takes_the_policys_settings_and_fills_the_replay(tiny_policy_file) -> None:
    algo = build(Args(init=tiny_policy_file, replay_iterations=3))
    assert (algo.config.chunk, algo.config.flow_steps) == (2, 3)
    assert len(algo.replay) == 3 * 4  # 3 iterations of 4 env trajectories
    assert algo.iterations == 1  # past the critic warm-up, so the actor step runs


def test_prints_timings_and_breakdown(tiny_policy_file, capsys) -> None:
    args = Args(init=tiny_policy_file, steps=1, repeats=1, warmup=0, replay_iterations=2)
    main(Args(**(vars(args) | dict(breakdown=True))))
    out = capsys.readouterr().out
    assert "h of updates per 100k env steps" in out
    for piece in ("critic step", "actor step", "breakdown"):
        assert piece in out


def test_builds_the_authors_preset_on_the_requested_device(tiny_policy_file) -> None:
    algo = build(Args(init=tiny_policy_file, replay_iterations=1, preset="qam", device="cpu"))
    assert algo.config.critic_members == 10  # the authors' ensemble, not qam-cpu's
    assert algo.replay.fresh.obs.device == torch.device("cpu")
