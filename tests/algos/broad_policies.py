"""Broad pretrained policies on the multimodal bandit, for the fine-tuning toys of the baselines.

A "broad" policy is behaviour-cloned on actions spread uniformly over most of the action box,
so its samples cover all four optima and the gaps between them: its mean reward is low
(about 0.10 for the flow policy, 0.14 for the DDPM one), and any method that improves a pretrained policy should raise it within a few
iterations. Each builder trains for a couple of seconds on a CPU and is cached per session.
"""

from __future__ import annotations

import copy
import functools

import torch

from flowpolicy.algos.bc import BC, BCConfig
from flowpolicy.envs import BanditEnv
from flowpolicy.policies import DiffusionPolicy, FlowPolicy

BANDIT_LOW, BANDIT_HIGH = [-1.0, -1.0], [1.0, 1.0]
BC_STEPS = 300


def _broad_dataset(size: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Constant bandit observations and actions uniform in [-0.9, 0.9]^2 (env coordinates)."""
    generator = torch.Generator().manual_seed(0)
    obs = torch.ones(size, 2)
    actions = (torch.rand(size, 2, generator=generator) * 2 - 1) * 0.9
    return obs, actions


def _behaviour_clone(policy: FlowPolicy | DiffusionPolicy) -> FlowPolicy | DiffusionPolicy:
    obs, actions = _broad_dataset()
    policy.fit_normalizers(obs, actions)
    config = BCConfig(ema_start=0, ema_decay=0.9, ema_every=1, batch_size=256)
    bc = BC(policy, config, BC_STEPS)
    obs_normalised = policy.obs_norm(obs)
    raw_actions = policy.raw_from_env(actions)
    for _ in range(BC_STEPS):
        index = torch.randint(0, len(obs), (config.batch_size,))
        bc.update(obs_normalised[index], raw_actions[index])
    return bc.eval_policy.requires_grad_(True)


@functools.cache
def _cached_flow_policy(flow_steps: int) -> FlowPolicy:
    torch.manual_seed(0)  # before construction: the initial weights are part of the result
    policy = FlowPolicy(
        2,
        BANDIT_LOW,
        BANDIT_HIGH,
        flow_steps=flow_steps,
        network="residual",
        hidden=(64, 64, 64),
        time_dim=16,
        activation="relu",
        output_scale=1.0,
        squash="clip",
        obs_normalization="min_max",
    )
    return _behaviour_clone(policy)


@functools.cache
def _cached_diffusion_policy(denoising_steps: int) -> DiffusionPolicy:
    torch.manual_seed(0)  # before construction: the initial weights are part of the result
    policy = DiffusionPolicy(
        2,
        BANDIT_LOW,
        BANDIT_HIGH,
        denoising_steps=denoising_steps,
        hidden=(64, 64, 64),
        obs_normalization="min_max",
    )
    return _behaviour_clone(policy)


def broad_flow_policy(flow_steps: int = 4) -> FlowPolicy:
    """A fresh copy of the broad flow policy (residual 3x64, clip squash, min/max normalisers)."""
    return copy.deepcopy(_cached_flow_policy(flow_steps))


def broad_diffusion_policy(denoising_steps: int = 10) -> DiffusionPolicy:
    """A fresh copy of the broad DDPM policy (residual 3x64, min/max normalisers)."""
    return copy.deepcopy(_cached_diffusion_policy(denoising_steps))


@torch.no_grad()
def mean_bandit_reward(policy: FlowPolicy | DiffusionPolicy, samples: int = 2000) -> float:
    """Mean reward of ``samples`` random-mode actions of ``policy`` on the default bandit."""
    torch.manual_seed(123)
    actions = policy.act(torch.ones(samples, 2), "random").numpy()
    return float(BanditEnv().reward(actions).mean())
