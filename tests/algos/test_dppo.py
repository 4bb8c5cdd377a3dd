"""DPPO: ratio 1 on the first minibatch (diffusion, DDIM and flow chains), the frozen/trainable
split, log-probs against independently computed Gaussian densities, the floors and the noise
clamp, the denoising discount and clip schedule by hand, config validation, the CLI with
--init, exact resume, and the bandit toys."""

from __future__ import annotations

import json
import math

import pytest
import torch

from flowpolicy import chains
from flowpolicy.algos.dppo import (
    DPPO,
    DPPOConfig,
    clip_schedule,
    denoising_discounts,
)
from flowpolicy.buffers import RolloutBuffer
from flowpolicy.cli import main
from flowpolicy.envs import BanditEnv
from flowpolicy.errors import UserError
from flowpolicy.policies import DiffusionPolicy, FlowPolicy, GaussianPolicy
from flowpolicy.policy_io import save_policy
from flowpolicy.train import train
from tests.algos.broad_policies import (
    BANDIT_HIGH,
    BANDIT_LOW,
    broad_diffusion_policy,
    broad_flow_policy,
    mean_bandit_reward,
)
from tests.algos.rollouts import random_rollout
from tests.test_train import metric_rows, small_config

OBS_DIM = 3
LOW, HIGH = torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 2.0])
TINY = dict(
    num_envs=2,
    num_steps=8,
    num_minibatches=2,
    update_epochs=3,
    actor_hidden=(16, 16, 16),
    critic_hidden=(8, 8, 8),
    time_dim=8,
    chunk=2,
    chunk_exec=1,
    actor_lr=1e-2,
    denoising_steps=6,
    ft_denoising_steps=3,
    flow_steps=4,
)
CONFIGS = {
    "ddpm": dict(),
    "ddim": dict(ddim_steps=3, ft_denoising_steps=2),
    "flow": dict(policy_class="FlowPolicy"),
}
METRICS = {
    "policy/ratio",
    "policy/approx_kl",
    "policy/clipfrac",
    "policy/logprob",
    "loss/policy",
    "loss/value",
    "loss/grad_norm",
    "critic/explained_variance",
    "charts/gradient_steps",
    "charts/actor_lr",
    "charts/critic_lr",
}


def _make(name: str, **overrides) -> DPPO:
    torch.manual_seed(0)
    algo = DPPO(OBS_DIM, LOW, HIGH, DPPOConfig(**(TINY | CONFIGS[name] | overrides)))
    algo.policy.obs_norm.update(2.0 + 3.0 * torch.randn(100, OBS_DIM))
    return algo


def _spy_policy_loss(algo: DPPO, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Record every ``policy_loss`` call: its old log-probs, the new ones recomputed without
    gradient, and its metrics."""
    calls: list[dict] = []
    original = algo.policy_loss

    def policy_loss(obs, x_prev, x_next, index, old, advantages):
        with torch.no_grad():
            new = algo.new_log_probs(obs, x_prev, x_next, index)
        loss, metrics = original(obs, x_prev, x_next, index, old, advantages)
        calls.append({"old": old, "new": new, "index": index, "metrics": metrics})
        return loss, metrics

    monkeypatch.setattr(algo, "policy_loss", policy_loss)
    return calls


# ----------------------------------------------------------------------------- the PPO ratio


@pytest.mark.parametrize("name", list(CONFIGS))
def test_ratio_is_one_on_the_first_minibatch(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    algo = _make(name)
    calls = _spy_policy_loss(algo, monkeypatch)
    ft = algo.config.ft_denoising_steps
    for iteration in range(2):  # also after the observation statistics moved
        calls.clear()
        algo.update(random_rollout(algo, OBS_DIM, seed=iteration))
        assert len(calls) == 3 * 2  # 3 epochs x 2 minibatches
        first = calls[0]
        assert first["old"].shape == (2 * 8 * ft // 2,)
        assert torch.allclose(first["new"], first["old"], atol=1e-6, rtol=0)
        assert float(first["metrics"]["policy/ratio"]) == pytest.approx(1.0, abs=1e-6)
        assert float(first["metrics"]["policy/clipfrac"]) == 0.0
        assert set(first["index"].tolist()) == set(range(ft))  # pairs of every fine-tuned step
        # sensitivity: after a few gradient steps the log-probs have moved
        assert not torch.allclose(calls[-1]["new"], calls[-1]["old"], atol=1e-5)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_update_returns_finite_documented_metrics(name: str) -> None:
    algo = _make(name)
    out = algo.update(random_rollout(algo, OBS_DIM))
    assert set(out) == METRICS
    assert all(isinstance(v, float) and math.isfinite(v) for v in out.values())
    assert out["charts/gradient_steps"] == 6.0
    assert (out["charts/actor_lr"], out["charts/critic_lr"]) == (1e-2, 1e-3)


def test_target_kl_stops_the_whole_update() -> None:
    algo = _make("ddpm", target_kl=1e-12, actor_lr=0.1)
    out = algo.update(random_rollout(algo, OBS_DIM))
    assert out["charts/gradient_steps"] < 6


# ----------------------------------------------------------------------------- the record


@pytest.mark.parametrize("name", list(CONFIGS))
def test_record_holds_the_fine_tuned_part_of_the_chain(name: str) -> None:
    algo = _make(name)
    ft = algo.config.ft_denoising_steps
    env_action, record = algo.act(torch.randn(5, OBS_DIM))
    assert set(record) == {"chain", "old_logprob"}
    assert record["chain"].shape == (5, ft + 1, 4)  # A = Ta 2 x Da 2
    assert record["old_logprob"].shape == (5, ft)
    assert env_action.shape == (5, 2)  # Ta_exec 1 x Da 2
    assert torch.equal(env_action, algo.policy.env_action(record["chain"][:, -1]))


def test_ddim_option_shortens_the_chain() -> None:
    algo = _make("ddim")
    assert algo.policy.num_steps == 3 and algo.policy.first_trainable_step == 1
    assert torch.equal(algo.policy.actor.timesteps("random"), torch.tensor([4, 2, 0]))
    # A pretrained DDPM policy is fine-tuned on an S-step DDIM chain with the same weights.
    policy = broad_diffusion_policy()
    config = DPPOConfig(**(TINY | dict(denoising_steps=10, ddim_steps=5, ft_denoising_steps=5)))
    algo = DPPO(2, torch.tensor(BANDIT_LOW), torch.tensor(BANDIT_HIGH), config, policy=policy)
    actor = algo.policy.actor
    assert (actor.ddim_steps, actor.ddim_eta, algo.policy.num_steps) == (5, 1.0, 5)
    assert policy.ddim_steps is None  # the caller's policy is not modified
    for name, value in policy.state_dict().items():
        assert torch.equal(actor.state_dict()[name], value), name
    _, record = algo.act(torch.ones(3, 2))
    assert record["chain"].shape == (3, 6, 2)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_trains_from_scratch_through_the_loop(tmp_path, name: str) -> None:
    config = DPPOConfig(**(TINY | CONFIGS[name] | dict(num_envs=4, update_epochs=1)))
    result = train(small_config(tmp_path, config, env="toy/nav", steps=32, eval_every=0))
    assert result.metrics["step"] == 32  # 4 envs x 8 chunk steps x 1 executed action
    assert math.isfinite(result.metrics["eval/zero/return_mean"])


# ----------------------------------------------------------------------------- frozen / trainable


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_only_the_trainable_copy_learns(name: str) -> None:
    algo = _make(name)
    base_before, actor_before = _params(algo.policy.base), _params(algo.policy.actor)
    assert all(torch.equal(a, b) for a, b in zip(base_before, actor_before, strict=True))
    assert not any(p.requires_grad for p in algo.policy.base.parameters())
    algo.update(random_rollout(algo, OBS_DIM))
    assert all(
        torch.equal(a, b) for a, b in zip(_params(algo.policy.base), base_before, strict=True)
    )
    moved = [
        not torch.equal(a, b) for a, b in zip(_params(algo.policy.actor), actor_before, strict=True)
    ]
    assert all(moved)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_gradients_reach_only_the_trainable_copy(name: str) -> None:
    algo = _make(name)
    prepared = algo.prepare(random_rollout(algo, OBS_DIM))
    pairs = torch.arange(prepared.obs.shape[0] * algo.config.ft_denoising_steps)
    ft = algo.config.ft_denoising_steps
    sample, index = pairs // ft, pairs % ft
    chain = prepared.records["chain"]
    loss, _ = algo.policy_loss(
        prepared.obs[sample],
        chain[sample, index],
        chain[sample, index + 1],
        index,
        prepared.records["old_logprob"][sample, index],
        torch.randn(len(pairs)),
    )
    loss.backward()
    assert all(p.grad is None for p in algo.policy.base.parameters())
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0
        for name_, p in algo.policy.actor.named_parameters()
        if "obs_norm" not in name_
    )


def _chain(algo: DPPO, obs: torch.Tensor, mode: str = "explore") -> torch.Tensor:
    torch.manual_seed(7)
    with torch.no_grad():
        return algo.policy.sample_chain(obs, mode, algo.sampling_std_floor)[0]


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("mode", ["explore", "random", "zero"])
def test_early_steps_run_the_frozen_copy(name: str, mode: str) -> None:
    algo = _make(name)
    obs = torch.randn(6, OBS_DIM)
    first = algo.policy.first_trainable_step  # iterates 0 .. first come from the frozen copy
    reference = _chain(algo, obs, mode)
    with torch.no_grad():
        for p in algo.policy.actor.parameters():
            p.add_(0.3 * torch.randn_like(p))
    perturbed_actor = _chain(algo, obs, mode)
    assert torch.equal(perturbed_actor[: first + 1], reference[: first + 1])
    assert not torch.allclose(perturbed_actor[first + 1 :], reference[first + 1 :])
    with torch.no_grad():
        for p in algo.policy.base.parameters():
            p.add_(0.3 * torch.randn_like(p))
    perturbed_both = _chain(algo, obs, mode)
    assert not torch.allclose(perturbed_both[1], perturbed_actor[1])  # the frozen copy acts first


def test_zero_mode_is_the_policy_own_deterministic_sampler() -> None:
    policy = broad_diffusion_policy()
    config = DPPOConfig(**(TINY | dict(denoising_steps=10, ft_denoising_steps=4, chunk=1)))
    algo = DPPO(2, torch.tensor(BANDIT_LOW), torch.tensor(BANDIT_HIGH), config, policy=policy)
    obs = torch.randn(8, 2)
    first = algo.eval_policy.act(obs, "zero")
    assert torch.equal(first, algo.eval_policy.act(obs, "zero"))  # deterministic
    assert torch.allclose(first, policy.act(obs, "zero"), atol=1e-6)  # DDIM eta 0 from x = 0


# ----------------------------------------------------------------------------- log-probs


def _ddpm_gaussian(policy: DiffusionPolicy, obs_n, x, step: int):
    """The DDPM posterior of reverse step ``step`` written out from flowpolicy.ddpm."""
    k = policy.denoising_steps - 1 - step
    abar = policy.alpha_bars[k]
    abar_prev = policy.alpha_bars[k - 1] if k > 0 else torch.tensor(1.0)
    eps = policy.noise_net(obs_n, x, torch.full((x.shape[0],), float(k)))
    x0 = ((x - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1.0, 1.0)
    alpha = abar / abar_prev
    mean = (abar_prev.sqrt() * (1 - alpha) * x0 + alpha.sqrt() * (1 - abar_prev) * x) / (1 - abar)
    var = (1 - alpha) * (1 - abar_prev) / (1 - abar)
    return mean, var.sqrt().expand_as(mean)


def _flow_gaussian(policy: FlowPolicy, obs_n, x, step: int):
    tau = torch.full((x.shape[0],), step / policy.flow_steps)
    return x + policy.velocity(obs_n, x, tau) / policy.flow_steps, torch.full_like(x, 0.05)


@pytest.mark.parametrize("name", ["ddpm", "flow"])
def test_old_log_probs_equal_independent_gaussian_densities(name: str) -> None:
    algo = _make(name, chunk=3, chunk_exec=2)
    cfg, policy = algo.config, algo.policy.actor
    obs = torch.randn(64, OBS_DIM)
    _, record = algo.act(obs)
    obs_n = policy.obs_norm(obs)
    first = algo.policy.first_trainable_step
    for i in range(cfg.ft_denoising_steps):
        x_prev, x_next = record["chain"][:, i], record["chain"][:, i + 1]
        with torch.no_grad():
            if name == "ddpm":
                mean, std = _ddpm_gaussian(policy, obs_n, x_prev, first + i)
                std = std.clamp(min=0.1)  # the log-prob std floor
            else:
                mean, std = _flow_gaussian(policy, obs_n, x_prev, first + i)
        density = torch.distributions.Normal(mean, std).log_prob(x_next)  # (64, 3 * 2)
        if name == "ddpm":
            density = density.clamp(-5.0, 2.0)
        executed = density.view(64, 3, 2)[:, :2]  # Ta_exec = 2 of Ta = 3
        expected = executed.mean(dim=(1, 2))
        assert torch.allclose(record["old_logprob"][:, i], expected, atol=1e-5), i


def test_single_euler_transition_matches_the_whole_chain_evaluation() -> None:
    # chains.euler_step_gaussian (one step, used by DPPO's flow chain) walks the same grid as
    # chains.euler_step_gaussians (all steps of a stored chain, used by ReinFlow).
    torch.manual_seed(0)
    weight = torch.randn(3, 3)

    def velocity(x, tau):
        return x @ weight + tau[:, None] ** 2

    def noise_std(x, tau):
        return 0.1 + tau[:, None].expand_as(x)

    chain = torch.randn(5, 4, 3)  # K = 4
    means, stds = chains.euler_step_gaussians(velocity, noise_std, chain)
    for k in range(4):
        mean, std = chains.euler_step_gaussian(velocity, noise_std, chain[k], k, 4)
        assert torch.allclose(mean, means[k]) and torch.allclose(std, stds[k])
        assert torch.allclose(std, torch.full_like(std, 0.1 + k / 4))


def test_sampling_std_floor_and_noise_clamp() -> None:
    algo = _make("ddpm", denoising_steps=4, ft_denoising_steps=4)
    obs = torch.randn(2000, OBS_DIM)
    torch.manual_seed(1)
    with torch.no_grad():
        chain, means, stds = algo.policy.sample_chain(obs, "explore", algo.sampling_std_floor)
    used_std = stds.clamp(min=0.1)
    noise = (chain[1:] - means) / used_std  # the standard-normal draws, (S, B, A)
    assert noise.abs().max() <= 3.0 + 1e-4  # clamped to +-3
    assert (noise.abs() > 3.0 - 1e-4).any()  # and the clamp was reached (0.27% of draws)
    # The last DDPM step has no noise of its own (std 0); the floor gives it std 0.1.
    assert float(stds[-1].max()) == 0.0
    assert float((chain[-1] - means[-1]).std()) == pytest.approx(0.1, rel=0.05)
    # Without a floor (evaluation) the last step adds nothing.
    with torch.no_grad():
        chain, means, _ = algo.policy.sample_chain(obs[:10], "random")
    assert torch.equal(chain[-1], means[-1])


def test_flow_variant_has_no_floor_and_no_clamp() -> None:
    algo = _make("flow")
    assert algo.sampling_std_floor is None and algo.logprob_std_floor is None
    assert algo.logprob_clamp is None
    assert torch.allclose(algo.clip_coefs, torch.full((3,), 0.2))
    torch.manual_seed(2)
    with torch.no_grad():
        chain, means, stds = algo.policy.sample_chain(torch.randn(500, OBS_DIM), "explore")
    assert torch.allclose(stds, torch.full_like(stds, 0.05))
    assert float((chain[1:] - means).std()) == pytest.approx(0.05, rel=0.05)


# ----------------------------------------------------------------------------- by hand


def test_denoising_discounts_and_clip_schedule_by_hand() -> None:
    # gamma_d^(K' - 1 - i) for K' = 3: 0.99^2, 0.99, 1
    assert torch.allclose(denoising_discounts(3, 0.99), torch.tensor([0.9801, 0.99, 1.0]))
    # Robomimic: 0.001 -> 0.01 with rate 3; the middle step (t = 1/2) gets
    # 0.001 + 0.009 (e^1.5 - 1) / (e^3 - 1) = 0.001 + 0.009 * 3.481689 / 19.085537 = 0.0026418
    expected = torch.tensor([0.001, 0.0026418, 0.01])
    assert torch.allclose(clip_schedule(3, 0.01, 0.001, 3.0), expected, atol=1e-7)
    assert torch.allclose(clip_schedule(10, 0.01, 0.01, 3.0), torch.full((10,), 0.01))  # Gym
    assert torch.equal(clip_schedule(1, 0.01, 0.001, 3.0), torch.tensor([0.01]))


def test_policy_loss_applies_discount_and_clip_per_denoising_index(monkeypatch) -> None:
    algo = _make("ddpm", clip_coef=0.01, clip_coef_base=0.001)
    ratios = torch.tensor([1.005, 1.005, 1.005, 0.98])
    monkeypatch.setattr(algo, "new_log_probs", lambda *args: ratios.log())
    index = torch.tensor([0, 1, 2, 2])
    dummy = torch.zeros(4, 4)
    loss, metrics = algo.policy_loss(
        torch.zeros(4, OBS_DIM), dummy, dummy, index, torch.zeros(4), torch.tensor([1, 1, 1, -1.0])
    )
    # i = 0: A 0.9801, clip 0.001:     min(1.005, 1.001) * 0.9801        = 0.9810801
    # i = 1: A 0.99,   clip 0.0026418: min(1.005, 1.0026418) * 0.99      = 0.9926154
    # i = 2: A 1,      clip 0.01:      1.005 (inside the clip)           = 1.005
    # i = 2: A -1,     r 0.98:         min(-0.98, -clip(0.98, 0.99, 1.01)) = -0.99
    assert float(loss) == pytest.approx(-(0.9810801 + 0.9926154 + 1.005 - 0.99) / 4, abs=1e-6)
    assert float(metrics["policy/clipfrac"]) == pytest.approx(0.75)  # all but the third


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(ft_denoising_steps=21), "ft_denoising_steps K' = 21 exceeds the chain's 20"),
        (dict(ddim_steps=5, ft_denoising_steps=6), "exceeds the chain's 5"),
        (dict(policy_class="FlowPolicy", flow_steps=4), "exceeds the chain's 4"),
        (dict(ddim_steps=25), "ddim_steps"),
        (dict(ft_denoising_steps=0), "ft_denoising_steps must be positive"),
        (dict(clip_coef=0.0), "clip_coef must be positive"),
        (dict(clip_coef_base=-0.001), "clip_coef_base must be positive"),
        (dict(flow_clip_coef=0.0), "flow_clip_coef must be positive"),
        (dict(flow_noise_std=0.0), "flow_noise_std must be positive"),
        (dict(noise_clip=0.0), "noise_clip must be positive"),
        (dict(gamma_denoising=1.5), "gamma_denoising"),
        (dict(sampling_std_floor=-0.1), "sampling_std_floor"),
        (dict(logprob_min=2.0, logprob_max=2.0), "logprob_min < logprob_max"),
        (dict(chunk=2, chunk_exec=3), "chunk_exec"),
        (dict(actor_lr=0.0), "actor_lr must be positive"),
        (dict(num_envs=1, num_steps=1, ft_denoising_steps=1, num_minibatches=2), "pairs"),
    ],
)
def test_config_validation(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DPPOConfig(**overrides)


def test_defaults_are_the_gym_config() -> None:
    cfg = DPPOConfig()
    assert (cfg.num_envs, cfg.num_steps, cfg.chunk, cfg.chunk_exec) == (40, 500, 4, 4)
    assert (cfg.denoising_steps, cfg.ft_denoising_steps, cfg.update_epochs) == (20, 10, 5)
    assert cfg.num_pairs // cfg.num_minibatches == 50_000  # DPPO's batch_size
    assert cfg.update_epochs * cfg.num_minibatches == 20  # gradient steps per iteration
    assert (cfg.actor_lr, cfg.critic_lr, cfg.vf_coef, cfg.clip_coef) == (1e-4, 1e-3, 0.5, 0.01)


def test_policy_class_must_match_the_config() -> None:
    with pytest.raises(ValueError, match="policy_class is DiffusionPolicy"):
        DPPO(2, LOW, HIGH, DPPOConfig(**TINY), policy=broad_flow_policy())


# ----------------------------------------------------------------------------- runs


def _bandit_policy_file(tmp_path, kind: str):
    policy = broad_diffusion_policy() if kind == "diffusion" else broad_flow_policy()
    path = tmp_path / f"{kind}.pt"
    save_policy(path, policy, {"env_id": "toy/bandit"})
    return path


SMALL_CLI = ["--num-envs", "4", "--num-steps", "8", "--num-minibatches", "2"]
SMALL_CLI += ["--update-epochs", "1", "--critic-hidden", "8", "8", "8"]
RUN_CLI = ["--eval-episodes", "2", "--tensorboard", "False", "--quiet", "True"]


@pytest.mark.parametrize("kind", ["diffusion", "flow"])
def test_cli_fine_tunes_a_pretrained_policy_for_one_iteration(tmp_path, kind: str) -> None:
    policy_file = _bandit_policy_file(tmp_path, kind)
    run_dir = tmp_path / "run"
    args = ["train", "dppo", "--init", str(policy_file), "--env", "toy/bandit"]
    args += ["--ft-denoising-steps", "3", "--total-steps", "32", "--run-dir", str(run_dir)]
    assert main([*args, *SMALL_CLI, *RUN_CLI]) == 0
    config = json.loads((run_dir / "config.json").read_text())["algo"]
    if kind == "flow":
        assert config["policy_class"] == "FlowPolicy" and config["flow_steps"] == 4
    else:
        assert config["policy_class"] == "DiffusionPolicy" and config["denoising_steps"] == 10
    assert (config["chunk"], config["chunk_exec"]) == (1, 1)
    rows = metric_rows(run_dir)
    assert any("policy/ratio" in row for row in rows)
    assert main(["eval", str(run_dir), "--episodes", "2"]) == 0


def test_a_gaussian_policy_is_refused(tmp_path) -> None:
    save_policy(tmp_path / "gauss.pt", GaussianPolicy(2, BANDIT_LOW, BANDIT_HIGH, hidden=(8,)))
    config = small_config(
        tmp_path, DPPOConfig(**TINY), env="toy/bandit", init=str(tmp_path / "gauss.pt")
    )
    with pytest.raises(UserError, match="fine-tunes a DiffusionPolicy or FlowPolicy.*Gaussian"):
        train(config)


# ----------------------------------------------------------------------------- the bandit toys


def _bandit_iterations(algo: DPPO, iterations: int) -> None:
    """On-policy iterations on the one-step bandit (every step terminates)."""
    cfg, env = algo.config, BanditEnv()
    obs, ones = torch.ones(cfg.num_envs, 2), torch.ones(cfg.num_envs)
    for iteration in range(iterations):
        buffer = RolloutBuffer(cfg.num_steps, cfg.num_envs, 2)
        for _ in range(cfg.num_steps):
            action, record = algo.act(obs)
            reward = torch.as_tensor(env.reward(action.numpy()), dtype=torch.float32)
            buffer.add(obs, record, reward, obs, ones, ones)
        algo.update(buffer.batch(iteration / iterations))


BANDIT = dict(num_envs=64, num_steps=16, num_minibatches=4, chunk=1, chunk_exec=1)
BANDIT |= dict(critic_hidden=(32, 32, 32), actor_lr=3e-3)


def test_dppo_improves_a_broad_diffusion_policy_on_the_bandit() -> None:
    # Measured (seeds 0-2, 5 iterations of 1024 episodes, K' 5 of K 10): 0.137 -> 0.55-0.64.
    policy = broad_diffusion_policy()
    steps = dict(denoising_steps=10, ft_denoising_steps=5, clip_coef=0.2, clip_coef_base=0.2)
    config = DPPOConfig(**(BANDIT | steps))
    torch.manual_seed(0)
    algo = DPPO(2, torch.tensor(BANDIT_LOW), torch.tensor(BANDIT_HIGH), config, policy=policy)
    before = mean_bandit_reward(algo.eval_policy)
    torch.manual_seed(0)
    _bandit_iterations(algo, 5)
    after = mean_bandit_reward(algo.eval_policy)
    assert before < 0.2
    assert after > before + 0.3, (before, after)


def test_dppo_flow_variant_improves_a_broad_flow_policy_on_the_bandit() -> None:
    # Measured (seeds 0-2, 8 iterations, sigma 0.05, clip 0.2, all 4 steps): 0.109 -> 0.35-0.42.
    policy = broad_flow_policy()
    config = DPPOConfig(
        **(BANDIT | dict(policy_class="FlowPolicy", flow_steps=4, ft_denoising_steps=4))
    )
    torch.manual_seed(0)
    algo = DPPO(2, torch.tensor(BANDIT_LOW), torch.tensor(BANDIT_HIGH), config, policy=policy)
    before = mean_bandit_reward(algo.eval_policy)
    torch.manual_seed(0)
    _bandit_iterations(algo, 8)
    after = mean_bandit_reward(algo.eval_policy)
    assert before < 0.15
    assert after > before + 0.2, (before, after)


@pytest.mark.parametrize("flag", ["--actor-hidden", "--critic-hidden"])
def test_residual_sizes_that_are_not_1_plus_2n_equal_widths_exit_2(
    tmp_path, capsys, flag: str
) -> None:
    run_dir = tmp_path / "run"
    args = ["train", "dppo", flag, "16", "16", "--env", "toy/bandit", "--run-dir", str(run_dir)]
    assert main(args) == 2
    assert "1 + 2 * blocks" in capsys.readouterr().err
    assert not run_dir.exists()
