"""Gaussian PPO — the baseline every flow method is measured against.

Schulman et al. 2017, with the semantics of CleanRL's ``ppo_continuous_action.py``
(ALGORITHMS.md section 2): a diagonal Gaussian with state-independent log-std, GAE that
bootstraps through truncation but not termination, per-minibatch advantage normalisation and

    L = -E[min(r A, clip(r, 1 - c, 1 + c) A)] + vf_coef * L_V - ent_coef * H,
    r = pi_theta(a|s) / pi_old(a|s).

Shapes: ``T`` rollout steps, ``N`` envs, ``Do`` obs size, ``Da`` action size.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor

from flowpolicy import distributed
from flowpolicy.algos import onpolicy
from flowpolicy.algos.locomotion_regime import ppo_humanoid
from flowpolicy.algos.playground_regime import ppo_playground
from flowpolicy.algos.spec import AlgorithmSpec, Preset
from flowpolicy.algos.validation import check_on_policy_config
from flowpolicy.buffers import RolloutBatch
from flowpolicy.critics import ValueNet
from flowpolicy.nets import Activation
from flowpolicy.policies import GaussianPolicy, Squash


@dataclass(frozen=True)
class PPOConfig:
    """Gaussian PPO. Defaults: CleanRL's continuous-control PPO, with the 2048-step rollout
    spread over 8 envs (a quarter of the per-step policy calls on a CPU).

    Source: vwxyzjn/cleanrl at commit 35896b1fefa9898b904f7e09bcbe6e168e15d2a9,
    cleanrl/ppo_continuous_action.py (lr 3e-4 annealed, 1 env x 2048 steps, 32 minibatches,
    10 epochs, clip 0.2 with value clipping, vf coef 0.5, gradient clip 0.5, actor and critic
    64x64 tanh, state-independent log-std, clipped actions, normalised rewards)."""

    num_envs: int = 8
    """parallel environments."""
    num_steps: int = 256
    """steps per env per rollout; the batch is num_envs * num_steps."""
    learning_rate: float = 3e-4
    """Adam learning rate (actor and critic)."""
    anneal_lr: bool = True
    """decay the learning rate linearly to 0 over the run."""
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
    clip_vloss: bool = True
    """clip the value update around the old values (with clip_coef)."""
    ent_coef: float = 0.0
    """entropy bonus coefficient."""
    vf_coef: float = 0.5
    """value loss coefficient."""
    max_grad_norm: float | None = 0.5
    """global gradient-norm clip (None: no clipping)."""
    scale_rewards: bool = True
    """divide rewards by the running std of the discounted return (CleanRL's NormalizeReward)."""
    reward_scale: float = 1.0
    """multiply rewards by this before GAE (Brax's reward_scaling; FPO's Playground runs: 10)."""
    actor_hidden: tuple[int, ...] = (64, 64)
    """hidden sizes of the mean network."""
    critic_hidden: tuple[int, ...] = (64, 64)
    """hidden sizes of the value network."""
    activation: Activation = "tanh"
    """hidden activation of the mean network."""
    critic_activation: Activation = "tanh"
    """hidden activation of the value network."""
    initial_log_std: float = 0.0
    """initial log standard deviation of the policy."""
    squash: Squash = "clip"
    """how sampled actions are bounded for the env: clip (CleanRL) or tanh (Brax, FPO paper)."""
    desired_kl: float | None = None
    """adapt the learning rate at every minibatch to keep the approximate KL near this
    (rsl_rl's adaptive schedule); None: a fixed or annealed rate (anneal_lr)."""

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    @property
    def chunk_exec(self) -> int:
        """Actions executed per policy call (a Gaussian policy acts one step at a time)."""
        return 1

    def __post_init__(self) -> None:
        check_on_policy_config(self)
        if self.desired_kl is not None:
            if self.desired_kl <= 0:
                raise ValueError(f"desired_kl must be positive, got {self.desired_kl!r}.")
            if self.anneal_lr:
                raise ValueError(
                    "desired_kl adapts the learning rate; it cannot also be annealed: pass "
                    "--anneal-lr False with --desired-kl."
                )


def ppo_fpo_paper(**overrides: object) -> PPOConfig:
    """Gaussian PPO as the FPO paper compared it (``--preset ppo-fpo-paper``): every setting of
    :class:`~flowpolicy.algos.fpo.FPOConfig` that a Gaussian policy has (data regime, critic
    2x64 tanh, value coef 0.25 without value clipping, no gradient clip, tanh-squashed
    actions), the FPO actor's hidden layers (4x32 SiLU), and the paper's tuned lr 3e-4 and
    clip 0.1. So "FPO vs Gaussian PPO" differs only in the policy class. Keyword overrides win.

    Source: akanazawa/fpo at commit 418c2554f7cd22d52e14c07d951280929d73bf2f,
    playground/src/flow_policy/: ppo.py (the Gaussian actor is FPO's 4x32 SiLU network with a
    mean and a softplus scale head, actions through tanh), train_ppo.ipynb
    (``learning_rate=3e-4, clipping_epsilon=0.1``: "decreasing learning rate and clipping
    epsilons improves DM Control results"). Deviation: a state-independent log-std (CleanRL's)
    instead of Brax's state-dependent softplus scale.
    """
    preset = dict(
        learning_rate=3e-4,
        clip_coef=0.1,
        clip_vloss=False,
        vf_coef=0.25,
        max_grad_norm=None,
        actor_hidden=(32, 32, 32, 32),
        activation="silu",
        critic_hidden=(64, 64),
        critic_activation="tanh",
        squash="tanh",
    )
    return PPOConfig(**(preset | overrides))


class PPO:
    """Gaussian PPO: ``act`` during rollouts, ``update`` once per rollout batch."""

    def __init__(
        self,
        obs_dim: int,
        action_low: Tensor,
        action_high: Tensor,
        config: PPOConfig,
        policy: GaussianPolicy | None = None,
    ) -> None:
        """``policy``: a pretrained Gaussian policy to fine-tune (copied); None builds a new one
        from the config."""
        self.config = config
        if policy is not None:
            self.policy = copy.deepcopy(policy)
        else:
            self.policy = GaussianPolicy(
                obs_dim,
                action_low,
                action_high,
                hidden=config.actor_hidden,
                activation=config.activation,
                initial_log_std=config.initial_log_std,
                squash=config.squash,
            )
        self.critic = ValueNet(obs_dim, config.critic_hidden, config.critic_activation)
        self.reward_scaler = onpolicy.ReturnScaler(config.num_envs, config.gamma)
        self.parameters = [*self.policy.parameters(), *self.critic.parameters()]
        self.optimizer = torch.optim.Adam(self.parameters, lr=config.learning_rate, eps=1e-5)

    @property
    def eval_policy(self) -> GaussianPolicy:
        """The policy that evaluation runs and checkpoints export."""
        return self.policy

    @torch.no_grad()
    def act(self, obs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Sample actions for raw observations (N, Do).

        Returns the env actions (N, Da) and the record: the unclipped sample ``action`` (N, Da)
        and its ``log_prob`` (N,).
        """
        dist = self.policy.distribution(self.policy.obs_norm(obs))
        action = dist.sample()
        record = {"action": action, "log_prob": dist.log_prob(action).sum(-1)}
        return self.policy.env_action(action), record

    def policy_loss(
        self, obs_normalised: Tensor, action: Tensor, old_log_prob: Tensor, advantages: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Clipped surrogate for a minibatch (B, ...); returns (loss, metrics)."""
        dist = self.policy.distribution(obs_normalised)
        log_ratio = dist.log_prob(action).sum(-1) - old_log_prob
        ratio = log_ratio.exp()
        c = self.config.clip_coef
        surrogate = torch.min(ratio * advantages, ratio.clamp(1 - c, 1 + c) * advantages)
        entropy = dist.entropy().sum(-1).mean()
        loss = -surrogate.mean() - self.config.ent_coef * entropy
        with torch.no_grad():
            metrics = {
                "policy/ratio": ratio.mean(),
                "policy/approx_kl": ((ratio - 1) - log_ratio).mean(),
                "policy/clipfrac": ((ratio - 1).abs() > c).float().mean(),
                "policy/entropy": entropy,
            }
        return loss, metrics

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """Several epochs of minibatch PPO on one rollout; returns mean metrics."""
        cfg = self.config
        reward_scaler = self.reward_scaler if cfg.scale_rewards else None
        prepared = onpolicy.prepare_batch(
            batch, self.critic, self.policy.obs_norm, reward_scaler, self.optimizer, cfg
        )
        records = prepared.records

        def minibatch_step(idx: Tensor) -> dict[str, Tensor | float]:
            adv = onpolicy.minibatch_advantages(prepared, idx, cfg.norm_adv)
            pg_loss, metrics = self.policy_loss(
                prepared.obs[idx], records["action"][idx], records["log_prob"][idx], adv
            )
            if cfg.desired_kl is not None:
                self.adapt_learning_rate(metrics["policy/approx_kl"])
            return onpolicy.critic_loss_and_step(
                prepared, idx, pg_loss, metrics, self.critic, self.optimizer, self.parameters, cfg
            )

        out = onpolicy.run_epochs(
            cfg.update_epochs, cfg.batch_size, cfg.num_minibatches, minibatch_step, batch.obs.device
        )
        self.policy.obs_norm.update(batch.obs)
        out["critic/explained_variance"] = onpolicy.explained_variance(
            prepared.values, prepared.returns
        )
        out["policy/std"] = float(self.policy.log_std.detach().exp().mean())
        out["charts/learning_rate"] = self.optimizer.param_groups[0]["lr"]
        return out

    def adapt_learning_rate(self, approx_kl: Tensor) -> None:
        """rsl_rl's adaptive schedule, before the minibatch's step: lr / 1.5 when the KL of the
        policy from the rollout's exceeds 2 x desired_kl, lr x 1.5 when it is below half of
        it, within [1e-5, 1e-2]. The KL is the k3 estimate ``(r - 1) - log r`` over the whole
        minibatch (every rank's part), where rsl_rl uses the Gaussians' closed form; the rate
        lives in the optimiser's state, so a resumed run continues with it."""
        kl = distributed.all_mean(float(approx_kl))
        desired = self.config.desired_kl
        rate = self.optimizer.param_groups[0]["lr"]
        if kl > 2.0 * desired:
            rate = max(1e-5, rate / 1.5)
        elif 0.0 < kl < desired / 2.0:
            rate = min(1e-2, rate * 1.5)
        for group in self.optimizer.param_groups:
            group["lr"] = rate

    def state_dict(self) -> dict:
        return {
            "policy": self.policy.state_dict(),
            "critic": self.critic.state_dict(),
            "reward_scaler": self.reward_scaler.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.critic.load_state_dict(state["critic"])
        self.reward_scaler.load_state_dict(state["reward_scaler"])
        self.optimizer.load_state_dict(state["optimizer"])


# ----------------------------------------------------------------------------- registration

SPEC = AlgorithmSpec(
    name="ppo",
    config=PPOConfig,
    algorithm=PPO,
    presets=(
        Preset("ppo", PPOConfig),
        Preset("ppo-fpo-paper", ppo_fpo_paper),
        Preset("ppo-playground", ppo_playground),
        Preset("ppo-humanoid", ppo_humanoid),
    ),
    fine_tunes=(GaussianPolicy,),
)
