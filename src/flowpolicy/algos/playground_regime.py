"""FPO's MuJoCo Playground regime, as presets of FPO and of Gaussian PPO side by side.

The FPO paper trained and reported its DeepMind Control results in one regime: 2048 MJX envs,
Brax PPO's data layout and a large critic. ``--preset fpo-playground`` and ``--preset
ppo-playground`` reproduce it for ``--env playground/<Name>``; the two share every setting a
Gaussian policy has, so "FPO vs Gaussian PPO" differs only in the policy class.

Brax's layout: each iteration collects ``batch_size x num_minibatches`` = 1024 x 32 unrolls of
30 steps, 16 per env of the 2048 (983,040 env steps), then makes 16 passes of 32 minibatches
of 1024 unrolls (30,720 steps each). Here an iteration is 2048 envs x 480 steps cut into the
same 32 minibatches for 16 epochs: the same batch, minibatch and number of Adam steps per env
step. Deviation: GAE runs once per iteration over the 480 steps with the critic of that moment,
where Brax recomputes it per minibatch within each 30-step unroll (bootstrapping at the unroll's
end) with the current critic.

The update fits these batches in memory on a CPU and a GPU: whole-batch critic passes run in
slices (:func:`flowpolicy.algos.onpolicy.chunked`) and the minibatches are 30,720 rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flowpolicy.algos.fpo import FPOConfig
    from flowpolicy.algos.ppo import PPOConfig

BRAX_REGIME = dict(
    num_envs=2048,
    num_steps=480,
    num_minibatches=32,
    update_epochs=16,
    gamma=0.995,
    gae_lambda=0.95,
    norm_adv=True,
    learning_rate=3e-4,
    anneal_lr=False,
    max_grad_norm=None,
    vf_coef=0.25,
    clip_vloss=False,
    scale_rewards=False,
    reward_scale=10.0,
    critic_hidden=(256, 256, 256, 256, 256),
    critic_activation="silu",
)
"""What FPO's and Gaussian PPO's Playground runs share (akanazawa/fpo 418c2554,
playground/src/flow_policy/fpo.py FpoConfig and ppo.py: batch_size 1024, num_minibatches 32,
num_updates_per_batch 16, unroll_length 30, num_envs 2048, discounting 0.995, gae_lambda 0.95,
normalize_advantage, reward_scaling 10, value_loss_coeff 0.25, learning rate 3e-4 held
constant, Adam with no gradient clip, critic 5x256 SiLU, running observation normalisation)."""


def fpo_playground(**overrides: object) -> FPOConfig:
    """FPO as the paper ran it on MuJoCo Playground (``--preset fpo-playground``): the Brax
    regime of this module, clip 0.05, 8 (tau, eps) pairs per action with eps-MSE and tau on the
    10-step grid, actor 4x32 SiLU with output scale 0.25 on [obs, x, 8-dim time features],
    actions through tanh. For ``--env playground/<Name>``. Keyword overrides win.

    Source: akanazawa/fpo at commit 418c2554f7cd22d52e14c07d951280929d73bf2f,
    playground/src/flow_policy/fpo.py (FpoConfig defaults, FpoState.init: actor
    (obs + action + 8, 32, 32, 32, 32, action) and critic (obs, 256 x5, 1), optax
    scale_by_adam at a fixed learning rate) and networks.py (SiLU). Deviations: GAE over the
    whole 480-step rollout (see the module docstring); the total steps are the user's
    (``--total-steps``; the paper ran 60M).
    """
    from flowpolicy.algos.fpo import FPOConfig

    preset = BRAX_REGIME | dict(
        clip_coef=0.05,
        mc_samples=8,
        loss_weighting="eps",
        tau_sampling="grid",
        flow_steps=10,
        chunk=1,
        chunk_exec=1,
        actor_hidden=(32, 32, 32, 32),
        actor_activation="silu",
        time_dim=8,
        output_scale=0.25,
        squash="tanh",
        optimizer="adam",
    )
    return FPOConfig(**(preset | overrides))


def ppo_playground(**overrides: object) -> PPOConfig:
    """Gaussian PPO as the FPO paper compared it on MuJoCo Playground (``--preset
    ppo-playground``): the Brax regime of this module with FPO's 4x32 SiLU actor (mean and
    log-std), actions through tanh, the paper's tuned lr 3e-4 and clip 0.1, and Brax's entropy
    cost 0.01. For ``--env playground/<Name>``. Keyword overrides win.

    Source: akanazawa/fpo at commit 418c2554f7cd22d52e14c07d951280929d73bf2f,
    playground/src/flow_policy/ppo.py (actor (obs, 32 x4, 2 x action), critic (obs, 256 x5,
    1)), train_ppo.ipynb (mujoco_playground's brax_ppo_config with ``learning_rate=3e-4,
    clipping_epsilon=0.1``). Deviations: a state-independent log-std (CleanRL's) instead of
    Brax's state-dependent softplus scale; discount 0.995 on every task, where
    brax_ppo_config uses 0.95 on BallInCup and FingerSpin; GAE over the whole rollout.
    """
    from flowpolicy.algos.ppo import PPOConfig

    preset = BRAX_REGIME | dict(
        clip_coef=0.1,
        ent_coef=0.01,
        actor_hidden=(32, 32, 32, 32),
        activation="silu",
        squash="tanh",
    )
    return PPOConfig(**(preset | overrides))
