"""Field groups that several algorithm configs share, each a frozen dataclass the configs
inherit: the rollout and update sizes of the PPO family (:class:`OnPolicyConfig`), the flow
policy built when no pretrained one is given, with the one :meth:`FlowActorConfig.build_actor`,
the PPO family's value network (:class:`ValueCriticConfig`), and the rollout, Q ensemble,
replay and rounds of the off-policy methods RLDT and QAM (:class:`OffPolicyConfig`).

How a config uses a block:

- it re-declares a field whose default differs, and gives it its own docstring where it has
  something to add (the authors' value, say); ``--help`` shows the nearest docstring;
- a ``ClassVar`` of a block is a setting some algorithms fix and others expose: a config that
  exposes it re-declares it as a field (which keeps the block's place in ``--help``);
- each block's checks are one method that the config's ``__post_init__`` calls.

The fields of a config come in the order of its blocks, then its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from torch import Tensor, nn

from flowpolicy.algos.validation import (
    require_at_most,
    require_interval,
    require_multiple,
    require_non_negative,
    require_positive,
    require_range,
)
from flowpolicy.critics import QReduction, ValueNet
from flowpolicy.nets import Activation, residual_shape
from flowpolicy.policies import FlowPolicy, Network, Squash

Schedule = Literal["utd", "rounds"]
CriticSplit = Literal["all", "disjoint"]


@dataclass(frozen=True)
class OnPolicyConfig:
    """Rollout and update sizes of a PPO-family method (one GAE batch per iteration)."""

    num_envs: int = 8
    """parallel environments."""
    num_steps: int = 256
    """steps per env per rollout; the batch is num_envs * num_steps."""
    gamma: float = 0.99
    """discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    num_minibatches: int = 32
    """minibatches per epoch; must divide the batch."""
    update_epochs: int = 10
    """passes over each batch."""
    norm_adv: bool = True
    """standardise advantages per minibatch."""
    clip_coef: float = 0.2
    """PPO ratio clip c."""
    vf_coef: float = 0.5
    """value loss coefficient."""
    max_grad_norm: float | None = None
    """global gradient-norm clip (None: no clipping)."""
    scale_rewards: bool = True
    """divide rewards by the running std of the discounted return."""
    reward_scale: float = 1.0
    """multiply rewards by this before GAE (Brax's reward_scaling; FPO's Playground runs: 10)."""

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    def check_rollout(self) -> None:
        """Positive sizes and clip, discounts in [0, 1], a non-negative value weight."""
        require_positive(
            self,
            "num_envs",
            "num_steps",
            "num_minibatches",
            "update_epochs",
            "clip_coef",
            "max_grad_norm",
            "reward_scale",
        )
        require_range(self, "gamma", 0.0, 1.0)
        require_range(self, "gae_lambda", 0.0, 1.0)
        require_non_negative(self, "vf_coef")


@dataclass(frozen=True)
class FlowActorConfig:
    """The flow policy an algorithm builds when it trains from scratch (``--init`` brings its
    own network, whose chunking and flow steps then replace these)."""

    flow_steps: int = 10
    """K Euler steps of the sampler."""
    chunk: int = 4
    """Ta, actions per policy sample."""
    chunk_exec: int = 4
    """Ta_exec <= Ta, actions executed per policy sample."""
    actor_network: ClassVar[Network] = "mlp"
    """the velocity network: a plain MLP on [obs, x, time features], or a residual MLP."""
    actor_hidden: tuple[int, ...] = (32, 32, 32, 32)
    """hidden sizes of the velocity network."""
    actor_activation: Activation = "silu"
    """hidden activation of the velocity network."""
    time_dim: int = 8
    """size of the Fourier features of flow time."""
    output_scale: ClassVar[float] = 1.0
    """scale of the velocity network's output."""
    squash: ClassVar[Squash] = "clip"
    """how raw actions are bounded for the env."""

    def build_actor(self, obs_dim: int, action_low: Tensor, action_high: Tensor) -> FlowPolicy:
        """A fresh flow policy built from these settings (training from scratch)."""
        return FlowPolicy(
            obs_dim,
            action_low,
            action_high,
            chunk=self.chunk,
            chunk_exec=self.chunk_exec,
            flow_steps=self.flow_steps,
            network=self.actor_network,
            hidden=self.actor_hidden,
            time_dim=self.time_dim,
            activation=self.actor_activation,
            output_scale=self.output_scale,
            squash=self.squash,
        )

    def check_flow_actor(self) -> None:
        """Positive sizes; no more actions executed than the policy produces; a residual
        network's hidden sizes are 1 + 2n equal widths."""
        require_positive(self, "flow_steps", "chunk", "chunk_exec", "time_dim")
        require_at_most(
            self, "chunk_exec", "chunk", "the env can only execute actions the policy produced"
        )
        if self.actor_network == "residual":
            residual_shape(self.actor_hidden)  # raises ValueError with the rule and an example


@dataclass(frozen=True)
class ValueCriticConfig:
    """The value network V(s) of a PPO-family method."""

    critic_hidden: tuple[int, ...] = (256, 256, 256)
    """hidden sizes of the value network."""
    critic_activation: Activation = "mish"
    """hidden activation of the value network."""

    def build_critic(self, obs_dim: int) -> nn.Module:
        """``V_phi(s)``: (B, Do) normalised -> (B,)."""
        return ValueNet(obs_dim, self.critic_hidden, self.critic_activation)


@dataclass(frozen=True)
class OffPolicyConfig:
    """The rollout, Q ensemble, replay and schedule of the iteration-batched off-policy methods
    (RLDT, QAM; :mod:`flowpolicy.algos.offpolicy`): every iteration's trajectories join a FIFO
    replay, then rounds of {critic steps, actor steps} run on samples of it. Defaults: RLDT's."""

    # --- rollout ---
    num_envs: int = 10
    """parallel environments; one trajectory segment each per iteration."""
    num_steps: int = 250
    """vector (chunk) steps per env per iteration."""
    gamma: float = 0.99
    """discount per executed chunk."""
    discount_per_chunk: ClassVar[bool] = True
    """gamma is the discount per executed chunk instead of per env step."""
    # --- critic ---
    critic_members: int = 2
    """E, Q-ensemble members."""
    critic_hidden: tuple[int, ...] = (256, 256, 256)
    """hidden sizes of each Q member."""
    critic_activation: Activation = "silu"
    """hidden activation of each Q member."""
    critic_layer_norm: bool = False
    """LayerNorm after each hidden layer of the Q members."""
    critic_init_std: float | None = 0.1
    """std of the N(0, std^2) init of the Q members' weights (None: orthogonal init)."""
    critic_lr: float = 1e-3
    """AdamW learning rate of the critic."""
    critic_weight_decay: float = 0.0
    """AdamW weight decay of the critic."""
    critic_max_grad_norm: ClassVar[float | None] = None
    """clip the critic's gradient norm; None: no clipping."""
    target_decay: float = 0.995
    """Polyak factor m of the target critics per critic step: Qbar <- m Qbar + (1 - m) Q."""
    target_reduction: QReduction = "min"
    """how target members combine: min (RLDT), mean, or pessimistic = mean - pessimism * std."""
    pessimism: float = 0.5
    """rho of the pessimistic target reduction."""
    bootstrap_actions: int = 2
    """fresh policy actions at s' that the bootstrap value averages over."""
    td_lambda: float = 0.95
    """lambda of the TD(lambda) targets."""
    critic_split: ClassVar[CriticSplit] = "disjoint"
    """every member on every row, or members on disjoint trajectories."""
    reward_ema_rate: float | None = 0.01
    """divide rewards by an EMA (this rate) of the batch mean |r|; None: use reward_scale."""
    reward_scale: float = 1.0
    """fixed reward multiplier, used only when reward_ema_rate is None."""
    bootstrap_clip: tuple[float, float] | None = None
    """clip the bootstrap values Qbar into [low, high] (sparse 0/1 tasks: 0 1); None: no clip."""
    # --- data regime ---
    schedule: ClassVar[Schedule] = "rounds"
    """rounds of {critic steps, actor steps} on trajectory segments, or utd: one critic and
    one actor step on random transitions per env step."""
    replay_iterations: int = 20
    """iterations of trajectories kept in the FIFO replay, the newest included."""
    min_fresh_fraction: float = 1 / 3
    """least share of the newest iteration's trajectories in every round."""
    critic_warmup_iterations: int = 2
    """first iterations that train only the critic."""
    rounds: int = 8
    """rounds of {critic steps, actor steps} per iteration."""
    critic_steps: int = 256
    """critic steps per iteration, split evenly over the rounds."""
    actor_steps: int = 32
    """actor steps per iteration, split evenly over the rounds."""

    @property
    def chunk_gamma(self) -> float:
        """The discount of one executed chunk (one vector step of the loop); ``chunk_exec`` is
        the config's FlowActorConfig field."""
        return self.gamma if self.discount_per_chunk else self.gamma**self.chunk_exec

    @property
    def critic_steps_per_round(self) -> int:
        return self.critic_steps // self.rounds

    @property
    def actor_steps_per_round(self) -> int:
        return self.actor_steps // self.rounds

    def check_off_policy(self) -> None:
        """Positive sizes and rates, fractions and decays in range, ordered clips, steps that
        split into the rounds, and enough trajectories for disjoint critic members."""
        require_positive(
            self,
            "num_envs",
            "num_steps",
            "critic_members",
            "critic_lr",
            "critic_max_grad_norm",
            "bootstrap_actions",
            "replay_iterations",
            "rounds",
            "critic_steps",
            "critic_init_std",
            "reward_scale",
        )
        require_range(self, "gamma", 0.0, 1.0)
        require_range(self, "td_lambda", 0.0, 1.0)
        require_range(self, "target_decay", 0.0, 1.0, open_high=True)
        require_range(self, "min_fresh_fraction", 1e-9, 1.0)
        require_range(self, "reward_ema_rate", 1e-9, 1.0)
        require_non_negative(
            self, "critic_weight_decay", "pessimism", "critic_warmup_iterations", "actor_steps"
        )
        require_interval(self, "bootstrap_clip")
        if self.schedule == "rounds":
            require_multiple(self, "critic_steps", "rounds")
            require_multiple(self, "actor_steps", "rounds")
            if self.critic_split == "disjoint" and self.num_envs < self.critic_members:
                raise ValueError(
                    f"num_envs ({self.num_envs}) must be >= critic_members "
                    f"({self.critic_members}) with critic_split disjoint: each critic member "
                    "trains on its own trajectories."
                )
