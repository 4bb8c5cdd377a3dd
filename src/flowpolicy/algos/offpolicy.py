"""Pieces the iteration-batched off-policy methods (RLDT, QAM) share: the Q ensemble and its
optimiser, the critic's TD steps on replayed trajectory segments, the member split, running
means of metrics, and :class:`OffPolicyAlgorithm`, the part of both algorithms around their
actor updates (policy, critic, replay, reward scale, critic rounds, the rounds schedule, state).
Each algorithm file keeps only what is its own (its actor update).

One critic step (:func:`critic_steps`) on segments (S, T) of the replay:

    y_t = r_t + gamma (1 - term_t) [(1 - lambda) Qbar_t + lambda y_{t+1}]      (TD(lambda))
    Qbar_t = mean_m reduce_e Qbar_e(s'_t, a'_m)                                 (fresh actions a')
    L = sum over members of each member's MSE on its own rows

then a Polyak step of the target members. With segments of one step (random transitions,
QAM's paper regime) the target is the 1-step ``r + gamma (1 - term) Qbar(s', a')``.

Shapes: ``S`` segments, ``T`` steps per segment, ``M`` bootstrap actions per next state,
``A_exec`` executed flat chunk (what the critic sees), ``Do`` observation size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from flowpolicy import flows
from flowpolicy.algos.onpolicy import optimizer_step
from flowpolicy.algos.validation import check_initial_policy
from flowpolicy.buffers import RolloutBatch, TrajectoryBatch, TrajectoryReplay
from flowpolicy.critics import QEnsemble, QReduction
from flowpolicy.policies import FlowPolicy
from flowpolicy.returns import reward_scale_from_ema, td_lambda_targets, update_abs_reward_ema


@dataclass(frozen=True)
class TDSettings:
    """How the TD targets are formed from the target critics.

    Attributes:
        gamma: discount per vector step (per executed chunk).
        td_lambda: lambda of TD(lambda); 0 is the 1-step target.
        reduction: how target members combine (min, mean, pessimistic = mean - rho std).
        pessimism: rho of the pessimistic reduction.
        bootstrap_clip: clip the bootstrap values into [low, high]; None: no clip.
    """

    gamma: float
    td_lambda: float = 0.0
    reduction: QReduction = "min"
    pessimism: float = 0.5
    bootstrap_clip: tuple[float, float] | None = None


@dataclass
class CriticData:
    """Replayed segments flattened for critic steps.

    Attributes:
        obs: (S*T, Do) normalised observations.
        actions: (S*T, A_exec) what the critic is trained on.
        next_obs: (S*T, Do) normalised true next observations.
        rewards: (T, S) scaled rewards, time first (for TD(lambda)).
        terminated: (T, S). dones: (T, S).
        member_of: (S*T,) the critic member each row trains, or None: every member every row.
    """

    obs: Tensor
    actions: Tensor
    next_obs: Tensor
    rewards: Tensor
    terminated: Tensor
    dones: Tensor
    member_of: Tensor | None

    @classmethod
    def from_segments(
        cls,
        data: TrajectoryBatch,
        obs_norm: Callable[[Tensor], Tensor],
        actions: Tensor,
        reward_scale: float,
        segment_member: Tensor | None,
    ) -> CriticData:
        """Flatten segments (S, T).

        Args:
            data: the segments. obs_norm: the policy's observation normaliser.
            actions: (S, T, A_exec) the critic's action inputs for ``data``.
            reward_scale: multiplier of the raw rewards.
            segment_member: (S,) member of each segment (see :func:`segment_members`), or
                None to train every member on every row.
        """
        num_steps = data.rewards.shape[1]
        member_of = None if segment_member is None else segment_member.repeat_interleave(num_steps)
        return cls(
            obs=obs_norm(data.obs.flatten(0, 1)),
            actions=actions.flatten(0, 1),
            next_obs=obs_norm(data.next_obs.flatten(0, 1)),
            rewards=(data.rewards * reward_scale).T,
            terminated=data.terminated.T,
            dones=data.dones.T,
            member_of=member_of,
        )


def q_ensemble_and_optimizer(
    obs_dim: int, executed_dim: int, config: Any
) -> tuple[QEnsemble, torch.optim.AdamW]:
    """The Q ensemble over (s, executed chunk) and its AdamW, from a config's ``critic_*``
    fields (``critic_members``, ``critic_hidden``, ``critic_activation``,
    ``critic_layer_norm``, ``critic_init_std``, ``target_decay``, ``critic_lr``,
    ``critic_weight_decay``), which RLDTConfig and QAMConfig both carry."""
    critic = QEnsemble(
        obs_dim,
        executed_dim,
        config.critic_members,
        config.critic_hidden,
        config.critic_activation,
        config.critic_layer_norm,
        config.critic_init_std,
        config.target_decay,
    )
    # fused: one kernel over the members' parameter tensors instead of torch's CPU default, a
    # loop of small ops per tensor. The same update to float rounding; for QAM's 10 members
    # 1 ms instead of 4.5 ms per step (benchmarks/qam_update_speed.py).
    optimizer = torch.optim.AdamW(
        critic.members.parameters(),
        lr=config.critic_lr,
        weight_decay=config.critic_weight_decay,
        fused=True,
    )
    return critic, optimizer


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)``, keeping the optimiser's own ``fused`` setting.

    Loading copies every hyper-parameter of the saved groups, including the implementation
    flag, so a checkpoint written before the optimisers were fused would silently switch the
    fused kernel off. The flag changes the speed, and the update only to float rounding.
    """
    fused = [group.get("fused") for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, value in zip(optimizer.param_groups, fused, strict=True):
        group["fused"] = value


def segment_members(
    num_segments: int, num_members: int, device: torch.device | None = None
) -> Tensor:
    """Critic member of each segment of a round, ``segment % E``: disjoint trajectory subsets
    (the RLDT released code's ``traj`` split); (S,) int64."""
    return torch.arange(num_segments, device=device) % num_members


@torch.no_grad()
def fresh_actions(sample: Callable[[Tensor], Tensor], next_obs: Tensor, count: int) -> Tensor:
    """``count`` policy actions per next state for the bootstrap: (M, B, A_exec).

    Args:
        sample: normalised observations (B, Do) -> the critic's action inputs (B, A_exec).
        next_obs: (B, Do) normalised.
        count: M.
    """
    return torch.stack([sample(next_obs) for _ in range(count)])


def td_targets(
    critic: QEnsemble, data: CriticData, next_actions: Tensor, settings: TDSettings
) -> Tensor:
    """TD(lambda) targets (S*T,) from the current target members (no gradient)."""
    num_steps, num_segments = data.rewards.shape
    bootstrap = critic.bootstrap_value(
        data.next_obs, next_actions, settings.reduction, settings.pessimism
    )
    bootstrap = bootstrap.view(num_segments, num_steps).T  # (T, S)
    if settings.bootstrap_clip is not None:
        bootstrap = bootstrap.clamp(*settings.bootstrap_clip)
    targets = td_lambda_targets(
        data.rewards, bootstrap, data.terminated, data.dones, settings.gamma, settings.td_lambda
    )
    return targets.T.flatten()


def critic_steps(
    critic: QEnsemble,
    optimizer: torch.optim.Optimizer,
    data: CriticData,
    next_actions: Tensor,
    steps: int,
    settings: TDSettings,
    max_grad_norm: float | None = None,
) -> list[dict[str, Tensor]]:
    """``steps`` full-batch critic steps on one set of segments.

    The bootstrap actions are fixed for all steps; the targets are recomputed at every step
    from the moving target members, and every step ends with a Polyak step of the targets.

    Args:
        critic: the ensemble. optimizer: over ``critic.members``.
        data: the flattened segments. next_actions: (M, S*T, A_exec) from :func:`fresh_actions`.
        steps: gradient steps. settings: the target's form.
        max_grad_norm: clip the critic's gradient norm (None: no clipping).

    Returns:
        Each step's metrics: ``loss/critic``, ``critic/q_mean``, ``critic/td_error``,
        ``critic/target_mean``, and ``critic/grad_norm`` when clipping.
    """
    parameters = list(critic.members.parameters())
    out = []
    for _ in range(steps):
        targets = td_targets(critic, data, next_actions, settings)
        loss, metrics = critic.loss(data.obs, data.actions, targets, data.member_of)
        grad_norm = optimizer_step(optimizer, loss, parameters, max_grad_norm)
        critic.update_targets()
        metrics = metrics | {"loss/critic": loss.detach(), "critic/target_mean": targets.mean()}
        if max_grad_norm is not None:
            metrics["critic/grad_norm"] = grad_norm
        out.append(metrics)
    return out


class RunningMeans:
    """Weighted means of metric dicts (tensors or floats)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, metrics: dict[str, Tensor | float], weight: float = 1.0) -> None:
        for name, value in metrics.items():
            value = float(value.detach()) if isinstance(value, Tensor) else float(value)
            self.sums[name] = self.sums.get(name, 0.0) + weight * value
            self.weights[name] = self.weights.get(name, 0.0) + weight

    def result(self) -> dict[str, float]:
        return {name: total / self.weights[name] for name, total in self.sums.items()}


class OffPolicyAlgorithm:
    """The part of RLDT and QAM around their actor updates, written once.

    It holds the flow policy (``policy``), the Q ensemble over (s, executed chunk) with its
    optimiser (``critic``, ``critic_optimizer``) and TD-target settings (``td_settings``), the
    FIFO trajectory replay (``replay``) and the running mean |r| that scales rewards
    (``reward_ema``); it stores each iteration's trajectories (:meth:`store`), runs critic
    rounds (:meth:`critic_round`) and the rounds schedule (:meth:`rounds`), and saves and
    restores all of it with the actor's optimiser. A subclass adds its actor:
    ``actor_optimizer``, :meth:`critic_input`, :meth:`round_actor_step`, ``act`` and
    ``update``.

    Args:
        obs_dim: Do. action_low, action_high: env bounds, (Da,) each.
        config: hyper-parameters: an :class:`~flowpolicy.algos.config_blocks.OffPolicyConfig`
            and a :class:`~flowpolicy.algos.config_blocks.FlowActorConfig`.
        policy: a pretrained flow policy to fine-tune (used as given: pass a copy); None builds
            one from the config (training from scratch).
    """

    actor_optimizer: torch.optim.Optimizer

    def __init__(
        self,
        obs_dim: int,
        action_low: Tensor,
        action_high: Tensor,
        config: Any,
        policy: FlowPolicy | None = None,
    ) -> None:
        self.config = config
        if policy is None:
            policy = config.build_actor(obs_dim, action_low, action_high)
        else:
            check_initial_policy(policy, obs_dim, config, type(self).__name__)
        self.policy = policy
        self.executed_dim = config.chunk_exec * policy.action_dim
        self.critic, self.critic_optimizer = q_ensemble_and_optimizer(
            obs_dim, self.executed_dim, config
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

    @property
    def eval_policy(self) -> FlowPolicy:
        """The policy that evaluation runs and checkpoints export: the fine-tuned flow (zero
        mode = deterministic Euler from x_0 = 0)."""
        return self.policy

    def critic_input(self, raw: Tensor) -> Tensor:
        """Raw chunks (..., A) or their executed part -> what the critic sees (..., A_exec)."""
        raise NotImplementedError

    def round_actor_step(self, data: TrajectoryBatch, step: int) -> dict[str, Tensor | float]:
        """Actor step ``step`` of a round on the round's segments; returns its metrics."""
        raise NotImplementedError

    def _sample(
        self, obs_normalised: Tensor, return_chain: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Random-sampling Euler chains of the current policy for normalised obs (B, Do): the
        actions (B, A), with ``return_chain`` also the chain (K + 1, B, A)."""
        x0 = self.policy.initial_noise(obs_normalised.shape[0], "random", obs_normalised.device)
        return flows.euler_sample(
            lambda x, tau: self.policy.velocity(obs_normalised, x, tau),
            x0,
            self.policy.flow_steps,
            return_chain,
        )

    def store(self, batch: RolloutBatch) -> tuple[int, float]:
        """Add the iteration's trajectories, with their recorded ``action``, to the replay.

        Returns the number of fresh segments and the reward scale of the iteration: one over
        the EMA of the batch mean |r|, updated with these rewards, or the fixed reward_scale.
        """
        cfg = self.config
        fresh = TrajectoryBatch.from_rollout(batch, batch.records["action"])
        self.replay.add(fresh)
        if cfg.reward_ema_rate is None:
            return len(fresh), cfg.reward_scale
        self.reward_ema = update_abs_reward_ema(self.reward_ema, batch.rewards, cfg.reward_ema_rate)
        return len(fresh), reward_scale_from_ema(self.reward_ema)

    def rounds(self, fresh: int, reward_scale: float, train_actor: bool) -> RunningMeans:
        """The rounds schedule: ``rounds`` times {critic steps, actor steps}, each round on as
        many replayed segments as there are ``fresh`` ones, at least ``min_fresh_fraction`` of
        them from the newest iteration. Returns the running means of every step's metrics."""
        cfg = self.config
        means = RunningMeans()
        for _ in range(cfg.rounds):
            data = self.replay.sample_round(fresh, cfg.min_fresh_fraction)
            for metrics in self.critic_round(data, reward_scale, cfg.critic_steps_per_round):
                means.add(metrics)
            if train_actor:
                for step in range(cfg.actor_steps_per_round):
                    means.add(self.round_actor_step(data, step))
        return means

    def critic_round(
        self, data: TrajectoryBatch, reward_scale: float, steps: int
    ) -> list[dict[str, Tensor]]:
        """``steps`` critic steps (:func:`critic_steps`) on segments (S, T) of the replay
        (one-step segments: random transitions).

        The bootstrap actions at s' are fresh actions of the current policy, drawn once per
        round; the targets are recomputed at every step from the moving target critics. With
        ``critic_split`` disjoint, member e trains on segments ``e, e + E, ..``.
        """
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

    def state_dict(self) -> dict:
        return {
            "policy": self.policy.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "replay": self.replay.state_dict(),
            "reward_ema": self.reward_ema,
            "iterations": self.iterations,
        }

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.critic.load_state_dict(state["critic"])
        load_optimizer_state(self.critic_optimizer, state["critic_optimizer"])
        load_optimizer_state(self.actor_optimizer, state["actor_optimizer"])
        self.replay.load_state_dict(state["replay"])
        self.reward_ema = state["reward_ema"]
        self.iterations = state["iterations"]
