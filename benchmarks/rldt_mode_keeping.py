"""Does RLDT keep several equal optima populated? A sweep on the four-optimum bandit with a known Q.

The set-up is the one of ``tests/benchmarks/test_rldt_mode_keeping.py``'s known-Q toy: a flow
policy behaviour-cloned onto uniform actions on [-1, 1]^2 for ``BC_STEPS`` steps (about 7% of
its samples near each optimum of ``toy/bandit``), then RLDT actor steps along
``Q = 10 * reward`` with everything but the setting under test at the authors' defaults except
Adam lr 1e-3. For each setting and seed it reports the mean reward of 2000 sampled actions and
the fraction within 0.25 of each optimum, after ``--steps`` actor steps and at a third of them.

The main contrast is the constraint's reference: the frozen pretrained policy (the paper) or
the previous iterate, refreshed every 8 actor steps as one "iteration" (the released code).

Two rows are diagnostics, not RLDT options; they replace the transport field to ask what the
field itself contributes:

- ``pathwise``: each particle is moved along ``grad Q`` at its **own** final action
  (``phi_i = g(a_i)``) instead of a field at its expected posterior: plain reparameterised
  gradient ascent on ``E[Q]`` through the same regression.
- ``fitted``: the alignment regression ``0.5 ||v - sg(v + phi / (K (1 - tau)))||^2`` is fitted
  with 10 Adam steps on each batch's frozen targets instead of one.

Examples::

    python benchmarks/rldt_mode_keeping.py                 # all settings, seeds 0-2
    python benchmarks/rldt_mode_keeping.py --quick --out /tmp/mk

Writes ``rldt_mode_keeping.md`` and ``.json`` into ``--out`` (default ``docs/benchmarks``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import tyro
from torch import Tensor

from flowpolicy import flows
from flowpolicy.algos.rldt import (
    RLDT,
    RLDTConfig,
    consistency_loss,
    constraint_loss,
    posteriors_at_random_steps,
)
from flowpolicy.envs import BanditEnv, optimum_coverage

BANDIT = BanditEnv()  # four equal optima at (+-0.5, +-0.5), bumps of width 0.15
Q_SCALE = 10.0  # Gym-like Q magnitudes, as in the test
DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
OBS = torch.ones(1, 2)  # one state: the bandit has no observation to speak of
# Behaviour-cloning steps for the broad start. With 300 (the first version of this sweep) the
# fit is still a blob narrower than uniform (std 0.48 instead of 0.58), whose noise-to-action map
# has no structure to keep apart, and every setting collapsed onto one optimum; from 1500 steps
# on the samples are close to uniform (the reward and coverage stop changing).
BC_STEPS = 2000


@dataclass(frozen=True)
class Setting:
    """One row of the sweep: RLDTConfig overrides, and how the reference and update are done."""

    name: str
    overrides: dict = field(default_factory=dict)
    refresh_every: int | None = 8  # actor steps per "iteration" (previous-iterate reference)
    update: str = "rldt"  # rldt | pathwise | fitted


SETTINGS = [
    Setting("released code: previous-iterate reference, constraint 0.2 (defaults)"),
    Setting("paper: frozen initial reference, constraint 0.2", refresh_every=None),
    Setting("initial reference, constraint 0.1", dict(constraint_coef=0.1), refresh_every=None),
    Setting("initial reference, delta field", dict(field="delta"), refresh_every=None),
    Setting("initial reference, interp field", dict(field="interp"), refresh_every=None),
    Setting("initial reference, T=0.1", dict(svgd_temperature=0.1), refresh_every=None),
    Setting("previous reference, delta field", dict(field="delta")),
    Setting("previous reference, T=0.1", dict(svgd_temperature=0.1)),
    Setting("diagnostic: pathwise, initial reference", refresh_every=None, update="pathwise"),
    Setting("diagnostic: pathwise (grad Q at own final action)", update="pathwise"),
    Setting("diagnostic: fitted regression (10 Adam steps per batch)", update="fitted"),
]


def bandit_q_gradient(obs: Tensor, actions: Tensor) -> Tensor:
    """``grad_a Q`` for ``Q = Q_SCALE * BanditEnv.reward``; (B, 2) -> (B, 2)."""
    return Q_SCALE * BANDIT.reward_gradient(actions)


def broad_policy(config: RLDTConfig, seed: int) -> RLDT:
    """RLDT whose flow policy is behaviour-cloned onto uniform actions on [-1, 1]^2; its
    reference is this policy."""
    torch.manual_seed(seed)
    algo = RLDT(2, torch.tensor([-1.0, -1.0]), torch.tensor([1.0, 1.0]), config)
    optimizer = torch.optim.Adam(algo.policy.parameters(), lr=3e-3)
    obs = OBS.expand(256, 2)
    for _ in range(BC_STEPS):
        actions, noise, tau = torch.rand(256, 2) * 2 - 1, torch.randn(256, 2), torch.rand(256)
        velocity = algo.policy.velocity(obs, flows.interpolate(actions, noise, tau), tau)
        loss = flows.cfm_loss(velocity, actions, noise, tau).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    algo.refresh_reference()
    return algo


def diagnostic_step(algo: RLDT, obs: Tensor, pathwise: bool, fit_steps: int) -> None:
    """RLDT's actor loss with the regression targets frozen per batch (see the module doc)."""
    cfg, flow_steps = algo.config, algo.policy.flow_steps
    obs_p = algo.policy.obs_norm(obs).repeat_interleave(cfg.num_particles, dim=0)
    with torch.no_grad():
        final, chain = algo._sample(obs_p, return_chain=True)
        x_k, tau, velocity, posterior = posteriors_at_random_steps(
            lambda x, t: algo.policy.velocity(obs_p, x, t), chain, flow_steps
        )
        if pathwise:
            phi = bandit_q_gradient(obs_p, final)
        else:
            phi, _ = algo.transport_field(obs_p, posterior, final, bandit_q_gradient)
        target = velocity + phi / (flow_steps * (1 - tau)).unsqueeze(-1)
    for _ in range(fit_steps):
        velocity = algo.policy.velocity(obs_p, x_k, tau)
        loss = 0.5 * (velocity - target).square().sum(-1).mean()
        loss = loss + cfg.consistency_coef * consistency_loss(x_k, velocity, tau, final, flow_steps)
        loss = loss + cfg.constraint_coef * constraint_loss(
            algo.policy, algo.reference, obs_p, final
        )
        algo.actor_optimizer.zero_grad()
        loss.backward()
        algo.actor_optimizer.step()
    algo.actor_scheduler.step()


def evaluate(algo: RLDT) -> dict[str, float | list[float]]:
    """Mean reward and per-optimum coverage of 2000 sampled (clipped) actions."""
    with torch.no_grad():
        actions = algo.policy.env_action(algo.policy.sample(OBS.expand(2000, 2), "random"))
    actions = actions.numpy()
    return {
        "reward": float(BANDIT.reward(actions).mean()),
        "coverage": optimum_coverage(actions, BANDIT.optima).round(3).tolist(),
    }


def run(setting: Setting, seed: int, steps: int, states: int) -> dict:
    """Fine-tune the broad policy for ``steps`` actor steps; evaluations at steps/3 and steps."""
    config = RLDTConfig(
        chunk=1,
        chunk_exec=1,
        flow_steps=8,
        num_particles=8,
        actor_network="mlp",
        actor_hidden=(64, 64),
        actor_activation="silu",
        time_dim=8,
        **{"actor_lr": 1e-3, **setting.overrides},
    )
    algo = broad_policy(config, seed)
    result = {"setting": setting.name, "seed": seed, "start": evaluate(algo)}
    obs = OBS.expand(states, 2)
    for step in range(steps):
        if setting.update == "rldt":
            algo.actor_step(obs, bandit_q_gradient)
        else:
            fitted = setting.update == "fitted"
            diagnostic_step(algo, obs, pathwise=not fitted, fit_steps=10 if fitted else 1)
        if setting.refresh_every and (step + 1) % setting.refresh_every == 0:
            algo.refresh_reference()
        if step + 1 == steps // 3:
            result["third"] = evaluate(algo)
    result["end"] = evaluate(algo)
    return result


def populated(coverage: list[float], threshold: float = 0.1) -> int:
    return sum(c >= threshold for c in coverage)


def markdown(results: list[dict], steps: int, command: str) -> str:
    lines = [
        "# RLDT on the four-optimum bandit with a known Q: how many optima stay populated",
        "",
        f"Made by `{command}` (seeds {sorted({r['seed'] for r in results})}, one CPU thread).",
        f"Start: a flow policy behaviour-cloned onto uniform actions ({BC_STEPS} steps). Each cell: mean reward,",
        "then the number of optima with >= 10% of 2000 sampled actions within 0.25 of them,",
        "and the coverage of each optimum. The test asks for reward > 0.5 and >= 2 optima.",
        "",
        f"| setting | seed | start | after {steps // 3} steps | after {steps} steps |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        cells = [
            f"{r[key]['reward']:.2f}, {populated(r[key]['coverage'])} "
            f"({' / '.join(f'{c:.2f}' for c in r[key]['coverage'])})"
            for key in ("start", "third", "end")
        ]
        lines.append(f"| {r['setting']} | {r['seed']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(
    seeds: tuple[int, ...] = (0, 1, 2),
    steps: int = 720,
    states: int = 16,
    quick: bool = False,
    out: Path = DOCS,
) -> list[dict]:
    """Run every setting for every seed; print and save the table.

    Args:
        seeds: seeds per setting.
        steps: actor steps per run (a third of them is reported too).
        states: states per actor step (all the same observation).
        quick: 6 steps, 2 states, seed 0; both references and the fitted diagnostic (what the
            test runs).
        out: folder for rldt_mode_keeping.md / .json.
    """
    torch.set_num_threads(1)
    settings = SETTINGS
    command = "python benchmarks/rldt_mode_keeping.py"
    if quick:
        seeds, steps, states, settings = (0,), 6, 2, SETTINGS[:2] + SETTINGS[-1:]
        command += " --quick"
    results = []
    for setting in settings:
        for seed in seeds:
            start = time.perf_counter()
            result = run(setting, seed, steps, states)
            results.append(result)
            end = result["end"]
            print(
                f"{setting.name:58s} seed {seed}: reward {end['reward']:.2f}, "
                f"coverage {end['coverage']} ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    out.mkdir(parents=True, exist_ok=True)
    (out / "rldt_mode_keeping.md").write_text(markdown(results, steps, command))
    (out / "rldt_mode_keeping.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    tyro.cli(main)
