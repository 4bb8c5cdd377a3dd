"""Visual explainers for ``docs/explainers.md``, each drawn from flowpolicy's own code.

Three figures, each made in seconds on one CPU core:

- ``marginal_flow``: a small :class:`~flowpolicy.policies.FlowPolicy` trained by conditional
  flow matching on a bimodal 1-D target; the density of ``x_tau`` over flow time from many
  Euler chains, with particle paths, next to the exact marginal flow of the same target
  (for a Gaussian mixture the marginal velocity ``E[a - eps | x_tau]`` is analytic).
- ``fpo_reweighting``: FPO on the four-optimum bandit (``toy/bandit``) in the setting of
  ``docs/fpo.md`` that keeps the modes: the samples coloured by advantage, the CFM ratio
  ``exp(l_old - l_new)`` after one epoch against the advantage, and the samples after a few
  iterations.
- ``rldt_field``: RLDT's SVGD transport field on particles around a known two-bump Q, split
  into its attraction and repulsion parts, and where each part alone moves the particles.

Examples::

    python benchmarks/explainers.py                        # all three into docs/explainers/
    python benchmarks/explainers.py --only rldt_field      # one of them
    python benchmarks/explainers.py --quick --out /tmp/ex  # tiny settings (what the tests run)

Every figure is seeded (``--seed``); torch runs on one thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import tyro
from matplotlib import colors
from matplotlib.figure import Figure
from torch import Tensor

from flowpolicy import flows
from flowpolicy.algos import onpolicy
from flowpolicy.algos.fpo import FPO, FPOConfig
from flowpolicy.algos.rldt import svgd_field
from flowpolicy.buffers import RolloutBatch, RolloutBuffer
from flowpolicy.envs import BanditEnv, optimum_coverage
from flowpolicy.plot import save_figure
from flowpolicy.policies import FlowPolicy

REPO = Path(__file__).resolve().parents[1]
ExplainerName = Literal["marginal_flow", "fpo_reweighting", "rldt_field"]


# --------------------------------------------------------------------------------------------
# 1. The marginal flow of a bimodal 1-D target
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mixture1D:
    """A 1-D Gaussian mixture target ``sum_k w_k N(m_k, s_k^2)`` and its exact linear-path flow.

    On the path ``x_tau = (1 - tau) eps + tau a`` with ``eps ~ N(0, 1)``, component k gives
    ``x_tau ~ N(tau m_k, V_k)``, ``V_k = (1 - tau)^2 + tau^2 s_k^2``, and jointly Gaussian
    (a, eps, x_tau), so

        E[a - eps | x, k] = m_k + (tau s_k^2 - (1 - tau)) (x - tau m_k) / V_k,

    and the marginal velocity is its average under the responsibilities
    ``r_k(x) ∝ w_k N(x; tau m_k, V_k)``. Shapes: x (B, 1), tau (B,).
    """

    weights: tuple[float, ...] = (0.3, 0.7)
    means: tuple[float, ...] = (-1.0, 1.0)
    stds: tuple[float, ...] = (0.1, 0.2)

    def _params(self) -> tuple[Tensor, Tensor, Tensor]:
        return torch.tensor(self.weights), torch.tensor(self.means), torch.tensor(self.stds)

    def sample(self, n: int) -> Tensor:
        """Target actions a, (n, 1)."""
        weights, means, stds = self._params()
        k = torch.multinomial(weights, n, replacement=True)
        return (means[k] + stds[k] * torch.randn(n)).unsqueeze(-1)

    def _components(self, x: Tensor, tau: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-component means tau m_k, variances V_k and responsibilities r_k; each (B, k)."""
        weights, means, stds = self._params()
        tau = tau.unsqueeze(-1)  # (B, 1)
        centre = tau * means  # (B, k)
        variance = (1 - tau).square() + tau.square() * stds.square()  # (B, k)
        log_joint = (
            weights.log()
            - 0.5 * (x - centre).square() / variance
            - 0.5 * torch.log(2 * torch.pi * variance)
        )
        return centre, variance, torch.softmax(log_joint, dim=-1)

    def density(self, x: Tensor, tau: Tensor) -> Tensor:
        """Exact marginal density p_tau(x), (B,)."""
        weights, _, _ = self._params()
        centre, variance, _ = self._components(x, tau)
        normal = torch.exp(-0.5 * (x - centre).square() / variance) / torch.sqrt(
            2 * torch.pi * variance
        )
        return (weights * normal).sum(-1)

    def velocity(self, x: Tensor, tau: Tensor) -> Tensor:
        """Exact marginal velocity ``E[a - eps | x_tau = x]``, (B, 1)."""
        _, means, stds = self._params()
        centre, variance, resp = self._components(x, tau)
        tau = tau.unsqueeze(-1)
        per_component = means + (tau * stds.square() - (1 - tau)) * (x - centre) / variance
        return (resp * per_component).sum(-1, keepdim=True)


def train_flow_1d(target: Mixture1D, steps: int, batch: int = 512, lr: float = 3e-3) -> FlowPolicy:
    """A 1-D :class:`FlowPolicy` (constant observation) trained by CFM on ``target``.

    Loss: ``E || v(x_tau, tau) - (a - eps) ||^2`` with tau ~ U[0, 1] (the plain velocity
    weighting), Adam with a cosine-decayed learning rate; output scale 1 so that the net can
    reach velocities of size ~3 quickly.
    """
    policy = FlowPolicy(1, [-1.0], [1.0], hidden=(64, 64, 64), time_dim=16, output_scale=1.0)
    optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    obs = torch.zeros(batch, 1)
    for _ in range(steps):
        action, noise = target.sample(batch), torch.randn(batch, 1)
        tau = flows.sample_tau((batch,))
        velocity = policy.velocity(obs, flows.interpolate(action, noise, tau), tau)
        loss = flows.cfm_loss(velocity, action, noise, tau).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return policy.requires_grad_(False)


def learned_velocity(policy: FlowPolicy) -> flows.VelocityFn:
    """``v(x (B, 1), tau (B,))`` of a 1-D policy trained with the zero observation."""
    return lambda x, tau: policy.velocity(torch.zeros(x.shape[0], 1), x, tau)


def velocity_error(
    target: Mixture1D, velocity: flows.VelocityFn, tau: float, n: int = 20_000
) -> float:
    """Relative RMS error of a velocity field against the exact one at one flow time,
    weighted by the marginal p_tau: ``sqrt(E (v - v*)^2 / E v*^2)`` over x_tau ~ p_tau."""
    taus = torch.full((n,), tau)
    x = flows.interpolate(target.sample(n), torch.randn(n, 1), taus)
    exact = target.velocity(x, taus)
    return float((velocity(x, taus) - exact).square().mean().sqrt() / exact.square().mean().sqrt())


@dataclass
class MarginalFlow:
    """Everything the marginal-flow figure draws.

    Attributes:
        target: the mixture.
        learned_chains, exact_chains: (K + 1, N) Euler iterates from the same noise, under the
            learned and the exact velocity.
        taus: (K + 1,) flow time of each iterate.
        velocity_slices: flow times of the velocity panel.
        learned_velocity: the learned field.
        error_at_half: :func:`velocity_error` at tau = 0.5.
    """

    target: Mixture1D
    learned_chains: Tensor
    exact_chains: Tensor
    taus: Tensor
    velocity_slices: tuple[float, ...]
    learned_velocity: flows.VelocityFn
    error_at_half: float


def marginal_flow(
    train_steps: int = 2000, chains: int = 20_000, flow_steps: int = 50
) -> MarginalFlow:
    """Train the 1-D flow and integrate learned and exact chains from the same noise."""
    target = Mixture1D()
    policy = train_flow_1d(target, train_steps)
    velocity = learned_velocity(policy)
    x0 = torch.randn(chains, 1)
    with torch.no_grad():
        _, learned = flows.euler_sample(velocity, x0, flow_steps, return_chain=True)
        _, exact = flows.euler_sample(target.velocity, x0, flow_steps, return_chain=True)
        error = velocity_error(target, velocity, 0.5)
    return MarginalFlow(
        target=target,
        learned_chains=learned[..., 0],
        exact_chains=exact[..., 0],
        taus=torch.linspace(0.0, 1.0, flow_steps + 1),
        velocity_slices=(0.1, 0.5, 0.9),
        learned_velocity=velocity,
        error_at_half=error,
    )


X_RANGE = (-2.5, 2.5)
DENSITY_NORM = colors.PowerNorm(gamma=0.5, vmin=0.0, vmax=1.5)  # shows the thin tails too


def chain_histogram(chains: Tensor, bins: int = 160) -> np.ndarray:
    """Density of each iterate of (K + 1, N) chains over x: (bins, K + 1)."""
    edges = np.linspace(*X_RANGE, bins + 1)
    return np.stack(
        [np.histogram(step.numpy(), edges, density=False)[0] for step in chains], axis=1
    ) / (chains.shape[1] * (edges[1] - edges[0]))


def exact_density_image(target: Mixture1D, taus: Tensor, bins: int = 160) -> np.ndarray:
    """p_tau(x) at bin centres (bins,) and flow times (K + 1,): (bins, K + 1)."""
    edges = torch.linspace(*X_RANGE, bins + 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    x = centres.repeat(len(taus)).unsqueeze(-1)  # (K+1)*bins, 1
    tau = taus.repeat_interleave(bins)
    return target.density(x, tau).view(len(taus), bins).T.numpy()


def draw_flow_panel(axis, image: np.ndarray, chains: Tensor, taus: Tensor, title: str, paths: int):
    """Heat map of the density of x_tau with the first ``paths`` chains drawn over it."""
    mappable = axis.imshow(
        image,
        origin="lower",
        aspect="auto",
        extent=(0.0, 1.0, *X_RANGE),
        cmap="magma",
        norm=DENSITY_NORM,
        interpolation="nearest",
    )
    axis.plot(taus.numpy(), chains[:, :paths].numpy(), color="white", lw=0.7, alpha=0.8)
    axis.set(title=title, xlabel="flow time τ (0 = noise, 1 = action)", ylabel="x_τ")
    axis.set_ylim(*X_RANGE)
    return mappable


def draw_marginal_flow(data: MarginalFlow, paths: int = 30) -> Figure:
    """Four panels: learned and exact density of x_tau with paths, velocity slices, tau = 1."""
    fig = Figure(figsize=(13, 8.5), layout="constrained")
    (learned_ax, exact_ax), (velocity_ax, final_ax) = fig.subplots(2, 2)
    image = chain_histogram(data.learned_chains)
    mappable = draw_flow_panel(
        learned_ax, image, data.learned_chains, data.taus, "learned: Euler chains of v_θ", paths
    )
    draw_flow_panel(
        exact_ax,
        exact_density_image(data.target, data.taus),
        data.exact_chains,
        data.taus,
        "exact: p_τ(x) and Euler paths of E[a − ε | x_τ]",
        paths,
    )
    fig.colorbar(mappable, ax=[learned_ax, exact_ax], label="density of x_τ (sqrt scale)")
    draw_velocity_slices(velocity_ax, data)
    draw_final_histogram(final_ax, data)
    fig.suptitle(
        f"Marginal flow of a bimodal target, {len(data.taus) - 1} Euler steps, "
        f"{paths} paths from the same noise in both top panels"
    )
    return fig


def draw_velocity_slices(axis, data: MarginalFlow) -> None:
    """Learned (solid) and exact (dashed) velocity against x at a few flow times, drawn where
    p_tau(x) > 0.01 (elsewhere the learned field is never trained)."""
    x = torch.linspace(*X_RANGE, 400).unsqueeze(-1)
    cycle = ("tab:blue", "tab:green", "tab:red")
    for tau_value, colour in zip(data.velocity_slices, cycle, strict=True):
        tau = torch.full((len(x),), tau_value)
        seen = (data.target.density(x, tau) > 0.01).numpy()
        with torch.no_grad():
            learned = data.learned_velocity(x, tau)[:, 0].numpy()
        exact = data.target.velocity(x, tau)[:, 0].numpy()
        axis.plot(x[seen, 0], learned[seen], color=colour, label=f"learned, τ = {tau_value}")
        axis.plot(x[seen, 0], exact[seen], "--", color=colour, label=f"exact, τ = {tau_value}")
    axis.axhline(0.0, color="grey", lw=0.5)
    axis.set(
        title=f"velocity v(x, τ); relative RMS error at τ = 0.5: {data.error_at_half:.3f}",
        xlabel="x_τ",
        ylabel="v(x_τ, τ)",
    )
    axis.set_ylim(top=1.6 * axis.get_ylim()[1])  # room for the legend
    axis.legend(fontsize=8, ncol=3, loc="upper right")


def draw_final_histogram(axis, data: MarginalFlow) -> None:
    """Samples at tau = 1 under both fields, against the target density."""
    edges = np.linspace(*X_RANGE, 101)
    axis.hist(data.learned_chains[-1].numpy(), edges, density=True, alpha=0.5, label="learned")
    axis.hist(
        data.exact_chains[-1].numpy(), edges, density=True, histtype="step", lw=1.5, label="exact"
    )
    x = torch.linspace(*X_RANGE, 500).unsqueeze(-1)
    target_pdf = data.target.density(x, torch.ones(len(x)))
    axis.plot(x[:, 0], target_pdf, color="black", lw=1.2, label="target density")
    axis.set(title="samples at τ = 1", xlabel="a", ylabel="density")
    axis.legend()


def make_marginal_flow(quick: bool) -> Figure:
    settings = dict(train_steps=400, chains=2000, flow_steps=20) if quick else {}
    return draw_marginal_flow(marginal_flow(**settings))


# --------------------------------------------------------------------------------------------
# 2. How FPO reweights the flow on the bandit
# --------------------------------------------------------------------------------------------


def bandit_config(**overrides: object) -> FPOConfig:
    """FPO on ``toy/bandit`` as in docs/fpo.md and tests/test_learning.py: 64 x 16 one-step
    episodes per iteration, the CFM ratio measured late in the flow (tau ~ U[0.8, 1]) and a
    gentle initial field (output scale 0.05), which keeps several optima populated."""
    preset = dict(
        num_envs=64,
        num_steps=16,
        num_minibatches=4,
        update_epochs=10,
        anneal_lr=False,
        learning_rate=1e-3,
        tau_sampling="uniform",
        tau_min=0.8,
        output_scale=0.05,
    )
    return FPOConfig(**(preset | overrides))


def bandit_rollout(algo: FPO, env: BanditEnv) -> RolloutBatch:
    """One rollout of one-step bandit episodes (every step terminates) through ``algo.act``."""
    cfg = algo.config
    buffer = RolloutBuffer(cfg.num_steps, cfg.num_envs, obs_dim=2)
    obs = torch.ones(cfg.num_envs, 2)
    done = torch.ones(cfg.num_envs)
    for _ in range(cfg.num_steps):
        env_action, record = algo.act(obs)
        reward = torch.as_tensor(env.reward(env_action.numpy()), dtype=torch.float32)
        buffer.add(obs, record, reward, obs, done, done)
    return buffer.batch()


@dataclass
class FPOReweighting:
    """Everything the FPO figure draws; per-sample arrays over the first rollout (T * N,).

    Attributes:
        env: the bandit.
        first_actions: (T * N, 2) env actions of the first rollout.
        advantages: (T * N,) their standardised advantages.
        log_ratio: (T * N,) ``mean_i l_old_i - mean_i l_new_i`` after one epoch (the log of
            FPO's per-action ratio).
        final_actions: (n, 2) env actions of the policy after ``iterations`` updates.
        iterations: updates made.
    """

    env: BanditEnv
    first_actions: np.ndarray
    advantages: np.ndarray
    log_ratio: np.ndarray
    final_actions: np.ndarray
    iterations: int


def fpo_reweighting(
    iterations: int = 20, final_samples: int = 4000, config: FPOConfig | None = None
) -> FPOReweighting:
    """Collect one rollout; measure the CFM ratios after one epoch of FPO on it (a copy with
    ``update_epochs=1``); then train on it and ``iterations - 1`` more rollouts."""
    config = bandit_config() if config is None else config
    env = BanditEnv()
    low, high = torch.as_tensor(env.action_space.low), torch.as_tensor(env.action_space.high)
    algo = FPO(2, low, high, config)
    batch = bandit_rollout(algo, env)
    obs_normalised = algo.policy.obs_norm(batch.obs).flatten(0, 1)  # as act() saw them
    records = {name: value.flatten(0, 1) for name, value in batch.records.items()}
    _, advantages, _ = onpolicy.advantages_and_returns(
        batch, algo.critic, algo.policy.obs_norm, batch.rewards, config.gamma, config.gae_lambda
    )

    # A copy of the policy (with a new critic: the observation is constant, so V is a constant
    # that the per-minibatch standardisation of the advantages removes) for exactly one epoch.
    one_epoch = FPO(2, low, high, replace(config, update_epochs=1), policy=algo.policy)
    one_epoch.update(batch)
    with torch.no_grad():
        new_losses = one_epoch.cfm_losses(
            obs_normalised, records["action"], records["tau"], records["noise"]
        )
    log_ratio = records["old_cfm_loss"].mean(-1) - new_losses.mean(-1)

    algo.update(batch)
    for _ in range(iterations - 1):
        algo.update(bandit_rollout(algo, env))
    with torch.no_grad():
        final = algo.eval_policy.act(torch.ones(final_samples, 2), "random")
    return FPOReweighting(
        env=env,
        first_actions=algo.policy.env_action(records["action"]).numpy(),
        advantages=onpolicy.normalize_advantages(advantages.flatten()).numpy(),
        log_ratio=log_ratio.numpy(),
        final_actions=final.numpy(),
        iterations=iterations,
    )


def draw_reward(axis, env: BanditEnv) -> None:
    """Reward contours of the bandit over [-1, 1]^2."""
    grid = np.linspace(-1, 1, 201)
    xx, yy = np.meshgrid(grid, grid)
    reward = env.reward(np.stack([xx, yy], axis=-1))
    axis.contour(xx, yy, reward, levels=[0.1, 0.5, 0.9], colors="grey", linewidths=0.8)
    axis.plot(*env.optima.T, "k+", ms=10, mew=1.5)
    axis.set(xlim=(-1, 1), ylim=(-1, 1), aspect="equal", xlabel="action 1", ylabel="action 2")


def symmetric_norm(values: np.ndarray) -> colors.Normalize:
    """Colour scale centred at 0 that covers 98% of ``values``."""
    bound = float(np.quantile(np.abs(values), 0.98)) or 1.0
    return colors.Normalize(-bound, bound)


def binned_means(x: np.ndarray, y: np.ndarray, bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Means of x and y over ``bins`` equal-count bins of x."""
    chunks = np.array_split(np.argsort(x), bins)
    return np.array([x[c].mean() for c in chunks]), np.array([y[c].mean() for c in chunks])


def draw_ratio_scatter(axis, data: FPOReweighting) -> None:
    """Log CFM ratio after one epoch against the advantage, with binned means."""
    positive = data.advantages > 0
    axis.scatter(data.advantages, data.log_ratio, s=4, c=np.where(positive, "C3", "C0"))
    axis.plot(*binned_means(data.advantages, data.log_ratio), "k.-", label="mean per decile of A")
    axis.axhline(0.0, color="grey", lw=0.8)
    axis.axvline(0.0, color="grey", lw=0.8)
    axis.set(
        title="log CFM ratio after one epoch vs advantage",
        xlabel="advantage (standardised)",
        ylabel="log ratio = mean l_old − mean l_new",
    )
    axis.legend(loc="lower right", fontsize=8)
    ratio = np.exp(data.log_ratio)
    axis.text(
        0.97,
        0.16,
        f"mean ratio, A > 0: {ratio[positive].mean():.4f}\n"
        f"mean ratio, A < 0: {ratio[~positive].mean():.4f}",
        transform=axis.transAxes,
        ha="right",
        fontsize=9,
    )


def draw_final_samples(axis, data: FPOReweighting) -> None:
    """Samples after training, each optimum labelled with the share of samples near it."""
    draw_reward(axis, data.env)
    axis.scatter(*data.final_actions.T, s=2, alpha=0.3, color="C2")
    coverage = optimum_coverage(data.final_actions, data.env.optima)
    for (x, y), share in zip(data.env.optima, coverage, strict=True):
        axis.annotate(f"{share:.0%}", (x, y), xytext=(x, y + 0.3), ha="center", fontsize=10)
    reward = data.env.reward(data.final_actions).mean()
    axis.set_title(
        f"after {data.iterations} iterations: mean reward {reward:.2f}\n"
        "(% of samples within 0.25 of each optimum)",
        fontsize=10,
    )


def draw_fpo_reweighting(data: FPOReweighting) -> Figure:
    """Advantage and log-ratio in action space, ratio vs advantage, samples after training."""
    fig = Figure(figsize=(18, 4.9), layout="constrained")
    adv_ax, ratio_ax, scatter_ax, final_ax = fig.subplots(1, 4)
    for axis, values, label, title in (
        (adv_ax, data.advantages, "advantage (standardised)", "first rollout: advantage A"),
        (ratio_ax, data.log_ratio, "log ratio = l_old − l_new", "after one epoch: log CFM ratio"),
    ):
        draw_reward(axis, data.env)
        points = axis.scatter(
            *data.first_actions.T, c=values, s=6, cmap="coolwarm", norm=symmetric_norm(values)
        )
        fig.colorbar(points, ax=axis, label=label, shrink=0.8)
        axis.set_title(title)
    draw_ratio_scatter(scatter_ax, data)
    draw_final_samples(final_ax, data)
    fig.suptitle(
        f"FPO on the four-optimum bandit ({len(data.advantages)} samples, τ ~ U[0.8, 1], output "
        "scale 0.05): the update lowers the CFM loss of good actions relative to bad ones"
    )
    return fig


def make_fpo_reweighting(quick: bool) -> Figure:
    if quick:
        return draw_fpo_reweighting(
            fpo_reweighting(2, 500, bandit_config(num_envs=32, num_steps=8))
        )
    return draw_fpo_reweighting(fpo_reweighting())


# --------------------------------------------------------------------------------------------
# 3. RLDT's transport field
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TwoBumps:
    """A known 2-D ``Q(a) = sum_k h_k exp(-||a - c_k||^2 / (2 w^2))`` with two optima."""

    centres: tuple[tuple[float, float], ...] = ((-0.55, 0.25), (0.55, -0.15))
    heights: tuple[float, ...] = (1.0, 0.8)
    width: float = 0.3

    def __call__(self, actions: Tensor) -> Tensor:
        """Q of actions (..., 2) -> (...)."""
        centres, heights = torch.tensor(self.centres), torch.tensor(self.heights)
        sq_distance = (actions.unsqueeze(-2) - centres).square().sum(-1)  # (..., k)
        return (heights * torch.exp(-sq_distance / (2 * self.width**2))).sum(-1)

    def gradient(self, actions: Tensor) -> Tensor:
        """grad_a Q, (..., 2)."""
        actions = actions.detach().requires_grad_(True)
        (gradient,) = torch.autograd.grad(self(actions).sum(), actions)
        return gradient


@dataclass
class FieldParts:
    """The SVGD field at the queries and its two parts, each (Q, A) for one state.

    ``total = attraction + repulsion`` with attraction ``(1/P) sum_j k_ij g_j`` and repulsion
    ``(alpha/P) sum_j k_ij (q_i - a_j) / h_i``.
    """

    attraction: Tensor
    repulsion: Tensor
    total: Tensor
    alpha: float


def svgd_parts(
    query: Tensor, centres: Tensor, grads: Tensor, temperature: float, adaptive: bool = True
) -> FieldParts:
    """Split :func:`flowpolicy.algos.rldt.svgd_field` into attraction and repulsion.

    The field is linear in the two terms, and the kernel and bandwidth depend only on the
    positions, so ``svgd_field`` itself gives each part: with temperature 0 only the attraction
    is left; with zero gradients and the total's temperature alpha (read back from its
    ``policy/temperature`` diagnostic) only the repulsion.

    Args:
        query: (Q, A) points where the field is evaluated. centres: (P, A) particles.
        grads: (P, A) grad_a Q at the centres. temperature, adaptive: as in ``svgd_field``.
    """
    query, centres, grads = query.unsqueeze(0), centres.unsqueeze(0), grads.unsqueeze(0)
    total, metrics = svgd_field(query, centres, grads, temperature, adaptive)
    alpha = float(metrics["policy/temperature"])  # one state: exactly its alpha
    attraction, _ = svgd_field(query, centres, grads, 0.0, adaptive_temperature=False)
    repulsion, _ = svgd_field(
        query, centres, torch.zeros_like(grads), alpha, adaptive_temperature=False
    )
    return FieldParts(attraction[0], repulsion[0], total[0], alpha)


@dataclass
class RLDTField:
    """Everything the RLDT figure draws.

    Attributes:
        q: the known Q.
        particles: (P, 2) particle positions.
        parts: the field at the particles.
        temperature: the repulsion temperature used.
        paths: per field name ("total", "attraction only"), (steps + 1, P, 2) particle
            positions when moved directly along that field.
    """

    q: TwoBumps
    particles: Tensor
    parts: FieldParts
    temperature: float
    paths: dict[str, Tensor]


def transport(
    particles: Tensor, q: TwoBumps, temperature: float, steps: int, step_size: float
) -> Tensor:
    """Move particles (P, 2) directly along the SVGD field of ``q`` (query = centre):
    ``a_i <- a_i + step_size * phi_i``; returns (steps + 1, P, 2)."""
    path = [particles]
    for _ in range(steps):
        phi = svgd_parts(particles, particles, q.gradient(particles), temperature).total
        particles = particles + step_size * phi
        path.append(particles)
    return torch.stack(path)


def rldt_field(
    num_particles: int = 12, temperature: float = 0.05, steps: int = 300, step_size: float = 0.05
) -> RLDTField:
    """Particles drawn around the saddle between the two optima, the field there, and where
    the total field and the attraction alone carry them."""
    q = TwoBumps()
    particles = 0.35 * torch.randn(num_particles, 2)
    parts = svgd_parts(particles, particles, q.gradient(particles), temperature)
    paths = {
        "total": transport(particles, q, temperature, steps, step_size),
        "attraction only": transport(particles, q, 0.0, steps, step_size),
    }
    return RLDTField(q, particles, parts, temperature, paths)


def draw_q(axis, q: TwoBumps, fig: Figure, colour_bar: bool) -> None:
    """Filled Q contours over [-1.2, 1.2]^2."""
    grid = torch.linspace(-1.2, 1.2, 161)
    xx, yy = torch.meshgrid(grid, grid, indexing="xy")
    values = q(torch.stack([xx, yy], dim=-1))
    filled = axis.contourf(xx, yy, values, levels=12, cmap="Greens", alpha=0.8)
    if colour_bar:
        fig.colorbar(filled, ax=axis, label="Q(a)", shrink=0.8)
    axis.set(aspect="equal", xlabel="action 1", ylabel="action 2")


def draw_rldt_field(data: RLDTField) -> Figure:
    """Quivers of attraction, repulsion and total at the particles; then the particle paths.

    Each quiver panel has its own arrow scale (the parts differ in size); the panel title
    gives the mean arrow length.
    """
    fig = Figure(figsize=(18, 4.9), layout="constrained")
    axes = fig.subplots(1, 4)
    points = data.particles.numpy()
    panels = (
        ("attraction  (1/P) Σ_j k_ij ∇Q(a_j)", data.parts.attraction, "C0"),
        ("repulsion  (α/P) Σ_j k_ij (a_i − a_j) / h_i", data.parts.repulsion, "C3"),
        ("total φ_i = attraction + repulsion", data.parts.total, "k"),
    )
    for axis, (title, field, colour) in zip(axes[:3], panels, strict=True):
        draw_q(axis, data.q, fig, colour_bar=False)
        arrows = field.numpy()
        axis.quiver(*points.T, *arrows.T, color=colour, angles="xy", width=0.006)
        axis.plot(*points.T, "o", ms=4, color="white", mec="black")
        mean_length = np.linalg.norm(arrows, axis=-1).mean()
        axis.set_title(f"{title}\nmean |arrow| = {mean_length:.3g}", fontsize=10)
    draw_q(axes[3], data.q, fig, colour_bar=True)
    for (name, path), colour, marker in zip(
        data.paths.items(), ("k", "C0"), ("o", "X"), strict=True
    ):
        path = path.numpy()
        axes[3].plot(path[:, :, 0], path[:, :, 1], color=colour, lw=0.8, alpha=0.7)
        axes[3].plot(*path[-1].T, marker, ms=7, color=colour, mec="white", label=f"{name} (end)")
    axes[3].plot(*points.T, "o", ms=4, color="white", mec="black", label="start")
    axes[3].legend(fontsize=8, loc="lower left")
    steps = len(next(iter(data.paths.values()))) - 1
    axes[3].set_title(f"particles moved {steps} steps along each field", fontsize=10)
    fig.suptitle(
        f"RLDT's SVGD field at {len(points)} particles (query = centre) on a known two-bump Q; "
        f"temperature {data.temperature} (authors: 1e-3), α = {data.parts.alpha:.3g}; "
        "arrows scaled per panel"
    )
    return fig


def make_rldt_field(quick: bool) -> Figure:
    return draw_rldt_field(rldt_field(steps=20) if quick else rldt_field())


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

EXPLAINERS: dict[str, Callable[[bool], Figure]] = {
    "marginal_flow": make_marginal_flow,
    "fpo_reweighting": make_fpo_reweighting,
    "rldt_field": make_rldt_field,
}


@dataclass(frozen=True)
class Args:
    """Draw the visual explainers of docs/explainers.md."""

    out: Path = REPO / "docs" / "explainers"
    """folder for <name>.<format>."""
    only: ExplainerName | None = None
    """draw just this explainer."""
    quick: bool = False
    """tiny settings (a smoke test; the figures are rougher)."""
    seed: int = 0
    """torch seed, set before each explainer."""
    formats: tuple[str, ...] = ("png",)
    """file formats to write (svg works too, but the scatter plots make it ~1 MB)."""


def run(args: Args) -> list[Path]:
    """Draw the selected explainers; returns the files written."""
    torch.set_num_threads(1)
    names: Sequence[str] = [args.only] if args.only else list(EXPLAINERS)
    written = []
    for name in names:
        torch.manual_seed(args.seed)
        written += save_figure(EXPLAINERS[name](args.quick), args.out / name, args.formats)
    return written


def main(args: Args) -> None:
    for path in run(args):
        print(f"wrote {path}")


if __name__ == "__main__":
    main(tyro.cli(Args))
