"""Learning on the multimodal bandit (four equal optima), asserted from samples.

Measured on this code (seed 0, 15 iterations of 1024 one-step episodes, a few seconds on one
core): FPO raises the mean reward from ~0.15 to > 0.9 but its samples end on one or two of
the four optima; Gaussian PPO stays broad and covers none with 10% of its mass. The property
the issue asks for — FPO keeping >= 3 optima with >= 10% each — does not hold yet: the test is
a strict xfail so it flips the day it does.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowpolicy.algos.fpo import FPOConfig
from flowpolicy.algos.ppo import PPOConfig
from flowpolicy.envs import BanditEnv, optimum_coverage
from flowpolicy.train import TrainConfig, load_policy, train

DATA = dict(num_envs=64, num_steps=16, num_minibatches=4, update_epochs=10, anneal_lr=False)
STEPS = 15 * 64 * 16


def trained_samples(tmp_path, algo, seed: int = 0) -> np.ndarray:
    config = TrainConfig(
        algo=algo,
        env="toy/bandit",
        seed=seed,
        total_steps=STEPS,
        eval_every=0,
        eval_episodes=1,
        tensorboard=False,
        quiet=True,
        run_dir=str(tmp_path / type(algo).__name__),
    )
    policy = load_policy(train(config).run_dir)
    torch.manual_seed(1)
    return policy.act(torch.ones(4000, 2), "random").numpy()


@pytest.fixture(scope="module")
def fpo_samples(tmp_path_factory):
    return trained_samples(tmp_path_factory.mktemp("fpo"), FPOConfig(**DATA, learning_rate=1e-3))


@pytest.fixture(scope="module")
def ppo_samples(tmp_path_factory):
    return trained_samples(tmp_path_factory.mktemp("ppo"), PPOConfig(**DATA, learning_rate=1e-3))


def covered(samples: np.ndarray) -> int:
    """Optima holding at least 10% of the samples (within radius 0.25)."""
    return int((optimum_coverage(samples, BanditEnv().optima) >= 0.10).sum())


def test_fpo_learns_the_bandit(fpo_samples):
    assert BanditEnv().reward(fpo_samples).mean() > 0.5  # ~0.15 for the initial policy


def test_gaussian_ppo_covers_fewer_than_three_optima(ppo_samples):
    assert covered(ppo_samples) < 3


@pytest.mark.xfail(
    strict=True,
    reason="measured: FPO's samples collapse onto 1-2 of the 4 optima (see docs/fpo.md)",
)
def test_fpo_covers_at_least_three_optima(fpo_samples, ppo_samples):
    assert covered(fpo_samples) >= 3 > covered(ppo_samples)
