"""DSRL — Diffusion Steering via RL (Wagenmaker et al. 2025, "Steering Your Diffusion Policy
with Latent Space RL", arXiv 2506.15799; code ajwagen/dsrl).

DSRL never changes the pretrained policy. It keeps the policy's deterministic noise-to-action
map ``a = pi_0(s, w)`` (a flow policy's Euler ODE from ``x_0 = w``, a diffusion policy's DDIM
with eta 0 from ``x_K = w``; ``deterministic_sample``) frozen and learns, with SAC
(:mod:`flowpolicy.algos.sac`), a policy over the *noise* ``w`` that steers it:

    u ~ pi_psi(.|s) (tanh-squashed Gaussian),   w = b u in [-b, b]^A,   a = pi_0(s, w)

with ``b`` the noise bound (the released configs' ``action_magnitude``). Two variants:

- **DSRL-SAC** (``variant="sac"``): the env wrapped by ``pi_0`` is a new MDP with action ``u``;
  plain SAC on it. ``Q(s, u)`` learns by TD with ``y = r + gamma (1 - term) [min_e Qbar_e(s',
  u') - alpha log pi_psi(u'|s')]``, ``u' ~ pi_psi(s')``; the actor maximises
  ``min_e Q_e(s, u) - alpha log pi_psi(u|s)``.
- **DSRL-NA** (noise aliasing, ``variant="na"``, the released default): ``Q^A(s, a)`` learns
  by TD on the executed actions, ``y = r + gamma (1 - term) [min_e Qbar^A_e(s', pi_0(s', b u'))
  - alpha log pi_psi(u'|s')]``; a noise critic ``Q^W(s, u)`` is distilled from it at random
  noise, ``L_W = 1/2 sum_e E_{s, w ~ N(0, I)} (Q^W_e(s, w / b) - Q^A_e(s, pi_0(s, w)))^2``,
  and the actor maximises ``min_e Q^W_e(s, u) - alpha log pi_psi(u|s)``. Every noise that
  maps to the same action shares its value, and the replay's actions need no noise.

Both learn the temperature towards the target entropy: ``L_alpha = -E[log alpha (log pi + H)]``.
Training starts after ``warmup_steps`` vector steps of the frozen policy at ``w ~ N(0, I)``.
Evaluation runs :class:`DSRLPolicy`: ``zero`` is ``w = b tanh(mu_psi(s))``, ``random`` samples.

Shapes: ``N`` envs, ``T`` steps per iteration, ``B`` batch, ``Do`` observation size, ``Da``
action size, ``A = Ta * Da`` the noise (a whole chunk), ``A_exec = Ta_exec * Da`` the executed
actions (what ``Q^A`` sees), ``E`` critics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from flowpolicy.algos import sac
from flowpolicy.algos.noise_steering import DSRLPolicy, SteerablePolicy, bounded_executed
from flowpolicy.algos.offpolicy import RunningMeans, load_optimizer_state
from flowpolicy.algos.offpolicy_presets import dsrl_cpu, dsrl_robomimic
from flowpolicy.algos.spec import AlgorithmSpec, Preset
from flowpolicy.algos.validation import (
    require_at_most,
    require_non_negative,
    require_positive,
    require_range,
)
from flowpolicy.buffers import RolloutBatch, TrajectoryBatch, TrajectoryReplay
from flowpolicy.critics import QEnsemble, q_network
from flowpolicy.errors import UserError
from flowpolicy.nets import Activation
from flowpolicy.policies import DiffusionPolicy, FlowPolicy

Variant = Literal["na", "sac"]


@dataclass(frozen=True)
class DSRLConfig:
    """DSRL on the released Gym settings (Hopper). Source: ajwagen/dsrl, cfg/gym/dsrl_hopper.yaml
    (train: actor_lr 3e-4, batch_size 256, train_freq 2, utd 20, noise_critic_grad_steps 10,
    use_layer_norm, 3 layers of 128, discount 0.99, ent_coef -1 = learned from 1.0, target_ent
    0, init_rollout_steps 2001, action_magnitude 1.5, n_critics 2, min backup; env n_envs 4,
    act_steps 4) and train_dsrl.py (tau 0.005, Tanh activations, one learning rate for actor,
    critics and temperature), commit 8d21b9cf55459f022c0e769bca1343edd9d30e5a. Per task the
    configs change the width (HalfCheetah 1024, Walker 2048) and noise bound (Walker 2.5).

    Deviation: the released code updates every 2 vector steps (utd 20 each); here the updates
    of ``num_steps`` vector steps run together, at the same ratio (utd_ratio = 20 / (2 x 4))."""

    num_envs: int = 4
    """N, envs stepped together (released: n_envs 4)."""
    num_steps: int = 50
    """T, vector steps per env per iteration; the gradient steps run after each iteration."""
    chunk: int = 4
    """Ta, actions per sample of the frozen policy (set from --init); the noise is Ta x Da."""
    chunk_exec: int = 4
    """Ta_exec <= Ta, actions executed per sample (set from --init)."""
    flow_steps: int = 10
    """K Euler steps of a frozen FlowPolicy (set from --init; unused for a DiffusionPolicy)."""
    denoising_steps: int = 20
    """K of a frozen DiffusionPolicy (set from --init; unused for a FlowPolicy)."""
    variant: Variant = "na"
    """na: noise-aliased DSRL, Q^A(s, a) by TD and Q^W(s, w) distilled from it (released default); sac: SAC on Q(s, w)."""
    noise_bound: float = 1.5
    """b, the SAC action u in (-1, 1) is the noise w = b u (released: action_magnitude 1.5)."""
    gamma: float = 0.99
    """discount per executed chunk (released: discount 0.99 per chunk transition)."""
    utd_ratio: float = 2.5
    """gradient steps per chunk transition collected (released: utd 20 every train_freq 2 steps of 4 envs)."""
    distill_ratio: float = 0.5
    """na: Q^W distillation steps per gradient step (released: noise_critic_grad_steps 10 per utd 20)."""
    batch_size: int = 256
    """transitions per gradient step, uniform from the replay (released: 256)."""
    actor_lr: float = 3e-4
    """Adam learning rate of the noise actor (released: 3e-4)."""
    critic_lr: float = 3e-4
    """Adam learning rate of Q (and Q^W) (released: the same 3e-4)."""
    temperature_lr: float = 3e-4
    """Adam learning rate of log alpha (released: the same 3e-4)."""
    hidden: tuple[int, ...] = (128, 128, 128)
    """hidden sizes of the actor and of every critic (released Hopper: 3 x 128)."""
    activation: Activation = "tanh"
    """hidden activation of the actor and critics (released: Tanh)."""
    layer_norm: bool = True
    """LayerNorm after each hidden Linear (released: use_layer_norm)."""
    critic_members: int = 2
    """E, critics whose minimum forms the targets and the actor's value (released: n_critics 2)."""
    target_decay: float = 0.995
    """Polyak factor of the target critics per gradient step (released: tau 0.005 = 1 - m)."""
    initial_temperature: float = 1.0
    """alpha at the start (released: ent_coef "auto", whose initial value is 1)."""
    target_entropy: float = 0.0
    """H of the temperature loss, in nats of the squashed u (released: target_ent 0)."""
    warmup_steps: int = 2001
    """vector steps per env of the frozen policy at w ~ N(0, I) before learning (released: init_rollout_steps 2001)."""
    replay_iterations: int = 5000
    """iterations kept in the FIFO replay (1M chunk transitions; released: 20M, never full)."""
    reward_scale: float = 1.0
    """multiplier of the rewards in the TD targets (released: none)."""

    def __post_init__(self) -> None:
        require_positive(
            self,
            "num_envs",
            "num_steps",
            "chunk",
            "chunk_exec",
            "flow_steps",
            "denoising_steps",
            "noise_bound",
            "utd_ratio",
            "batch_size",
            "actor_lr",
            "critic_lr",
            "temperature_lr",
            "critic_members",
            "initial_temperature",
            "replay_iterations",
            "reward_scale",
        )
        require_at_most(self, "chunk_exec", "chunk", "the env executes actions the policy made")
        require_range(self, "gamma", 0.0, 1.0)
        require_range(self, "target_decay", 0.0, 1.0, open_high=True)
        require_non_negative(self, "distill_ratio", "warmup_steps")
        if not self.hidden:
            raise ValueError("hidden needs at least one layer, e.g. --hidden 128 128 128.")
        if self.variant == "na" and self.distill_ratio == 0:
            raise ValueError("variant na needs distill_ratio > 0: Q^W is what the actor follows.")

    @property
    def gradient_steps_per_iteration(self) -> int:
        """``utd_ratio`` per chunk transition of the iteration, at least one."""
        return max(1, round(self.utd_ratio * self.num_envs * self.num_steps))


# ----------------------------------------------------------------------------- the algorithm


class DSRL:
    """DSRL: ``act`` during rollouts, ``update`` per iteration; keeps its own replay.

    Networks: ``policy`` (a :class:`DSRLPolicy`: the frozen ``base`` and the noise ``actor``),
    ``critic`` (Q(s, u) for sac, Q^A(s, a) for na, with Polyak targets), ``noise_critic``
    (Q^W(s, u), na only) and ``temperature``.

    Args:
        obs_dim: Do. action_low, action_high: env bounds, (Da,) each.
        config: hyper-parameters.
        policy: the pretrained FlowPolicy or DiffusionPolicy to steer (required).
    """

    def __init__(
        self,
        obs_dim: int,
        action_low: Tensor,
        action_high: Tensor,
        config: DSRLConfig,
        policy: SteerablePolicy | None = None,
    ) -> None:
        if policy is None:
            raise UserError(
                "DSRL steers a pretrained policy and cannot start from scratch: pass --init "
                "with a FlowPolicy or DiffusionPolicy (e.g. RUN_DIR/policy.pt of `flowpolicy "
                "pretrain`)."
            )
        self.config = cfg = config
        self.policy = DSRLPolicy(
            policy, cfg.noise_bound, cfg.hidden, cfg.activation, cfg.layer_norm
        )
        self._check_policy(obs_dim)
        self.noise_dim = policy.flat_action_dim
        self.executed_dim = cfg.chunk_exec * policy.action_dim
        critic_dim = self.noise_dim if cfg.variant == "sac" else self.executed_dim
        self.critic = QEnsemble(
            obs_dim,
            critic_dim,
            cfg.critic_members,
            cfg.hidden,
            cfg.activation,
            cfg.layer_norm,
            None,
            cfg.target_decay,
        )
        self.noise_critic = None
        if cfg.variant == "na":
            self.noise_critic = nn.ModuleList(
                q_network(obs_dim + self.noise_dim, cfg.hidden, cfg.activation, cfg.layer_norm)
                for _ in range(cfg.critic_members)
            )
        self.temperature = sac.Temperature(cfg.initial_temperature)
        critics = [*self.critic.members.parameters()]
        if self.noise_critic is not None:
            critics += [*self.noise_critic.parameters()]  # separate losses, one optimiser
        self.critic_optimizer = torch.optim.Adam(critics, lr=cfg.critic_lr, fused=True)
        self.actor_optimizer = torch.optim.Adam(
            self.policy.actor.parameters(), lr=cfg.actor_lr, fused=True
        )
        self.temperature_optimizer = torch.optim.Adam(
            self.temperature.parameters(), lr=cfg.temperature_lr
        )
        self.replay = TrajectoryReplay(cfg.replay_iterations)
        self.iterations = 0

    def _check_policy(self, obs_dim: int) -> None:
        """The config's chunking and steps must be the policy's (``--init`` sets them)."""
        base, cfg = self.policy.base, self.config
        steps = "flow_steps" if isinstance(base, FlowPolicy) else "denoising_steps"
        expected = {"obs_dim": obs_dim, "chunk": cfg.chunk, "chunk_exec": cfg.chunk_exec}
        expected[steps] = getattr(cfg, steps)
        wrong = {k: v for k, v in expected.items() if getattr(base, k) != v}
        if wrong:
            found = ", ".join(f"{k}={getattr(base, k)}" for k in wrong)
            raise UserError(
                f"The policy to steer has {found}, but the DSRL config expects "
                f"{', '.join(f'{k}={v}' for k, v in wrong.items())}. Pass the policy with --init "
                "(which sets them), or set these options to the policy's values."
            )

    @property
    def eval_policy(self) -> DSRLPolicy:
        """The steered policy (zero mode: the actor's mean noise)."""
        return self.policy

    @property
    def warming_up(self) -> bool:
        """Whether this iteration acts with the frozen policy at w ~ N(0, I)."""
        return self.iterations * self.config.num_steps < self.config.warmup_steps

    def critic_action(self, obs: Tensor, u: Tensor) -> Tensor:
        """What the TD critic sees for raw obs (B, Do) and actor actions u (B, A): u itself
        (sac), or the frozen policy's bounded executed actions at w = b u (na)."""
        if self.config.variant == "sac":
            return u
        raw = self.policy.steer(obs, self.config.noise_bound * u)
        return bounded_executed(self.policy.base, raw, self.executed_dim)

    @torch.no_grad()
    def act(self, obs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Env actions (N, Ta_exec * Da) for raw observations (N, Do). Records ``noise`` w
        (N, A) and ``action``, the TD critic's input: u = w / b (sac) or the bounded executed
        actions (N, A_exec) (na)."""
        cfg, bound = self.config, self.config.noise_bound
        if self.warming_up:
            noise = torch.randn(obs.shape[0], self.noise_dim, device=obs.device)
            if cfg.variant == "sac":  # the released warm-up clips it into the SAC action box
                noise = noise.clamp(-bound, bound)
        else:
            noise = self.policy.noise(obs, "random")
        raw = self.policy.steer(obs, noise)
        if cfg.variant == "sac":
            stored = noise / bound
        else:
            stored = bounded_executed(self.policy.base, raw, self.executed_dim)
        return self.policy.base.env_action(raw), {"noise": noise, "action": stored}

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """Store the iteration's transitions; once the warm-up is collected, run the gradient
        steps (and, for na, the Q^W steps between them). Returns the mean of their metrics."""
        cfg = self.config
        self.replay.add(TrajectoryBatch.from_rollout(batch, batch.records["action"]))
        self.iterations += 1
        means = RunningMeans()
        if self.iterations * cfg.num_steps >= cfg.warmup_steps:  # the warm-up is collected
            steps, distilled = cfg.gradient_steps_per_iteration, 0
            for step in range(steps):
                means.add(self.gradient_step(self.replay.sample_transitions(cfg.batch_size)))
                while cfg.variant == "na" and distilled < int((step + 1) * cfg.distill_ratio):
                    obs = self.replay.sample_transitions(cfg.batch_size).obs[:, 0]
                    means.add(self.distill_step(obs))
                    distilled += 1
        transitions = len(self.replay) * batch.rewards.shape[0]
        return means.result() | {
            "policy/alpha": float(self.temperature.alpha),
            "charts/replay_transitions": float(transitions),
        }

    def gradient_step(self, data: TrajectoryBatch) -> dict[str, Tensor | float]:
        """One SAC step on transitions (B, 1, ...): temperature, critic, actor, targets (the
        order of Stable-Baselines3's SAC; the actor's sample is drawn before the critic step)."""
        cfg = self.config
        obs, next_obs = data.obs[:, 0], data.next_obs[:, 0]
        obs_n, next_n = self.policy.obs_norm(obs), self.policy.obs_norm(next_obs)
        u, log_prob = self.policy.actor.sample(obs_n)
        alpha = self.temperature.alpha
        temperature_loss = self.temperature.loss(log_prob, cfg.target_entropy)
        sac.step(self.temperature_optimizer, temperature_loss)
        with torch.no_grad():
            next_u, next_log_prob = self.policy.actor.sample(next_n)
            next_values = self.critic.target_values(next_n, self.critic_action(next_obs, next_u))
            targets = sac.soft_td_target(
                data.rewards[:, 0] * cfg.reward_scale,
                data.terminated[:, 0],
                cfg.gamma,
                next_values,
                next_log_prob,
                alpha,
            )
        critic_loss, metrics = self.critic.loss(obs_n, data.actions[:, 0], targets, None)
        sac.step(self.critic_optimizer, critic_loss)
        if self.noise_critic is None:
            values = self.critic(obs_n, u)
        else:
            values = sac.evaluate(self.noise_critic, obs_n, u)
        actor_loss = (alpha * log_prob - values.min(dim=0).values).mean()
        sac.step(self.actor_optimizer, actor_loss)
        self.critic.update_targets()
        return metrics | {
            "loss/critic": critic_loss.detach(),
            "loss/actor": actor_loss.detach(),
            "loss/temperature": temperature_loss.detach(),
            "policy/entropy": -log_prob.detach().mean(),
            "policy/noise_abs": cfg.noise_bound * u.detach().abs().mean(),
        }

    def distill_step(self, obs: Tensor) -> dict[str, Tensor]:
        """One step of Q^W_e(s, w / b) towards Q^A_e(s, pi_0(s, w)) at w ~ N(0, I), per member."""
        bound = self.config.noise_bound
        obs_n = self.policy.obs_norm(obs)
        with torch.no_grad():
            noise = torch.randn(obs.shape[0], self.noise_dim, device=obs.device)
            raw = self.policy.steer(obs, noise)
            targets = self.critic(obs_n, bounded_executed(self.policy.base, raw, self.executed_dim))
        values = sac.evaluate(self.noise_critic, obs_n, noise / bound)  # (E, B)
        loss = 0.5 * (values - targets).square().mean(dim=1).sum()
        sac.step(self.critic_optimizer, loss)
        return {"loss/noise_critic": loss.detach(), "critic/noise_q_mean": values.detach().mean()}

    # ------------------------------------------------------------------------- state

    def state_dict(self) -> dict:
        return {
            "policy": self.policy.state_dict(),
            "critic": self.critic.state_dict(),
            "noise_critic": None if self.noise_critic is None else self.noise_critic.state_dict(),
            "temperature": self.temperature.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "temperature_optimizer": self.temperature_optimizer.state_dict(),
            "replay": self.replay.state_dict(),
            "iterations": self.iterations,
        }

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.critic.load_state_dict(state["critic"])
        if self.noise_critic is not None:
            self.noise_critic.load_state_dict(state["noise_critic"])
        self.temperature.load_state_dict(state["temperature"])
        load_optimizer_state(self.critic_optimizer, state["critic_optimizer"])
        load_optimizer_state(self.actor_optimizer, state["actor_optimizer"])
        self.temperature_optimizer.load_state_dict(state["temperature_optimizer"])
        self.replay.load_state_dict(state["replay"])
        self.iterations = state["iterations"]


# ----------------------------------------------------------------------------- registration

SPEC = AlgorithmSpec(
    name="dsrl",
    config=DSRLConfig,
    algorithm=DSRL,
    presets=(
        Preset("dsrl", DSRLConfig),
        Preset("dsrl-robomimic", dsrl_robomimic),
        Preset("dsrl-cpu", dsrl_cpu),
    ),
    fine_tunes=(FlowPolicy, DiffusionPolicy),
    requires_init=True,
)
