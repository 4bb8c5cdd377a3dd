"""flows.py against known answers: analytic velocity fields, closed-form posteriors."""

from __future__ import annotations

import pytest
import torch

from flowpolicy import flows


def test_time_grid_is_k_over_k() -> None:
    grid = flows.time_grid(4)
    assert grid.shape == (4,)
    assert torch.equal(grid, torch.tensor([0.0, 0.25, 0.5, 0.75]))
    assert torch.allclose(flows.time_grid(10), torch.arange(10) / 10.0)
    with pytest.raises(ValueError, match="flow_steps"):
        flows.time_grid(0)


def test_interpolate_endpoints_and_midpoint() -> None:
    torch.manual_seed(0)
    action, noise = torch.randn(5, 3), torch.randn(5, 3)
    assert torch.allclose(flows.interpolate(action, noise, torch.zeros(5)), noise)
    assert torch.allclose(flows.interpolate(action, noise, torch.ones(5)), action)
    half = flows.interpolate(action, noise, torch.full((5,), 0.5))
    assert torch.allclose(half, 0.5 * (action + noise))
    # one tau per row
    tau = torch.tensor([0.0, 1.0, 0.25, 0.5, 0.75])
    x = flows.interpolate(action, noise, tau)
    assert torch.allclose(x[2], 0.75 * noise[2] + 0.25 * action[2])


@pytest.mark.parametrize("flow_steps", [1, 2, 3, 7])
def test_euler_is_exact_for_a_point_mass(flow_steps: int) -> None:
    # Target a point mass at `a`: v(x, tau) = (a - x) / (1 - tau). One Euler step from tau_k
    # lands at x + (a - x) / ((1 - tau_k) K); at the last grid point 1 - tau = 1/K, so the
    # last step reaches `a` exactly whatever the earlier iterates were.
    torch.manual_seed(0)
    a = torch.tensor([[0.5, -2.0, 3.0]])

    def velocity(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        return (a - x) / (1.0 - tau).unsqueeze(-1)

    x0 = torch.randn(6, 3)
    out = flows.euler_sample(velocity, x0, flow_steps)
    assert torch.allclose(out, a.expand(6, 3), atol=1e-5)


def _gaussian_fields(mu: float, s: float):
    """Two exact velocity fields transporting N(0, 1) to N(mu, s^2) on the linear path.

    Deterministic coupling z = eps: x_tau = tau mu + sigma(tau) eps with
    sigma = 1 - tau + tau s, so dx/dtau = mu + (s - 1) eps = mu + (s - 1)(x - tau mu) / sigma.

    Independent coupling (what CFM learns): x_tau ~ N(tau mu, S^2), S^2 = (1-tau)^2 + tau^2 s^2,
    and v = E[a - eps | x] = mu + (tau s^2 - (1 - tau)) (x - tau mu) / S^2.
    Both fields are linear in x, so their flows are affine increasing maps of N(0, 1) onto
    N(mu, s^2): the only such map is eps -> mu + s eps.
    """

    def coupled(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        tau = tau.unsqueeze(-1)
        return mu + (s - 1.0) * (x - tau * mu) / (1.0 - tau + tau * s)

    def marginal(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        tau = tau.unsqueeze(-1)
        variance = (1.0 - tau) ** 2 + tau**2 * s**2
        return mu + (tau * s**2 - (1.0 - tau)) * (x - tau * mu) / variance

    return coupled, marginal


@pytest.mark.parametrize("mu,s", [(2.0, 0.5), (-1.0, 3.0)])
def test_euler_matches_the_gaussian_to_gaussian_flow(mu: float, s: float) -> None:
    torch.manual_seed(0)
    eps = torch.randn(64, 1, dtype=torch.float64)
    expected = mu + s * eps
    for field in _gaussian_fields(mu, s):
        many = flows.euler_sample(field, eps, 2000)
        assert torch.allclose(many, expected, atol=1e-2), (many - expected).abs().max()
        few = flows.euler_sample(field, eps, 3)
        # the Euler error shrinks with K: 3 steps are visibly off, 2000 are not
        assert (few - expected).abs().max() > 10 * (many - expected).abs().max()


def test_euler_chain_shape_and_ends() -> None:
    torch.manual_seed(0)
    x0 = torch.randn(4, 3)
    calls: list[torch.Tensor] = []

    def velocity(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        calls.append(tau.clone())
        return torch.sin(x) + tau.unsqueeze(-1)

    out, chain = flows.euler_sample(velocity, x0, 5, return_chain=True)
    assert chain.shape == (6, 4, 3)
    assert torch.equal(chain[0], x0)
    assert torch.equal(chain[-1], out)
    # each step is x_{k+1} = x_k + v(x_k, k / K) / K, the velocity is called on the grid
    for k in range(5):
        step = chain[k] + (torch.sin(chain[k]) + k / 5) / 5
        assert torch.allclose(chain[k + 1], step)
        assert calls[k].shape == (4,)
        assert torch.allclose(calls[k], torch.full((4,), k / 5))
    # without the chain, the same output
    assert torch.allclose(flows.euler_sample(velocity, x0, 5), out)


def test_cfm_loss_is_zero_at_the_conditional_velocity() -> None:
    torch.manual_seed(0)
    action, noise, tau = torch.randn(7, 4), torch.randn(7, 4), torch.rand(7)
    u = action - noise
    for weighting in ("velocity", "eps"):
        for reduction in ("mean", "sqrt_sum"):
            loss = flows.cfm_loss(u, action, noise, tau, weighting, reduction)
            assert loss.shape == (7,)
            assert torch.allclose(loss, torch.zeros(7), atol=1e-12)


def test_cfm_loss_weightings_and_reductions() -> None:
    torch.manual_seed(0)
    a_dim = 4
    action, noise, tau = torch.randn(3, 5, a_dim), torch.randn(3, 5, a_dim), torch.rand(3, 5)
    v = torch.randn(3, 5, a_dim)
    squared_sum = (v - (action - noise)).square().sum(-1)  # (3, 5)
    velocity_mean = flows.cfm_loss(v, action, noise, tau, "velocity", "mean")
    velocity_sqrt = flows.cfm_loss(v, action, noise, tau, "velocity", "sqrt_sum")
    eps_mean = flows.cfm_loss(v, action, noise, tau, "eps", "mean")
    assert velocity_mean.shape == (3, 5)
    assert torch.allclose(velocity_mean, squared_sum / a_dim)
    assert torch.allclose(velocity_sqrt, squared_sum / 2.0)  # sqrt(4) = 2
    assert torch.allclose(eps_mean, tau.square() * velocity_mean)
    # eps weighting is literally || eps - eps_hat ||^2 with eps_hat = x_tau - tau v
    x_tau = flows.interpolate(action, noise, tau)
    eps_hat = x_tau - tau.unsqueeze(-1) * v
    assert torch.allclose(eps_mean, (noise - eps_hat).square().sum(-1) / a_dim, atol=1e-6)
    # chunk_sum: the mean over each step's Da = 2 dims, summed over the Ta = 2 steps
    chunk_sum = flows.cfm_loss(v, action, noise, tau, "velocity", "chunk_sum", chunk=2)
    per_step = (v - (action - noise)).square().view(3, 5, 2, 2).mean(-1).sum(-1)
    assert torch.allclose(chunk_sum, per_step) and torch.allclose(chunk_sum, squared_sum / 2)
    with pytest.raises(ValueError, match="do not split"):
        flows.cfm_loss(v, action, noise, tau, "velocity", "chunk_sum", chunk=3)
    with pytest.raises(ValueError):
        flows.cfm_loss(v, action, noise, tau, "bogus", "mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        flows.cfm_loss(v, action, noise, tau, "velocity", "bogus")  # type: ignore[arg-type]


def _two_point_velocity(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """Exact marginal velocity of the linear path to a in {-1, +1} (equal mass), by Bayes.

    x | a ~ N(tau a, (1 - tau)^2); given (x, a) the noise is eps = (x - tau a) / (1 - tau),
    so v(x) = sum_a p(a | x) (a - eps(x, a)). Written without any tanh on purpose.
    """
    tau = tau.unsqueeze(-1)
    sd = 1.0 - tau
    out = torch.zeros_like(x)
    log_w = [-0.5 * ((x - tau * a) / sd) ** 2 for a in (-1.0, 1.0)]
    norm = torch.logsumexp(torch.stack(log_w), 0)
    for a, lw in zip((-1.0, 1.0), log_w, strict=True):
        out = out + (lw - norm).exp() * (a - (x - tau * a) / sd)
    return out


def test_expected_posterior_on_a_two_point_target() -> None:
    # E[a | x_tau] = P(+1|x) - P(-1|x) = tanh(tau x / (1 - tau)^2) since the likelihood ratio
    # N(x; tau, (1-tau)^2) / N(x; -tau, (1-tau)^2) = exp(2 tau x / (1 - tau)^2).
    x = torch.linspace(-2.0, 2.0, 41, dtype=torch.float64).unsqueeze(-1)
    for t in (0.1, 0.4, 0.7, 0.95):
        tau = torch.full((41,), t, dtype=torch.float64)
        v = _two_point_velocity(x, tau)
        posterior = flows.expected_posterior(x, v, tau)
        expected = torch.tanh(t * x / (1.0 - t) ** 2)
        assert torch.allclose(posterior, expected, atol=1e-10)


def test_expected_posterior_on_a_gaussian_target() -> None:
    # a ~ N(mu, s^2), independent eps: E[a | x] = mu + tau s^2 (x - tau mu) / S^2.
    mu, s = 1.5, 0.5
    _, marginal = _gaussian_fields(mu, s)
    x = torch.linspace(-3.0, 3.0, 13, dtype=torch.float64).unsqueeze(-1)
    tau = torch.full((13,), 0.3, dtype=torch.float64)
    variance = 0.7**2 + 0.3**2 * s**2
    expected = mu + 0.3 * s**2 * (x - 0.3 * mu) / variance
    assert torch.allclose(flows.expected_posterior(x, marginal(x, tau), tau), expected)


def test_marginal_velocity_minimises_the_cfm_loss() -> None:
    # v = E[u | x] makes the residual v - u orthogonal to every function of x, so the CFM loss
    # at v is lower than at any perturbation v + d(x): L(v + d) = L(v) + E[d^2].
    torch.manual_seed(0)
    n = 100_000
    a = torch.randint(0, 2, (n, 1), dtype=torch.float64) * 2 - 1
    eps = torch.randn(n, 1, dtype=torch.float64)
    tau = torch.rand(n, dtype=torch.float64) * 0.9
    x = flows.interpolate(a, eps, tau)
    v = _two_point_velocity(x, tau)
    residual = v - flows.velocity_target(a, eps)
    assert abs(float(residual.mean())) < 0.01
    assert abs(float((residual * x).mean())) < 0.01
    base = flows.cfm_loss(v, a, eps, tau).mean()
    for d in (0.1 * x, 0.1 * torch.ones_like(x), -0.2 * torch.tanh(x)):
        assert flows.cfm_loss(v + d, a, eps, tau).mean() > base


def test_euler_on_the_two_point_field_lands_on_the_two_points() -> None:
    torch.manual_seed(0)
    x0 = torch.randn(2000, 1, dtype=torch.float64)
    out = flows.euler_sample(_two_point_velocity, x0, 50)
    assert torch.allclose(out.abs(), torch.ones_like(out), atol=1e-3)
    # order is preserved: the sign of the noise decides the mode, half the mass each
    assert torch.equal(out.sign(), x0.sign())
    assert abs(float((out > 0).double().mean()) - 0.5) < 0.05


def test_eps_hat_identity() -> None:
    # eps_hat = x_tau - tau v  =>  eps - eps_hat = tau (v - u)
    torch.manual_seed(0)
    a, eps, v = torch.randn(9, 3), torch.randn(9, 3), torch.randn(9, 3)
    tau = torch.rand(9)
    x_tau = flows.interpolate(a, eps, tau)
    eps_hat = x_tau - tau.unsqueeze(-1) * v
    lhs = (eps - eps_hat).square().sum(-1)
    rhs = tau.square() * (v - flows.velocity_target(a, eps)).square().sum(-1)
    assert torch.allclose(lhs, rhs, atol=1e-5)


def test_sample_tau_schemes() -> None:
    torch.manual_seed(0)
    uniform = flows.sample_tau((4000,), "uniform", tau_min=0.2, tau_max=0.6)
    assert uniform.shape == (4000,)
    assert uniform.min() >= 0.2 and uniform.max() <= 0.6
    assert abs(float(uniform.mean()) - 0.4) < 0.01
    default = flows.sample_tau((3, 5))
    assert default.shape == (3, 5) and default.min() >= 0 and default.max() <= 1

    grid = flows.sample_tau((4000,), "grid", flow_steps=4)
    assert set(grid.unique().tolist()) == {0.0, 0.25, 0.5, 0.75}
    # the grid scheme draws exactly the sampler's grid
    assert torch.isin(grid, flows.time_grid(4)).all()

    logit = flows.sample_tau((4000,), "logit_normal", tau_min=0.1, tau_max=0.9)
    assert logit.min() >= 0.1 and logit.max() <= 0.9
    # sigmoid(N(0, 1)) is symmetric about 1/2, so the rescaled median is 0.5
    assert abs(float(logit.median()) - 0.5) < 0.02
    with pytest.raises(ValueError):
        flows.sample_tau((3,), "bogus")  # type: ignore[arg-type]


def test_sample_tau_uniform_bounds_are_exact_affine_map() -> None:
    torch.manual_seed(123)
    u = torch.rand(10)
    torch.manual_seed(123)
    tau = flows.sample_tau((10,), "uniform", tau_min=0.005, tau_max=0.995)
    assert torch.allclose(tau, 0.005 + 0.99 * u)
