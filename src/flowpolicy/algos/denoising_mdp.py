"""DPPO's denoising MDP (:mod:`flowpolicy.algos.dppo`): the chain policy it fine-tunes, a
diffusion or flow policy whose first S - K' chain steps run a frozen copy of the starting
network and whose last K' steps run the trainable copy (evaluation runs it, ``policy.pt`` holds
it), and the chain it starts from (:func:`chain_policy`); the log-prob of one chain step; and
the clip and discount of each fine-tuned step.

Shapes: ``B`` states, ``S`` chain steps, ``K'`` fine-tuned steps, ``A = Ta * Da`` flat chunk,
``Do`` observation size.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from flowpolicy import chains
from flowpolicy.policies import DiffusionPolicy, FlowPolicy, SampleMode

if TYPE_CHECKING:
    from flowpolicy.algos.dppo import DPPOConfig

ChainPolicy = DiffusionPolicy | FlowPolicy
ChainMode = Literal["zero", "random", "explore"]
"""``zero`` / ``random``: the policy's own samplers (evaluation); ``explore``: the training
chain (DDPM/DDIM posterior, or Euler steps with the fixed noise of the flow variant)."""


# ----------------------------------------------------------------------------- schedules


def clip_schedule(ft_steps: int, clip_coef: float, clip_base: float, rate: float) -> Tensor:
    """PPO clip per fine-tuned denoising index i = 0 .. K'-1; shape (K',).

    ``c_i = c_base + (c - c_base) (exp(rate t_i) - 1) / (exp(rate) - 1)`` with
    ``t_i = i / (K' - 1)``: ``c_base`` at the first fine-tuned step, ``c`` at the last. With
    K' = 1 the single step gets ``c`` (the authors' code would give it 0 there).
    """
    if ft_steps == 1:
        return torch.tensor([clip_coef])
    t = torch.arange(ft_steps, dtype=torch.float64) / (ft_steps - 1)
    rise = torch.expm1(rate * t) / math.expm1(rate)
    return (clip_base + (clip_coef - clip_base) * rise).float()


def denoising_discounts(ft_steps: int, gamma_denoising: float) -> Tensor:
    """``gamma_d^(K' - 1 - i)`` for i = 0 .. K'-1; shape (K',). The step that outputs the action
    gets 1, earlier (noisier) steps less."""
    exponents = torch.arange(ft_steps - 1, -1, -1, dtype=torch.float64)
    return (gamma_denoising**exponents).float()


def step_log_prob(
    x_next: Tensor,
    mean: Tensor,
    std: Tensor,
    chunk: int,
    chunk_exec: int,
    std_floor: float | None = None,
    clamp: tuple[float, float] | None = None,
) -> Tensor:
    """DPPO's log-prob of one denoising step: per element, clamped, averaged over the executed
    part of the chunk.

    ``mean_{t < Ta_exec, d} clamp(log N(x_next; mean, max(std, floor)^2), lo, hi)``.

    Args:
        x_next, mean, std: (..., A) with A = chunk * Da; std may broadcast.
        chunk, chunk_exec: Ta and Ta_exec.
        std_floor: lower bound of the std (None: none). clamp: (lo, hi) or None.

    Returns:
        (...,) one log-prob per step.
    """
    if std_floor is not None:
        std = std.clamp(min=std_floor)
    per_element = chains.gaussian_log_density(x_next, mean, std)  # (..., A)
    if clamp is not None:
        per_element = per_element.clamp(*clamp)
    per_action = per_element.unflatten(-1, (chunk, -1))  # (..., Ta, Da)
    return per_action[..., :chunk_exec, :].mean(dim=(-2, -1))


# ----------------------------------------------------------------------------- the policy


class DPPOPolicy(nn.Module):
    """A chain policy split for fine-tuning: the first S - K' steps run ``base``, a frozen copy
    of the starting network, and the last K' steps run ``actor``, the trainable copy.

    ``act(obs, mode)`` is what evaluation runs: ``zero`` and ``random`` are the underlying
    policy's own samplers (DDIM eta 0 from x = 0 / the DDPM or DDIM posterior for a
    diffusion policy; the Euler ODE from x_0 = 0 / from noise for a flow policy), with the
    frozen copy on the early steps. ``explore`` is the training chain (:meth:`sample_chain`).
    Observations are normalised once, with the trainable copy's normaliser, for both copies.

    Args:
        policy: the starting DiffusionPolicy or FlowPolicy (copied twice).
        ft_steps: K' <= S.
        flow_noise_std: std of the explore-mode Euler steps of a flow policy.
        noise_clip: clamp of the standard-normal noise of every sampled step (None: none).
    """

    def __init__(
        self,
        policy: ChainPolicy,
        ft_steps: int,
        flow_noise_std: float = 0.05,
        noise_clip: float | None = 3.0,
    ) -> None:
        super().__init__()
        self.base = copy.deepcopy(policy).requires_grad_(False)
        self.actor = copy.deepcopy(policy).requires_grad_(True)
        self.is_flow = isinstance(policy, FlowPolicy)
        self.num_steps = policy.flow_steps if self.is_flow else policy.num_sampling_steps("random")
        if not 1 <= ft_steps <= self.num_steps:
            raise ValueError(
                f"need 1 <= ft_denoising_steps <= {self.num_steps} (the policy's chain), "
                f"got {ft_steps}"
            )
        self.ft_steps = ft_steps
        self.first_trainable_step = self.num_steps - ft_steps
        self.flow_noise_std = flow_noise_std
        self.noise_clip = noise_clip
        # What a policy file needs to rebuild it (flowpolicy.policy_io rebuilds the nested
        # policy first; the weights of both copies then come from the state dict).
        self.init_kwargs: dict[str, Any] = {
            "policy": {"class": type(policy).__name__, "init_kwargs": dict(policy.init_kwargs)},
            "ft_steps": ft_steps,
            "flow_noise_std": flow_noise_std,
            "noise_clip": noise_clip,
        }

    @property
    def obs_norm(self) -> nn.Module:
        return self.actor.obs_norm

    @property
    def chunk(self) -> int:
        return self.actor.chunk

    @property
    def chunk_exec(self) -> int:
        return self.actor.chunk_exec

    @property
    def obs_dim(self) -> int:
        return self.actor.obs_dim

    @property
    def action_dim(self) -> int:
        return self.actor.action_dim

    def network_for(self, step: int) -> ChainPolicy:
        """The copy that runs chain step ``step``: frozen before S - K', trainable from it."""
        return self.actor if step >= self.first_trainable_step else self.base

    def step_gaussian(
        self, obs_normalised: Tensor, x: Tensor, step: int, mode: ChainMode
    ) -> tuple[Tensor, Tensor]:
        """Mean and std (no floors) of chain step ``step`` (0 .. S-1) from its input x (B, A)."""
        net = self.network_for(step)
        if not self.is_flow:
            return net.step_gaussian(
                obs_normalised, x, step, "zero" if mode == "zero" else "random"
            )
        sigma = self.flow_noise_std if mode == "explore" else 0.0
        return chains.euler_step_gaussian(
            lambda x_k, tau: net.velocity(obs_normalised, x_k, tau),
            lambda x_k, _tau: torch.full_like(x_k, sigma),
            x,
            step,
            self.num_steps,
        )

    def sample_chain(
        self, obs: Tensor, mode: ChainMode, std_floor: float | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Run the whole chain for raw observations (B, Do).

        ``x_{j+1} = mean_j + max(std_j, floor) * clamp(n_j, -c, c)``, n_j ~ N(0, I), from
        x_0 = 0 (``zero``) or noise; ``zero`` adds no noise at all.

        Returns:
            chain (S+1, B, A), and the unfloored means (S, B, A) and stds (S, B, A).
        """
        obs_normalised = self.obs_norm(obs)
        initial: SampleMode = "zero" if mode == "zero" else "random"
        x = self.actor.initial_noise(obs.shape[0], initial, obs.device)
        chain, means, stds = [x], [], []
        for step in range(self.num_steps):
            mean, std = self.step_gaussian(obs_normalised, x, step, mode)
            if mode == "zero":
                x = mean
            else:
                noise = torch.randn_like(mean)
                if self.noise_clip is not None:
                    noise = noise.clamp(-self.noise_clip, self.noise_clip)
                x = mean + (std if std_floor is None else std.clamp(min=std_floor)) * noise
            chain.append(x)
            means.append(mean)
            stds.append(std)
        return torch.stack(chain), torch.stack(means), torch.stack(stds)

    def env_action(self, raw_action: Tensor) -> Tensor:
        """Raw chunk (B, A) -> executed env actions (B, Ta_exec * Da)."""
        return self.actor.env_action(raw_action)

    @torch.no_grad()
    def act(self, obs: Tensor, mode: SampleMode = "random") -> Tensor:
        """Env actions (B, Ta_exec * Da) for raw observations (B, Do)."""
        chain, _, _ = self.sample_chain(obs, mode)
        return self.env_action(chain[-1])


# ----------------------------------------------------------------------------- the starting chain


def chain_policy(
    config: DPPOConfig,
    obs_dim: int,
    action_low: Tensor,
    action_high: Tensor,
    policy: ChainPolicy | None = None,
) -> ChainPolicy:
    """The chain DPPO fine-tunes (before :class:`DPPOPolicy` splits it): ``policy``, a
    pretrained DiffusionPolicy or FlowPolicy whose class must be ``config.policy_class`` (a
    diffusion policy is rebuilt with the config's DDPM / DDIM sampler), or, when None, a fresh
    policy built from the config (training from scratch)."""
    if policy is None:
        return new_chain_policy(config, obs_dim, action_low, action_high)
    if type(policy).__name__ != config.policy_class:
        raise ValueError(
            f"DPPOConfig.policy_class is {config.policy_class} but the policy is a "
            f"{type(policy).__name__}; set policy_class to match it."
        )
    if isinstance(policy, DiffusionPolicy):
        return with_sampler(policy, config)
    return policy


def with_sampler(policy: DiffusionPolicy, config: DPPOConfig) -> DiffusionPolicy:
    """The diffusion policy rebuilt with the config's fine-tuning sampler (DDPM, or DDIM
    with ``ddim_steps`` and ``ddim_eta``); same weights and normalisers."""
    kwargs = policy.init_kwargs | {"ddim_steps": config.ddim_steps, "ddim_eta": config.ddim_eta}
    rebuilt = DiffusionPolicy(**kwargs)
    rebuilt.load_state_dict(policy.state_dict())
    return rebuilt


def new_chain_policy(
    config: DPPOConfig, obs_dim: int, action_low: Tensor, action_high: Tensor
) -> ChainPolicy:
    """A fresh policy built from the config (training from scratch)."""
    if config.is_flow:
        return config.build_actor(obs_dim, action_low, action_high)
    return DiffusionPolicy(
        obs_dim,
        action_low,
        action_high,
        chunk=config.chunk,
        chunk_exec=config.chunk_exec,
        network=config.actor_network,
        hidden=config.actor_hidden,
        time_dim=config.time_dim,
        activation=config.actor_activation,
        denoising_steps=config.denoising_steps,
        ddim_steps=config.ddim_steps,
        ddim_eta=config.ddim_eta,
    )
