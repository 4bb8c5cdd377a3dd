"""An untrained flow policy with the architecture of the reference BC flow policies, for
measuring fine-tuning speed where the reference policies are not at hand (the GPU machine).

The policy is what ``flowpolicy pretrain --policy flow --chunk 4`` builds for the env
(``benchmarks/reference_policies.sh``: a residual 3x512 ReLU network, 10 flow steps, chunks of 4
actions, all executed), with its weights as initialised and its observation scaling unfitted.
A fine-tuning run from it costs what one from the trained policy costs; its returns mean
nothing, so it is for throughput only.

Example::

    python benchmarks/stand_in_policy.py --env Hopper-v5 --out /tmp/stand_in.pt
    python benchmarks/throughput.py --methods rldt reinflow --init /tmp/stand_in.pt
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

from flowpolicy.envs import env_dims, make_env
from flowpolicy.policy_io import save_policy
from flowpolicy.pretrain import PretrainConfig, build_policy


@dataclass(frozen=True)
class Args:
    """Write an untrained stand-in for an env's reference BC flow policy."""

    out: Path
    """policy file to write."""
    env: str = "Hopper-v5"
    """env whose observation size and action bounds the policy takes."""
    chunk: int = 4
    """actions per sample (the reference policies' 4)."""
    seed: int = 0
    """seed of the initial weights."""


def stand_in_policy(args: Args) -> torch.nn.Module:
    """The untrained policy (pretrain's defaults for a flow policy with ``args.chunk``)."""
    env = make_env(args.env)
    try:
        obs_dim, _ = env_dims(env)
        low = np.asarray(env.action_space.low, dtype=np.float32)
        high = np.asarray(env.action_space.high, dtype=np.float32)
    finally:
        env.close()
    torch.manual_seed(args.seed)
    config = PretrainConfig(dataset="none: a stand-in", policy="flow", chunk=args.chunk)
    return build_policy(config, obs_dim, low, high)


def main(args: Args) -> None:
    policy = stand_in_policy(args)
    metadata = {"env_id": args.env, "source": "benchmarks/stand_in_policy.py (untrained)"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_policy(args.out, policy, metadata)
    print(f"wrote {args.out}: untrained {type(policy).__name__} for {args.env}")


if __name__ == "__main__":
    main(tyro.cli(Args))
