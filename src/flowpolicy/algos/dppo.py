"""DPPO — Diffusion Policy Policy Optimization (Ren et al., ICLR 2025; code irom-princeton/dppo).

PPO over the denoising chain (ALGORITHMS.md section 6). Sampling an action runs S Gaussian
steps ``x_{j+1} ~ N(mu_theta(x_j, j | s), sigma_j^2)`` from noise ``x_0`` to the action ``x_S``;
each step has a known density, so every (env step, denoising step) pair is one PPO sample:

    pi_j = mean over the executed (Ta_exec, Da) elements of
           clamp(log N(x_{j+1}; mu_theta, max(sigma_j, 0.1)^2), -5, 2),
    r = exp(pi_j^new - pi_j^old),
    L = -E[min(r A_i, clip(r, 1 - c_i, 1 + c_i) A_i)] + vf_coef * 0.5 E[(V(s) - R)^2],
    A_i = gamma_d^(K' - 1 - i) * A_GAE(s),
    c_i = c_base + (c - c_base) (exp(rate t_i) - 1) / (exp(rate) - 1),   t_i = i / (K' - 1),

for denoising index ``i = 0 .. K'-1`` of the K' fine-tuned steps (i = K'-1 is the last step,
the one that outputs the action). Only the last K' steps of the chain are trained: the first
S - K' steps run a frozen copy of the pretrained network (:class:`DPPOPolicy`).

Two chains:

- ``DiffusionPolicy`` (DPPO): the DDPM reverse posterior (K = 20 steps), or DDIM with S steps
  and eta = 1 (``ddim_steps``). Sampling stds are floored at 0.1 (exploration), log-prob stds
  at 0.1, and per-element log-probs clamped to [-5, 2]; the clip rises from ``clip_coef_base``
  at the first fine-tuned step to ``clip_coef`` at the last (constant 0.01 on Gym).
- ``FlowPolicy`` (the "denoising MDP" the FPO paper ran DPPO on): every Euler step
  ``x_{k+1} ~ N(x_k + v(x_k, tau_k) / K, 0.05^2)`` on the one time grid
  (:func:`flowpolicy.chains.euler_step_gaussian`), exact log-densities (no floors, no
  clamp) and a constant clip of 0.2.

Cost on a CPU: the Gym defaults (40 envs x 500 chunks; 3x512 residual actor) sample 20
network passes per chunk and then run 20 gradient steps over minibatches of 50,000 (env step,
denoising step) pairs, each pair a forward and backward pass of the actor. Measured on one
thread of a busy 2-core CPU at Hopper sizes: ~19 s of sampling per rollout and ~3 min of
updates per 80k-env-step iteration (docs/dppo.md); the ReinFlow authors report ~99 s per
Hopper iteration on a GPU.

Shapes: ``T`` rollout steps, ``N`` envs, ``B`` minibatch of pairs, ``S`` chain steps, ``K'``
fine-tuned steps, ``A = Ta * Da`` flat chunk, ``Do`` observation size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from flowpolicy import distributed
from flowpolicy.algos import onpolicy
from flowpolicy.algos.config_blocks import FlowActorConfig, OnPolicyConfig, ValueCriticConfig
from flowpolicy.algos.denoising_mdp import (
    ChainPolicy,
    DPPOPolicy,
    chain_policy,
    clip_schedule,
    denoising_discounts,
    step_log_prob,
)
from flowpolicy.algos.spec import AlgorithmSpec, Preset
from flowpolicy.algos.validation import check_dppo_config
from flowpolicy.buffers import RolloutBatch
from flowpolicy.critics import ResidualValueNet
from flowpolicy.nets import Activation
from flowpolicy.policies import DiffusionPolicy, FlowPolicy, Network


@dataclass(frozen=True)
class DPPOConfig(ValueCriticConfig, FlowActorConfig, OnPolicyConfig):
    """DPPO. Defaults are the authors' Gym locomotion fine-tuning config.

    Source: irom-princeton/dppo at commit dc8e0c9edce7ac2b2ff112abe460e1c21b0b3bdc,
    cfg/gym/finetune/hopper-v2/ft_ppo_diffusion_mlp.yaml (40 envs x 500 steps, 20 DDPM steps
    with the last 10 fine-tuned, actor lr 1e-4, critic lr 1e-3, clip 0.01 rising by rate 3,
    gamma_denoising 0.99, 5 epochs, batch 50000)."""

    # The rollout sizes, flow policy and value network are the blocks' (config_blocks.py);
    # re-declared here where DPPO's defaults or notes differ.
    # --- rollout and PPO ---
    num_envs: int = 40
    num_steps: int = 500
    """action chunks per env per rollout (500 x Ta 4 = 2000 env steps per env)."""
    gamma: float = 0.99
    """discount per action chunk."""
    gae_lambda: float = 0.95
    """GAE lambda (per chunk)."""
    update_epochs: int = 5
    num_minibatches: int = 4
    """minibatches per epoch over the num_envs * num_steps * ft_denoising_steps (env step,
    denoising step) pairs (Gym: 4 of 50,000 pairs, 20 gradient steps per iteration)."""
    norm_adv: bool = True
    """standardise advantages per minibatch (before the denoising discount)."""
    actor_lr: float = 1e-4
    """learning rate of the fine-tuned network (AdamW, constant)."""
    critic_lr: float = 1e-3
    """learning rate of the value network (AdamW, constant)."""
    max_grad_norm: float | None = None
    """clip the actor's gradient norm (None: no clipping, as on Gym)."""
    target_kl: float | None = 1.0
    """stop the update once a minibatch's approximate KL exceeds this (None: never)."""
    scale_rewards: bool = True
    """divide rewards by the running std of the discounted return (clipped to +-10)."""
    critic_warmup_iterations: int = 0
    """iterations that train only the critic (Gym 0, Robomimic 2)."""
    # --- the DPPO surrogate ---
    clip_coef: float = 0.01
    """PPO clip at the last denoising step (diffusion chain)."""
    clip_coef_base: float = 0.01
    """PPO clip at the first fine-tuned step (Gym 0.01, Robomimic 0.001)."""
    clip_coef_rate: float = 3.0
    """rate of the exponential rise of the clip from clip_coef_base to clip_coef."""
    gamma_denoising: float = 0.99
    """denoising discount: the advantage of fine-tuned step i is scaled by gamma_d^(K'-1-i)."""
    logprob_min: float = -5.0
    """lower clamp of each per-element log-prob (diffusion chain)."""
    logprob_max: float = 2.0
    """upper clamp of each per-element log-prob (diffusion chain)."""
    sampling_std_floor: float = 0.1
    """lower bound of every sampled denoising step's std, for exploration (diffusion chain;
    Furniture 0.04)."""
    logprob_std_floor: float = 0.1
    """lower bound of the std in the log-probs (diffusion chain)."""
    noise_clip: float | None = 3.0
    """clamp the standard-normal noise of every sampled step to +-this (None: no clamp)."""
    # --- the chain ---
    policy_class: Literal["DiffusionPolicy", "FlowPolicy"] = "DiffusionPolicy"
    """the chain to fine-tune; set from the --init policy's class when fine-tuning."""
    denoising_steps: int = 20
    """K, DDPM steps (diffusion chain; from the --init policy when fine-tuning)."""
    ft_denoising_steps: int = 10
    """K', the last chain steps that are trained; the earlier ones run the frozen copy."""
    ddim_steps: int | None = None
    """fine-tune an S-step DDIM chain instead of the K-step DDPM one (Furniture/pixels: 5)."""
    ddim_eta: float = 1.0
    """DDIM noise level of the fine-tuned chain."""
    flow_steps: int = 10
    """K Euler steps (flow chain; from the --init policy when fine-tuning)."""
    flow_noise_std: float = 0.05
    """fixed std of every Euler step of the flow chain (FPO paper's denoising MDP)."""
    flow_clip_coef: float = 0.2
    """PPO clip of the flow chain, the same at every step (FPO paper)."""
    chunk_exec: int = 4
    """Ta_exec <= Ta, actions executed per policy sample (the log-probs average over these)."""
    # --- networks built from the config (no --init) ---
    actor_network: Network = "residual"
    """the denoising/velocity network: residual MLP (DPPO Gym) or plain MLP."""
    actor_hidden: tuple[int, ...] = (512, 512, 512)
    """hidden sizes of the actor network."""
    actor_activation: Activation = "relu"
    """hidden activation of the actor network."""
    time_dim: int = 16
    """size of the actor's learned sinusoidal time embedding."""
    critic_residual: bool = True
    """residual value network (DPPO's ``residual_style``; hidden must be 1 + 2n equal widths)."""

    @property
    def is_flow(self) -> bool:
        return self.policy_class == "FlowPolicy"

    @property
    def chain_steps(self) -> int:
        """S, the steps of the fine-tuned chain."""
        if self.is_flow:
            return self.flow_steps
        return self.ddim_steps if self.ddim_steps is not None else self.denoising_steps

    @property
    def num_pairs(self) -> int:
        """(env step, denoising step) pairs per batch."""
        return self.num_envs * self.num_steps * self.ft_denoising_steps

    @property
    def minibatch_size(self) -> int:
        """(env step, denoising step) pairs per minibatch."""
        return self.num_pairs // self.num_minibatches

    def build_critic(self, obs_dim: int) -> nn.Module:
        """DPPO's residual value network (``critic_residual``), or the plain one."""
        if self.critic_residual:
            return ResidualValueNet(obs_dim, self.critic_hidden, self.critic_activation)
        return super().build_critic(obs_dim)

    def __post_init__(self) -> None:
        self.check_rollout()
        self.check_flow_actor()
        check_dppo_config(self)


# ----------------------------------------------------------------------------- the algorithm


class DPPO:
    """DPPO on a DiffusionPolicy (or the flow variant on a FlowPolicy): ``act`` during
    rollouts, ``update`` per batch."""

    def __init__(
        self,
        obs_dim: int,
        action_low: Tensor,
        action_high: Tensor,
        config: DPPOConfig,
        policy: ChainPolicy | None = None,
    ) -> None:
        """``policy``: a pretrained DiffusionPolicy or FlowPolicy to fine-tune (copied; its class
        must be ``config.policy_class``; a diffusion policy is rebuilt with the config's DDPM /
        DDIM sampler); None builds a new one from the config."""
        self.config = config
        chain = chain_policy(config, obs_dim, action_low, action_high, policy)
        self.policy = DPPOPolicy(
            chain, config.ft_denoising_steps, config.flow_noise_std, config.noise_clip
        )
        self.critic = config.build_critic(obs_dim)
        self.reward_scaler = onpolicy.ReturnScaler(config.num_envs, config.gamma)
        self.actor_optimizer = torch.optim.AdamW(
            self.policy.actor.parameters(), lr=config.actor_lr, weight_decay=0.0
        )
        self.critic_optimizer = torch.optim.AdamW(
            self.critic.parameters(), lr=config.critic_lr, weight_decay=0.0
        )
        ft = config.ft_denoising_steps
        if config.is_flow:
            self.clip_coefs = torch.full((ft,), config.flow_clip_coef)
        else:
            self.clip_coefs = clip_schedule(
                ft, config.clip_coef, config.clip_coef_base, config.clip_coef_rate
            )
        self.discounts = denoising_discounts(ft, config.gamma_denoising)
        # The flow variant's std is fixed and known: its log-probs are exact.
        self.sampling_std_floor = None if config.is_flow else config.sampling_std_floor
        self.logprob_std_floor = None if config.is_flow else config.logprob_std_floor
        self.logprob_clamp = None if config.is_flow else (config.logprob_min, config.logprob_max)
        self.iterations = 0

    @property
    def eval_policy(self) -> DPPOPolicy:
        """What evaluation runs and checkpoints hold: frozen early steps, fine-tuned late ones."""
        return self.policy

    def log_probs(self, x_next: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        """DPPO's per-step log-probs (:func:`step_log_prob`) with this config's floor and clamp;
        inputs (..., A) -> (...,)."""
        return step_log_prob(
            x_next,
            mean,
            std,
            self.policy.chunk,
            self.policy.chunk_exec,
            self.logprob_std_floor,
            self.logprob_clamp,
        )

    @torch.no_grad()
    def act(self, obs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Sample the training chain for raw observations (N, Do).

        Returns env actions (N, Ta_exec * Da) and the record: ``chain`` (N, K'+1, A), the
        fine-tuned part of the chain (its first entry is the input of the first fine-tuned
        step, its last the action), and ``old_logprob`` (N, K').
        """
        chain, means, stds = self.policy.sample_chain(obs, "explore", self.sampling_std_floor)
        first = self.policy.first_trainable_step
        trained = chain[first:]  # (K'+1, N, A)
        old = self.log_probs(trained[1:], means[first:], stds[first:])  # (K', N)
        record = {"chain": trained.transpose(0, 1), "old_logprob": old.transpose(0, 1)}
        return self.policy.env_action(chain[-1]), record

    def new_log_probs(
        self, obs_normalised: Tensor, x_prev: Tensor, x_next: Tensor, index: Tensor
    ) -> Tensor:
        """Log-probs under the trainable copy of the steps ``x_prev -> x_next`` at fine-tuned
        indices ``index``: obs (B, Do), x (B, A), index (B,) -> (B,)."""
        out = torch.zeros(index.shape[0], device=obs_normalised.device)
        for i in index.unique().tolist():
            rows = (index == i).nonzero().squeeze(1)
            step = self.policy.first_trainable_step + i
            mean, std = self.policy.step_gaussian(
                obs_normalised[rows], x_prev[rows], step, "explore"
            )
            out[rows] = self.log_probs(x_next[rows], mean, std)
        return out

    def policy_loss(
        self,
        obs_normalised: Tensor,
        x_prev: Tensor,
        x_next: Tensor,
        index: Tensor,
        old_log_probs: Tensor,
        advantages: Tensor,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Clipped surrogate on a minibatch of pairs: obs (B, Do), x_prev, x_next (B, A),
        index (B,) fine-tuned denoising index, old_log_probs (B,), advantages (B,) (normalised,
        not yet discounted). Returns (loss, metrics)."""
        new_log_probs = self.new_log_probs(obs_normalised, x_prev, x_next, index)
        log_ratio = new_log_probs - old_log_probs
        ratio = log_ratio.exp()
        adv = advantages * self.discounts[index]
        clip = self.clip_coefs[index]
        clipped = torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
        loss = -torch.min(ratio * adv, clipped * adv).mean()
        with torch.no_grad():
            metrics = {
                "policy/ratio": ratio.mean(),
                "policy/approx_kl": ((ratio - 1) - log_ratio).mean(),
                "policy/clipfrac": ((ratio - 1).abs() > clip).float().mean(),
                "policy/logprob": new_log_probs.mean(),
            }
        return loss, metrics

    def _optimizer_step(self, loss: Tensor, train_actor: bool) -> float:
        """Backward, then step the critic and (after the warm-up) the actor. Refuses a
        non-finite loss. Returns the actor's gradient norm before clipping."""
        distributed.synced_backward(loss, [self.actor_optimizer, self.critic_optimizer])
        limit = math.inf if self.config.max_grad_norm is None else self.config.max_grad_norm
        grad_norm = nn.utils.clip_grad_norm_(self.policy.actor.parameters(), limit)
        if train_actor:
            self.actor_optimizer.step()
        self.critic_optimizer.step()
        return float(grad_norm)

    def prepare(self, batch: RolloutBatch) -> onpolicy.PreparedBatch:
        """Scale rewards, run GAE per action chunk, flatten to (T*N, ...) (constant learning
        rates, so nothing to schedule)."""
        cfg = self.config
        scaler = self.reward_scaler if cfg.scale_rewards else None
        return onpolicy.advantages_batch(
            batch,
            self.critic,
            self.policy.obs_norm,
            scaler,
            cfg.gamma,
            cfg.gae_lambda,
            cfg.reward_scale,
        )

    def minibatch_step(
        self, prepared: onpolicy.PreparedBatch, pairs: Tensor, train_actor: bool
    ) -> dict[str, float]:
        """One gradient step on the pairs with flat indices ``pairs`` (B,) into the
        (T*N, K') grid of (env step, denoising index); returns its metrics."""
        cfg = self.config
        sample, index = pairs // cfg.ft_denoising_steps, pairs % cfg.ft_denoising_steps
        chain = prepared.records["chain"]  # (T*N, K'+1, A)
        advantages = prepared.advantages[sample]
        if cfg.norm_adv:
            advantages = onpolicy.normalize_advantages(advantages)
        pg_loss, metrics = self.policy_loss(
            prepared.obs[sample],
            chain[sample, index],
            chain[sample, index + 1],
            index,
            prepared.records["old_logprob"][sample, index],
            advantages,
        )
        v_loss = onpolicy.value_loss(
            self.critic(prepared.obs[sample]),
            prepared.values[sample],
            prepared.returns[sample],
            None,
        )
        grad_norm = self._optimizer_step(pg_loss + cfg.vf_coef * v_loss, train_actor)
        metrics |= {"loss/policy": pg_loss.detach(), "loss/value": v_loss.detach()}
        return {name: float(value) for name, value in metrics.items()} | {
            "loss/grad_norm": grad_norm
        }

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """Epochs of minibatch DPPO over the batch's (env step, denoising step) pairs, stopped
        early once a minibatch's approximate KL passes ``target_kl``; returns mean metrics."""
        cfg = self.config
        prepared = self.prepare(batch)
        train_actor = self.iterations >= cfg.critic_warmup_iterations
        history: list[dict[str, float]] = []
        stopped = False
        for _ in range(cfg.update_epochs):
            for pairs in onpolicy.minibatch_indices(
                cfg.num_pairs, cfg.num_minibatches, batch.obs.device
            ):
                history.append(self.minibatch_step(prepared, pairs, train_actor))
                # Every rank must stop at the same minibatch: the KL of the whole minibatch.
                kl = distributed.all_mean(history[-1]["policy/approx_kl"])
                stopped = cfg.target_kl is not None and kl > cfg.target_kl
                if stopped:
                    break  # as in the authors' code, the KL stop ends the whole update
            if stopped:
                break
        out = {name: sum(step[name] for step in history) / len(history) for name in history[0]}
        self.policy.obs_norm.update(batch.obs)
        self.iterations += 1
        out["critic/explained_variance"] = onpolicy.explained_variance(
            prepared.values, prepared.returns
        )
        out["charts/gradient_steps"] = float(len(history))
        out["charts/actor_lr"] = self.actor_optimizer.param_groups[0]["lr"]
        out["charts/critic_lr"] = self.critic_optimizer.param_groups[0]["lr"]
        return out

    def state_dict(self) -> dict:
        return {
            "policy": self.policy.state_dict(),
            "critic": self.critic.state_dict(),
            "reward_scaler": self.reward_scaler.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "iterations": self.iterations,
        }

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.critic.load_state_dict(state["critic"])
        self.reward_scaler.load_state_dict(state["reward_scaler"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.iterations = state["iterations"]


# ----------------------------------------------------------------------------- registration

SPEC = AlgorithmSpec(
    name="dppo",
    config=DPPOConfig,
    algorithm=DPPO,
    presets=(Preset("dppo", DPPOConfig),),
    fine_tunes=(DiffusionPolicy, FlowPolicy),
)
