"""FQL — Flow Q-Learning (Park, Li, Levine, arXiv 2502.02538; code seohongpark/fql,
``agents/fql.py``), and its action-chunked form QC-FQL (Li, Zhou, Levine, "Reinforcement
Learning with Action Chunking"; code ColinQiyangLi/qc, ``agents/acfql.py``).

Three networks and one Adam over all of them, one gradient step per sampled batch:

1. **BC flow** ``v_theta(s, x, tau)``, flow matching on replayed actions ``a``:
   ``L_bc = E ||v_theta(s, (1 - tau) eps + tau a, tau) - (a - eps)||^2 / A``, and its K-step
   Euler sample ``flow(s, z)`` from ``x_0 = z`` (``flowpolicy.flows``), bounded to [-1, 1].
2. **One-step policy** ``mu_w(s, z) = MLP([s, z])``, ``z ~ N(0, I)``; it acts (its output clipped
   to [-1, 1], then mapped to the env's bounds) and is evaluated and exported:
   ``L_mu = alpha ||mu_w(s, z) - flow(s, z)||^2 / A - lam mean_e Q_e(s, clip(mu_w(s, z)))``,
   ``lam = 1`` (paper) or ``1 / mean|Q|`` without gradient (``normalize_q_loss``).
3. **Critic**: two Q members with Polyak targets (rate tau), on chunks of ``h = chunk`` actions:
   ``y = R + gamma^h (1 - term) agg_e Qbar_e(s', clip(mu_w(s', z')))``, agg = mean or min,
   ``L_Q = mean_e,B (Q_e(s, a) - y)^2``, where a replay row is ``(s, a_{t:t+h}, R, s', term)``
   with ``R = sum_k gamma^k r_{t+k}`` (h = 1 is FQL; h > 1 QC-FQL, the whole chunk executed).

Offline-to-online (the released ``main.py``): ``offline_steps`` gradient steps on the dataset
(:meth:`FQL.offline_update`, called by the runner before the first rollout), then online steps
with the dataset *kept* in the replay and the online chunks appended; ``utd_ratio`` gradient
steps per env step. Without a dataset it runs online from scratch.

Shapes: ``B`` batch, ``Do`` observation size, ``Da`` action size, ``h`` chunk, ``A = h * Da``,
``E`` critic members, ``C`` replay rows, ``N`` envs, ``T`` steps per iteration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from flowpolicy import flows
from flowpolicy.algos.chunk_replay import ChunkReplay, dataset_chunks
from flowpolicy.algos.config_blocks import FlowActorConfig
from flowpolicy.algos.offpolicy import RunningMeans
from flowpolicy.algos.offpolicy_presets import fql_cpu, qc_fql
from flowpolicy.algos.one_step_policy import OneStepPolicy
from flowpolicy.algos.onpolicy import optimizer_step
from flowpolicy.algos.spec import AlgorithmSpec, Preset
from flowpolicy.algos.validation import (
    check_initial_policy,
    require_non_negative,
    require_positive,
    require_range,
)
from flowpolicy.buffers import RolloutBatch
from flowpolicy.critics import QEnsemble
from flowpolicy.data import Dataset
from flowpolicy.nets import Activation
from flowpolicy.policies import FlowPolicy


@dataclass(frozen=True)
class FQLConfig(FlowActorConfig):
    """FQL. Defaults: the authors' ``get_config`` (their OGBench default; alpha is tuned per task).

    Source: seohongpark/fql, agents/fql.py (get_config) and main.py (offline_steps 1M,
    buffer_size 2M, one update per env step), commit 719d04417cb0b206deddbc7d761b3e710c3d750c.
    """

    # --- rollout ---
    num_envs: int = 10
    """parallel environments (the authors act in one env and update after every env step)."""
    num_steps: int = 50
    """vector (chunk) steps per env per iteration; the online updates run after each iteration."""
    # --- the two policies (the BC flow is built only when no --init policy is given) ---
    flow_steps: int = 10
    """K, Euler steps of the BC flow's sampler (authors: 10)."""
    chunk: int = 1
    """h, actions per chunk: 1 is FQL, > 1 is QC-FQL (QC: horizon_length 5)."""
    chunk_exec: int = 1
    """actions executed per chunk: must equal chunk (QC executes the whole chunk)."""
    actor_hidden: tuple[int, ...] = (512, 512, 512, 512)
    """hidden sizes of the BC flow and of the one-step policy (authors: 4x512)."""
    actor_activation: Activation = "silu"
    """hidden activation of both policies (authors: GELU; SiLU is the nearest here)."""
    # --- critic ---
    critic_members: int = 2
    """E, Q members (authors: 2)."""
    critic_hidden: tuple[int, ...] = (512, 512, 512, 512)
    """hidden sizes of each Q member (authors: 4x512)."""
    critic_activation: Activation = "silu"
    """hidden activation of each Q member (authors: GELU)."""
    critic_layer_norm: bool = True
    """LayerNorm in the Q members' hidden layers (authors: on; off in the policies)."""
    q_agg: Literal["mean", "min"] = "mean"
    """how the target members combine in the TD target (authors: mean; min for D4RL adroit and antmaze-large/giant)."""
    tau: float = 0.005
    """Polyak rate of the target critics per gradient step (authors: 0.005)."""
    gamma: float = 0.99
    """discount per env step; a chunk of h actions bootstraps with gamma ** h (QC)."""
    # --- losses and optimiser ---
    alpha: float = 10.0
    """weight of the distillation loss (authors: 10 by default, 3-30000 per task; README)."""
    normalize_q_loss: bool = False
    """divide the Q term by mean |Q| (authors: off in the paper, recommended for new tasks)."""
    learning_rate: float = 3e-4
    """Adam learning rate of all networks (authors: 3e-4)."""
    batch_size: int = 256
    """replay rows per gradient step (authors: 256)."""
    # --- data ---
    dataset: str = ""
    """offline dataset (any file `flowpolicy.data.load_dataset` reads); empty: online from scratch."""
    offline_steps: int = 1_000_000
    """gradient steps on the dataset before the first rollout (authors: 1M); needs a dataset."""
    offline_log_every: int = 5000
    """offline steps per log line and checkpoint (authors log every 5000)."""
    buffer_size: int = 2_000_000
    """replay rows kept, the dataset's included (authors: 2M); the dataset is never dropped."""
    utd_ratio: float = 1.0
    """online gradient steps per env step (authors: 1)."""
    online_warmup_steps: int = 0
    """online env steps collected before the first online gradient step (QC: 5000; FQL: 0)."""

    def __post_init__(self) -> None:
        self.check_flow_actor()
        require_positive(
            self, "num_envs", "num_steps", "critic_members", "learning_rate", "batch_size"
        )
        require_positive(self, "offline_log_every", "buffer_size", "utd_ratio")
        require_non_negative(self, "alpha", "offline_steps", "online_warmup_steps")
        require_range(self, "gamma", 0.0, 1.0)
        require_range(self, "tau", 1e-9, 1.0)
        if self.chunk_exec != self.chunk:
            raise ValueError(
                f"FQL executes the whole chunk: chunk_exec ({self.chunk_exec}) must equal chunk "
                f"({self.chunk}); pass --chunk-exec {self.chunk}."
            )
        if self.buffer_size < self.num_envs * self.num_steps:
            raise ValueError(
                f"buffer_size ({self.buffer_size}) must hold one iteration's "
                f"num_envs * num_steps = {self.num_envs * self.num_steps} transitions."
            )
        if self.q_agg not in ("mean", "min"):
            raise ValueError(f"q_agg must be 'mean' or 'min', got {self.q_agg!r}.")


# ----------------------------------------------------------------------------- the algorithm


class FQL:
    """FQL / QC-FQL: ``act`` with the one-step policy, ``update`` per iteration, and the
    offline phase in :meth:`offline_update`.

    Args:
        obs_dim: Do. action_low, action_high: env bounds, (Da,) each.
        config: hyper-parameters.
        policy: a pretrained flow policy to start the BC flow from (used as given); None
            builds one. Its normalisers are shared with the one-step policy.
    """

    def __init__(
        self,
        obs_dim: int,
        action_low: Tensor,
        action_high: Tensor,
        config: FQLConfig,
        policy: FlowPolicy | None = None,
    ) -> None:
        self.config, self.device = config, action_low.device
        self.from_scratch = policy is None
        if policy is None:
            policy = config.build_actor(obs_dim, action_low, action_high)
        else:
            check_initial_policy(policy, obs_dim, config, "FQL")
        self.flow = policy
        self.onestep = OneStepPolicy(
            obs_dim,
            action_low.tolist(),
            action_high.tolist(),
            chunk=config.chunk,
            chunk_exec=config.chunk_exec,
            hidden=config.actor_hidden,
            activation=config.actor_activation,
            obs_normalization=policy.init_kwargs["obs_normalization"],
        ).to(self.device)
        # One set of normalisers: the critic and both policies see the same inputs.
        self.onestep.obs_norm, self.onestep.action_norm = policy.obs_norm, policy.action_norm
        self.action_size = config.chunk * len(action_low)
        self.critic = QEnsemble(
            obs_dim,
            self.action_size,
            config.critic_members,
            config.critic_hidden,
            config.critic_activation,
            config.critic_layer_norm,
            None,
            1.0 - config.tau,
        )
        self.parameters = [
            *self.critic.members.parameters(),
            *self.flow.velocity_net.parameters(),
            *self.onestep.net.parameters(),
        ]
        self.optimizer = torch.optim.Adam(self.parameters, lr=config.learning_rate)
        self.replay = ChunkReplay(config.buffer_size, self.device)
        self.offline_done = self.online_env_steps = 0

    @property
    def eval_policy(self) -> OneStepPolicy:
        """The one-step policy: what acts, what evaluation runs and policy.pt holds."""
        return self.onestep

    # ------------------------------------------------------------------------- data

    def bounded(self, env_actions: Tensor) -> Tensor:
        """Env actions (..., Da) -> the policies' [-1, 1] coordinates (through the action
        normaliser), as the critic and the one-step policy see them."""
        return self.flow.raw_from_env(env_actions).clamp(-1.0, 1.0)

    def load_offline_data(self, dataset: Dataset) -> None:
        """Put the dataset's chunk transitions into the replay (the runner calls this before the
        first rollout, and again on resume, before :meth:`load_state_dict`). A from-scratch
        policy's observation normaliser is fitted to the dataset and frozen."""
        cfg = self.config
        rows = {
            name: torch.as_tensor(value, dtype=torch.float32, device=self.device)
            for name, value in dataset_chunks(dataset, cfg.chunk, cfg.gamma).items()
        }
        chunks = rows["actions"].view(len(rows["actions"]), cfg.chunk, -1)  # (C, h, Da)
        rows["actions"] = self.bounded(chunks).flatten(1)
        if self.from_scratch:
            obs = torch.as_tensor(dataset.observations, device=self.device)
            self.flow.obs_norm.fit(obs)
        self.replay.set_offline(rows, cfg.num_envs * cfg.num_steps)

    @property
    def offline_steps_left(self) -> int:
        """Offline gradient steps still to run (0 without a dataset)."""
        return max(0, self.config.offline_steps - self.offline_done) if self.replay.offline else 0

    def offline_update(self) -> dict[str, float]:
        """Up to ``offline_log_every`` gradient steps on the dataset; the runner logs and
        checkpoints after each call while :attr:`offline_steps_left` > 0."""
        steps = min(self.config.offline_log_every, self.offline_steps_left)
        means = RunningMeans()
        for _ in range(steps):
            means.add(self.gradient_step(self.replay.sample(self.config.batch_size)))
        self.offline_done += steps
        return means.result() | {"charts/offline_steps": float(self.offline_done)}

    # ------------------------------------------------------------------------- acting

    @torch.no_grad()
    def act(self, obs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Raw observations (N, Do) -> env actions (N, A) and the record ``action``: the
        clipped chunk (N, A) in [-1, 1], what the critic and the BC flow learn on."""
        bounded = self.onestep.sample(obs, "random")
        return self.onestep.env_action(bounded), {"action": bounded}

    # ------------------------------------------------------------------------- learning

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """Append the iteration's chunk transitions to the replay (their reward is the env's
        undiscounted sum over the chunk), then ``utd_ratio`` gradient steps per env step
        collected after the first ``online_warmup_steps``."""
        cfg = self.config
        self.replay.add(
            {
                "obs": batch.obs.flatten(0, 1),
                "actions": batch.records["action"].flatten(0, 1),
                "rewards": batch.rewards.flatten().float(),
                "next_obs": batch.next_obs.flatten(0, 1),
                "terminated": batch.terminated.flatten().float(),
            }
        )
        before = self.online_env_steps
        self.online_env_steps += batch.rewards.numel() * cfg.chunk_exec
        counted = self.online_env_steps - max(before, cfg.online_warmup_steps)
        steps = round(cfg.utd_ratio * max(0, counted))
        means = RunningMeans()
        for _ in range(steps):
            means.add(self.gradient_step(self.replay.sample(cfg.batch_size)))
        self.flow.obs_norm.update(batch.obs)  # running statistics only when not fitted/frozen
        return means.result() | {
            "charts/replay_size": float(len(self.replay)),
            "charts/gradient_steps": float(steps),
        }

    def td_target(self, rewards: Tensor, next_obs: Tensor, terminated: Tensor) -> Tensor:
        """``R + gamma^h (1 - term) agg_e Qbar_e(s', clip(mu(s', z')))``; (B,), no gradient.
        ``next_obs`` is normalised."""
        with torch.no_grad():
            noise = torch.randn(len(next_obs), self.action_size, device=next_obs.device)
            next_actions = self.onestep.raw(next_obs, noise).clamp(-1.0, 1.0)
            values = self.critic.target_values(next_obs, next_actions)  # (E, B)
            next_q = self.critic.reduce(values, self.config.q_agg)
            discount = self.config.gamma**self.config.chunk
            return rewards + discount * (1.0 - terminated) * next_q

    def flow_target(self, bounded: Tensor) -> Tensor:
        """Replayed chunks in [-1, 1] -> what the BC flow regresses on: themselves for a
        clipping flow, ``atanh`` of them (clipped by 1e-5, as the authors clip data) for tanh."""
        if self.flow.squash == "tanh":
            return bounded.clamp(-1.0 + 1e-5, 1.0 - 1e-5).atanh()
        return bounded

    def flow_actions(self, obs_normalised: Tensor, noise: Tensor) -> Tensor:
        """The BC flow's K-step Euler sample from ``x_0 = z``, bounded to [-1, 1]; (B, A)."""
        raw = flows.euler_sample(
            lambda x, tau: self.flow.velocity(obs_normalised, x, tau), noise, self.flow.flow_steps
        )
        return raw.tanh() if self.flow.squash == "tanh" else raw.clamp(-1.0, 1.0)

    def q_term(self, obs_normalised: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """``-lam mean_e Q_e(s, a)`` with the critic's weights fixed (the gradient reaches the
        actions only), and the mean Q."""
        self.critic.members.requires_grad_(False)
        q = self.critic(obs_normalised, actions).mean(0)  # (B,)
        self.critic.members.requires_grad_(True)
        loss = -q.mean()
        if self.config.normalize_q_loss:
            loss = loss / q.detach().abs().mean()
        return loss, q.detach().mean()

    def gradient_step(self, data: dict[str, Tensor]) -> dict[str, Tensor]:
        """One Adam step of critic + BC flow + one-step policy on replay rows, then the
        targets' Polyak step."""
        cfg = self.config
        obs = self.flow.obs_norm(data["obs"])
        actions = data["actions"]  # (B, A) in [-1, 1]
        targets = self.td_target(
            data["rewards"], self.flow.obs_norm(data["next_obs"]), data["terminated"]
        )
        critic_loss, metrics = self.critic.loss(obs, actions, targets, None)
        goal, eps = self.flow_target(actions), torch.randn_like(actions)
        tau = torch.rand(len(actions), device=actions.device)
        velocity = self.flow.velocity(obs, flows.interpolate(goal, eps, tau), tau)
        bc_loss = flows.cfm_loss(velocity, goal, eps, tau).mean()
        noise = torch.randn_like(actions)
        with torch.no_grad():
            distill_target = self.flow_actions(obs, noise)
        mu = self.onestep.raw(obs, noise)
        distill_loss = (mu - distill_target).square().mean()
        q_loss, q_mean = self.q_term(obs, mu.clamp(-1.0, 1.0))
        loss = critic_loss + bc_loss + cfg.alpha * distill_loss + q_loss
        optimizer_step(self.optimizer, loss, self.parameters, None)
        self.critic.update_targets()
        return metrics | {
            "loss/critic": critic_loss.detach(),
            "loss/bc_flow": bc_loss.detach(),
            "loss/distill": distill_loss.detach(),
            "loss/q": q_loss.detach(),
            "policy/q_mean": q_mean,
            "critic/target_mean": targets.mean(),
        }

    # ------------------------------------------------------------------------- state

    def state_dict(self) -> dict:
        return {
            "flow": self.flow.state_dict(),
            "onestep": self.onestep.state_dict(),
            "critic": self.critic.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "replay": self.replay.state_dict(),
            "offline_done": self.offline_done,
            "online_env_steps": self.online_env_steps,
        }

    def load_state_dict(self, state: dict) -> None:
        self.flow.load_state_dict(state["flow"])
        self.onestep.load_state_dict(state["onestep"])
        self.critic.load_state_dict(state["critic"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.replay.load_state_dict(state["replay"])
        self.offline_done = state["offline_done"]
        self.online_env_steps = state["online_env_steps"]


SPEC = AlgorithmSpec(
    name="fql",
    config=FQLConfig,
    algorithm=FQL,
    presets=(Preset("fql", FQLConfig), Preset("fql-cpu", fql_cpu), Preset("qc-fql", qc_fql)),
    fine_tunes=(FlowPolicy,),
)
