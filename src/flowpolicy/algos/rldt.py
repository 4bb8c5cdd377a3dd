"""RLDT — RL with Density Transport (Lei, Daniilidis, Loquercio, arXiv 2606.08602; code
RPFey/rldt).

RLDT fine-tunes a flow policy towards ``p(a|s) ∝ exp(Q(s, a) / alpha)`` by transporting
samples along an SVGD field, applied at *expected posteriors* so that no gradient flows through
the sampler (ALGORITHMS.md section 5). For a batch of states s:

1. **Particles.** P full Euler chains ``x_0 .. x_K`` of the current policy per state; per
   particle one random step ``k ~ U{0..K-1}``, ``tau = k / K``, and its expected posterior
   ``a_dagger = x_tau + (1 - tau) v(x_tau, tau)`` (Tweedie for the linear path).
2. **Field** (no gradient). Queries ``a_dagger_i``, centres the final actions ``a_j`` of the
   same state, ``d_ij = ||a_dagger_i - a_j||^2``, ``h_i = median_j d_ij / (2 log(P + 1))``,
   ``k_ij = exp(-d_ij / (2 h_i))``, ``g_j = mean_e grad_a Q_e(s, a_j)``,
   ``alpha_s = 1e-3 mean_j ||g_j||`` and

       phi_i = (1/P) sum_j [ k_ij g_j + alpha_s k_ij (a_dagger_i - a_j) / h_i ],

   attraction towards high Q plus a kernel repulsion that keeps particles, and so modes, apart.
   Alternatives: ``delta`` (``phi_i = grad Q(a_dagger_i)``) and ``interp`` (centres are the
   ``a_dagger`` too).
3. **Losses.** Alignment ``-E[<v_theta(x_tau, tau), phi> / (K (1 - tau))]`` (the gradient of
   ``0.5 ||v - sg(v + phi / (K (1 - tau)))||^2``: a regression of the velocity onto the
   transported one); consistency ``E ||x_tau + (1 - tau) v_theta - a||^2 / (K (1 - tau))^2``
   (keeps ``a_dagger`` an honest proxy of the particle's own final action ``a``); and a
   constraint ``E ||v_theta(x', tau') - v_ref(x', tau')||^2`` at ``x' = (1 - tau') eps + tau' a``
   towards a reference field: the frozen initial policy (paper) or the previous iterate
   (released code).
4. **Critic.** An ensemble of Q(s, executed chunk) with Polyak targets, members on disjoint
   trajectory subsets, TD(lambda) targets ``y_t = r_t + gamma (1 - d_t) [(1 - lambda) Qbar_t +
   lambda y_{t+1}]`` with ``Qbar`` the min over target members averaged over fresh policy
   actions at s'; rewards divided by an EMA of mean |r|.
5. **Schedule.** Each iteration's trajectories join a FIFO replay of the last N iterations;
   then R rounds of {critic steps, actor steps}, each round on as many trajectories as there
   are envs, at least 1/3 of them fresh. The first iterations train only the critic.
6. **Exploration.** ``min_extrp``: execute ``a_K + ||a_K - a_dagger_k|| n``, n ~ N(0, I),
   for one late step k — the noise scale calibrates itself.

Shapes: ``N`` envs, ``T`` steps per iteration, ``S`` trajectory segments, ``B`` states,
``P`` particles per state, ``K`` flow steps, ``A = Ta * Da`` flat chunk, ``A_exec = Ta_exec *
Da`` executed chunk, ``Do`` observation size, ``E`` critic members.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from flowpolicy import distributed, flows
from flowpolicy.algos.config_blocks import FlowActorConfig, OffPolicyConfig
from flowpolicy.algos.offpolicy import OffPolicyAlgorithm, RunningMeans
from flowpolicy.algos.offpolicy_presets import rldt_gym
from flowpolicy.algos.spec import AlgorithmSpec, Preset
from flowpolicy.algos.transport import (
    alignment_loss,
    consistency_loss,
    constraint_loss,
    posteriors_at_random_steps,
    svgd_field,
)
from flowpolicy.algos.validation import check_rldt_config
from flowpolicy.buffers import RolloutBatch, TrajectoryBatch
from flowpolicy.nets import Activation
from flowpolicy.policies import FlowPolicy, Network, Squash

ActionGradient = Callable[[Tensor, Tensor], Tensor]
"""``grad_a Q``: normalised obs (B, Do), flat chunks (B, A) -> (B, A)."""

TransportField = Literal["svgd", "delta", "interp"]
Reference = Literal["previous", "initial"]
Exploration = Literal["min_extrp", "gaussian", "none"]


@dataclass(frozen=True)
class RLDTConfig(FlowActorConfig, OffPolicyConfig):
    """RLDT. Defaults are the authors' Gym fine-tuning settings, except where a 2-core CPU needs
    a smaller data regime (marked CPU below; :func:`rldt_gym` restores the authors' sizes).

    Source: RPFey/rldt at commit add6029182ae2598e4eb62037e8b4b8ec8a38ac9,
    cfg/gym/finetune/hopper-v2/ft_svgd_flowmatching_mlp.yaml (8 flow steps, actor lr 1e-5,
    Q lr 1e-3, 8 particles, SVGD temperature 1e-3, KL coef 0.2, 2 Q members, target momentum
    0.995, 32 actor steps per iteration, gamma 0.99)."""

    # The rollout, critic and data regime are OffPolicyConfig's, whose defaults are RLDT's;
    # re-declared here: where the authors' values differ (CPU) or are worth stating.
    # --- rollout ---
    num_envs: int = 10
    """parallel environments; one trajectory segment each per iteration (authors: 100; CPU)."""
    num_steps: int = 250
    """vector (chunk) steps per env per iteration (authors: 500; CPU)."""
    # --- critic ---
    critic_weight_decay: float = 0.0
    """AdamW weight decay of the critic (authors: 0)."""
    td_lambda: float = 0.95
    """lambda of the TD(lambda) targets (authors: 0 on Gym, 0.5 on Robomimic/Furniture; CPU:
    with 1-step targets and Polyak 0.995 the value spreads over the ~100-chunk horizon only
    after ~20k critic steps, more than a 500k-step CPU budget has; docs/rldt.md)."""
    # --- data regime ---
    replay_iterations: int = 20
    """iterations of trajectories kept in the FIFO replay, the newest included (authors: 20)."""
    rounds: int = 8
    """rounds of {critic steps, actor steps} per iteration (authors: 16; CPU)."""
    critic_steps: int = 256
    """critic steps per iteration, split evenly over the rounds (authors: 512; CPU)."""
    actor_steps: int = 32
    """actor steps per iteration, split evenly over the rounds (authors: 32)."""
    # --- flow policy (built only when no pretrained policy is given) ---
    flow_steps: int = 8
    """K Euler steps of the sampler (authors: 8 on Gym and Robomimic, 32 on Furniture)."""
    chunk: int = 4
    """Ta, actions per policy sample (authors: 4 on Gym)."""
    chunk_exec: int = 4
    """Ta_exec <= Ta, actions executed per policy sample; the critic sees these."""
    actor_network: Network = "residual"
    """from-scratch velocity network: residual MLP with a time embedding (authors) or FPO's mlp."""
    actor_hidden: tuple[int, ...] = (256, 256, 256)
    """hidden sizes of a from-scratch velocity network (authors: 3x512; CPU)."""
    actor_activation: Activation = "relu"
    """hidden activation of a from-scratch velocity network (authors: ReLU)."""
    time_dim: int = 16
    """size of the time embedding of a from-scratch velocity network (authors: 16)."""
    output_scale: float = 1.0
    """scale of a from-scratch velocity network's output."""
    squash: Squash = "clip"
    """how a from-scratch policy's raw actions are bounded for the env (authors: clip)."""
    # --- transport update ---
    num_particles: int = 8
    """P, particles (full policy chains) per state."""
    field: TransportField = "svgd"
    """transport field: svgd, delta (plain grad Q at a_dagger), interp (a_dagger as centres)."""
    svgd_temperature: float = 1e-3
    """repulsion temperature; scaled per state by mean ||grad Q|| if adaptive_temperature."""
    adaptive_temperature: bool = True
    """alpha_s = svgd_temperature * mean_j ||grad_a Q(s, a_j)|| (state-adaptive)."""
    rbf_bandwidth: float | None = None
    """fixed RBF bandwidth h; None: the per-query median heuristic."""
    consistency_coef: float = 0.5
    """weight of the consistency loss."""
    constraint_coef: float = 0.2
    """weight of the velocity constraint to the reference policy."""
    reference: Reference = "previous"
    """constraint reference: previous iterate (released code) or frozen initial policy (paper)."""
    actor_lr: float = 2e-5
    """Adam learning rate of the actor."""
    actor_warmup_steps: int = 32
    """linear learning-rate warm-up of the actor, in actor steps, from lr / this (1: none)."""
    actor_chunk_states: int = 1024
    """states per forward/backward chunk of an actor step (bounds memory, same gradient)."""
    # --- exploration ---
    exploration: Exploration = "min_extrp"
    """training-rollout noise: min_extrp (posterior-calibrated), gaussian, or none."""
    min_extrp_step: int = 6
    """min_extrp draws its step k from [this, K) (authors: 6 of 8)."""
    action_noise_std: float = 0.02
    """std of the gaussian exploration noise."""

    def __post_init__(self) -> None:
        self.check_off_policy()
        self.check_flow_actor()
        check_rldt_config(self)


# ----------------------------------------------------------------------------- the algorithm


class RLDT(OffPolicyAlgorithm):
    """RLDT on a :class:`FlowPolicy`: ``act`` during rollouts, ``update`` per iteration. The
    policy, Q ensemble, replay, critic rounds and state it shares with QAM are
    :class:`~flowpolicy.algos.offpolicy.OffPolicyAlgorithm`'s; here is its actor.

    Args:
        obs_dim: Do. action_low, action_high: env bounds, (Da,) each.
        config: hyper-parameters.
        policy: a pretrained flow policy to fine-tune (used as given: pass a copy); None builds
            one from the config (training from scratch).
    """

    config: RLDTConfig

    def __init__(
        self,
        obs_dim: int,
        action_low: Tensor,
        action_high: Tensor,
        config: RLDTConfig,
        policy: FlowPolicy | None = None,
    ) -> None:
        super().__init__(obs_dim, action_low, action_high, config, policy)
        self.reference = copy.deepcopy(self.policy).requires_grad_(False)
        self.actor_optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.actor_lr)
        self.actor_scheduler = torch.optim.lr_scheduler.LinearLR(
            self.actor_optimizer,
            start_factor=1.0 / config.actor_warmup_steps,
            end_factor=1.0,
            total_iters=config.actor_warmup_steps,
        )

    def critic_input(self, raw: Tensor) -> Tensor:
        """Raw chunks (..., A) -> their executed part (..., A_exec): RLDT's critic sees raw
        (pre-squash) actions."""
        return raw[..., : self.executed_dim]

    # ------------------------------------------------------------------------- sampling

    @torch.no_grad()
    def act(self, obs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Sample exploring actions for raw observations (N, Do).

        Returns env actions (N, Ta_exec * Da) and the record ``action``: the executed part of
        the raw (pre-squash) chunk, (N, A_exec), which the critic is trained on.
        """
        obs_normalised = self.policy.obs_norm(obs)
        final, chain = self._sample(obs_normalised, return_chain=True)
        action = self.explore(obs_normalised, final, chain)
        return self.policy.env_action(action), {"action": action[:, : self.executed_dim]}

    @torch.no_grad()
    def explore(self, obs_normalised: Tensor, final: Tensor, chain: Tensor) -> Tensor:
        """Training-rollout noise on the final actions (N, A) of the chains (K + 1, N, A).

        ``min_extrp``: ``a_K + ||a_K - a_dagger_k|| n`` for one step k drawn from
        ``[min_extrp_step, K)``: where late steps still change their mind, explore more.
        ``gaussian``: ``a_K + std n``.
        """
        cfg = self.config
        if cfg.exploration == "none":
            return final
        if cfg.exploration == "gaussian":
            return final + cfg.action_noise_std * torch.randn_like(final)
        flow_steps = self.policy.flow_steps
        batch = final.shape[0]
        step = torch.randint(cfg.min_extrp_step, flow_steps, (batch,), device=final.device)
        x_k = chain[step, torch.arange(batch, device=final.device)]
        tau = step.float() / flow_steps
        posterior = flows.expected_posterior(
            x_k, self.policy.velocity(obs_normalised, x_k, tau), tau
        )
        scale = (final - posterior).norm(dim=-1, keepdim=True)  # (N, 1)
        return final + scale * torch.randn_like(final)

    # ------------------------------------------------------------------------- the update

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """Store the iteration's trajectories, then run the rounds of critic and actor steps.

        Returns the mean of every step's metrics plus ``charts/`` values of the iteration.
        """
        cfg = self.config
        fresh, reward_scale = self.store(batch)
        train_actor = self.iterations >= cfg.critic_warmup_iterations
        means = self.rounds(fresh, reward_scale, train_actor)
        self.iterations += 1
        if cfg.reference == "previous":
            self.refresh_reference()
        self.policy.obs_norm.update(batch.obs)
        return means.result() | {
            "charts/reward_scale": reward_scale,
            "charts/actor_lr": self.actor_optimizer.param_groups[0]["lr"],
            "charts/replay_segments": float(len(self.replay)),
        }

    def refresh_reference(self) -> None:
        """Make the constraint's reference the current policy (the released code does this
        after every iteration; the paper keeps the initial policy)."""
        self.reference.load_state_dict(self.policy.state_dict())

    def round_actor_step(self, data: TrajectoryBatch, step: int) -> dict[str, Tensor]:
        """Actor step ``step`` of a round, on the states of :func:`actor_states`."""
        return self.actor_step(actor_states(data, step, self.config.num_particles))

    def critic_action_gradient(self, obs_normalised: Tensor, action: Tensor) -> Tensor:
        """``mean_e grad_a Q_e`` for full chunks (B, A); the critic sees only the executed part,
        so the gradient on the actions that are never executed is zero."""
        gradient = torch.zeros_like(action)
        executed = action[:, : self.executed_dim]
        gradient[:, : self.executed_dim] = self.critic.action_gradient(obs_normalised, executed)
        return gradient

    def actor_step(
        self, obs: Tensor, action_gradient: ActionGradient | None = None
    ) -> dict[str, Tensor]:
        """One transport step of the actor on raw observations (B, Do).

        The states are processed in chunks of ``actor_chunk_states`` whose gradients add up to
        the full batch's, then one (warmed-up) Adam step is taken.

        Args:
            obs: (B, Do) raw observations.
            action_gradient: ``grad_a Q`` to transport along; default: the critic ensemble's
                mean. Tests pass a known Q's gradient here.
        """
        gradient_fn = (
            action_gradient if action_gradient is not None else self.critic_action_gradient
        )
        obs_normalised = self.policy.obs_norm(obs)
        total = obs_normalised.shape[0]
        self.actor_optimizer.zero_grad(set_to_none=True)
        means = RunningMeans()
        bad_loss = None  # the first non-finite chunk loss: no step, on any rank
        for chunk in obs_normalised.split(self.config.actor_chunk_states):
            loss, metrics = self.transport_loss(chunk, gradient_fn)
            if not torch.isfinite(loss):
                bad_loss = loss.detach()
                break
            (loss * (chunk.shape[0] / total)).backward()
            means.add(metrics, weight=chunk.shape[0])
        refused = "actor " + distributed.NON_FINITE_LOSS
        distributed.sync_gradients([self.actor_optimizer], bad_loss, refused)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), math.inf)
        self.actor_optimizer.step()
        self.actor_scheduler.step()
        return means.result() | {"loss/actor_grad_norm": float(grad_norm)}

    def transport_loss(
        self, obs_normalised: Tensor, action_gradient: ActionGradient
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """RLDT's actor loss on normalised observations (B, Do); returns (loss, metrics)."""
        cfg = self.config
        particles = cfg.num_particles
        flow_steps = self.policy.flow_steps
        obs_p = obs_normalised.repeat_interleave(particles, dim=0)  # (B*P, Do)
        with torch.no_grad():
            final, chain = self._sample(obs_p, return_chain=True)  # (BP, A), (K+1, BP, A)
        x_k, tau, velocity, posterior = posteriors_at_random_steps(
            lambda x, t: self.policy.velocity(obs_p, x, t), chain, flow_steps
        )
        field, metrics = self.transport_field(obs_p, posterior, final, action_gradient)
        align = alignment_loss(velocity, field, tau, flow_steps)
        consistency = consistency_loss(x_k, velocity, tau, final, flow_steps)
        constraint = constraint_loss(self.policy, self.reference, obs_p, final)
        loss = align + cfg.consistency_coef * consistency + cfg.constraint_coef * constraint
        with torch.no_grad():
            per_state = final.view(-1, particles, final.shape[-1])  # (B, P, A)
            spread = torch.cdist(per_state, per_state).mean()
        return loss, metrics | {
            "loss/policy": loss.detach(),
            "loss/alignment": align.detach(),
            "loss/consistency": consistency.detach(),
            "loss/constraint": constraint.detach(),
            "policy/particle_distance": spread,
        }

    @torch.no_grad()
    def transport_field(
        self,
        obs_p: Tensor,
        posterior: Tensor,
        final: Tensor,
        action_gradient: ActionGradient,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """phi (B*P, A) at the expected posteriors for the configured field."""
        cfg = self.config
        if cfg.field == "delta":
            gradient = action_gradient(obs_p, posterior)
            return gradient, {"policy/grad_q_norm": gradient.norm(dim=-1).mean()}
        centres = posterior if cfg.field == "interp" else final
        shape = (-1, cfg.num_particles, final.shape[-1])  # (B, P, A)
        phi, metrics = svgd_field(
            posterior.view(shape),
            centres.view(shape),
            action_gradient(obs_p, centres).view(shape),
            cfg.svgd_temperature,
            cfg.adaptive_temperature,
            cfg.rbf_bandwidth,
        )
        return phi.reshape(final.shape), metrics

    # ------------------------------------------------------------------------- state

    def state_dict(self) -> dict:
        return super().state_dict() | {
            "reference": self.reference.state_dict(),
            "actor_scheduler": self.actor_scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.reference.load_state_dict(state["reference"])
        self.actor_scheduler.load_state_dict(state["actor_scheduler"])


# ----------------------------------------------------------------------------- helpers


def actor_states(data: TrajectoryBatch, step: int, num_particles: int) -> Tensor:
    """Raw observations (B, Do) for one actor step: every state of every P-th segment of the
    round, starting at segment ``step % P`` (the released code's selection), so a step costs
    about as many particles as the round has transitions."""
    num_segments = len(data)
    offset = step % num_particles
    if offset >= num_segments:  # fewer segments than particles: one segment per step
        chosen = torch.tensor([step % num_segments], device=data.obs.device)
    else:
        chosen = torch.arange(offset, num_segments, num_particles, device=data.obs.device)
    return data.obs[chosen].flatten(0, 1)


# ----------------------------------------------------------------------------- registration

SPEC = AlgorithmSpec(
    name="rldt",
    config=RLDTConfig,
    algorithm=RLDT,
    presets=(Preset("rldt", RLDTConfig), Preset("rldt-gym", rldt_gym)),
    fine_tunes=(FlowPolicy,),
)
