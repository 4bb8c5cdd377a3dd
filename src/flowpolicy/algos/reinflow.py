"""ReinFlow — PPO on a flow policy made stochastic by a learned noise network.

ReinFlow (Zhang, Yu, Su, Wang; NeurIPS 2025; code ReinFlow/ReinFlow; ALGORITHMS.md section 7)
turns each of the K Euler steps of a pretrained flow policy into a Gaussian transition whose
std comes from a small noise network ``sigma_phi(s, tau)``:

    x_0 ~ N(0, I),    x_{k+1} ~ N(mean_k, diag(sigma_k^2)),      k = 0 .. K-1,
    mean_k = x_k + v_theta(x_k, tau_k | s) / K,   sigma_k = sigma_phi(s, tau_k),   tau_k = k / K,

so the whole chain has an exact density, and PPO runs on it with one ratio per env step:

    lp(s, x_{0..K}) = [log N(x_0; 0, I) + sum_k log N(x_{k+1}; mean_k, sigma_k^2)] / ((K + 1) A),
    r = exp(clamp(lp_new, -1, 1) - clamp(lp_old, -1, 1)),
    L = -E[min(r Adv, clip(r, 1 - c, 1 + c) Adv)] - ent_coef * H + vf_coef * L_V
        [+ bc_coef * E||a_theta(s; x_0 = 0) - a_pretrained(s; x_0 = 0)||^2],

with ``A = Ta * Da`` the whole chunk, ``H`` the chain's joint entropy with the same
normalisation, c = 0.01 and the optional W2 regulariser off by default. The noise network is
an MLP 64-64 tanh on [detached time embedding of tau_k, normalised observation]; its output
``u`` is squashed into a log-variance, ``log sigma^2 = lo + (hi - lo) (tanh(u) + 1) / 2`` with
``lo = log min_std^2``, ``hi = log max_bound^2``, and the upper bound is held at ``max_std`` for
35% of the run, then cosine-decayed to ``min_std + 0.7 (max_std - min_std)``
(:func:`noise_upper_bound`).

Sampling and re-evaluation both go through :mod:`flowpolicy.chains` on the one time grid of
:func:`flowpolicy.flows.time_grid`, so the first minibatch of every update has ratio exactly 1
(the released code's June 2025 change evaluated the log-prob on ``linspace(0, 1 - 1/K, K)``
while it kept sampling on ``linspace(0, 1, K)``; here the two cannot differ).

The noise network belongs to the algorithm, not the policy: evaluation and checkpoints export
the :class:`~flowpolicy.policies.FlowPolicy` alone, whose ``random`` mode (Euler ODE from
``x_0 ~ N(0, I)``, no injected noise) is what the authors evaluate, and whose ``zero`` mode
starts from ``x_0 = 0``.

Cost on a CPU: every env step runs the velocity network K times to sample and K more times
(one batched call) to score the chain; each minibatch re-runs it K times with gradients. With
the Gym defaults (40 envs x 500 chunk steps, a 3x512 residual actor, K = 4) an iteration is
160k actor rows forward in the rollout and 400k rows forward and backward in the update (5
epochs x 20k chains x K), besides the 80k MuJoCo steps.

Shapes: ``T`` rollout steps, ``N`` envs, ``B`` minibatch, ``K`` flow steps, ``A = Ta * Da``
flat chunk size, ``Do`` observation size; a chain is (K+1, B, A), stored per step as (K+1, A).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from flowpolicy import chains, flows
from flowpolicy.algos import onpolicy
from flowpolicy.algos.config_blocks import FlowActorConfig, OnPolicyConfig, ValueCriticConfig
from flowpolicy.algos.onpolicy import cosine_restarts_lr, trust_region_objective
from flowpolicy.algos.reinflow_noise import NoiseNet, noise_upper_bound
from flowpolicy.algos.spec import AlgorithmSpec, Preset
from flowpolicy.algos.validation import check_reinflow_config
from flowpolicy.buffers import RolloutBatch
from flowpolicy.nets import Activation, SinusoidalTimeEmbedding, sinusoidal_embedding
from flowpolicy.policies import FlowPolicy, Network, Squash

ClampMode = Literal["mean", "iterate"]
LRSchedule = Literal["cosine_restarts", "constant"]

NOISE_TIME_DIM = 16
"""Size of the fixed sinusoidal time features of the noise network when the velocity network
has no learned time embedding to borrow (FPO-style :class:`~flowpolicy.nets.VelocityMLP`)."""

ITERATE_BOUND = 1.0
"""Euler iterates (or their means) are clamped to [-1, 1], the policy's raw action range."""


@dataclass(frozen=True)
class ReinFlowConfig(ValueCriticConfig, FlowActorConfig, OnPolicyConfig):
    """ReinFlow. Defaults: the authors' Hopper-v2 fine-tuning config (DPPO's Gym protocol with
    ReinFlow's learning rates, noise range and entropy bonus).

    Source: ReinFlow/ReinFlow at commit bff148cac18387e78ed0d3bd732633f8f54c57e6,
    cfg/gym/finetune/hopper-v2/ft_ppo_reflow_mlp.yaml (40 envs x 500 steps, actor lr 4.5e-5,
    critic lr 6.5e-4, noise std 0.10-0.24, entropy coef 0.03, 4 flow steps, clip 0.01)."""

    # The rollout sizes, flow policy and value network are the blocks' (config_blocks.py);
    # re-declared here where ReinFlow's defaults or notes differ.
    # --- rollout and PPO ---
    num_envs: int = 40
    num_steps: int = 500
    """chunk steps per env per iteration; the batch is num_envs * num_steps."""
    gamma: float = 0.99
    """discount per chunk step."""
    num_minibatches: int = 4
    """minibatches per epoch; must divide the batch (4 x 5 epochs = the authors' 20 steps)."""
    update_epochs: int = 5
    clip_coef: float = 0.01
    """PPO clip c on the chain ratio."""
    max_grad_norm: float | None = None
    """global gradient-norm clip (None: no clipping, as on the authors' Gym configs)."""
    actor_lr: float = 4.5e-5
    """AdamW learning rate of the velocity and noise networks (the cycle's peak)."""
    critic_lr: float = 6.5e-4
    """AdamW learning rate of the value network (the cycle's peak)."""
    lr_schedule: LRSchedule = "cosine_restarts"
    """per-iteration schedule: cosine with linear warm-up restarted every cycle (authors), or constant."""
    lr_cycle_iterations: int = 100
    """iterations per cosine cycle (cosine_restarts)."""
    lr_warmup_iterations: int = 10
    """linear warm-up from the minimum at the start of each cycle (cosine_restarts)."""
    actor_min_lr: float = 2e-5
    """actor learning rate at the start and end of each cycle (cosine_restarts)."""
    critic_min_lr: float = 3e-4
    """critic learning rate at the start and end of each cycle (cosine_restarts)."""
    actor_weight_decay: float = 0.0
    """AdamW weight decay of the actor."""
    critic_weight_decay: float = 1e-5
    """AdamW weight decay of the critic."""
    clip_vloss: bool = False
    """clip the value update around the old values (with clip_coef)."""
    ent_coef: float = 0.03
    """coefficient of the normalised chain entropy bonus."""
    bc_coef: float = 0.0
    """coefficient of the W2 regulariser towards the frozen initial policy (0: off; authors' ablation: 0.1)."""
    # --- the noise network and the chain ---
    min_std: float = 0.10
    """lower bound of the noise std (Ant/Humanoid: 0.08)."""
    max_std: float = 0.24
    """initial upper bound of the noise std (Ant/Humanoid: 0.16)."""
    noise_hold_fraction: float = 0.35
    """fraction of the run during which the upper bound stays at max_std."""
    noise_decay_ratio: float = 0.7
    """the upper bound decays (cosine) to min_std + noise_decay_ratio * (max_std - min_std)."""
    noise_hidden: tuple[int, ...] = (64, 64)
    """hidden sizes of the noise network."""
    noise_activation: Activation = "tanh"
    """hidden activation of the noise network."""
    noise_clip: float | None = 3.0
    """clamp the standard-normal draws of each step to +-this (the authors' randn_clip_value)."""
    clamp: ClampMode = "mean"
    """clamp each step's mean x_k + v/K and the final action to [-1, 1] (released code), or every sampled iterate."""
    include_initial_noise: bool = True
    """count log N(x_0; 0, I) in the chain log-likelihood (and its entropy), dividing by K + 1 instead of K."""
    log_prob_clamp: tuple[float, float] = (-1.0, 1.0)
    """clamp the normalised old and new log-likelihoods to [low, high] before the ratio."""
    # --- flow policy (only when training from scratch; --init brings its own) ---
    flow_steps: int = 4
    """K Euler steps."""
    actor_network: ClassVar[Network] = "residual"  # not an option: ReinFlow's is residual
    actor_hidden: tuple[int, ...] = (512, 512, 512)
    """hidden sizes of the residual velocity network (1 + 2 * blocks equal widths)."""
    actor_activation: Activation = "relu"
    time_dim: int = 16
    """size of the velocity network's learned time embedding."""
    squash: Squash = "clip"

    @property
    def decayed_max_std(self) -> float:
        """Where the upper bound ends: ``min_std + noise_decay_ratio (max_std - min_std)``."""
        return self.min_std + self.noise_decay_ratio * (self.max_std - self.min_std)

    def __post_init__(self) -> None:
        self.check_rollout()
        self.check_flow_actor()
        check_reinflow_config(self)


# ----------------------------------------------------------------------------- the chain


def _rows(obs: Tensor, rows: int) -> Tensor:
    """obs (B, Do) repeated to (rows, Do), rows = K*B, so that row ``k*B + b`` is obs ``b``
    (the order of :func:`flowpolicy.chains.euler_step_gaussians`' batched calls)."""
    return obs if rows == obs.shape[0] else obs.repeat(rows // obs.shape[0], 1)


def clamped_mean_velocity(velocity: flows.VelocityFn, flow_steps: int) -> flows.VelocityFn:
    """A velocity whose Euler step lands on the clamped mean: ``x + v'/K = clamp(x + v/K)``,
    i.e. ``v' = K (clamp(x + v/K, -1, 1) - x)``. Expressing the released code's mean clamp as
    a velocity lets the unchanged :mod:`flowpolicy.chains` functions sample and score it."""

    def clamped(x: Tensor, tau: Tensor) -> Tensor:
        mean = (x + velocity(x, tau) / flow_steps).clamp(-ITERATE_BOUND, ITERATE_BOUND)
        return (mean - x) * flow_steps

    return clamped


# ----------------------------------------------------------------------------- the algorithm


class ReinFlow:
    """ReinFlow on a :class:`FlowPolicy`: ``act`` during rollouts, ``update`` per batch."""

    def __init__(
        self,
        obs_dim: int,
        action_low: Tensor,
        action_high: Tensor,
        config: ReinFlowConfig,
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
        self.flow_steps = self.policy.flow_steps
        embedding = getattr(self.policy.velocity_net, "time_embedding", None)
        self.time_embedding = embedding if isinstance(embedding, SinusoidalTimeEmbedding) else None
        time_dim = self.time_embedding.dim if self.time_embedding is not None else NOISE_TIME_DIM
        self.noise_net = NoiseNet(
            time_dim + obs_dim,
            self.policy.flat_action_dim,
            config.noise_hidden,
            config.noise_activation,
            config.min_std,
            config.max_std,
        )
        # The W2 regulariser's frozen reference: the policy as it was before fine-tuning.
        self.reference = (
            copy.deepcopy(self.policy).requires_grad_(False) if config.bc_coef > 0 else None
        )
        self.critic = config.build_critic(obs_dim)
        self.reward_scaler = onpolicy.ReturnScaler(config.num_envs, config.gamma)
        actor_parameters = [*self.policy.parameters(), *self.noise_net.parameters()]
        self.parameters = [*actor_parameters, *self.critic.parameters()]
        # One AdamW with an actor group and a critic group: the same steps as the authors'
        # two optimisers, and the shared guarded step of onpolicy.py applies unchanged.
        self.optimizer = torch.optim.AdamW(
            [
                {
                    "params": actor_parameters,
                    "lr": config.actor_lr,
                    "weight_decay": config.actor_weight_decay,
                },
                {
                    "params": list(self.critic.parameters()),
                    "lr": config.critic_lr,
                    "weight_decay": config.critic_weight_decay,
                },
            ]
        )
        self.iterations = 0

    @property
    def eval_policy(self) -> FlowPolicy:
        """The flow policy alone (no noise network): what evaluation runs and checkpoints export."""
        return self.policy

    # ------------------------------------------------------------------------- the chain

    def time_features(self, tau: Tensor) -> Tensor:
        """Noise-network time input (B,) -> (B, Dt): the velocity network's learned time
        embedding, detached (the authors' choice; the noise loss does not train it), or fixed
        sinusoidal features when the velocity network has none."""
        if self.time_embedding is not None:
            return self.time_embedding(tau).detach()
        return sinusoidal_embedding(tau, NOISE_TIME_DIM)

    def step_functions(self, obs_normalised: Tensor) -> tuple[flows.VelocityFn, chains.NoiseStdFn]:
        """The velocity and noise-std functions of one batch of states (B, Do), for both the
        B-row calls of sampling and the K*B-row calls of re-evaluation."""

        def velocity(x: Tensor, tau: Tensor) -> Tensor:
            return self.policy.velocity(_rows(obs_normalised, x.shape[0]), x, tau)

        def noise_std(x: Tensor, tau: Tensor) -> Tensor:
            return self.noise_net(self.time_features(tau), _rows(obs_normalised, x.shape[0]))

        if self.config.clamp == "mean":
            return clamped_mean_velocity(velocity, self.flow_steps), noise_std
        return velocity, noise_std

    def sample_chain(self, obs_normalised: Tensor) -> Tensor:
        """Sample the noisy Euler chain from ``x_0 ~ N(0, I)``; obs (B, Do) -> (K+1, B, A).

        ``clamp="mean"``: each mean is clamped (inside the velocity) and the final action is
        clamped; ``clamp="iterate"``: every sampled iterate is clamped. Either way the stored
        chain is what is scored.
        """
        velocity, noise_std = self.step_functions(obs_normalised)
        x0 = torch.randn(
            obs_normalised.shape[0], self.policy.flat_action_dim, device=obs_normalised.device
        )
        iterate_clip = ITERATE_BOUND if self.config.clamp == "iterate" else None
        chain = chains.gaussian_euler_chain(
            velocity, noise_std, x0, self.flow_steps, iterate_clip, self.config.noise_clip
        )
        if self.config.clamp == "mean":
            chain[-1] = chain[-1].clamp(-ITERATE_BOUND, ITERATE_BOUND)
        return chain

    def chain_log_prob(
        self, obs_normalised: Tensor, chain: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Normalised log-likelihood and entropy of stored chains under the current networks.

        Args:
            obs_normalised: (B, Do).
            chain: (K+1, B, A).

        Returns:
            ``log_prob`` (B,): ``log p(x_0 .. x_K) / ((K + 1) A)`` (K instead of K + 1 without
            the initial noise); ``entropy`` (B,): the chain's joint entropy, same normalisation;
            ``stds`` (K, B, A) of the transitions.
        """
        velocity, noise_std = self.step_functions(obs_normalised)
        means, stds = chains.euler_step_gaussians(velocity, noise_std, chain)
        include_initial = self.config.include_initial_noise
        total = chains.chain_log_likelihood(chain, means, stds, include_initial)
        entropy = chains.gaussian_entropy(stds).sum(dim=(0, -1))  # (B,)
        action_size = chain.shape[-1]
        if include_initial:
            entropy = entropy + action_size * chains.gaussian_entropy(
                torch.ones((), device=chain.device)
            )
        terms = (self.flow_steps + int(include_initial)) * action_size
        return total / terms, entropy / terms, stds

    # ------------------------------------------------------------------------- acting

    @torch.no_grad()
    def act(self, obs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Sample a chain for raw observations (N, Do) and score it.

        Returns env actions (N, Ta_exec * Da) and the record: ``chain`` (N, K+1, A) and its
        normalised ``log_prob`` (N,) under the rollout networks.
        """
        obs_normalised = self.policy.obs_norm(obs)
        chain = self.sample_chain(obs_normalised)  # (K+1, N, A)
        log_prob, _, _ = self.chain_log_prob(obs_normalised, chain)
        record = {"chain": chain.transpose(0, 1).contiguous(), "log_prob": log_prob}
        return self.policy.env_action(chain[-1]), record

    # ------------------------------------------------------------------------- losses

    def deterministic_action(self, policy: FlowPolicy, obs_normalised: Tensor) -> Tensor:
        """Noise-free chain from ``x_0 = 0`` with every iterate clamped to [-1, 1]; (B, A)."""
        velocity = clamped_mean_velocity(
            lambda x, tau: policy.velocity(obs_normalised, x, tau), self.flow_steps
        )
        x0 = torch.zeros(
            obs_normalised.shape[0], policy.flat_action_dim, device=obs_normalised.device
        )
        return flows.euler_sample(velocity, x0, self.flow_steps)

    def bc_loss(self, obs_normalised: Tensor) -> Tensor:
        """W2 regulariser: ``E || a_theta(s) - a_ref(s) ||^2`` (mean over elements) between the
        deterministic actions of the trained and the frozen initial policy."""
        with torch.no_grad():
            target = self.deterministic_action(self.reference, obs_normalised)
        return (self.deterministic_action(self.policy, obs_normalised) - target).square().mean()

    def policy_loss(
        self, obs_normalised: Tensor, chain: Tensor, old_log_prob: Tensor, advantages: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Actor loss on a minibatch: obs (B, Do), chain (K+1, B, A), old_log_prob (B,),
        advantages (B,). Returns (clipped surrogate - ent_coef H [+ bc_coef W2], metrics)."""
        cfg = self.config
        low, high = cfg.log_prob_clamp
        new_log_prob, entropy, stds = self.chain_log_prob(obs_normalised, chain)
        log_ratio = new_log_prob.clamp(low, high) - old_log_prob.clamp(low, high)
        ratio = log_ratio.exp()
        surrogate = -trust_region_objective(ratio, advantages, cfg.clip_coef, "ppo").mean()
        entropy_loss = -entropy.mean()
        loss = surrogate + cfg.ent_coef * entropy_loss
        metrics: dict[str, Tensor] = {}
        if self.reference is not None:
            bc = self.bc_loss(obs_normalised)
            loss = loss + cfg.bc_coef * bc
            metrics["loss/bc"] = bc.detach()
        with torch.no_grad():
            outside = (old_log_prob < low) | (old_log_prob > high)
            metrics |= {
                "loss/surrogate": surrogate,
                "loss/entropy": entropy_loss,
                "policy/ratio": ratio.mean(),
                "policy/approx_kl": ((ratio - 1) - log_ratio).mean(),
                "policy/clipfrac": ((ratio - 1).abs() > cfg.clip_coef).float().mean(),
                "policy/entropy": entropy.mean(),
                "policy/log_prob": new_log_prob.mean(),
                "policy/log_prob_clampfrac": outside.float().mean(),
                "policy/noise_std": stds.mean(),
            }
        return loss, metrics

    # ------------------------------------------------------------------------- the update

    def learning_rates(self) -> tuple[float, float]:
        """(actor, critic) learning rates of the current iteration."""
        cfg = self.config
        if cfg.lr_schedule == "constant":
            return cfg.actor_lr, cfg.critic_lr
        cycle, warmup = cfg.lr_cycle_iterations, cfg.lr_warmup_iterations
        return (
            cosine_restarts_lr(self.iterations, cfg.actor_lr, cfg.actor_min_lr, cycle, warmup),
            cosine_restarts_lr(self.iterations, cfg.critic_lr, cfg.critic_min_lr, cycle, warmup),
        )

    def prepare(self, batch: RolloutBatch) -> onpolicy.PreparedBatch:
        """Scale rewards, run GAE and flatten the batch to (T*N, ...); the learning rates are
        set by :meth:`update` (two groups on their own schedule)."""
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

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """Several epochs of minibatch PPO on the chains of one rollout; returns mean metrics.

        Afterwards the noise upper bound moves to its value at ``batch.progress``, so the next
        rollout and the next update's first minibatch see the same bound (ratio 1).
        """
        cfg = self.config
        actor_lr, critic_lr = self.learning_rates()
        self.optimizer.param_groups[0]["lr"] = actor_lr
        self.optimizer.param_groups[1]["lr"] = critic_lr
        upper = self.noise_net.upper
        prepared = self.prepare(batch)
        records = prepared.records

        def minibatch_step(idx: Tensor) -> dict[str, Tensor | float]:
            adv = onpolicy.minibatch_advantages(prepared, idx, cfg.norm_adv)
            loss, metrics = self.policy_loss(
                prepared.obs[idx],
                records["chain"][idx].transpose(0, 1),
                records["log_prob"][idx],
                adv,
            )
            return onpolicy.critic_loss_and_step(
                prepared, idx, loss, metrics, self.critic, self.optimizer, self.parameters, cfg
            )

        out = onpolicy.run_epochs(
            cfg.update_epochs, cfg.batch_size, cfg.num_minibatches, minibatch_step, batch.obs.device
        )
        self.policy.obs_norm.update(batch.obs)
        self.noise_net.set_upper(noise_upper_bound(batch.progress, cfg))
        self.iterations += 1
        out["critic/explained_variance"] = onpolicy.explained_variance(
            prepared.values, prepared.returns
        )
        out["policy/noise_std_upper"] = upper
        out["charts/actor_lr"] = actor_lr
        out["charts/critic_lr"] = critic_lr
        return out

    def state_dict(self) -> dict:
        return {
            "policy": self.policy.state_dict(),
            "noise_net": self.noise_net.state_dict(),
            "reference": None if self.reference is None else self.reference.state_dict(),
            "critic": self.critic.state_dict(),
            "reward_scaler": self.reward_scaler.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "iterations": self.iterations,
        }

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.noise_net.load_state_dict(state["noise_net"])
        if self.reference is not None:
            self.reference.load_state_dict(state["reference"])
        self.critic.load_state_dict(state["critic"])
        self.reward_scaler.load_state_dict(state["reward_scaler"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.iterations = state["iterations"]


# ----------------------------------------------------------------------------- registration

SPEC = AlgorithmSpec(
    name="reinflow",
    config=ReinFlowConfig,
    algorithm=ReinFlow,
    presets=(Preset("reinflow", ReinFlowConfig),),
    fine_tunes=(FlowPolicy,),
)
