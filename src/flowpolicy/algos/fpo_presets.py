"""FPO's presets beside its default (:class:`~flowpolicy.algos.fpo.FPOConfig`): FPO++, the
released locomotion settings (``--preset fpo++``), and vanilla FPO as fpo-control fine-tunes it
(``--preset fpo-finetune``). Each returns an :class:`~flowpolicy.algos.fpo.FPOConfig` with
FPO's switches set; keyword overrides win. FPO's regime presets, shared with Gaussian PPO, are
in :mod:`flowpolicy.algos.playground_regime` and :mod:`flowpolicy.algos.locomotion_regime`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flowpolicy.algos.fpo import FPOConfig


def fpo_plus_plus(**overrides: object) -> FPOConfig:
    """FPO++ (``--preset fpo++``): the released locomotion settings, in the CPU-sized data
    regime of :class:`FPOConfig` (8 envs x 256 steps, 32 minibatches, 10 epochs; the release
    runs 4096 envs x 24 steps, 4 minibatches, 16 epochs). Keyword overrides win.

    Source: amazon-far/fpo-control, release commit cd38cea9dfece2407567407cd3fedfd95afcef8a
    (as held by RPFey/fpo-control and RX-00/fpo-control), isaaclab_experiments/isaaclab_fpo/
    isaaclab_fpo/: rl_cfg.py (lr, AdamW, clamps, ASPO, EMA 0.95 from iteration 500, M 16,
    sqrt reduction, tau range, perturbation 0.02, value coef 1, fixed lr schedule, advantages
    normalised over the rollout, 8-dim time embedding, output scale 1.0), task_cfgs.py (actor
    3x256 and critic 3x768, ELU), runners/on_policy_runner.py (EMA updated once per iteration),
    algorithms/fpo.py (one AdamW over actor and critic, log-ratio clamped from above only).
    Deviations: 10 flow steps instead of 64 (CPU speed; ``--flow-steps 64`` to match) and
    actions clipped to the env's bounds (the release clips at 2 in its own action units).
    """
    from flowpolicy.algos.fpo import FPOConfig  # fpo.py imports this file for its registration

    preset = dict(
        ratio_mode="per_sample",
        per_sample_logratio_clamp=None,
        trust_region="aspo",
        cfm_loss_clamp=20.0,
        logratio_clamp=10.0,
        advantage_clamp=100.0,
        action_noise_std=0.02,
        ema_decay=0.95,
        ema_start_iterations=500,
        cfm_reduction="sqrt_sum",
        loss_weighting="velocity",
        tau_sampling="uniform",
        tau_min=0.005,
        tau_max=0.995,
        optimizer="adamw",
        learning_rate=1e-4,
        anneal_lr=False,
        weight_decay=1e-4,
        max_grad_norm=1.0,
        vf_coef=1.0,
        norm_adv_over="rollout",
        mc_samples=16,
        actor_hidden=(256, 256, 256),
        actor_activation="elu",
        output_scale=1.0,
        squash="clip",
        critic_hidden=(768, 768, 768),
        critic_activation="elu",
    )
    return FPOConfig(**(preset | overrides))


def fpo_finetune(**overrides: object) -> FPOConfig:
    """Vanilla FPO for fine-tuning a pretrained flow policy (``--preset fpo-finetune``), as
    fpo-control's sweeps fine-tune it, in the CPU-sized data regime of :class:`FPOConfig`
    (the release: 30 envs x 1600 steps, chunks of 16). Keyword overrides win.

    Source: amazon-far/fpo-control, release commit cd38cea9dfece2407567407cd3fedfd95afcef8a,
    manipulation_experiments/: scripts/sweeps/dec27_finetune_vanilla_fpo_can.yaml (clip
    {0.01, 0.02}, gradient clip 5, plain MSE, ratio from losses averaged over all 8 samples,
    no clamps, PPO clip), finetune_online_rl.py (actor lr 1e-5 and critic lr 1e-4 in separate
    AdamW optimisers with wd 1e-6 and separately clipped gradients, 10 epochs, 8 minibatches,
    one critic-only iteration first, constant lr, value coef 1 without clipping, critic
    512-256 ReLU, tau ~ U[0, 1]) and src/flow_model.py (the CFM loss: the mean over each
    step's action dims, summed over the chunk's steps). gae_lambda 0.99 and gamma 0.99 are
    the Can settings of scripts/run_main_benchmark.sh. Deviation: one AdamW with an actor
    and a critic parameter group (identical to two AdamW optimisers) with betas (0.9, 0.999)
    for both (the release's actor uses beta2 0.99).
    """
    from flowpolicy.algos.fpo import FPOConfig

    preset = dict(
        learning_rate=1e-5,
        critic_learning_rate=1e-4,
        optimizer="adamw",
        weight_decay=1e-6,
        anneal_lr=False,
        clip_coef=0.01,
        max_grad_norm=5.0,
        num_minibatches=8,
        update_epochs=10,
        gae_lambda=0.99,
        vf_coef=1.0,
        critic_warmup_iterations=1,
        loss_weighting="velocity",
        tau_sampling="uniform",
        cfm_reduction="chunk_sum",
        mc_samples=8,
        critic_hidden=(512, 256),
        critic_activation="relu",
    )
    return FPOConfig(**(preset | overrides))
