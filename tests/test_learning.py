"""Learning on the multimodal bandit (four equal optima), asserted from samples.

Measured on this code (15-20 iterations of 1024 one-step episodes, seconds on one core):

- FPO with its default settings (CFM ratio over the whole flow, tau on the sampling grid)
  raises the mean reward from ~0.15 to > 0.9 but its samples end on one or two of the four
  optima (docs/fpo.md has the sweep).
- FPO with the CFM ratio measured on the late part of the flow only (tau ~ U[0.8, 1]) and a
  gentler initial field (output scale 0.05) keeps three or four optima populated: the early
  flow, which decides how noise is split between modes, is then left as the symmetric
  initialisation made it, while the late flow sharpens each mode. This is the setting the
  coverage test uses; it is seed-sensitive (docs/fpo.md lists the seeds measured).
- Gaussian PPO stays broad or picks one optimum and covers fewer than three.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowpolicy.algos.fpo import FPOConfig
from flowpolicy.algos.fql import FQLConfig
from flowpolicy.algos.ppo import PPOConfig
from flowpolicy.data import Dataset, save_dataset
from flowpolicy.envs import BanditEnv, optimum_coverage
from flowpolicy.train import TrainConfig, load_policy, train

DATA = dict(num_envs=64, num_steps=16, num_minibatches=4, update_epochs=10, anneal_lr=False)
STEPS = 15 * 64 * 16


def trained_samples(tmp_path, algo, seed: int = 0, steps: int = STEPS) -> np.ndarray:
    config = TrainConfig(
        algo=algo,
        env="toy/bandit",
        seed=seed,
        total_steps=steps,
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
def fpo_late_tau_samples(tmp_path_factory):
    algo = FPOConfig(
        **DATA, learning_rate=1e-3, tau_sampling="uniform", tau_min=0.8, output_scale=0.05
    )
    return trained_samples(tmp_path_factory.mktemp("fpo_late"), algo, steps=20 * 64 * 16)


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


def test_fpo_covers_at_least_three_optima(fpo_late_tau_samples, ppo_samples):
    coverage = optimum_coverage(fpo_late_tau_samples, BanditEnv().optima)
    assert covered(fpo_late_tau_samples) >= 3 > covered(ppo_samples), coverage
    assert BanditEnv().reward(fpo_late_tau_samples).mean() > 0.4  # learned, not just broad


def test_fql_offline_beats_its_dataset_on_the_bandit(tmp_path):
    """FQL's offline phase on 2048 uniformly random bandit actions (mean reward 0.14), 800
    gradient steps with the normalised Q loss (alpha 1), then one online iteration. Measured:
    mean reward 0.90 through the runner (seed 0); with the algorithm alone 0.89 / 0.96 (seeds
    0, 1), the samples on one optimum; with the paper's unnormalised loss at alpha 10 the
    policy stays at the data's 0.15."""
    bandit, rng, n = BanditEnv(), np.random.default_rng(0), 2048
    actions = rng.uniform(-1, 1, (n, 2))
    dataset = Dataset(
        np.ones((n, 2)),
        actions,
        bandit.reward(actions),
        np.ones(n, bool),
        np.zeros(n, bool),
        np.arange(1, n + 1),
    )
    save_dataset(tmp_path / "bandit.h5", dataset)
    algo = FQLConfig(
        num_envs=2,
        num_steps=8,
        flow_steps=5,
        actor_hidden=(64, 64),
        critic_hidden=(64, 64),
        batch_size=128,
        learning_rate=1e-3,
        alpha=1.0,
        normalize_q_loss=True,
        dataset=str(tmp_path / "bandit.h5"),
        offline_steps=800,
        offline_log_every=800,
        utd_ratio=0.25,
    )
    samples = trained_samples(tmp_path, algo, steps=16)
    assert bandit.reward(samples).mean() > 0.6  # the data's mean is 0.14
