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
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from flowpolicy import flows
from flowpolicy.algos.offpolicy import (
    CriticData,
    RunningMeans,
    TDSettings,
    check_initial_policy,
    critic_steps,
    fresh_actions,
    load_optimizer_state,
    q_ensemble_and_optimizer,
    segment_members,
)
from flowpolicy.algos.onpolicy import optimizer_step
from flowpolicy.algos.rldt import RLDTConfig, constraint_loss
from flowpolicy.algos.spec import AlgorithmSpec, Preset
from flowpolicy.algos.validation import require_non_negative, require_positive, require_range
from flowpolicy.buffers import RolloutBatch, TrajectoryBatch, TrajectoryReplay
from flowpolicy.critics import QReduction
from flowpolicy.nets import Activation
from flowpolicy.policies import FlowPolicy, Network, Squash
from flowpolicy.returns import reward_scale_from_ema, update_abs_reward_ema

ActionGradient = Callable[[Tensor, Tensor], Tensor]
"""``grad_a Q`` at the critic's inputs: normalised obs (B, Do), squashed executed chunks
(B, A_exec) -> (B, A_exec)."""

Base = Literal["bc", "ema"]
Schedule = Literal["utd", "rounds"]
CriticSplit = Literal["all", "disjoint"]
Exploration = Literal["euler", "sde"]


@dataclass(frozen=True)
class QAMConfig:
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

    # --- rollout ---
    num_envs: int = 10
    """parallel environments (the authors act in one env and update after every env step)."""
    num_steps: int = 50
    """vector (chunk) steps per env per iteration; the updates run after each iteration."""
    gamma: float = 0.99
    """discount per env step; a chunk of Ta_exec actions is discounted by gamma ** Ta_exec (the
    authors' n-step backup) unless discount_per_chunk."""
    discount_per_chunk: bool = False
    """gamma is the discount per executed chunk (RLDT's convention) instead of per env step."""
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
    """std of the N(0, std^2) init of the Q members' weights (None: orthogonal init)."""
    critic_lr: float = 3e-4
    """learning rate of the critic (AdamW; authors: Adam 3e-4)."""
    critic_weight_decay: float = 0.0
    """AdamW weight decay of the critic."""
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
    critic_split: CriticSplit = "all"
    """every member on every row (authors) or members on disjoint trajectories (RLDT)."""
    reward_ema_rate: float | None = None
    """divide rewards by an EMA (this rate) of the batch mean |r| (RLDT); None: reward_scale."""
    reward_scale: float = 1.0
    """fixed reward multiplier, used only when reward_ema_rate is None (authors: raw rewards)."""
    bootstrap_clip: tuple[float, float] | None = None
    """clip the bootstrap values Qbar into [low, high]; None: no clip."""
    # --- data regime ---
    schedule: Schedule = "utd"
    """utd: critic + actor steps on random replay transitions (authors); rounds: RLDT's rounds."""
    utd_ratio: float = 1.0
    """utd: critic + actor gradient steps per env step collected (authors: 1 per executed action)."""
    batch_size: int = 256
    """transitions per critic and actor step (utd); states per actor step (rounds). Authors: 256."""
    replay_iterations: int = 400
    """iterations of trajectories kept in the FIFO replay (default: 1M env steps, the authors')."""
    critic_warmup_iterations: int = 1
    """first iterations that train only the critic (the authors' critic was pretrained offline)."""
    rounds: int = 8
    """rounds: rounds of {critic steps, actor steps} per iteration."""
    critic_steps: int = 256
    """rounds: full-batch critic steps per iteration, split evenly over the rounds."""
    actor_steps: int = 32
    """rounds: actor steps per iteration, split evenly over the rounds."""
    min_fresh_fraction: float = 1 / 3
    """rounds: least share of the newest iteration's trajectories in every round."""
    # --- adjoint matching ---
    beta: float = 0.3
    """inverse temperature of the target pi_beta exp(beta Q) (authors: 0.3 default, 1-30 per task)."""
    base: Base = "bc"
    """base field f_beta: bc = flow matching on the replay with a Polyak target (authors), ema = per-iteration EMA of the actor (RLDT port)."""
    base_target_rate: float = 0.005
    """bc: Polyak rate of the base's target per actor step (authors: tau 0.005)."""
    base_ema_decay: float = 0.995
    """ema: base <- decay * base + (1 - decay) * actor after every iteration (RLDT port)."""
    velocity_coef: float = 0.0
    """weight of a velocity MSE of the actor to the base at interpolants of its own actions (RLDT port: 0.2)."""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor and the bc base (authors: 3e-4)."""
    actor_max_grad_norm: float | None = 1.0
    """clip the actor's (and bc base's) gradient norm (authors: 1); None: no clipping."""
    # --- exploration ---
    exploration: Exploration = "euler"
    """training-rollout actions: euler = the fine-tuned flow from random noise (authors), sde = the memoryless SDE."""

    def __post_init__(self) -> None:
        require_positive(
            self,
            "num_envs",
            "num_steps",
            "flow_steps",
            "chunk",
            "chunk_exec",
            "time_dim",
            "critic_members",
            "critic_lr",
            "critic_max_grad_norm",
            "bootstrap_actions",
            "utd_ratio",
            "batch_size",
            "replay_iterations",
            "rounds",
            "critic_steps",
            "actor_lr",
            "actor_max_grad_norm",
            "critic_init_std",
            "reward_scale",
        )
        require_range(self, "gamma", 0.0, 1.0)
        require_range(self, "td_lambda", 0.0, 1.0)
        require_range(self, "min_fresh_fraction", 1e-9, 1.0)
        require_range(self, "base_target_rate", 1e-9, 1.0)
        for name in ("target_decay", "base_ema_decay"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(
                    f"QAMConfig.{name} must be in [0, 1), got {getattr(self, name)!r}."
                )
        require_non_negative(
            self,
            "critic_weight_decay",
            "pessimism",
            "beta",
            "velocity_coef",
            "critic_warmup_iterations",
            "actor_steps",
        )
        if self.reward_ema_rate is not None:
            require_range(self, "reward_ema_rate", 1e-9, 1.0)
        if self.chunk_exec > self.chunk:
            raise ValueError(
                f"chunk_exec ({self.chunk_exec}) cannot exceed chunk ({self.chunk}): the env can "
                "only execute actions the policy produced."
            )
        if self.flow_steps < 2:
            raise ValueError(
                f"QAM needs flow_steps >= 2 (K - 1 SDE steps and a last Euler step), got "
                f"{self.flow_steps}."
            )
        if self.schedule == "rounds":
            for name in ("critic_steps", "actor_steps"):
                if getattr(self, name) % self.rounds:
                    raise ValueError(
                        f"QAMConfig.{name} = {getattr(self, name)} does not split evenly into "
                        f"rounds = {self.rounds}; pass a multiple of --rounds."
                    )
        if self.critic_split == "disjoint":
            rows, what = (
                (self.num_envs, "num_envs")
                if self.schedule == "rounds"
                else (self.batch_size, "batch_size")
            )
            if rows < self.critic_members:
                raise ValueError(
                    f"{what} ({rows}) must be >= critic_members ({self.critic_members}) with "
                    "critic_split disjoint: each member trains on its own trajectories."
                )
        if self.bootstrap_clip is not None and not self.bootstrap_clip[0] < self.bootstrap_clip[1]:
            raise ValueError(f"bootstrap_clip needs low < high, got {self.bootstrap_clip}.")

    @property
    def chunk_gamma(self) -> float:
        """The discount of one executed chunk (one vector step of the loop)."""
        return self.gamma if self.discount_per_chunk else self.gamma**self.chunk_exec

    @property
    def gradient_steps_per_iteration(self) -> int:
        """utd: critic + actor steps per iteration, ``utd_ratio`` per env step collected."""
        env_steps = self.num_envs * self.num_steps * self.chunk_exec
        return max(1, round(self.utd_ratio * env_steps))

    @property
    def critic_steps_per_round(self) -> int:
        return self.critic_steps // self.rounds

    @property
    def actor_steps_per_round(self) -> int:
        return self.actor_steps // self.rounds


def qam_cpu(**overrides: object) -> QAMConfig:
    """QAM sized for a 2-core CPU: one gradient step per chunk instead of one per env step
    (utd_ratio 0.25 with chunk 4, the reference BC policies' chunk), 10 critic members of
    2x256 instead of 4x512, a 3x256 from-scratch actor, 4 envs x 50 chunk steps per iteration.
    Measured with a 3x512 residual BC policy (K = 10) at Hopper sizes on one thread
    (benchmarks/qam_update_speed.py): 0.08 s per critic step and 0.29 s per actor step, about
    2.6 hours of updates per 100k env steps (the defaults: about 28). Keyword overrides win.

    Source: ours (the QAM method of :class:`QAMConfig`, resized for a CPU)."""
    preset = dict(
        num_envs=4,
        utd_ratio=0.25,
        critic_hidden=(256, 256),
        actor_hidden=(256, 256, 256),
        chunk=4,
        chunk_exec=4,
        replay_iterations=1250,
    )
    return QAMConfig(**(preset | overrides))


def qam_rldt(**overrides: object) -> QAMConfig:
    """The RLDT authors' port of QAM (their baseline): base = per-iteration EMA (0.995) of the
    fine-tuned actor starting from the pretrained one, no BC loss, velocity MSE to the base
    (0.2), beta 0.3, and RLDT's critic and data regime taken from :class:`RLDTConfig`'s
    defaults (2 members, min target, TD(lambda) on rounds of trajectory segments, reward EMA,
    K = 8, chunk 4). Keyword overrides win.

    Source: RPFey/rldt at commit add6029182ae2598e4eb62037e8b4b8ec8a38ac9,
    cfg/gym/finetune/hopper-v2/ft_qam_flowmatching_mlp.yaml and
    agent/finetune/train_fm_qam_agent.py (policy_ema_tau 0.995, kl_coef 0.2 on the velocity
    difference, inv_temp 0.3)."""
    rldt = RLDTConfig()
    preset = dict(
        base="ema",
        base_ema_decay=0.995,
        velocity_coef=0.2,
        beta=0.3,
        schedule="rounds",
        batch_size=1024,
        critic_split="disjoint",
        discount_per_chunk=True,
        critic_max_grad_norm=None,
        critic_layer_norm=rldt.critic_layer_norm,
        critic_weight_decay=rldt.critic_weight_decay,
    )
    shared = (
        "num_envs",
        "num_steps",
        "gamma",
        "flow_steps",
        "chunk",
        "chunk_exec",
        "critic_members",
        "critic_hidden",
        "critic_activation",
        "critic_init_std",
        "critic_lr",
        "target_decay",
        "target_reduction",
        "bootstrap_actions",
        "td_lambda",
        "reward_ema_rate",
        "replay_iterations",
        "min_fresh_fraction",
        "critic_warmup_iterations",
        "rounds",
        "critic_steps",
        "actor_steps",
    )
    preset |= {name: getattr(rldt, name) for name in shared}
    return QAMConfig(**(preset | overrides))


# ----------------------------------------------------------------------------- the math


def sde_sigmas(flow_steps: int, device: torch.device | None = None) -> Tensor:
    """Noise scales of the memoryless SDE, ``sigma_i = sqrt(2 (1 - tau_i + h) / (tau_i + h))``
    on :func:`flowpolicy.flows.time_grid`, ``h = 1 / K``; shape (K,)."""
    tau = flows.time_grid(flow_steps, device)
    h = 1.0 / flow_steps
    return torch.sqrt(2.0 * (1.0 - tau + h) / (tau + h))


def memoryless_sde(
    fine: flows.VelocityFn,
    base: flows.VelocityFn,
    x0: Tensor,
    flow_steps: int,
    noise: Tensor | None = None,
    return_fields: bool = False,
) -> Tensor | tuple[Tensor, Tensor, Tensor]:
    """The memoryless SDE's chain with the fine-tuned field and a last Euler step of the base.

    ``x_{i+1} = x_i + h (2 f(x_i, tau_i) - x_i / (tau_i + h)) + sqrt(h) sigma_i n_i`` for
    i < K - 1, then ``x_K = x_{K-1} + h f_beta(x_{K-1}, tau_{K-1})``. No gradient flows along
    the chain.

    With ``return_fields`` it also returns both fields at every ``(x_i, tau_i)``, i < K, which
    the adjoint-matching loss needs: the SDE evaluates ``f_theta`` there anyway, so the
    loss reuses those values and their graphs (when called with gradients enabled) instead of
    evaluating ``f_theta`` a second time, and ``f_beta`` at the last step serves both the Euler
    step and the loss.

    Args:
        fine: ``f_theta(x (B, A), tau (B,))``. base: ``f_beta``, same signature.
        x0: (B, A) the start, ``N(0, I)`` noise.
        flow_steps: K >= 2.
        noise: (K - 1, B, A) the ``n_i``; default fresh ``N(0, I)`` draws.
        return_fields: also return the fields along the chain.

    Returns:
        The chain ``x_0 .. x_K``, (K + 1, B, A); with ``return_fields`` also ``f_theta`` at
        ``(x_i, tau_i)``, (K, B, A), with whatever graph ``fine`` builds, and ``f_beta`` there,
        (K, B, A), without gradient.
    """
    grid = flows.time_grid(flow_steps, x0.device)
    sigmas = sde_sigmas(flow_steps, x0.device)
    h = 1.0 / flow_steps
    x = x0.detach()
    chain = [x]
    fine_values: list[Tensor] = []
    base_values: list[Tensor] = []
    for i in range(flow_steps):
        tau = grid[i].expand(x.shape[0])
        if i < flow_steps - 1:
            n = torch.randn_like(x) if noise is None else noise[i]
            velocity = fine(x, tau)
            if return_fields:
                fine_values.append(velocity)
                with torch.no_grad():
                    base_values.append(base(x, tau))
            drift = 2.0 * velocity.detach() - x / (grid[i] + h)
            x = x + h * drift + math.sqrt(h) * sigmas[i] * n
        else:  # the released code ends with a plain Euler step of the base field
            with torch.no_grad():
                base_velocity = base(x, tau)
            if return_fields:
                fine_values.append(fine(x, tau))
                base_values.append(base_velocity)
            x = x + h * base_velocity
        chain.append(x)
    if return_fields:
        return torch.stack(chain), torch.stack(fine_values), torch.stack(base_values)
    return torch.stack(chain)


def lean_adjoint(
    base: flows.VelocityFn, chain: Tensor, terminal: Tensor, flow_steps: int
) -> Tensor:
    """The lean adjoint states ``adj_0 .. adj_{K-1}``, backwards along a chain.

    ``adj_i = adj_{i+1} + h J_x[2 f_beta(x, tau_i + h) - x / (tau_i + h)]^T adj_{i+1}`` at
    ``x = x_i``: one vector-Jacobian product of the base field per step (the released code's
    ``jax.vjp``), no gradient to any parameter.

    Args:
        base: ``f_beta(x (B, A), tau (B,))``.
        chain: (K + 1, B, A) ``x_0 .. x_K``; only ``x_0 .. x_{K-1}`` are used.
        terminal: (B, A) ``adj_K``.
        flow_steps: K.

    Returns:
        (K, B, A), row i is ``adj_i``.
    """
    grid = flows.time_grid(flow_steps, chain.device).to(chain.dtype)
    h = 1.0 / flow_steps
    adjoint = terminal.detach()
    adjoints = [adjoint] * flow_steps
    for i in reversed(range(flow_steps)):
        tau_next = (grid[i] + h).expand(chain.shape[1])
        with torch.enable_grad():
            x = chain[i].detach().requires_grad_(True)
            drift = 2.0 * base(x, tau_next) - x / tau_next.unsqueeze(-1)
            (vjp,) = torch.autograd.grad(drift, x, grad_outputs=adjoint)
        adjoint = adjoint + h * vjp
        adjoints[i] = adjoint
    return torch.stack(adjoints)


def adjoint_matching_loss(
    fine_velocity: Tensor, base_velocity: Tensor, adjoints: Tensor, sigmas: Tensor
) -> Tensor:
    """``sum_i || (2 / sigma_i) (f_theta - f_beta)(x_i, tau_i) + sigma_i adj_i ||^2`` per state.

    Args:
        fine_velocity: (K, B, A) ``f_theta`` at the chain's ``x_i``, with gradient.
        base_velocity: (K, B, A) ``f_beta`` there. adjoints: (K, B, A). sigmas: (K,).

    Returns:
        (B,) the loss of each state, summed over steps and the chunk.
    """
    sigma = sigmas.view(-1, 1, 1)
    residual = (2.0 / sigma) * (fine_velocity - base_velocity.detach()) + sigma * adjoints.detach()
    return residual.square().sum(dim=(0, 2))


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


class QAM:
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

    def __init__(
        self,
        obs_dim: int,
        action_low: Tensor,
        action_high: Tensor,
        config: QAMConfig,
        policy: FlowPolicy | None = None,
    ) -> None:
        self.config = config
        if policy is None:
            policy = FlowPolicy(
                obs_dim,
                action_low,
                action_high,
                chunk=config.chunk,
                chunk_exec=config.chunk_exec,
                flow_steps=config.flow_steps,
                network=config.actor_network,
                hidden=config.actor_hidden,
                time_dim=config.time_dim,
                activation=config.actor_activation,
                output_scale=1.0,
                squash=config.squash,
            )
        else:
            check_initial_policy(policy, obs_dim, config, "QAM")
        self.policy = policy
        self.base = copy.deepcopy(policy).requires_grad_(False)
        self.bc_policy = copy.deepcopy(policy) if config.base == "bc" else None
        self.executed_dim = config.chunk_exec * policy.action_dim
        self.critic, self.critic_optimizer = q_ensemble_and_optimizer(
            obs_dim, self.executed_dim, config
        )
        # fused: one kernel instead of a loop of small ops per tensor (see the critic's).
        self.actor_optimizer = torch.optim.Adam(
            self.actor_parameters(), lr=config.actor_lr, fused=True
        )
        self.td_settings = TDSettings(
            config.chunk_gamma,
            config.td_lambda,
            config.target_reduction,
            config.pessimism,
            config.bootstrap_clip,
        )
        self.replay = TrajectoryReplay(config.replay_iterations)
        self.reward_ema: float | None = None
        self.iterations = 0

    def actor_parameters(self) -> list[nn.Parameter]:
        """The fine-tuned field's parameters, and the bc base's (one optimiser, one clip)."""
        modules = [self.policy] + ([self.bc_policy] if self.bc_policy is not None else [])
        return [p for module in modules for p in module.parameters()]

    @property
    def eval_policy(self) -> FlowPolicy:
        """The policy that evaluation runs and checkpoints export: the fine-tuned flow
        (zero mode = deterministic Euler from x_0 = 0)."""
        return self.policy

    # ------------------------------------------------------------------------- sampling

    def _fields(self, obs_normalised: Tensor) -> tuple[flows.VelocityFn, flows.VelocityFn]:
        """``f_theta`` and ``f_beta`` conditioned on normalised obs (B, Do)."""

        def fine(x: Tensor, tau: Tensor) -> Tensor:
            return self.policy.velocity(obs_normalised, x, tau)

        def base(x: Tensor, tau: Tensor) -> Tensor:
            return self.base.velocity(obs_normalised, x, tau)

        return fine, base

    def _sample(self, obs_normalised: Tensor) -> Tensor:
        """Random-sampling Euler actions (B, A) of the fine-tuned flow."""
        x0 = self.policy.initial_noise(obs_normalised.shape[0], "random", obs_normalised.device)
        fine, _ = self._fields(obs_normalised)
        return flows.euler_sample(fine, x0, self.policy.flow_steps)

    def _sde_chain(
        self, obs_normalised: Tensor, return_fields: bool = False
    ) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        """A memoryless-SDE chain (K + 1, B, A) from fresh noise; with ``return_fields`` also
        both fields along it, (K, B, A) each (see :func:`memoryless_sde`)."""
        x0 = self.policy.initial_noise(obs_normalised.shape[0], "random", obs_normalised.device)
        fine, base = self._fields(obs_normalised)
        return memoryless_sde(fine, base, x0, self.policy.flow_steps, return_fields=return_fields)

    def critic_input(self, raw: Tensor) -> Tensor:
        """Raw chunks (..., A) -> what the critic sees: the squashed executed part (..., A_exec)."""
        return squashed(self.policy, raw[..., : self.executed_dim])

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
        fresh = TrajectoryBatch.from_rollout(batch, batch.records["action"])
        self.replay.add(fresh)
        if cfg.reward_ema_rate is not None:
            self.reward_ema = update_abs_reward_ema(
                self.reward_ema, batch.rewards, cfg.reward_ema_rate
            )
            reward_scale = reward_scale_from_ema(self.reward_ema)
        else:
            reward_scale = cfg.reward_scale
        train_actor = self.iterations >= cfg.critic_warmup_iterations
        means = RunningMeans()
        if cfg.schedule == "utd":
            for _ in range(cfg.gradient_steps_per_iteration):
                data = self.replay.sample_transitions(cfg.batch_size)  # (B, 1, ...)
                for metrics in self.critic_round(data, reward_scale, 1):
                    means.add(metrics)
                if train_actor:
                    means.add(self.actor_step(data.obs[:, 0], data.actions[:, 0]))
        else:
            for _ in range(cfg.rounds):
                data = self.replay.sample_round(len(fresh), cfg.min_fresh_fraction)
                for metrics in self.critic_round(data, reward_scale, cfg.critic_steps_per_round):
                    means.add(metrics)
                if train_actor:
                    for _ in range(cfg.actor_steps_per_round):
                        obs, actions = random_states(data, cfg.batch_size)
                        means.add(self.actor_step(obs, actions))
        self.iterations += 1
        if cfg.base == "ema":
            polyak_(self.base, self.policy, 1.0 - cfg.base_ema_decay)
        self.policy.obs_norm.update(batch.obs)
        return means.result() | {
            "charts/reward_scale": reward_scale,
            "charts/replay_segments": float(len(self.replay)),
        }

    def critic_round(
        self, data: TrajectoryBatch, reward_scale: float, steps: int
    ) -> list[dict[str, Tensor]]:
        """``steps`` critic steps on segments (S, T) of the replay (one-step segments: random
        transitions), bootstrapping with fresh actions of the fine-tuned policy at s'."""
        cfg = self.config
        members = segment_members(len(data), cfg.critic_members, data.obs.device)
        batch = CriticData.from_segments(
            data,
            self.policy.obs_norm,
            self.critic_input(data.actions),
            reward_scale,
            members if cfg.critic_split == "disjoint" else None,
        )
        next_actions = fresh_actions(
            lambda obs: self.critic_input(self._sample(obs)), batch.next_obs, cfg.bootstrap_actions
        )  # (M, S*T, A_exec)
        return critic_steps(
            self.critic,
            self.critic_optimizer,
            batch,
            next_actions,
            steps,
            self.td_settings,
            cfg.critic_max_grad_norm,
        )

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
        return {
            "policy": self.policy.state_dict(),
            "base": self.base.state_dict(),
            "bc_policy": None if self.bc_policy is None else self.bc_policy.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "replay": self.replay.state_dict(),
            "reward_ema": self.reward_ema,
            "iterations": self.iterations,
        }

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.base.load_state_dict(state["base"])
        if self.bc_policy is not None:
            self.bc_policy.load_state_dict(state["bc_policy"])
        self.critic.load_state_dict(state["critic"])
        load_optimizer_state(self.critic_optimizer, state["critic_optimizer"])
        load_optimizer_state(self.actor_optimizer, state["actor_optimizer"])
        self.replay.load_state_dict(state["replay"])
        self.reward_ema = state["reward_ema"]
        self.iterations = state["iterations"]


# ----------------------------------------------------------------------------- helpers


def random_states(data: TrajectoryBatch, count: int) -> tuple[Tensor, Tensor]:
    """``count`` random (with replacement) raw observations (B, Do) and stored chunks (B, A)
    of a round's segments, for one actor step of the rounds schedule."""
    obs, actions = data.obs.flatten(0, 1), data.actions.flatten(0, 1)
    index = torch.randint(obs.shape[0], (count,), device=obs.device)
    return obs[index], actions[index]


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
