"""benchmarks/stand_in_policy.py: the untrained policy has the reference BC flow policy's
shape and fine-tunes like it."""

from __future__ import annotations

from stand_in_policy import Args, main

from flowpolicy.algos.rldt import RLDTConfig
from flowpolicy.policies import FlowPolicy
from flowpolicy.policy_io import load_policy_from
from flowpolicy.train import TrainConfig, train


def test_writes_a_flow_policy_that_a_fine_tuning_run_starts_from(tmp_path) -> None:
    out = tmp_path / "stand_in.pt"
    main(Args(out=out, env="toy/nav", chunk=2))
    policy = load_policy_from(out)
    assert isinstance(policy, FlowPolicy)
    assert (policy.chunk, policy.chunk_exec, policy.flow_steps) == (2, 2, 10)
    config = TrainConfig(
        algo=RLDTConfig(num_envs=2, num_steps=8, num_particles=4, actor_chunk_states=8),
        env="toy/nav",
        total_steps=32,
        eval_every=0,
        eval_episodes=1,
        init=str(out),
        run_dir=str(tmp_path / "run"),
        quiet=True,
        tensorboard=False,
        device="cpu",
    )
    assert train(config).metrics["step"] == 32
