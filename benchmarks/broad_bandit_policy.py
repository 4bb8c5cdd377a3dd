"""A broad behaviour-cloned flow policy on toy/bandit: the starting point of the methods that
only fine-tune (DSRL steers a frozen policy and cannot start from scratch) in the
multimodality protocol.

The data are 2048 one-step episodes whose actions are uniform in [-0.9, 0.9]^2, so the
policy's samples cover all four optima and the gaps between them (its mean reward is about
0.1). The policy is the broad flow policy of tests/algos/broad_policies.py, made by
``flowpolicy pretrain``: residual 3x64, 4 flow steps, chunk 1, min/max scaling.

Example::

    python benchmarks/broad_bandit_policy.py --out runs/reference/toy/bandit
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

from flowpolicy.algos.bc import BCConfig
from flowpolicy.data import Dataset, save_dataset
from flowpolicy.pretrain import PretrainConfig, pretrain


@dataclass(frozen=True)
class Args:
    """Write the broad data and behaviour-clone the broad flow policy on them."""

    out: Path = Path("runs/reference/toy/bandit")
    """directory for ``data/dataset.hdf5`` and the pretraining run ``bc-broad/``."""
    transitions: int = 2048
    """one-step episodes of uniform actions."""
    spread: float = 0.9
    """actions are uniform in [-spread, spread]^2."""
    gradient_steps: int = 300
    """behaviour-cloning steps (the tests' broad policies take 300)."""
    seed: int = 0


def broad_dataset(transitions: int, spread: float, seed: int) -> Dataset:
    """One-step bandit episodes: observation ones(2), uniform actions, reward 0, terminal."""
    rng = np.random.default_rng(seed)
    return Dataset(
        observations=np.ones((transitions, 2), dtype=np.float32),
        actions=rng.uniform(-spread, spread, size=(transitions, 2)).astype(np.float32),
        rewards=np.zeros(transitions, dtype=np.float32),
        terminals=np.ones(transitions, dtype=bool),
        truncations=np.zeros(transitions, dtype=bool),
        episode_ends=np.arange(1, transitions + 1),
        metadata={"env_id": "toy/bandit", "source": "benchmarks/broad_bandit_policy.py"},
    )


def main(args: Args) -> None:
    data = args.out / "data" / "dataset.hdf5"
    if not data.is_file():
        data.parent.mkdir(parents=True, exist_ok=True)
        save_dataset(data, broad_dataset(args.transitions, args.spread, args.seed))
    config = PretrainConfig(
        dataset=str(data),
        env="toy/bandit",
        policy="flow",
        chunk=1,
        flow_steps=4,
        hidden=(64, 64, 64),
        # The tests' recipe: an EMA from the first step that follows the weights closely.
        bc=BCConfig(batch_size=256, ema_start=0, ema_decay=0.9, ema_every=1),
        gradient_steps=args.gradient_steps,
        eval_every=args.gradient_steps,
        eval_episodes=1000,
        checkpoint_every=args.gradient_steps,
        seed=args.seed,
        run_dir=str(args.out / "bc-broad"),
        tensorboard=False,
    )
    result = pretrain(config)
    print(f"wrote {result.run_dir}")


if __name__ == "__main__":
    main(tyro.cli(Args))
