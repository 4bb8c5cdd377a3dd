"""Velocity-command locomotion in the FPO++ release's regime, as presets of FPO++ and of
Gaussian PPO side by side.

FPO++ trains humanoid (Unitree H1, G1) and quadruped velocity tracking in Isaac Lab with rsl_rl's
runner: 4096 envs x 24 steps per iteration, 4 minibatches, an actor of 3x256 ELU and a critic of
3x768 ELU, empirical observation normalisation, no reward normalisation, discount 0.99, GAE 0.95,
gradients clipped at 1. ``--preset fpo++-humanoid`` is FPO++ at its humanoid settings and
``--preset ppo-humanoid`` is Gaussian PPO with the same networks and data, at rsl_rl's PPO
settings for locomotion, so "FPO++ vs Gaussian PPO" differs in the policy class and its
objective. For the joystick task (``--env playground/HumanoidJoystick``) and any task of that
kind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flowpolicy.algos.fpo_presets import fpo_plus_plus

if TYPE_CHECKING:
    from flowpolicy.algos.fpo import FPOConfig
    from flowpolicy.algos.ppo import PPOConfig

LOCOMOTION_REGIME = dict(
    num_envs=4096,
    num_steps=24,
    num_minibatches=4,
    gamma=0.99,
    gae_lambda=0.95,
    max_grad_norm=1.0,
    vf_coef=1.0,
    anneal_lr=False,
    scale_rewards=False,
    critic_hidden=(768, 768, 768),
    critic_activation="elu",
)
"""What both presets share (amazon-far/fpo-control cd38cea9, isaaclab_experiments/isaaclab_fpo/
isaaclab_fpo/: rl_cfg.py FpoRslRlOnPolicyRunnerCfg num_steps_per_env 24, empirical
normalisation; FpoRslRlPpoAlgorithmCfg num_mini_batches 4, gamma 0.99, lam 0.95,
max_grad_norm 1.0, value_loss_coef 1.0; task_cfgs.py critic 3x768 ELU; the released scripts'
4096 envs)."""


def fpo_plus_plus_humanoid(**overrides: object) -> FPOConfig:
    """FPO++ at the release's humanoid locomotion settings (``--preset fpo++-humanoid``): the
    ``fpo++`` preset's objective (ASPO, clamps, EMA 0.95 from iteration 500 updated once per
    iteration, AdamW lr 1e-4, actor 3x256 ELU with output scale 1.0) in the locomotion regime
    of this module, with the H1/G1 values: 32 (tau, eps) samples per action, 32 epochs, 64
    flow steps. Keyword overrides win.

    Source: amazon-far/fpo-control, release commit cd38cea9dfece2407567407cd3fedfd95afcef8a,
    isaaclab_experiments/isaaclab_fpo/isaaclab_fpo/task_cfgs.py (H1FlatFlowPPORunnerCfg,
    G1FlatFlowPPORunnerCfg: n_samples_per_action 32, num_learning_epochs 32) and rl_cfg.py
    (sampling_steps 64, clip_param 0.05, the rest as in ``fpo++``). Deviation: actions clipped
    to the env's bounds (the release clips at 2 in its own action units).
    """
    preset = LOCOMOTION_REGIME | dict(update_epochs=32, mc_samples=32, flow_steps=64)
    return fpo_plus_plus(**(preset | overrides))


def ppo_humanoid(**overrides: object) -> PPOConfig:
    """Gaussian PPO with FPO++'s humanoid networks and data (``--preset ppo-humanoid``): the
    locomotion regime of this module, actor 3x256 ELU (mean, state-independent log-std from 0,
    i.e. std 1), and rsl_rl's PPO settings for locomotion: lr 1e-3 adapted to a KL of 0.01,
    clip 0.2 with value clipping, entropy 0.01, 5 epochs. Keyword overrides win.

    Source: isaac-sim/IsaacLab at commit 174a6e28544924217bd654cf64c5ccff2825ad38,
    source/isaaclab_tasks/isaaclab_tasks/manager_based/locomotion/velocity/config/h1/agents/
    rsl_rl_ppo_cfg.py (H1RoughPPORunnerCfg, rsl_rl's PPO for the H1 velocity task:
    value_loss_coef 1.0, use_clipped_value_loss, clip_param 0.2, entropy_coef 0.01,
    num_learning_epochs 5, num_mini_batches 4, learning_rate 1e-3, schedule adaptive,
    desired_kl 0.01, max_grad_norm 1.0, init_noise_std 1.0, 24 steps per env). Deviations:
    FPO++'s networks (3x256 actor, 3x768 critic) instead of Isaac Lab's 512-256-128 (rough)
    or 3x128 (flat), and its empirical observation normalisation; advantages standardised per
    minibatch (rsl_rl: over the rollout); the adaptive schedule reads the k3 estimate of the
    KL instead of the Gaussians' closed form.
    """
    from flowpolicy.algos.ppo import PPOConfig

    preset = LOCOMOTION_REGIME | dict(
        update_epochs=5,
        learning_rate=1e-3,
        desired_kl=0.01,
        clip_coef=0.2,
        clip_vloss=True,
        ent_coef=0.01,
        actor_hidden=(256, 256, 256),
        activation="elu",
        initial_log_std=0.0,
        squash="clip",
    )
    return PPOConfig(**(preset | overrides))
