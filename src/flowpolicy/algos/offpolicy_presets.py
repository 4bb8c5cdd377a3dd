"""Presets of the off-policy methods beside their defaults: the authors' settings for another
data regime or task family (``rldt-gym``, ``qc-fql``, ``dsrl-robomimic``) and versions sized for
a 2-core CPU (``qam-cpu``, ``fql-cpu``, ``dsrl-cpu``). Each algorithm file lists its presets in
its registration (``SPEC``); each function's docstring says where its values come from. The RLDT
authors' port of QAM (``qam-rldt``) lives with its switches in :mod:`flowpolicy.algos.qam_rldt`.

Each function imports its config when called: the algorithm files import this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowpolicy.algos.dsrl import DSRLConfig
    from flowpolicy.algos.fql import FQLConfig
    from flowpolicy.algos.qam import QAMConfig
    from flowpolicy.algos.rldt import RLDTConfig


# ----------------------------------------------------------------------------- RLDT


def rldt_gym(**overrides: object) -> RLDTConfig:
    """The authors' full Gym data regime (100 envs x 500 chunk steps, 16 rounds, 512 critic
    steps per iteration, 1-step TD targets); sized for a GPU. Keyword overrides win.

    Source: RPFey/rldt at commit add6029182ae2598e4eb62037e8b4b8ec8a38ac9,
    cfg/gym/finetune/hopper-v2/ft_svgd_flowmatching_mlp.yaml (n_envs 100, n_steps 500,
    q_repeat 16, q_update_steps 512, policy_update_steps 32, td_lambda 0)."""
    from flowpolicy.algos.rldt import RLDTConfig

    preset = dict(
        num_envs=100, num_steps=500, rounds=16, critic_steps=512, actor_steps=32, td_lambda=0.0
    )
    return RLDTConfig(**(preset | overrides))


# ----------------------------------------------------------------------------- QAM


def qam_cpu(**overrides: object) -> QAMConfig:
    """QAM sized for a 2-core CPU: one gradient step per chunk instead of one per env step
    (utd_ratio 0.25 with chunk 4, the reference BC policies' chunk), 10 critic members of
    2x256 instead of 4x512, a 3x256 from-scratch actor, 4 envs x 50 chunk steps per iteration.
    Measured with a 3x512 residual BC policy (K = 10) at Hopper sizes on one thread
    (benchmarks/qam_update_speed.py): 0.08 s per critic step and 0.29 s per actor step, about
    2.6 hours of updates per 100k env steps (the defaults: about 28). Keyword overrides win.

    Source: ours (the QAM method of :class:`QAMConfig`, resized for a CPU)."""
    from flowpolicy.algos.qam import QAMConfig

    preset = dict(
        num_envs=4,
        utd_ratio=0.25,
        critic_hidden=(256, 256),
        actor_hidden=(256, 256, 256),
        chunk=4,
        chunk_exec=4,
        replay_iterations=1250,
    )
    return QAMConfig(**(preset | overrides))


# ----------------------------------------------------------------------------- FQL


def qc_fql(**overrides: Any) -> FQLConfig:
    """QC-FQL: FQL on chunks of 5 actions, alpha 100, online updates after 5000 env steps.

    Source: ColinQiyangLi/qc, agents/acfql.py (get_config: alpha 100, num_qs 2, 4x512) and
    main.py (horizon_length 5, start_training 5000, utd_ratio 1, offline_steps 1M),
    commit 48283b4f662bd1c127ec9fa80647b49759f10653."""
    from flowpolicy.algos.fql import FQLConfig

    values = dict(chunk=5, chunk_exec=5, alpha=100.0, online_warmup_steps=5000)
    return FQLConfig(**(values | overrides))


def fql_cpu(**overrides: Any) -> FQLConfig:
    """FQL sized for a 2-core CPU: 3x256 policies and critics instead of 4x512, 100k offline
    steps instead of 1M, one gradient step per 4 env steps online; the method is unchanged.

    Source: ours (the FQL method of :class:`FQLConfig`, resized for a CPU)."""
    from flowpolicy.algos.fql import FQLConfig

    values = dict(
        actor_hidden=(256,) * 3,
        critic_hidden=(256,) * 3,
        offline_steps=100_000,
        utd_ratio=0.25,
        buffer_size=1_000_000,
    )
    return FQLConfig(**(values | overrides))


# ----------------------------------------------------------------------------- DSRL


def dsrl_robomimic() -> DSRLConfig:
    """DSRL on the released Robomimic settings (Can; Lift uses utd 30, Square discount 0.999,
    Transport 3 x 128, noise bound 1 and 20001 warm-up steps).

    Source: ajwagen/dsrl, cfg/robomimic/dsrl_can.yaml,
    commit 8d21b9cf55459f022c0e769bca1343edd9d30e5a (train_freq 1, utd 20, 3 layers of 2048,
    init_rollout_steps 1501, action_magnitude 1.5, the rest as the Gym configs)."""
    from flowpolicy.algos.dsrl import DSRLConfig

    return DSRLConfig(utd_ratio=20 / 4, hidden=(2048,) * 3, warmup_steps=1501)


def dsrl_cpu() -> DSRLConfig:
    """DSRL sized for a 2-core CPU: one gradient step per 2 chunk transitions (utd_ratio 0.5
    instead of 2.5) on batches of 128, one Q^W step per 2 gradient steps, a 250-step warm-up.
    The networks stay the released Hopper ones (3 x 128); DSRL-NA's cost is the frozen policy's
    sampler in every TD target and Q^W step. Measured with a 3x512 residual flow policy (K 10,
    chunk 4) at Hopper sizes on one thread of the shared CPU: defaults 45 ms per gradient step
    and 43 ms per Q^W step, about 1.2 hours of updates per 100k env steps; this preset about 8
    minutes (DSRL-SAC: 11 min and 2 min).

    Source: ours (the DSRL method of :class:`DSRLConfig`, resized for a CPU)."""
    from flowpolicy.algos.dsrl import DSRLConfig

    return DSRLConfig(utd_ratio=0.5, batch_size=128, warmup_steps=250)
