"""Behaviour cloning of flow, diffusion and Gaussian policies (ALGORITHMS.md section 1).

Each policy class has its own regression loss on a minibatch of normalised observations ``s``
(B, Do) and action chunks ``a`` in the policy's raw space (B, A), where [-1, 1] is the data's
min/max range:

    flow (CFM):     L = E_{tau, eps} || v_theta(x_tau, tau | s) - (a - eps) ||^2,
                    x_tau = (1 - tau) eps + tau a,  tau ~ U[0, 1] (or logit-normal);
    diffusion:      L = E_{k, eps} || eps_theta(sqrt(abar_k) a + sqrt(1 - abar_k) eps, k | s) - eps ||^2,
                    k ~ U{0 .. K-1} (DDPM epsilon prediction);
    Gaussian:       L = -(1 / A) log N(a; mu_theta(s), diag(sigma^2))  (max likelihood, the
                    baseline whose samples fall between the modes of multimodal data).

Squared errors are averaged over the A action dims and the batch (``F.mse_loss``, as DPPO and
ReinFlow do). Optimisation follows DPPO's Gym pretraining: AdamW (lr 1e-3, weight decay 1e-6),
cosine decay of the learning rate to 1e-4 over the run, an EMA of the weights (decay 0.995,
updated every 5 steps once ``ema_start`` steps are done; a plain copy before) that is
validated, evaluated and exported.

Shapes: ``B`` minibatch, ``Do`` obs size, ``A = Ta * Da`` flat action size, ``K`` denoising
steps.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from flowpolicy import ddpm, distributed, flows
from flowpolicy.policies import DiffusionPolicy, FlowPolicy, GaussianPolicy

Policy = FlowPolicy | DiffusionPolicy | GaussianPolicy


@dataclass(frozen=True)
class BCConfig:
    """Behaviour cloning. Defaults: DPPO's and ReinFlow's Gym pretraining."""

    learning_rate: float = 1e-3
    """AdamW learning rate at the start."""
    min_learning_rate: float = 1e-4
    """learning rate at the end of the cosine decay."""
    weight_decay: float = 1e-6
    """AdamW weight decay."""
    batch_size: int = 128
    """minibatch size (action chunks per gradient step)."""
    ema_decay: float = 0.995
    """EMA decay of the weights that are validated, evaluated and exported."""
    ema_every: int = 5
    """gradient steps between EMA updates (DPPO: 5)."""
    ema_start: int = 1000
    """gradient steps before the EMA starts averaging (it copies the weights until then)."""
    tau_sampling: flows.TauSampling = "uniform"
    """flow time distribution of the CFM loss: uniform (ReinFlow), logit_normal, or the grid."""
    max_grad_norm: float | None = None
    """global gradient-norm clip; None: no clipping (DPPO, ReinFlow)."""

    def __post_init__(self) -> None:
        for name in ("learning_rate", "batch_size", "ema_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}.")
        if not 0.0 <= self.min_learning_rate <= self.learning_rate:
            raise ValueError(
                f"need 0 <= min_learning_rate <= learning_rate, got {self.min_learning_rate} "
                f"and {self.learning_rate}."
            )
        if self.weight_decay < 0 or self.ema_start < 0:
            raise ValueError("weight_decay and ema_start must be >= 0.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}.")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be positive or None, got {self.max_grad_norm}.")


# ----------------------------------------------------------------------------- losses


def flow_bc_loss(
    policy: FlowPolicy,
    obs_normalised: Tensor,
    actions: Tensor,
    tau_sampling: flows.TauSampling = "uniform",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Conditional flow matching on (obs (B, Do), raw action chunks (B, A))."""
    batch = actions.shape[0]
    tau = flows.sample_tau((batch,), tau_sampling, policy.flow_steps, device=actions.device)
    noise = torch.randn_like(actions)
    x_tau = flows.interpolate(actions, noise, tau)
    velocity = policy.velocity(obs_normalised, x_tau, tau)
    loss = flows.cfm_loss(velocity, actions, noise, tau).mean()
    return loss, {"loss/bc": loss.detach()}


def ddpm_bc_loss(
    policy: DiffusionPolicy, obs_normalised: Tensor, actions: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """Epsilon-prediction MSE on (obs (B, Do), raw action chunks (B, A))."""
    batch = actions.shape[0]
    k = torch.randint(0, policy.denoising_steps, (batch,), device=actions.device)
    noise = torch.randn_like(actions)
    x_k = ddpm.q_sample(actions, noise, policy.alpha_bars[k])
    loss = (policy.noise_prediction(obs_normalised, x_k, k) - noise).square().mean()
    return loss, {"loss/bc": loss.detach()}


def gaussian_bc_loss(
    policy: GaussianPolicy, obs_normalised: Tensor, actions: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """Negative log-likelihood per action dim on (obs (B, Do), raw action chunks (B, A))."""
    dist = policy.distribution(obs_normalised)
    loss = -dist.log_prob(actions).mean()
    return loss, {"loss/bc": loss.detach(), "policy/std": policy.log_std.exp().mean().detach()}


def bc_loss(
    policy: Policy, obs_normalised: Tensor, actions: Tensor, config: BCConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss of ``policy``'s class (see the module docstring)."""
    if isinstance(policy, FlowPolicy):
        return flow_bc_loss(policy, obs_normalised, actions, config.tau_sampling)
    if isinstance(policy, DiffusionPolicy):
        return ddpm_bc_loss(policy, obs_normalised, actions)
    if isinstance(policy, GaussianPolicy):
        return gaussian_bc_loss(policy, obs_normalised, actions)
    raise TypeError(f"no BC loss for {type(policy).__name__}")


def cosine_learning_rate(step: int, total_steps: int, start: float, end: float) -> float:
    """``end + (start - end) (1 + cos(pi step / total)) / 2``; ``end`` after the last step."""
    progress = min(step / max(total_steps, 1), 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------- the algorithm


class BC:
    """Behaviour cloning of one policy: ``update`` takes a minibatch, the EMA copy is the result.

    The policy's normalisers must be fitted before this is built (the EMA copy starts as a
    copy of the policy, buffers included).

    Args:
        policy: a FlowPolicy, DiffusionPolicy or GaussianPolicy.
        config: optimisation hyper-parameters.
        total_steps: gradient steps of the run (the length of the cosine decay).
    """

    def __init__(self, policy: Policy, config: BCConfig, total_steps: int) -> None:
        self.config = config
        self.policy = policy
        self.total_steps = total_steps
        self.ema_policy = copy.deepcopy(policy)
        self.ema_policy.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            policy.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.steps = 0

    @property
    def eval_policy(self) -> Policy:
        """The EMA policy: validated, evaluated and exported."""
        return self.ema_policy

    def update(self, obs_normalised: Tensor, actions: Tensor) -> dict[str, float]:
        """One gradient step on a minibatch (B, Do), (B, A); returns its metrics.

        Raises:
            NonFiniteLossError: the loss is NaN or inf (the step is not applied).
        """
        cfg = self.config
        lr = cosine_learning_rate(
            self.steps, self.total_steps, cfg.learning_rate, cfg.min_learning_rate
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss, metrics = bc_loss(self.policy, obs_normalised, actions, cfg)
        refused = f"the BC loss is {{value}} at gradient step {self.steps}"
        distributed.synced_backward(loss, [self.optimizer], refused)  # the ranks' mean gradient
        if cfg.max_grad_norm is not None:
            norm = nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
            metrics["loss/grad_norm"] = norm
        self.optimizer.step()
        self.steps += 1
        self._update_ema()
        out = {name: float(value) for name, value in metrics.items()}
        out["charts/learning_rate"] = lr
        return out

    @torch.no_grad()
    def loss(self, obs_normalised: Tensor, actions: Tensor, policy: Policy | None = None) -> float:
        """The BC loss of ``policy`` (default: the EMA policy) on a batch, without a step."""
        policy = self.ema_policy if policy is None else policy
        return float(bc_loss(policy, obs_normalised, actions, self.config)[0])

    @torch.no_grad()
    def _update_ema(self) -> None:
        """Every ``ema_every`` steps: a copy before ``ema_start``, then
        ``ema <- decay * ema + (1 - decay) * weights``. Buffers (normalisers) are copied."""
        cfg = self.config
        if self.steps % cfg.ema_every:
            return
        decay = cfg.ema_decay if self.steps > cfg.ema_start else 0.0
        for ema_param, param in zip(
            self.ema_policy.parameters(), self.policy.parameters(), strict=True
        ):
            if decay == 0.0:
                ema_param.copy_(param)
            else:
                ema_param.lerp_(param, 1.0 - decay)
        for ema_buffer, buffer in zip(
            self.ema_policy.buffers(), self.policy.buffers(), strict=True
        ):
            ema_buffer.copy_(buffer)

    def state_dict(self) -> dict:
        return {
            "policy": self.policy.state_dict(),
            "ema_policy": self.ema_policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.ema_policy.load_state_dict(state["ema_policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = state["steps"]
