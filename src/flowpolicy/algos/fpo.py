"""FPO — Flow Policy Optimization — and FPO++ as switches of the same algorithm.

FPO (McAllister, Ge, Yi et al., arXiv 2507.21053; code akanazawa/fpo) is PPO for a flow
policy whose likelihood ratio is replaced by a ratio of conditional-flow-matching losses
(ALGORITHMS.md section 3). At rollout time, for every sampled action ``a`` we draw M pairs
``(tau_i, eps_i)`` and store them with the old losses

    l_old_i = || v_old(x_tau_i, tau_i | s) - (a - eps_i) ||^2,   x_tau = (1 - tau) eps + tau a.

The *same* pairs give the new losses ``l_new_i`` in every epoch, and

    per action (paper):      r   = exp(mean_i l_old_i - mean_i l_new_i)
    per sample (FPO++/code): r_i = exp(l_old_i - l_new_i), each clipped on its own,
    L = -E[min(r A, clip(r, 1 - c, 1 + c) A)]          (c = 0.05).

Lowering the CFM loss of an action raises its (ELBO-bounded) likelihood, so positive-advantage
actions become more likely. Exploration comes only from the random initial noise.

FPO++ (Yi, Choi et al., arXiv 2602.02481; code amazon-far/fpo-control; section 4) adds:
per-sample ratios; the ASPO trust region (PPO clip for A >= 0, SPO's
``r A - |A| (r - 1)^2 / (2 c)`` for A < 0); CFM losses clamped at 20 (and the new loss clamped
again on negative-advantage samples so they cannot push an action's loss up without bound); a
straight-through clamp of the log-ratio from above at 10; advantages clamped to +-100; Gaussian
action perturbation (std 0.02) on training rollouts; an EMA of the actor, updated once per
iteration, that is evaluated and saved; the sum/sqrt(A) loss reduction; tau ~ U[0.005, 0.995];
AdamW; a 3x256 ELU actor and a 3x768 ELU critic. :func:`fpo_plus_plus` returns that preset and
:func:`fpo_finetune` the released setting for fine-tuning with vanilla FPO (both in
:mod:`flowpolicy.algos.fpo_presets`); every switch is also a field of :class:`FPOConfig`.

Shapes: ``T`` rollout steps, ``N`` envs, ``B`` minibatch, ``M`` (tau, eps) pairs per action,
``A = Ta * Da`` flat action size, ``Do`` observation size.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from flowpolicy import flows
from flowpolicy.algos import onpolicy
from flowpolicy.algos.config_blocks import FlowActorConfig, OnPolicyConfig, ValueCriticConfig
from flowpolicy.algos.fpo_presets import fpo_finetune, fpo_plus_plus
from flowpolicy.algos.locomotion_regime import fpo_plus_plus_humanoid
from flowpolicy.algos.onpolicy import straight_through_clamp, trust_region_objective
from flowpolicy.algos.playground_regime import fpo_playground
from flowpolicy.algos.spec import AlgorithmSpec, Preset
from flowpolicy.algos.validation import (
    check_on_policy_config,
    require_non_negative,
    require_positive,
    require_range,
)
from flowpolicy.buffers import RolloutBatch
from flowpolicy.nets import Activation
from flowpolicy.policies import FlowPolicy, Squash


@dataclass(frozen=True)
class FPOConfig(ValueCriticConfig, FlowActorConfig, OnPolicyConfig):
    """FPO. Algorithmic defaults are the paper's (K 10, M 8, clip 0.05, eps-MSE, tau on the
    sampling grid, 4x32 SiLU actor with output scale 0.25, vf coef 0.25, no gradient clip);
    the data regime and critic are those of our Gaussian PPO (8 envs x 256 steps, 32
    minibatches, 10 epochs, critic 2x64 tanh; the authors ran 2048 MJX envs, 16 epochs and a
    5x256 critic).

    Source: akanazawa/fpo at commit 418c2554f7cd22d52e14c07d951280929d73bf2f,
    playground/src/flow_policy/fpo.py (FpoConfig: learning_rate 3e-4, clipping_epsilon 0.05,
    n_samples_per_action 8, policy_mlp_output_scale 0.25, eps-MSE, tau on the grid,
    value_loss_coeff 0.25) and networks.py (SiLU)."""

    # The rollout sizes, flow policy and value network are the blocks' (config_blocks.py);
    # re-declared here where FPO's defaults or notes differ.
    # --- rollout and PPO ---
    norm_adv: bool = True
    """standardise advantages."""
    clip_coef: float = 0.05
    """trust-region clip c on the CFM ratio (0.05 beat 0.1 and 0.2 in the paper)."""
    vf_coef: float = 0.25
    max_grad_norm: float | None = None
    """global gradient-norm clip (None: no clipping, as in the FPO code)."""
    learning_rate: float = 3e-4
    """learning rate of the actor (and of the critic unless critic_learning_rate is set)."""
    critic_learning_rate: float | None = None
    """the critic's own learning rate, in its own parameter group with its own gradient-norm
    clip (fpo-control's fine-tuning: 1e-4 beside an actor at 1e-5); None: actor and critic
    share learning_rate and one clip."""
    anneal_lr: bool = True
    """decay the learning rate linearly to 0 over the run."""
    optimizer: Literal["adam", "adamw"] = "adam"
    """Adam (FPO) or AdamW (FPO++)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    norm_adv_over: Literal["minibatch", "rollout"] = "minibatch"
    """standardise per minibatch (CleanRL, FPO) or once over the rollout (FPO++'s released
    locomotion code)."""
    clip_vloss: bool = False
    """clip the value update around the old values."""
    critic_warmup_iterations: int = 0
    """first iterations that train only the value network (fpo-control's fine-tuning: 1)."""
    # --- flow policy and critic ---
    chunk: int = 1
    chunk_exec: int = 1
    output_scale: float = 0.25
    squash: Squash = "tanh"
    """how raw actions are bounded for the env: tanh (FPO) or clip."""
    critic_hidden: tuple[int, ...] = (64, 64)
    critic_activation: Activation = "tanh"
    # --- the FPO ratio ---
    mc_samples: int = 8
    """M, (tau, eps) pairs per action."""
    ratio_mode: Literal["per_action", "per_sample"] = "per_action"
    """one ratio from mean losses (paper) or one per pair (released code, FPO++)."""
    per_sample_logratio_clamp: float | None = 3.0
    """hard clamp of each per-sample log-ratio (released FPO code); per_sample mode only."""
    loss_weighting: flows.LossWeighting = "eps"
    """CFM loss on the velocity, or eps-MSE = tau^2 ||v - u||^2 (paper default)."""
    tau_sampling: flows.TauSampling = "grid"
    """how tau is drawn: the K-point sampling grid (FPO), uniform, or logit-normal."""
    tau_min: float = 0.0
    """lower end of tau for uniform/logit-normal sampling."""
    tau_max: float = 1.0
    """upper end of tau for uniform/logit-normal sampling."""
    cfm_reduction: flows.LossReduction = "mean"
    """reduce the CFM loss over action dims by mean or sum/sqrt(A) (FPO++)."""
    # --- FPO++ switches ---
    trust_region: Literal["ppo", "aspo"] = "ppo"
    """PPO clip, or ASPO (PPO for A >= 0, SPO for A < 0)."""
    cfm_loss_clamp: float | None = None
    """clamp each CFM loss at this value before differencing (FPO++: 20)."""
    logratio_clamp: float | None = None
    """straight-through clamp of the log-ratio from above at this value (FPO++: 10)."""
    advantage_clamp: float | None = None
    """clamp advantages to +-this (FPO++: 100)."""
    action_noise_std: float = 0.0
    """Gaussian perturbation of training-rollout actions (FPO++: 0.02)."""
    ema_decay: float | None = None
    """EMA of the actor, updated once per iteration, that is evaluated and saved (FPO++:
    0.95); None disables it."""
    ema_start_iterations: int = 500
    """iterations before the EMA starts averaging (until then it copies the live weights, so
    evaluation sees them; FPO++: 500)."""

    def __post_init__(self) -> None:
        check_on_policy_config(self)
        self.check_flow_actor()
        require_positive(
            self,
            "mc_samples",
            "cfm_loss_clamp",
            "logratio_clamp",
            "advantage_clamp",
            "per_sample_logratio_clamp",
            "critic_learning_rate",
        )
        require_non_negative(
            self, "critic_warmup_iterations", "action_noise_std", "ema_start_iterations"
        )
        require_range(self, "ema_decay", 0.0, 1.0, open_high=True)
        if not 0.0 <= self.tau_min < self.tau_max <= 1.0:
            raise ValueError(
                f"need 0 <= tau_min < tau_max <= 1, got {self.tau_min} and {self.tau_max}."
            )


class FPO:
    """FPO / FPO++ on a :class:`FlowPolicy`: ``act`` during rollouts, ``update`` per batch."""

    def __init__(
        self,
        obs_dim: int,
        action_low: Tensor,
        action_high: Tensor,
        config: FPOConfig,
        policy: FlowPolicy | None = None,
    ) -> None:
        """``policy``: a pretrained flow policy to fine-tune (copied; its chunking and flow
        steps must match the config's); None builds a new one from the config."""
        self.config = config
        self.policy = (
            copy.deepcopy(policy)
            if policy is not None
            else config.build_actor(obs_dim, action_low, action_high)
        )
        self.critic = config.build_critic(obs_dim)
        self.reward_scaler = onpolicy.ReturnScaler(config.num_envs, config.gamma)
        actor, critic = list(self.policy.parameters()), list(self.critic.parameters())
        if config.critic_learning_rate is None:  # one group: one lr, one gradient clip
            groups = [{"params": actor + critic, "base_lr": config.learning_rate}]
            self.parameters: onpolicy.ClipGroups = actor + critic
        else:  # two groups, the same as two optimisers: own lr, own gradient clip
            groups = [
                {"params": actor, "base_lr": config.learning_rate},
                {"params": critic, "base_lr": config.critic_learning_rate},
            ]
            self.parameters = [actor, critic]
        for group in groups:
            group["lr"] = group["base_lr"]
        optimizer_class = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = optimizer_class(groups, eps=1e-5, weight_decay=config.weight_decay)
        self.ema_policy = copy.deepcopy(self.policy) if config.ema_decay is not None else None
        self.optimizer_steps = 0

    @property
    def iterations(self) -> int:
        """Updates done so far: every update takes epochs x minibatches optimiser steps (FPO has
        no early stop), so the count needs no state of its own."""
        return self.optimizer_steps // (self.config.update_epochs * self.config.num_minibatches)

    @property
    def eval_policy(self) -> FlowPolicy:
        """The policy that evaluation runs and checkpoints export (the EMA copy if enabled)."""
        return self.ema_policy if self.ema_policy is not None else self.policy

    def cfm_losses(
        self, obs_normalised: Tensor, action: Tensor, tau: Tensor, noise: Tensor
    ) -> Tensor:
        """CFM loss of the current velocity field at stored pairs.

        Args:
            obs_normalised: (B, Do). action: (B, A). tau: (B, M). noise: (B, M, A).

        Returns:
            (B, M) losses (unclamped).
        """
        cfg = self.config
        batch, pairs = tau.shape
        actions = action.unsqueeze(1).expand_as(noise)  # (B, M, A)
        x_tau = flows.interpolate(actions, noise, tau)  # (B, M, A)
        obs_repeated = obs_normalised.unsqueeze(1).expand(batch, pairs, -1)  # (B, M, Do)
        velocity = self.policy.velocity(
            obs_repeated.flatten(0, 1), x_tau.flatten(0, 1), tau.flatten()
        ).view_as(noise)
        return flows.cfm_loss(
            velocity, actions, noise, tau, cfg.loss_weighting, cfg.cfm_reduction, self.policy.chunk
        )

    @torch.no_grad()
    def act(self, obs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Sample actions for raw observations (N, Do) and draw the FPO pairs.

        Returns env actions (N, Ta_exec * Da) and the record: ``action`` (N, A), the stored
        ``tau`` (N, M) and ``noise`` (N, M, A), and ``old_cfm_loss`` (N, M).
        """
        cfg = self.config
        action = self.policy.sample(obs, "random")
        if cfg.action_noise_std > 0:
            action = action + cfg.action_noise_std * torch.randn_like(action)
        num_envs, action_size = action.shape
        tau = flows.sample_tau(
            (num_envs, cfg.mc_samples),
            cfg.tau_sampling,
            cfg.flow_steps,
            cfg.tau_min,
            cfg.tau_max,
            device=action.device,
        )
        noise = torch.randn(num_envs, cfg.mc_samples, action_size, device=action.device)
        old_losses = self.cfm_losses(self.policy.obs_norm(obs), action, tau, noise)
        if cfg.cfm_loss_clamp is not None:
            old_losses = old_losses.clamp(max=cfg.cfm_loss_clamp)
        record = {"action": action, "tau": tau, "noise": noise, "old_cfm_loss": old_losses}
        return self.policy.env_action(action), record

    def policy_loss(
        self,
        obs_normalised: Tensor,
        action: Tensor,
        tau: Tensor,
        noise: Tensor,
        old_losses: Tensor,
        advantages: Tensor,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """FPO surrogate on a minibatch: obs (B, Do), action (B, A), tau (B, M), noise
        (B, M, A), old_losses (B, M), advantages (B,). Returns (loss, metrics)."""
        cfg = self.config
        new_losses = self.cfm_losses(obs_normalised, action, tau, noise)  # (B, M)
        if cfg.cfm_loss_clamp is not None:
            # Both losses are clamped in value before differencing. Straight-through for good
            # actions; a hard clamp for bad ones, so they cannot push an action's loss up
            # without bound (past the clamp they get no gradient).
            hard = new_losses.clamp(max=cfg.cfm_loss_clamp)
            soft = new_losses + (hard - new_losses).detach()
            new_losses = torch.where((advantages < 0).unsqueeze(-1), hard, soft)
        if cfg.ratio_mode == "per_action":
            log_ratio = old_losses.mean(-1) - new_losses.mean(-1)  # (B,)
            adv = advantages
        else:
            log_ratio = old_losses - new_losses  # (B, M)
            if cfg.per_sample_logratio_clamp is not None:
                bound = cfg.per_sample_logratio_clamp
                log_ratio = log_ratio.clamp(-bound, bound)
            adv = advantages.unsqueeze(-1)  # same advantage for every pair of an action
        if cfg.logratio_clamp is not None:
            log_ratio = straight_through_clamp(log_ratio, cfg.logratio_clamp)
        ratio = log_ratio.exp()
        objective = trust_region_objective(ratio, adv, cfg.clip_coef, cfg.trust_region)
        loss = -objective.mean()
        with torch.no_grad():
            metrics = {
                "policy/ratio": ratio.mean(),
                "policy/approx_kl": ((ratio - 1) - log_ratio).mean(),
                "policy/clipfrac": ((ratio - 1).abs() > cfg.clip_coef).float().mean(),
                "policy/cfm_loss": new_losses.mean(),
            }
        return loss, metrics

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """Several epochs of minibatch FPO on one rollout; returns mean metrics.

        During the first ``critic_warmup_iterations`` only the value loss is back-propagated:
        the actor gets no gradient, so Adam(W) leaves it (and its weight decay) untouched. A
        fine-tuned policy then meets its first advantages from a critic fitted to its own
        returns instead of a random one.
        """
        cfg = self.config
        warming_up = self.iterations < cfg.critic_warmup_iterations
        reward_scaler = self.reward_scaler if cfg.scale_rewards else None
        prepared = onpolicy.prepare_batch(
            batch, self.critic, self.policy.obs_norm, reward_scaler, self.optimizer, cfg
        )
        records = prepared.records
        per_minibatch = cfg.norm_adv and cfg.norm_adv_over == "minibatch"
        if cfg.norm_adv and cfg.norm_adv_over == "rollout":
            prepared.advantages = onpolicy.normalize_advantages(prepared.advantages)

        def minibatch_step(idx: Tensor) -> dict[str, Tensor | float]:
            adv = onpolicy.minibatch_advantages(prepared, idx, per_minibatch)
            if cfg.advantage_clamp is not None:
                adv = adv.clamp(-cfg.advantage_clamp, cfg.advantage_clamp)
            pg_loss, metrics = self.policy_loss(
                prepared.obs[idx],
                records["action"][idx],
                records["tau"][idx],
                records["noise"][idx],
                records["old_cfm_loss"][idx],
                adv,
            )
            if warming_up:
                pg_loss = pg_loss.detach()  # reported, not followed
            self.optimizer_steps += 1
            return onpolicy.critic_loss_and_step(
                prepared, idx, pg_loss, metrics, self.critic, self.optimizer, self.parameters, cfg
            )

        out = onpolicy.run_epochs(
            cfg.update_epochs, cfg.batch_size, cfg.num_minibatches, minibatch_step, batch.obs.device
        )
        self.policy.obs_norm.update(batch.obs)
        self._update_ema()
        out["critic/explained_variance"] = onpolicy.explained_variance(
            prepared.values, prepared.returns
        )
        out["charts/learning_rate"] = self.optimizer.param_groups[0]["lr"]
        out["charts/actor_trained"] = float(not warming_up)
        return out

    @torch.no_grad()
    def _update_ema(self) -> None:
        """Once per iteration, after the update (as FPO++'s runner does): the EMA of the actor's
        parameters, ``ema = decay * ema + (1 - decay) * theta``; a plain copy for the first
        ``ema_start_iterations`` iterations. The observation normaliser is copied."""
        if self.ema_policy is None:
            return
        started = self.iterations > self.config.ema_start_iterations
        decay = self.config.ema_decay if started else 0.0
        for ema_param, param in zip(
            self.ema_policy.parameters(), self.policy.parameters(), strict=True
        ):
            ema_param.lerp_(param, 1.0 - decay)
        self.ema_policy.obs_norm.load_state_dict(self.policy.obs_norm.state_dict())

    def state_dict(self) -> dict:
        return {
            "policy": self.policy.state_dict(),
            "ema_policy": None if self.ema_policy is None else self.ema_policy.state_dict(),
            "critic": self.critic.state_dict(),
            "reward_scaler": self.reward_scaler.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "optimizer_steps": self.optimizer_steps,
        }

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        if self.ema_policy is not None:
            self.ema_policy.load_state_dict(state["ema_policy"])
        self.critic.load_state_dict(state["critic"])
        self.reward_scaler.load_state_dict(state["reward_scaler"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.optimizer_steps = state["optimizer_steps"]


# ----------------------------------------------------------------------------- registration

SPEC = AlgorithmSpec(
    name="fpo",
    config=FPOConfig,
    algorithm=FPO,
    presets=(
        Preset("fpo", FPOConfig),
        Preset("fpo++", fpo_plus_plus),
        Preset("fpo-finetune", fpo_finetune),
        Preset("fpo-playground", fpo_playground),
        Preset("fpo++-humanoid", fpo_plus_plus_humanoid),
    ),
    fine_tunes=(FlowPolicy,),
)
