"""Raw actions and covered optima of a toy/bandit run's policy (its last checkpoint).

Samples 4000 random-sampling actions at the bandit's (constant) observation and prints the
largest raw |a|, its 99th percentile and the share of coordinates past 2 (far past the squash),
then the share of the env actions within 0.25 of each optimum (``optimum_coverage``; an optimum
counts as covered at >= 10%). Used for the ``fpo-late-tau`` measurement in docs/fpo.md::

    python benchmarks/bandit_raw_actions.py runs/issue22/late-tau-bandit-s0-40k
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from flowpolicy.envs import make_env
from flowpolicy.envs.toy import optimum_coverage
from flowpolicy.train import load_policy

SAMPLES = 4000


def main(run_dir: str) -> None:
    torch.set_num_threads(1)
    policy, env = load_policy(run_dir), make_env("toy/bandit")
    obs, _ = env.reset(seed=0)
    torch.manual_seed(0)
    with torch.no_grad():
        batch = torch.as_tensor(np.repeat(obs[None], SAMPLES, 0), dtype=torch.float32)
        raw = policy.sample(batch, "random")
        env_actions = policy.env_action(raw).numpy()
    size = raw.abs()
    print(
        f"largest |a| {size.max():.1f}, p99 {size.quantile(0.99):.2f}, "
        f"share of coordinates with |a| > 2: {(size > 2).float().mean():.3f}"
    )
    shares = optimum_coverage(env_actions, env.unwrapped.optima)
    print("share of actions within 0.25 of each optimum:", np.round(shares, 3))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python benchmarks/bandit_raw_actions.py RUN_DIR")
    main(sys.argv[1])
