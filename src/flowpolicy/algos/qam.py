"""QAM — Q-learning with Adjoint Matching (Li, Levine, arXiv 2601.14234; code
ColinQiyangLi/qam, ``agents/qam.py``).

QAM fine-tunes a flow field ``f_theta`` towards the behaviour-regularised optimum
``pi(a|s) ∝ pi_beta(a|s) exp(beta Q(s, a))`` of a *base* field ``f_beta`` with adjoint
matching (ALGORITHMS.md section 8): a regression of the fine-tuned field onto the base field
plus a correction read off a backward "lean adjoint" ODE, so no gradient flows through the
sampler. With ``h = 1 / K`` and the grid ``tau_i = i / K`` (:func:`flowpolicy.flows.time_grid`):

1. **Memoryless SDE** with the fine-tuned field, ``sigma_i = sqrt(2 (1 - tau_i + h) / (tau_i + h))``:

       x_{i+1} = x_i + h (2 f_theta(x_i, tau_i) - x_i / (tau_i + h)) + sqrt(h) sigma_i n_i

   for i < K - 1, from ``x_0 ~ N(0, I)``; the last step is a plain Euler step with the base
   field, ``x_K = x_{K-1} + h f_beta(x_{K-1}, tau_{K-1})`` (the released code).
2. **Terminal adjoint** from the target critics' mean: ``adj_K = -beta grad_x Qbar(s, sq(x_K))``,
   ``sq`` the policy's squash (clip: the released ``clip_adj``, whose gradient is zero where the
   action is clipped).
3. **Lean adjoint**, backwards with the base field only, one vector-Jacobian product per step:

       adj_i = adj_{i+1} + h J_x[2 f_beta(x, tau_i + h) - x / (tau_i + h)]^T adj_{i+1},  x = x_i.

4. **Loss** ``sum_i || (2 / sigma_i) (f_theta - f_beta)(x_i, tau_i) + sigma_i adj_i ||^2``,
   summed over the chunk, averaged over states.
5. **Base field.** ``bc`` (paper and code): a second flow, trained by conditional flow matching
   on the replay's actions, whose Polyak average (rate 0.005 per step) is ``f_beta``. ``ema``
   (the RLDT authors' port): ``f_beta`` is a per-iteration EMA (0.995) of the fine-tuned field,
   starting from the pretrained policy, with an extra velocity MSE to it (0.2).
6. **Critic.** An ensemble of Q(s, executed chunk) with Polyak targets, the 1-step target
   ``r + gamma^Ta (1 - term) [mean_e - rho std_e] Qbar_e(s', a')`` with a fresh action of the
   fine-tuned policy (rho 0.5), on random replay transitions (the shared
   :mod:`flowpolicy.algos.offpolicy` critic; the port uses RLDT's TD(lambda) critic on rounds
   of trajectory segments).

Shapes: ``N`` envs, ``T`` steps per iteration, ``B`` states, ``K`` flow steps, ``A = Ta * Da``
flat chunk, ``A_exec = Ta_exec * Da`` executed chunk, ``Do`` observation size, ``E`` critic
members.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from flowpolicy import flows
from flowpolicy.algos.adjoint import (
    adjoint_matching_loss,
    lean_adjoint,
    memoryless_sde,
    sde_sigmas,
)
from flowpolicy.algos.config_blocks import FlowActorConfig, OffPolicyConfig
from flowpolicy.algos.offpolicy import OffPolicyAlgorithm, RunningMeans
from flowpolicy.algos.offpolicy_presets import qam_cpu
from flowpolicy.algos.onpolicy import optimizer_step
from flowpolicy.algos.qam_rldt import RLDTPortConfig, qam_rldt, random_states
from flowpolicy.algos.spec import AlgorithmSpec, Preset
from flowpolicy.algos.transport import constraint_loss
from flowpolicy.algos.validation import require_non_negative, require_positive, require_range
from flowpolicy.buffers import RolloutBatch, TrajectoryBatch
from flowpolicy.critics import QReduction
from flowpolicy.nets import Activation
from flowpolicy.policies import FlowPolicy, Network, Squash

ActionGradient = Callable[[Tensor, Tensor], Tensor]
"""``grad_a Q`` at the critic's inputs: normalised obs (B, Do), squashed executed chunks
(B, A_exec) -> (B, A_exec)."""

Base = Literal["bc", "ema"]
Exploration = Literal["euler", "sde"]


@dataclass(frozen=True)
class QAMConfig(RLDTPortConfig, FlowActorConfig, OffPolicyConfig):
    """QAM. Defaults are the authors'; their experiment scripts cover OGBench only (per-task
    beta 1-30), with no Gym locomotion settings.

    Source: ColinQiyangLi/qam at commit f93efd22520a79f6819f458dffe9c075eacc786f,
    agents/qam.py (get_config: lr 3e-4, batch 256, 10 LayerNorm Q members of 4x512, rho 0.5,
    10 flow steps, inv_temp 0.3) and main.py (horizon_length 5).

    Cost on a CPU: the paper's critic is 10 LayerNorm MLPs of 4x512, and the update-to-data
    ratio is one critic + actor step (batch 256; per actor step K passes of each field along
    the SDE, K vector-Jacobian products of the base, and the backward pass through the K
    passes of the fine-tuned field) per *env step*. Measured on the 2-core CPU shared with
    other jobs at Hopper sizes: about 1 s per gradient step, i.e. about 28 hours of updates per
    100k env steps. ``qam_cpu()`` (``--preset qam-cpu``) keeps the method and
    shrinks the work to about 2.6 hours per 100k env steps (see there).
    """

    # The rollout, critic and data regime are OffPolicyConfig's (re-declared here with QAM's
    # defaults), the switches of the RLDT authors' port are RLDTPortConfig's (qam_rldt.py).
    # --- rollout ---
    num_envs: int = 10
    """parallel environments (the authors act in one env and update after every env step)."""
    num_steps: int = 50
    """vector (chunk) steps per env per iteration; the updates run after each iteration."""
    gamma: float = 0.99
    """discount per env step; a chunk of Ta_exec actions is discounted by gamma ** Ta_exec (the
    authors' n-step backup) unless discount_per_chunk."""
    # --- flow policy (built only when no pretrained policy is given) ---
    flow_steps: int = 10
    """K, steps of the sampler and of the memoryless SDE (authors: 10)."""
    chunk: int = 5
    """Ta, actions per policy sample (authors: horizon_length 5)."""
    chunk_exec: int = 5
    """Ta_exec <= Ta, actions executed per sample (authors: the whole chunk)."""
    actor_network: Network = "mlp"
    """from-scratch velocity network: a plain MLP on [obs, x, time features] (authors) or residual."""
    actor_hidden: tuple[int, ...] = (512, 512, 512, 512)
    """hidden sizes of a from-scratch velocity network (authors: 4x512)."""
    actor_activation: Activation = "silu"
    """hidden activation of a from-scratch velocity network (authors: GELU; SiLU is the nearest here)."""
    time_dim: int = 8
    """time features of a from-scratch velocity network (authors: tau concatenated as is)."""
    squash: Squash = "clip"
    """how a from-scratch policy's raw actions are bounded (authors: clip to [-1, 1])."""
    # --- critic ---
    critic_members: int = 10
    """E, Q-ensemble members (authors: num_qs 10)."""
    critic_hidden: tuple[int, ...] = (512, 512, 512, 512)
    """hidden sizes of each Q member (authors: 4x512)."""
    critic_activation: Activation = "silu"
    """hidden activation of each Q member (authors: GELU; SiLU is the nearest here)."""
    critic_layer_norm: bool = True
    """LayerNorm in each hidden layer of the Q members (authors: on)."""
    critic_init_std: float | None = None
    critic_lr: float = 3e-4
    """learning rate of the critic (AdamW; authors: Adam 3e-4)."""
    critic_max_grad_norm: float | None = 1.0
    """clip the critic's gradient norm (authors: 1, jointly with the actor); None: no clipping."""
    target_decay: float = 0.995
    """Polyak factor m of the target critics per critic step (authors: tau 0.005 = 1 - m)."""
    target_reduction: QReduction = "pessimistic"
    """how target members combine: pessimistic = mean - pessimism * std (authors), min, mean."""
    pessimism: float = 0.5
    """rho of the pessimistic reduction (authors: 0.5)."""
    bootstrap_actions: int = 1
    """fresh policy actions at s' that the bootstrap value averages over (authors: 1)."""
    td_lambda: float = 0.0
    """lambda of the TD(lambda) targets over replayed segments (1-step on random transitions)."""
    reward_ema_rate: float | None = None
    """divide rewards by an EMA (this rate) of the batch mean |r| (RLDT); None: reward_scale."""
    reward_scale: float = 1.0
    """fixed reward multiplier, used only when reward_ema_rate is None (authors: raw rewards)."""
    bootstrap_clip: tuple[float, float] | None = None
    """clip the bootstrap values Qbar into [low, high]; None: no clip."""
    # --- data regime ---
    utd_ratio: float = 1.0
    """utd: critic + actor gradient steps per env step collected (authors: 1 per executed action)."""
    batch_size: int = 256
    """transitions per critic and actor step (utd); states per actor step (rounds). Authors: 256."""
    replay_iterations: int = 400
    """iterations of trajectories kept in the FIFO replay (default: 1M env steps, the authors')."""
    critic_warmup_iterations: int = 1
    """first iterations that train only the critic (the authors' critic was pretrained offline)."""
    # --- adjoint matching ---
    beta: float = 0.3
    """inverse temperature of the target pi_beta exp(beta Q) (authors: 0.3 default, 1-30 per task)."""
    base: Base = "bc"
    """base field f_beta: bc = flow matching on the replay with a Polyak target (authors), ema = per-iteration EMA of the actor (RLDT port)."""
    base_target_rate: float = 0.005
    """bc: Polyak rate of the base's target per actor step (authors: tau 0.005)."""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor and the bc base (authors: 3e-4)."""
    actor_max_grad_norm: float | None = 1.0
    """clip the actor's (and bc base's) gradient norm (authors: 1); None: no clipping."""
    # --- exploration ---
    exploration: Exploration = "euler"
    """training-rollout actions: euler = the fine-tuned flow from random noise (authors), sde = the memoryless SDE."""

    def __post_init__(self) -> None:
        self.check_off_policy()
        self.check_flow_actor()
        self.check_rldt_port()
        require_positive(self, "utd_ratio", "batch_size", "actor_lr", "actor_max_grad_norm")
        require_range(self, "base_target_rate", 1e-9, 1.0)
        require_non_negative(self, "beta")
        if self.flow_steps < 2:
            raise ValueError(
                f"QAM needs flow_steps >= 2 (K - 1 SDE steps and a last Euler step), got "
                f"{self.flow_steps}."
            )

    @property
    def gradient_steps_per_iteration(self) -> int:
        """utd: critic + actor steps per iteration, ``utd_ratio`` per env step collected."""
        env_steps = self.num_envs * self.num_steps * self.chunk_exec
        return max(1, round(self.utd_ratio * env_steps))


# ----------------------------------------------------------------------------- helpers


def squashed(policy: FlowPolicy, raw: Tensor) -> Tensor:
    """Raw actions -> the policy's bounded actions in [-1, 1] (what the env and critic see)."""
    return raw.tanh() if policy.squash == "tanh" else raw.clamp(-1.0, 1.0)


def bc_targets(policy: FlowPolicy, raw: Tensor) -> Tensor:
    """What the bc base regresses on: the stored raw chunk, clipped into [-1, 1] for a clipping
    policy (the authors store clipped actions); a tanh policy's raw actions as they are."""
    return raw.clamp(-1.0, 1.0) if policy.squash == "clip" else raw


@torch.no_grad()
def polyak_(target: FlowPolicy, online: FlowPolicy, rate: float) -> None:
    """``target <- (1 - rate) target + rate online`` on the velocity networks' parameters (the
    normalisers are the fine-tuned policy's and never averaged)."""
    target_net, online_net = target.velocity_net, online.velocity_net
    for t, o in zip(target_net.parameters(), online_net.parameters(), strict=True):
        t.lerp_(o, rate)
    for t, o in zip(target_net.buffers(), online_net.buffers(), strict=True):
        t.copy_(o)


# ----------------------------------------------------------------------------- the algorithm


class QAM(OffPolicyAlgorithm):
    """QAM on a :class:`FlowPolicy`: ``act`` during rollouts, ``update`` per iteration.

    Networks: ``policy`` (``f_theta``, trained, evaluated and exported), ``base`` (``f_beta``,
    never trained by gradient: the Polyak average of ``bc_policy`` or the EMA of ``policy``),
    ``bc_policy`` (the flow trained by flow matching on the replay; ``bc`` base only), and the
    Q ensemble. All start as copies of the initial policy.

    Args:
        obs_dim: Do. action_low, action_high: env bounds, (Da,) each.
        config: hyper-parameters.
        policy: a pretrained flow policy to fine-tune (used as given: pass a copy); None builds
            one from the config (training from scratch).
    """

    config: QAMConfig

    def __init__(
        self,
        obs_dim: int,
        action_low: Tensor,
        action_high: Tensor,
        config: QAMConfig,
        policy: FlowPolicy | None = None,
    ) -> None:
        super().__init__(obs_dim, action_low, action_high, config, policy)
        self.base = copy.deepcopy(self.policy).requires_grad_(False)
        self.bc_policy = copy.deepcopy(self.policy) if config.base == "bc" else None
        # fused: one kernel instead of a loop of small ops per tensor (see the critic's).
        self.actor_optimizer = torch.optim.Adam(
            self.actor_parameters(), lr=config.actor_lr, fused=True
        )

    def actor_parameters(self) -> list[nn.Parameter]:
        """The fine-tuned field's parameters, and the bc base's (one optimiser, one clip)."""
        modules = [self.policy] + ([self.bc_policy] if self.bc_policy is not None else [])
        return [p for module in modules for p in module.parameters()]

    def critic_input(self, raw: Tensor) -> Tensor:
        """Raw chunks (..., A) -> what the critic sees: the squashed executed part (..., A_exec)."""
        return squashed(self.policy, raw[..., : self.executed_dim])

    # ------------------------------------------------------------------------- sampling

    def _fields(self, obs_normalised: Tensor) -> tuple[flows.VelocityFn, flows.VelocityFn]:
        """``f_theta`` and ``f_beta`` conditioned on normalised obs (B, Do)."""

        def fine(x: Tensor, tau: Tensor) -> Tensor:
            return self.policy.velocity(obs_normalised, x, tau)

        def base(x: Tensor, tau: Tensor) -> Tensor:
            return self.base.velocity(obs_normalised, x, tau)

        return fine, base

    def _sde_chain(
        self, obs_normalised: Tensor, return_fields: bool = False
    ) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        """A memoryless-SDE chain (K + 1, B, A) from fresh noise; with ``return_fields`` also
        both fields along it, (K, B, A) each (see :func:`memoryless_sde`)."""
        x0 = self.policy.initial_noise(obs_normalised.shape[0], "random", obs_normalised.device)
        fine, base = self._fields(obs_normalised)
        return memoryless_sde(fine, base, x0, self.policy.flow_steps, return_fields=return_fields)

    @torch.no_grad()
    def act(self, obs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Sample actions for raw observations (N, Do).

        Returns env actions (N, Ta_exec * Da) and the record ``action``: the raw (pre-squash)
        full chunk (N, A); the critic sees its squashed executed part, the bc base all of it.
        """
        obs_normalised = self.policy.obs_norm(obs)
        if self.config.exploration == "sde":
            raw = self._sde_chain(obs_normalised)[-1]
        else:
            raw = self._sample(obs_normalised)
        return self.policy.env_action(raw), {"action": raw}

    # ------------------------------------------------------------------------- the update

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """Store the iteration's trajectories, then run the critic and actor steps of the
        schedule. Returns the mean of every step's metrics plus ``charts/`` values."""
        cfg = self.config
        fresh, reward_scale = self.store(batch)
        train_actor = self.iterations >= cfg.critic_warmup_iterations
        if cfg.schedule == "rounds":  # the RLDT port's schedule
            means = self.rounds(fresh, reward_scale, train_actor)
        else:
            means = RunningMeans()
            for _ in range(cfg.gradient_steps_per_iteration):
                data = self.replay.sample_transitions(cfg.batch_size)  # (B, 1, ...)
                for metrics in self.critic_round(data, reward_scale, 1):
                    means.add(metrics)
                if train_actor:
                    means.add(self.actor_step(data.obs[:, 0], data.actions[:, 0]))
        self.iterations += 1
        if cfg.base == "ema":  # the RLDT port's base: an EMA of the actor
            polyak_(self.base, self.policy, 1.0 - cfg.base_ema_decay)
        self.policy.obs_norm.update(batch.obs)
        return means.result() | {
            "charts/reward_scale": reward_scale,
            "charts/replay_segments": float(len(self.replay)),
        }

    def round_actor_step(self, data: TrajectoryBatch, step: int) -> dict[str, Tensor | float]:
        """Rounds schedule (RLDT port): an actor step on ``batch_size`` random states of the
        round, with their stored chunks for the bc base."""
        return self.actor_step(*random_states(data, self.config.batch_size))

    def actor_step(
        self,
        obs: Tensor,
        actions: Tensor | None = None,
        action_gradient: ActionGradient | None = None,
    ) -> dict[str, Tensor | float]:
        """One Adam step of the actor (and of the bc base), then the base's Polyak step.

        Args:
            obs: (B, Do) raw observations.
            actions: (B, A) the replay's raw chunks for the bc base's flow matching; None
                skips it.
            action_gradient: ``grad_a Q`` at the critic's inputs; default: the target critics'
                mean. Tests pass a known Q's gradient here.
        """
        cfg = self.config
        obs_normalised = self.policy.obs_norm(obs)
        loss, metrics = self.adjoint_loss(obs_normalised, action_gradient)
        if self.bc_policy is not None and actions is not None:
            bc = self.bc_loss(obs_normalised, actions)
            loss = loss + bc
            metrics["loss/bc"] = bc.detach()
        grad_norm = optimizer_step(
            self.actor_optimizer, loss, self.actor_parameters(), cfg.actor_max_grad_norm
        )
        if self.bc_policy is not None:
            polyak_(self.base, self.bc_policy, cfg.base_target_rate)
        return metrics | {"loss/actor": loss.detach(), "loss/actor_grad_norm": grad_norm}

    def adjoint_loss(
        self, obs_normalised: Tensor, action_gradient: ActionGradient | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The adjoint-matching loss (plus the port's velocity MSE) on normalised obs (B, Do)."""
        cfg = self.config
        flow_steps = self.policy.flow_steps
        _, base = self._fields(obs_normalised)
        # One pass along the chain gives the loss both fields at every (x_i, tau_i), each
        # (K, B, A): f_theta with its graph, f_beta without. The chain has no gradient.
        chain, fine_velocity, base_velocity = self._sde_chain(obs_normalised, return_fields=True)
        terminal = self.terminal_adjoint(obs_normalised, chain[-1], action_gradient)
        adjoints = lean_adjoint(base, chain, terminal, flow_steps)  # (K, B, A)
        sigmas = sde_sigmas(flow_steps, chain.device)
        matching = adjoint_matching_loss(fine_velocity, base_velocity, adjoints, sigmas).mean()
        loss = matching
        with torch.no_grad():
            final = chain[-1]
            metrics = {
                "loss/adjoint_matching": matching.detach(),
                "policy/terminal_adjoint": terminal.abs().mean(),
                "policy/adjoint_norm": adjoints.norm(dim=-1).mean(),
                "policy/field_gap": (fine_velocity - base_velocity).norm(dim=-1).mean(),
                "policy/clipped_fraction": (final.abs() > 1.0).float().mean(),
            }
        if cfg.velocity_coef > 0:
            velocity = constraint_loss(self.policy, self.base, obs_normalised, chain[-1])
            loss = loss + cfg.velocity_coef * velocity
            metrics["loss/velocity"] = velocity.detach()
        return loss, metrics

    def terminal_adjoint(
        self,
        obs_normalised: Tensor,
        final: Tensor,
        action_gradient: ActionGradient | None = None,
    ) -> Tensor:
        """``adj_K = -beta grad_x Qbar(s, sq(x_K))`` on the executed part, 0 elsewhere; (B, A).

        The gradient goes through the squash ``sq`` (clip: zero where the action was clipped,
        as the released ``clip_adj``; tanh: times ``1 - tanh^2``).
        """
        raw = final[:, : self.executed_dim].detach()
        with torch.enable_grad():
            raw.requires_grad_(True)
            bounded = squashed(self.policy, raw)
            if action_gradient is None:
                q_gradient = self.critic.action_gradient(obs_normalised, bounded, target=True)
            else:
                q_gradient = action_gradient(obs_normalised, bounded.detach())
            (gradient,) = torch.autograd.grad(bounded, raw, grad_outputs=q_gradient)
        terminal = torch.zeros_like(final)
        terminal[:, : self.executed_dim] = -self.config.beta * gradient
        return terminal

    def bc_loss(self, obs_normalised: Tensor, actions: Tensor) -> Tensor:
        """Flow matching of the bc base on replay chunks (B, A): ``E ||v - (a - eps)||^2 / A``
        at ``tau ~ U[0, 1]`` (the authors' ``flow_loss``)."""
        targets = bc_targets(self.policy, actions)
        noise = torch.randn_like(targets)
        tau = torch.rand(targets.shape[0], device=targets.device)
        velocity = self.bc_policy.velocity(
            obs_normalised, flows.interpolate(targets, noise, tau), tau
        )
        return flows.cfm_loss(velocity, targets, noise, tau).mean()

    # ------------------------------------------------------------------------- state

    def state_dict(self) -> dict:
        return super().state_dict() | {
            "base": self.base.state_dict(),
            "bc_policy": None if self.bc_policy is None else self.bc_policy.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.base.load_state_dict(state["base"])
        if self.bc_policy is not None:
            self.bc_policy.load_state_dict(state["bc_policy"])


# ----------------------------------------------------------------------------- registration

SPEC = AlgorithmSpec(
    name="qam",
    config=QAMConfig,
    algorithm=QAM,
    presets=(
        Preset("qam", QAMConfig),
        Preset("qam-cpu", qam_cpu),
        Preset("qam-rldt", qam_rldt),
    ),
    fine_tunes=(FlowPolicy,),
)
