"""Policies: a flow policy, a diffusion policy and a Gaussian policy behind one interface.

All three work in a raw action space where ``[-1, 1]^Da`` is the usable range and map to the
env's bounds at the edge (:meth:`env_action`); all carry their observation normaliser
(``obs_norm``) and action normaliser (``action_norm``), so a saved policy is self-contained.
``act(obs, mode)`` returns env actions; ``mode="zero"`` is the deterministic action (zero
initial noise and no injected noise for the flow and diffusion policies, the mean for the
Gaussian), ``mode="random"`` samples.

Normalisers. RL from scratch uses :class:`RunningNorm` (running mean/std, updated by the
algorithm after every update) and the identity :class:`ActionNorm`. A policy pretrained by
behaviour cloning is *fitted* on its dataset: observations and actions are scaled to
``[-1, 1]`` with the data's min/max (DPPO, ReinFlow; :class:`MinMaxNorm`), and the fitted
normalisers are frozen, so ``obs_norm.update`` becomes a no-op during fine-tuning. Every
piece of normaliser state lives in buffers, so it is saved and loaded with the weights.

Env action of a raw chunk ``a`` (B, A):
``env = low + (action_norm(squash(a)) + 1) / 2 * (high - low)`` on the first ``Ta_exec``
actions, where ``action_norm(b) = center + half_range * b`` maps [-1, 1] onto the data's range
(in the env's [-1, 1] coordinates; the identity by default).

Every policy records its constructor arguments in ``init_kwargs``, so that
:mod:`flowpolicy.policy_io` can rebuild it from a file.

Shapes: ``B`` batch, ``Do`` obs size, ``Ta`` chunk length, ``Ta_exec`` executed actions,
``Da`` action size, ``A = Ta * Da`` flat action size, ``K`` sampling steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from flowpolicy import ddpm, distributed, flows
from flowpolicy.nets import (
    Activation,
    DenoisingMLP,
    ResidualMLP,
    VelocityMLP,
    mlp,
    residual_shape,
)

SampleMode = Literal["zero", "random"]
Squash = Literal["tanh", "clip"]
Network = Literal["mlp", "residual"]
ObsNormalization = Literal["running", "min_max"]

RANGE_FLOOR = 1e-6
"""Smallest half-range of a min/max normaliser, so a constant dimension maps to 0, not NaN."""


class _DefaultedBuffers(nn.Module):
    """A module whose newer buffers may be absent from files written before they existed.

    ``load_state_dict`` fills a missing buffer with its default, the way BatchNorm handles
    ``num_batches_tracked``, so older checkpoints and policy files keep loading.
    """

    def _buffer_defaults(self) -> dict[str, Tensor]:
        return {}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        for name, default in self._buffer_defaults().items():
            state_dict.setdefault(prefix + name, default)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class RunningNorm(_DefaultedBuffers):
    """Running mean/variance observation normaliser (parallel-variance update).

    ``normalize(x) = clip((x - mean) / sqrt(var + 1e-8), -clip, clip)``. Statistics change only
    when :meth:`update` is called; algorithms call it after an update so that a batch is acted
    on and learned from with identical statistics. After :meth:`fit` or :meth:`freeze`,
    :meth:`update` is a no-op (a pretrained policy keeps the statistics of its dataset).
    """

    def __init__(self, size: int, clip: float = 10.0) -> None:
        super().__init__()
        self.clip = clip
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("var", torch.ones(size))
        self.register_buffer("count", torch.tensor(1e-4))
        self.register_buffer("frozen", torch.tensor(False))

    def _buffer_defaults(self) -> dict[str, Tensor]:
        return {"frozen": torch.tensor(False, device=self.mean.device)}

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Fold a batch (N, size) into the running statistics (nothing once frozen)."""
        if self.frozen:
            return
        x = x.reshape(-1, self.mean.shape[0]).double()
        if distributed.active():  # every rank's batch together, so all keep the same statistics
            batch_mean, batch_var, batch_count = distributed.global_moments(x)
        else:
            batch_mean, batch_var, batch_count = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        delta = batch_mean - self.mean
        total = self.count + batch_count
        new_mean = self.mean + delta * batch_count / total
        m2 = (
            self.var * self.count
            + batch_var * batch_count
            + delta.square() * self.count * batch_count / total
        )
        self.mean.copy_(new_mean)
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    @torch.no_grad()
    def fit(self, data: Tensor) -> None:
        """Set mean and (population) variance to those of ``data`` (N, size), then freeze."""
        data = data.reshape(-1, self.mean.shape[0]).double()
        self.mean.copy_(data.mean(0))
        self.var.copy_(data.var(0, unbiased=False))
        self.count.fill_(float(data.shape[0]))
        self.freeze()

    def freeze(self) -> None:
        """Make :meth:`update` a no-op from now on (the flag is saved with the weights)."""
        self.frozen.fill_(True)

    def forward(self, x: Tensor) -> Tensor:
        return ((x - self.mean) / torch.sqrt(self.var + 1e-8)).clamp(-self.clip, self.clip).float()


class MinMaxNorm(nn.Module):
    """Fixed affine map of the box ``[low, high]`` onto ``[-1, 1]`` (DPPO's normalisation).

    ``normalize(x) = clip((x - c) / h, -clip, clip)`` with ``c = (low + high) / 2`` and
    ``h = max((high - low) / 2, 1e-6)``. It is set once by :meth:`fit` from a dataset;
    :meth:`update` is always a no-op, so RL fine-tuning never moves it. Defaults to the
    identity (low = -1, high = 1). The clip at 10 only touches observations far outside the
    data (DPPO does not clip).
    """

    def __init__(self, size: int, clip: float = 10.0) -> None:
        super().__init__()
        self.clip = clip
        self.register_buffer("low", -torch.ones(size))
        self.register_buffer("high", torch.ones(size))

    @property
    def frozen(self) -> bool:
        """Always True: min/max scaling is fixed by its data."""
        return True

    def update(self, x: Tensor) -> None:
        """No-op (the interface RL algorithms call after each update)."""

    @torch.no_grad()
    def fit(self, data: Tensor) -> None:
        """Set the box to the per-dimension min and max of ``data`` (N, size)."""
        data = data.reshape(-1, self.low.shape[0])
        self.low.copy_(data.amin(0))
        self.high.copy_(data.amax(0))

    def forward(self, x: Tensor) -> Tensor:
        center = 0.5 * (self.low + self.high)
        half_range = (0.5 * (self.high - self.low)).clamp(min=RANGE_FLOOR)
        return ((x - center) / half_range).clamp(-self.clip, self.clip).float()


def make_obs_norm(kind: ObsNormalization, size: int) -> RunningNorm | MinMaxNorm:
    """The observation normaliser of a policy: ``running`` mean/std or fitted ``min_max``."""
    if kind == "running":
        return RunningNorm(size)
    if kind == "min_max":
        return MinMaxNorm(size)
    raise ValueError(f"unknown obs_normalization {kind!r}; use 'running' or 'min_max'")


class ActionNorm(_DefaultedBuffers):
    """Per-dimension affine map from the policy's raw range [-1, 1] onto the part of the
    env's range (in the env's own [-1, 1] coordinates) that the data used.

    ``forward(b) = center + half_range * b``; :meth:`inverse` maps back. The identity
    (center 0, half-range 1) until :meth:`fit`.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.register_buffer("center", torch.zeros(size))
        self.register_buffer("half_range", torch.ones(size))

    def _buffer_defaults(self) -> dict[str, Tensor]:
        return {"center": torch.zeros_like(self.center), "half_range": torch.ones_like(self.center)}

    @torch.no_grad()
    def fit(self, unit_actions: Tensor) -> None:
        """Fit to actions (N, size) already in the env's [-1, 1] coordinates."""
        low, high = unit_actions.amin(0), unit_actions.amax(0)
        self.center.copy_(0.5 * (low + high))
        self.half_range.copy_((0.5 * (high - low)).clamp(min=RANGE_FLOOR))

    def forward(self, bounded: Tensor) -> Tensor:
        """(..., size) in [-1, 1] -> (..., size) in the env's [-1, 1] coordinates."""
        return self.center + self.half_range * bounded

    def inverse(self, unit_actions: Tensor) -> Tensor:
        """(..., size) in the env's [-1, 1] coordinates -> the policy's raw space."""
        return (unit_actions - self.center) / self.half_range


class _BoundedActions(nn.Module):
    """Maps normalised actions in [-1, 1]^Da to the env's box ``[low, high]``, through the
    action normaliser."""

    def __init__(self, action_low: Sequence[float], action_high: Sequence[float]) -> None:
        super().__init__()
        low = torch.as_tensor(np.asarray(action_low, dtype=np.float32))
        high = torch.as_tensor(np.asarray(action_high, dtype=np.float32))
        if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
            raise ValueError("action bounds must be finite")
        self.register_buffer("action_low", low)
        self.register_buffer("action_high", high)
        self.action_norm = ActionNorm(len(low))

    def scale_to_env(self, normalised: Tensor) -> Tensor:
        """(..., Da) in [-1, 1] -> (..., Da) in [low, high] (via the action normaliser)."""
        unit = self.action_norm(normalised)
        return self.action_low + (unit + 1.0) * 0.5 * (self.action_high - self.action_low)

    def env_to_unit(self, env_actions: Tensor) -> Tensor:
        """(..., Da) env actions -> the env's [-1, 1] coordinates, clipped to the bounds."""
        unit = 2.0 * (env_actions - self.action_low) / (self.action_high - self.action_low) - 1.0
        return unit.clamp(-1.0, 1.0)

    def raw_from_env(self, env_actions: Tensor) -> Tensor:
        """Inverse of the env map for in-range actions: (..., Da) env actions -> raw actions
        (what behaviour cloning regresses on). Actions outside the bounds are clipped first."""
        return self.action_norm.inverse(self.env_to_unit(env_actions))

    def fit_normalizers(self, observations: Tensor, env_actions: Tensor) -> None:
        """Fit the observation normaliser (and freeze it) and the action normaliser on a
        dataset: observations (N, Do), env actions (N, Da)."""
        self.obs_norm.fit(observations)
        self.action_norm.fit(self.env_to_unit(env_actions))

    def _executed(self, raw_action: Tensor) -> Tensor:
        """Raw chunk (B, A) -> the executed part (B, Ta_exec, Da)."""
        return raw_action.reshape(-1, self.chunk, self.action_dim)[:, : self.chunk_exec]

    @property
    def flat_action_dim(self) -> int:
        """A = Ta * Da."""
        return self.chunk * self.action_dim


def _bounds(low: Tensor, high: Tensor) -> dict[str, list[float]]:
    return {"action_low": low.tolist(), "action_high": high.tolist()}


def _check_chunk(chunk: int, chunk_exec: int) -> None:
    if not 1 <= chunk_exec <= chunk:
        raise ValueError(f"need 1 <= chunk_exec <= chunk, got {chunk_exec} and {chunk}")


class FlowPolicy(_BoundedActions):
    """A flow-matching policy ``v_theta(x, tau | s)`` sampled with K Euler steps.

    The policy produces a chunk of ``Ta`` actions (flat ``A = Ta * Da``); the env executes the
    first ``Ta_exec``. The raw Euler output ``a`` is what algorithms store and learn on; the env
    receives ``tanh(a)`` (``squash="tanh"``, FPO's choice) or ``clip(a, -1, 1)`` (the choice for
    BC-pretrained policies: their data sits at the bounds, where tanh would need atanh(+-1)),
    through the action normaliser and scaled to the env's bounds.

    Args:
        obs_dim: Do. action_low, action_high: env bounds, (Da,) each.
        chunk: Ta. chunk_exec: Ta_exec <= Ta.
        flow_steps: K Euler steps.
        network: ``mlp`` (FPO's :class:`~flowpolicy.nets.VelocityMLP`, Fourier time features)
            or ``residual`` (DPPO/ReinFlow's :class:`~flowpolicy.nets.DenoisingMLP`: residual
            MLP with a learned sinusoidal embedding of tau).
        hidden: hidden sizes; for ``residual`` an odd number of equal widths, e.g. (512,) * 3.
        time_dim: size of the time features (Fourier for ``mlp``, the embedding for
            ``residual``, 16 in DPPO/ReinFlow).
        activation, output_scale: see the networks.
        layer_norm: LayerNorm in the residual blocks (``residual`` only).
        squash: how raw actions are bounded.
        obs_normalization: ``running`` mean/std (RL from scratch) or ``min_max`` (fitted on a
            dataset, DPPO).
    """

    def __init__(
        self,
        obs_dim: int,
        action_low: Sequence[float],
        action_high: Sequence[float],
        *,
        chunk: int = 1,
        chunk_exec: int = 1,
        flow_steps: int = 10,
        network: Network = "mlp",
        hidden: Sequence[int] = (32, 32, 32, 32),
        time_dim: int = 8,
        activation: Activation = "silu",
        output_scale: float = 0.25,
        layer_norm: bool = False,
        squash: Squash = "tanh",
        obs_normalization: ObsNormalization = "running",
    ) -> None:
        super().__init__(action_low, action_high)
        _check_chunk(chunk, chunk_exec)
        self.obs_dim = obs_dim
        self.action_dim = len(self.action_low)
        self.chunk = chunk
        self.chunk_exec = chunk_exec
        self.flow_steps = flow_steps
        self.squash = squash
        self.obs_norm = make_obs_norm(obs_normalization, obs_dim)
        action_size = chunk * self.action_dim
        if network == "mlp":
            if layer_norm:
                raise ValueError("layer_norm needs network='residual'")
            self.velocity_net: nn.Module = VelocityMLP(
                obs_dim, action_size, hidden, time_dim, activation, output_scale
            )
        elif network == "residual":
            self.velocity_net = DenoisingMLP(
                obs_dim, action_size, hidden, True, time_dim, activation, layer_norm, output_scale
            )
        else:
            raise ValueError(f"unknown network {network!r}; use 'mlp' or 'residual'")
        self.init_kwargs: dict[str, Any] = {
            "obs_dim": obs_dim,
            **_bounds(self.action_low, self.action_high),
            "chunk": chunk,
            "chunk_exec": chunk_exec,
            "flow_steps": flow_steps,
            "network": network,
            "hidden": tuple(hidden),
            "time_dim": time_dim,
            "activation": activation,
            "output_scale": output_scale,
            "layer_norm": layer_norm,
            "squash": squash,
            "obs_normalization": obs_normalization,
        }

    def velocity(self, obs_normalised: Tensor, x: Tensor, tau: Tensor) -> Tensor:
        """v_theta: obs (B, Do) already normalised, x (B, A), tau (B,) -> (B, A)."""
        return self.velocity_net(obs_normalised, x, tau)

    def initial_noise(self, batch: int, mode: SampleMode, device: torch.device) -> Tensor:
        """x_0: standard normal (random sampling) or zeros (zero sampling); (B, A)."""
        shape = (batch, self.flat_action_dim)
        if mode == "zero":
            return torch.zeros(shape, device=device)
        return torch.randn(shape, device=device)

    def sample(
        self, obs: Tensor, mode: SampleMode = "random", return_chain: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Raw actions ``a = x_K`` (B, A) from raw observations (B, Do); optionally the chain."""
        obs_normalised = self.obs_norm(obs)
        x0 = self.initial_noise(obs.shape[0], mode, obs.device)
        return flows.euler_sample(
            lambda x, tau: self.velocity(obs_normalised, x, tau), x0, self.flow_steps, return_chain
        )

    def deterministic_sample(self, obs: Tensor, noise: Tensor) -> Tensor:
        """The noise-to-action map: raw actions (B, A) of the K-step Euler ODE started at
        ``x_0 = noise`` (B, A), for raw observations (B, Do); ``noise = 0`` is zero sampling.
        DSRL (:mod:`flowpolicy.algos.dsrl`) steers a frozen policy through ``noise``."""
        obs_normalised = self.obs_norm(obs)
        return flows.euler_sample(
            lambda x, tau: self.velocity(obs_normalised, x, tau), noise, self.flow_steps
        )

    def env_action(self, raw_action: Tensor) -> Tensor:
        """Raw chunk (B, A) -> executed env actions (B, Ta_exec * Da) in the env's bounds."""
        executed = self._executed(raw_action)
        bounded = executed.tanh() if self.squash == "tanh" else executed.clamp(-1.0, 1.0)
        return self.scale_to_env(bounded).reshape(raw_action.shape[0], -1)

    @torch.no_grad()
    def act(self, obs: Tensor, mode: SampleMode = "random") -> Tensor:
        """Env actions (B, Ta_exec * Da) for raw observations (B, Do)."""
        return self.env_action(self.sample(obs, mode))


class DiffusionPolicy(_BoundedActions):
    """A DDPM policy with epsilon prediction (DPPO's diffusion policy; see :mod:`flowpolicy.ddpm`).

    Forward process ``x_k = sqrt(abar_k) a + sqrt(1 - abar_k) eps`` for k = 0 .. K-1 with the
    cosine schedule; the network predicts ``eps_theta(x_k, k | s)``. A reverse step from x_k
    first predicts ``x0_hat = (x_k - sqrt(1 - abar_k) eps_theta) / sqrt(abar_k)``, clipped to
    ``[-denoised_clip, denoised_clip]``, then is Gaussian with (:meth:`step_gaussian`):

    - DDPM (``random`` mode, ``ddim_steps=None``): the posterior ``q(x_{k-1} | x_k, x0_hat)``,
      K steps; this is what DPPO fine-tunes.
    - DDIM (``random`` mode with ``ddim_steps=S``): S steps on the timesteps
      ``(S-1) r, ..., r, 0`` (r = K // S), noise level ``ddim_eta`` (1 = DDPM-like).
    - ``zero`` mode: DDIM with eta 0 from ``x_K = 0`` on the same timesteps (all K unless
      ``ddim_steps`` is set): no noise anywhere, so the action is a deterministic function of
      the observation, the diffusion analogue of the flow policy's zero sampling (the
      probability-flow ODE started at the prior's mode).

    The chain (``sample(..., return_chain=True)``) is ordered like the flow policy's: chain[0]
    is the initial noise, chain[i] the iterate after i reverse steps, chain[-1] the action.

    Args:
        obs_dim: Do. action_low, action_high: env bounds, (Da,) each.
        chunk: Ta. chunk_exec: Ta_exec <= Ta.
        denoising_steps: K (20 in DPPO's Gym and Robomimic configs).
        ddim_steps: sample ``random`` mode with this many DDIM steps instead of the K-step DDPM
            chain (DPPO: 5 for pixel/Furniture tasks); must be <= K.
        ddim_eta: DDIM noise level in ``random`` mode (DPPO fine-tuning: 1).
        network: ``residual`` (DPPO Gym) or ``mlp``; see :class:`~flowpolicy.nets.DenoisingMLP`.
        hidden, time_dim, activation, layer_norm: see :class:`~flowpolicy.nets.DenoisingMLP`.
        denoised_clip: clip of the predicted x0 (1.0 in DPPO), None for no clip.
        obs_normalization: ``running`` mean/std or ``min_max`` (fitted on a dataset).
    """

    def __init__(
        self,
        obs_dim: int,
        action_low: Sequence[float],
        action_high: Sequence[float],
        *,
        chunk: int = 1,
        chunk_exec: int = 1,
        denoising_steps: int = 20,
        ddim_steps: int | None = None,
        ddim_eta: float = 1.0,
        network: Network = "residual",
        hidden: Sequence[int] = (512, 512, 512),
        time_dim: int = 16,
        activation: Activation = "relu",
        layer_norm: bool = False,
        denoised_clip: float | None = 1.0,
        obs_normalization: ObsNormalization = "running",
    ) -> None:
        super().__init__(action_low, action_high)
        _check_chunk(chunk, chunk_exec)
        if denoising_steps < 1:
            raise ValueError(f"denoising_steps must be >= 1, got {denoising_steps}")
        if ddim_steps is not None and not 1 <= ddim_steps <= denoising_steps:
            raise ValueError(
                f"need 1 <= ddim_steps <= denoising_steps, got {ddim_steps} and {denoising_steps}"
            )
        if ddim_eta < 0:
            raise ValueError(f"ddim_eta must be >= 0, got {ddim_eta}")
        if network not in ("mlp", "residual"):
            raise ValueError(f"unknown network {network!r}; use 'mlp' or 'residual'")
        self.obs_dim = obs_dim
        self.action_dim = len(self.action_low)
        self.chunk = chunk
        self.chunk_exec = chunk_exec
        self.denoising_steps = denoising_steps
        self.ddim_steps = ddim_steps
        self.ddim_eta = ddim_eta
        self.denoised_clip = denoised_clip
        self.obs_norm = make_obs_norm(obs_normalization, obs_dim)
        self.noise_net = DenoisingMLP(
            obs_dim,
            chunk * self.action_dim,
            hidden,
            network == "residual",
            time_dim,
            activation,
            layer_norm,
        )
        schedule = ddpm.cosine_beta_schedule(denoising_steps)
        # Derived from the constructor arguments, so not saved (persistent=False).
        self.register_buffer("alpha_bars", ddpm.alpha_bars(schedule), persistent=False)
        self.init_kwargs: dict[str, Any] = {
            "obs_dim": obs_dim,
            **_bounds(self.action_low, self.action_high),
            "chunk": chunk,
            "chunk_exec": chunk_exec,
            "denoising_steps": denoising_steps,
            "ddim_steps": ddim_steps,
            "ddim_eta": ddim_eta,
            "network": network,
            "hidden": tuple(hidden),
            "time_dim": time_dim,
            "activation": activation,
            "layer_norm": layer_norm,
            "denoised_clip": denoised_clip,
            "obs_normalization": obs_normalization,
        }

    def noise_prediction(self, obs_normalised: Tensor, x: Tensor, k: Tensor) -> Tensor:
        """eps_theta: obs (B, Do) normalised, x_k (B, A), k (B,) integer timesteps -> (B, A)."""
        return self.noise_net(obs_normalised, x, k.to(x.dtype))

    def uses_ddpm(self, mode: SampleMode) -> bool:
        """Whether ``mode`` samples with the K-step DDPM posterior (else DDIM)."""
        return mode == "random" and self.ddim_steps is None

    def timesteps(self, mode: SampleMode = "random") -> Tensor:
        """The timesteps k visited by the reverse chain of ``mode``, descending; (S,) int64."""
        steps = self.denoising_steps if self.uses_ddpm(mode) else self.ddim_steps
        return ddpm.ddim_timesteps(self.denoising_steps, steps or self.denoising_steps).to(
            self.alpha_bars.device
        )

    def num_sampling_steps(self, mode: SampleMode = "random") -> int:
        """S, reverse steps per action in ``mode``."""
        return int(self.timesteps(mode).shape[0])

    def step_gaussian(
        self, obs_normalised: Tensor, x: Tensor, step: int, mode: SampleMode = "random"
    ) -> tuple[Tensor, Tensor]:
        """The Gaussian of reverse step ``step`` (0 .. S-1, in sampling order) given its input.

        Args:
            obs_normalised: (B, Do). x: the chain's iterate before this step, (B, A).
            step: index into :meth:`timesteps` (step 0 starts from the noise).
            mode: the sampler (see the class docstring).

        Returns:
            mean (B, A) and std (B, A) of ``x_next ~ N(mean, std^2)``; std is 0 in ``zero``
            mode and on the last DDPM/DDIM step (which returns x0_hat).
        """
        timesteps = self.timesteps(mode)
        k = timesteps[step]
        alpha_bar = self.alpha_bars[k]
        alpha_bar_prev = (
            self.alpha_bars[timesteps[step + 1]]
            if step + 1 < len(timesteps)
            else torch.ones_like(alpha_bar)
        )
        eps = self.noise_prediction(obs_normalised, x, k.expand(x.shape[0]))
        x0 = ddpm.predict_x0(x, eps, alpha_bar)
        if self.denoised_clip is not None:
            x0 = x0.clamp(-self.denoised_clip, self.denoised_clip)
        if self.uses_ddpm(mode):
            mean, var = ddpm.posterior_mean_var(x0, x, alpha_bar, alpha_bar_prev)
            return mean, var.sqrt().expand_as(mean)
        eta = 0.0 if mode == "zero" else self.ddim_eta
        # The noise consistent with the clipped x0 (as DPPO does for DDIM).
        eps = ddpm.predict_eps(x, x0, alpha_bar)
        mean, std = ddpm.ddim_step(x0, eps, alpha_bar, alpha_bar_prev, eta)
        return mean, std.expand_as(mean)

    def initial_noise(self, batch: int, mode: SampleMode, device: torch.device) -> Tensor:
        """x_K: standard normal (random sampling) or zeros (zero sampling); (B, A)."""
        shape = (batch, self.flat_action_dim)
        if mode == "zero":
            return torch.zeros(shape, device=device)
        return torch.randn(shape, device=device)

    def sample(
        self, obs: Tensor, mode: SampleMode = "random", return_chain: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Raw actions (B, A) from raw observations (B, Do); with ``return_chain`` also the
        chain (S+1, B, A). Random mode draws ``x_next = mean + std * randn`` at every step."""
        obs_normalised = self.obs_norm(obs)
        x = self.initial_noise(obs.shape[0], mode, obs.device)
        chain = [x]
        for step in range(self.num_sampling_steps(mode)):
            mean, std = self.step_gaussian(obs_normalised, x, step, mode)
            x = mean if mode == "zero" else mean + std * torch.randn_like(mean)
            chain.append(x)
        if return_chain:
            return x, torch.stack(chain)
        return x

    def deterministic_sample(self, obs: Tensor, noise: Tensor) -> Tensor:
        """The noise-to-action map: raw actions (B, A) of DDIM with eta 0 (no injected noise)
        on the zero-mode timesteps, started at ``x_K = noise`` (B, A), for raw observations
        (B, Do); ``noise = 0`` is zero sampling. DSRL (:mod:`flowpolicy.algos.dsrl`) steers a
        frozen policy through ``noise``."""
        obs_normalised = self.obs_norm(obs)
        x = noise
        for step in range(self.num_sampling_steps("zero")):
            x, _ = self.step_gaussian(obs_normalised, x, step, "zero")
        return x

    def env_action(self, raw_action: Tensor) -> Tensor:
        """Raw chunk (B, A) -> executed env actions (B, Ta_exec * Da), clipped to [-1, 1]."""
        bounded = self._executed(raw_action).clamp(-1.0, 1.0)
        return self.scale_to_env(bounded).reshape(raw_action.shape[0], -1)

    @torch.no_grad()
    def act(self, obs: Tensor, mode: SampleMode = "random") -> Tensor:
        """Env actions (B, Ta_exec * Da) for raw observations (B, Do)."""
        return self.env_action(self.sample(obs, mode))


class GaussianPolicy(_BoundedActions):
    """Diagonal Gaussian with a state-independent log-std (CleanRL's continuous PPO).

    ``a ~ N(mu_theta(s), diag(exp(2 log_std)))`` over a chunk of ``Ta`` actions (flat A); the
    env receives the first ``Ta_exec`` of ``clip(a, -1, 1)`` (CleanRL) or ``tanh(a)`` (the FPO
    paper's Brax PPO), through the action normaliser and scaled to its bounds, and the raw
    ``a`` is stored for the likelihood ratio.

    Args:
        obs_dim: Do. action_low, action_high: env bounds, (Da,) each.
        chunk: Ta. chunk_exec: Ta_exec <= Ta (1 and 1 for PPO).
        hidden, activation: the mean network.
        initial_log_std: initial log standard deviation.
        network: ``mlp`` (orthogonal init, small output layer) or ``residual``.
        layer_norm: LayerNorm in the residual blocks.
        obs_normalization: ``running`` mean/std or ``min_max`` (fitted on a dataset).
        squash: how raw actions are bounded for the env (``clip`` or ``tanh``).
    """

    def __init__(
        self,
        obs_dim: int,
        action_low: Sequence[float],
        action_high: Sequence[float],
        *,
        chunk: int = 1,
        chunk_exec: int = 1,
        hidden: Sequence[int] = (64, 64),
        activation: Activation = "tanh",
        initial_log_std: float = 0.0,
        network: Network = "mlp",
        layer_norm: bool = False,
        obs_normalization: ObsNormalization = "running",
        squash: Squash = "clip",
    ) -> None:
        super().__init__(action_low, action_high)
        self.squash = squash
        _check_chunk(chunk, chunk_exec)
        self.obs_dim = obs_dim
        self.action_dim = len(self.action_low)
        self.chunk = chunk
        self.chunk_exec = chunk_exec
        self.obs_norm = make_obs_norm(obs_normalization, obs_dim)
        action_size = chunk * self.action_dim
        if network == "mlp":
            if layer_norm:
                raise ValueError("layer_norm needs network='residual'")
            self.mean_net: nn.Module = mlp(
                obs_dim, action_size, hidden, activation, output_gain=0.01
            )
        elif network == "residual":
            width, blocks = residual_shape(hidden)
            self.mean_net = ResidualMLP(obs_dim, action_size, width, blocks, activation, layer_norm)
        else:
            raise ValueError(f"unknown network {network!r}; use 'mlp' or 'residual'")
        self.log_std = nn.Parameter(torch.full((action_size,), float(initial_log_std)))
        self.init_kwargs: dict[str, Any] = {
            "obs_dim": obs_dim,
            **_bounds(self.action_low, self.action_high),
            "chunk": chunk,
            "chunk_exec": chunk_exec,
            "hidden": tuple(hidden),
            "activation": activation,
            "initial_log_std": initial_log_std,
            "network": network,
            "layer_norm": layer_norm,
            "obs_normalization": obs_normalization,
            "squash": squash,
        }

    def distribution(self, obs_normalised: Tensor) -> torch.distributions.Normal:
        """pi(.|s) for normalised observations (B, Do); batch shape (B, A)."""
        mean = self.mean_net(obs_normalised)
        return torch.distributions.Normal(mean, self.log_std.exp().expand_as(mean))

    def sample(self, obs: Tensor, mode: SampleMode = "random") -> Tensor:
        """Raw actions (B, A) for raw observations (B, Do): the mean or a sample."""
        dist = self.distribution(self.obs_norm(obs))
        return dist.mean if mode == "zero" else dist.sample()

    def env_action(self, raw_action: Tensor) -> Tensor:
        """Raw sample (B, A) -> executed env actions (B, Ta_exec * Da) within bounds."""
        executed = self._executed(raw_action)
        bounded = executed.tanh() if self.squash == "tanh" else executed.clamp(-1.0, 1.0)
        return self.scale_to_env(bounded).reshape(raw_action.shape[0], -1)

    @torch.no_grad()
    def act(self, obs: Tensor, mode: SampleMode = "random") -> Tensor:
        """Env actions (B, Ta_exec * Da): the mean (``zero``) or a sample (``random``)."""
        return self.env_action(self.sample(obs, mode))
