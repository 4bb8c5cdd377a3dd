"""Checks that turn a bad hyper-parameter into a message saying what is wrong and what to do.

Configs call these from ``__post_init__``; the CLI shows the ``ValueError`` text and exits 2.
The declarative checks (``require_*``) come first, then the checks of a config family
(:func:`check_on_policy_config`), then the longer checks of single configs (DPPO, ReinFlow,
RLDT), kept here so that their algorithm files read as config and algorithm. An algorithm that
fine-tunes a pretrained flow policy checks it against its config with
:func:`check_initial_policy` (a ``UserError`` naming the options to pass).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from flowpolicy.errors import UserError
from flowpolicy.nets import residual_shape


def require_positive(config: Any, *names: str) -> None:
    """Each named field must be > 0."""
    for name in names:
        value = getattr(config, name)
        if value is not None and not value > 0:
            default = getattr(type(config), name, None)
            example = default if default is not None else "a positive number"
            raise ValueError(
                f"{type(config).__name__}.{name} must be positive, got {value!r}. "
                f"Pass a value > 0 (e.g. --{name.replace('_', '-')} {example})."
            )


def require_non_negative(config: Any, *names: str) -> None:
    """Each named field must be >= 0 (a weight, a std or a count where 0 switches it off)."""
    for name in names:
        value = getattr(config, name)
        if not value >= 0:
            raise ValueError(
                f"{type(config).__name__}.{name} must be >= 0, got {value!r}. "
                f"Pass 0 to switch it off or a positive value (--{name.replace('_', '-')})."
            )


def require_range(
    config: Any, name: str, low: float, high: float, *, open_high: bool = False
) -> None:
    """Field must lie in the closed interval [low, high], or in [low, high) with ``open_high``
    (a decay factor, where 1 would never move); None (switched off) passes."""
    value = getattr(config, name)
    if value is None:
        return
    if not (low <= value < high if open_high else low <= value <= high):
        interval = f"[{low}, {high}{')' if open_high else ']'}"
        raise ValueError(f"{type(config).__name__}.{name} must be in {interval}, got {value!r}.")


def require_at_most(config: Any, name: str, limit: str, reason: str) -> None:
    """Field ``name`` must not exceed field ``limit``; ``reason`` says why."""
    value, bound = getattr(config, name), getattr(config, limit)
    if value > bound:
        raise ValueError(f"{name} ({value}) cannot exceed {limit} ({bound}): {reason}.")


def require_interval(config: Any, *names: str) -> None:
    """Each named field is a ``(low, high)`` pair with low < high, or None."""
    for name in names:
        value = getattr(config, name)
        if value is not None and not value[0] < value[1]:
            raise ValueError(f"{name} needs low < high, got {value}.")


def require_multiple(config: Any, name: str, of: str) -> None:
    """Field ``name`` must split evenly into field ``of`` parts."""
    value, parts = getattr(config, name), getattr(config, of)
    if value % parts:
        raise ValueError(
            f"{type(config).__name__}.{name} = {value} does not split evenly into "
            f"{of} = {parts}; pass a multiple of --{of.replace('_', '-')}."
        )


def check_on_policy_config(config: Any) -> None:
    """Shared checks of PPO-family configs: positive sizes and rates, a batch that splits
    evenly into minibatches, probabilities within [0, 1]."""
    require_positive(
        config,
        "num_envs",
        "num_steps",
        "learning_rate",
        "num_minibatches",
        "update_epochs",
        "clip_coef",
        "reward_scale",
    )
    require_range(config, "gamma", 0.0, 1.0)
    require_range(config, "gae_lambda", 0.0, 1.0)
    require_non_negative(config, "vf_coef")
    if config.max_grad_norm is not None and config.max_grad_norm <= 0:
        raise ValueError(
            f"max_grad_norm must be positive (or None for no clipping), got {config.max_grad_norm!r}."
        )
    batch = config.num_envs * config.num_steps
    if batch % config.num_minibatches:
        raise ValueError(
            f"The batch of num_envs * num_steps = {config.num_envs} * {config.num_steps} = {batch} "
            f"samples does not split into num_minibatches = {config.num_minibatches} equal parts. "
            "Change --num-steps, --num-envs or --num-minibatches so the batch is a multiple of "
            "the number of minibatches."
        )
    if batch // config.num_minibatches < 2:
        raise ValueError(
            f"Minibatches of {batch // config.num_minibatches} sample are too small to normalise "
            "advantages; use fewer minibatches or a larger batch."
        )


# ----------------------------------------------------------------------------- single configs


def check_dppo_config(config: Any) -> None:
    """DPPO's own checks (:class:`~flowpolicy.algos.dppo.DPPOConfig`, after its blocks'):
    a residual critic's hidden sizes, positive rates, clips and step counts, ordered log-prob
    clamps, a DDIM chain no longer than the DDPM one, no more fine-tuned steps than the chain
    has, and (env step, denoising step) pairs that split into equal minibatches of at least 2."""
    if config.critic_residual:
        residual_shape(config.critic_hidden)
    require_positive(
        config,
        "actor_lr",
        "critic_lr",
        "clip_coef_base",
        "clip_coef_rate",
        "flow_clip_coef",
        "flow_noise_std",
        "noise_clip",
        "target_kl",
        "denoising_steps",
        "ft_denoising_steps",
        "ddim_steps",
    )
    require_range(config, "gamma_denoising", 0.0, 1.0)
    require_non_negative(
        config, "sampling_std_floor", "logprob_std_floor", "ddim_eta", "critic_warmup_iterations"
    )
    if config.logprob_min >= config.logprob_max:
        raise ValueError(
            f"need logprob_min < logprob_max, got {config.logprob_min} and {config.logprob_max}."
        )
    if config.ddim_steps is not None and config.ddim_steps > config.denoising_steps:
        raise ValueError(
            f"ddim_steps ({config.ddim_steps}) cannot exceed denoising_steps "
            f"({config.denoising_steps})."
        )
    if config.ft_denoising_steps > config.chain_steps:
        what = "flow_steps" if config.is_flow else "ddim_steps or denoising_steps"
        raise ValueError(
            f"ft_denoising_steps K' = {config.ft_denoising_steps} exceeds the chain's "
            f"{config.chain_steps} steps ({what}); pass --ft-denoising-steps "
            f"{config.chain_steps} or fewer."
        )
    if config.num_pairs % config.num_minibatches or config.num_pairs // config.num_minibatches < 2:
        raise ValueError(
            f"The batch of num_envs * num_steps * ft_denoising_steps = {config.num_pairs} "
            f"(env step, denoising step) pairs does not split into num_minibatches = "
            f"{config.num_minibatches} equal parts of at least 2. Change --num-minibatches, "
            "--num-steps or --num-envs."
        )


def check_reinflow_config(config: Any) -> None:
    """ReinFlow's own checks (:class:`~flowpolicy.algos.reinflow.ReinFlowConfig`, after its
    blocks'): positive rates and noise bounds, fractions in [0, 1], an ordered log-prob clamp,
    min_std below max_std, a warm-up shorter than the learning-rate cycle, cycle floors below
    their peaks, and a batch that splits into equal minibatches of at least 2."""
    require_positive(
        config,
        "actor_lr",
        "critic_lr",
        "min_std",
        "max_std",
        "noise_clip",
        "lr_cycle_iterations",
        "actor_min_lr",
        "critic_min_lr",
    )
    require_range(config, "noise_hold_fraction", 0.0, 1.0)
    require_range(config, "noise_decay_ratio", 0.0, 1.0)
    require_non_negative(config, "ent_coef", "bc_coef", "actor_weight_decay", "critic_weight_decay")
    require_interval(config, "log_prob_clamp")
    if config.min_std >= config.max_std:
        raise ValueError(
            f"min_std ({config.min_std}) must be smaller than max_std ({config.max_std}): the "
            "noise network's std lives in [min_std, upper bound]."
        )
    if not 0 <= config.lr_warmup_iterations < config.lr_cycle_iterations:
        raise ValueError(
            "need 0 <= lr_warmup_iterations < lr_cycle_iterations, got "
            f"{config.lr_warmup_iterations} and {config.lr_cycle_iterations}."
        )
    if config.lr_schedule == "cosine_restarts":
        for peak, floor in (("actor_lr", "actor_min_lr"), ("critic_lr", "critic_min_lr")):
            if getattr(config, floor) > getattr(config, peak):
                raise ValueError(
                    f"{floor} ({getattr(config, floor)}) exceeds {peak} ({getattr(config, peak)}): "
                    f"the cosine schedule runs between them. Lower --{floor.replace('_', '-')} "
                    "too, or pass --lr-schedule constant."
                )
    batch = config.batch_size
    if batch % config.num_minibatches or batch // config.num_minibatches < 2:
        raise ValueError(
            f"The batch of num_envs * num_steps = {config.num_envs} * {config.num_steps} = "
            f"{batch} samples must split into num_minibatches = {config.num_minibatches} equal "
            "parts of at least 2; change --num-steps, --num-envs or --num-minibatches."
        )


def check_rldt_config(config: Any) -> None:
    """RLDT's own checks (:class:`~flowpolicy.algos.rldt.RLDTConfig`, after its blocks'):
    positive sizes and rates, non-negative weights, at least two particles for a kernel field,
    and a min_extrp step inside the chain."""
    require_positive(
        config,
        "num_particles",
        "actor_lr",
        "actor_warmup_steps",
        "actor_chunk_states",
        "rbf_bandwidth",
    )
    require_non_negative(
        config, "svgd_temperature", "action_noise_std", "consistency_coef", "constraint_coef"
    )
    if config.field != "delta" and config.num_particles < 2:
        raise ValueError(
            f"the {config.field} field needs num_particles >= 2, got {config.num_particles}."
        )
    if config.exploration == "min_extrp" and not 0 <= config.min_extrp_step < config.flow_steps:
        raise ValueError(
            f"min_extrp_step must be in [0, flow_steps) = [0, {config.flow_steps}), got "
            f"{config.min_extrp_step}. The authors explore from the last two steps (6 of 8, "
            f"30 of 32): pass --min-extrp-step {max(config.flow_steps - 2, 0)}."
        )


# ----------------------------------------------------------------------------- a pretrained policy


def check_initial_policy(policy: nn.Module, obs_dim: int, config: Any, algo_name: str) -> None:
    """A pretrained policy must match the env and the config's chunking and flow steps."""
    expected = {
        "obs_dim": obs_dim,
        "chunk": config.chunk,
        "chunk_exec": config.chunk_exec,
        "flow_steps": config.flow_steps,
    }
    wrong = {name: value for name, value in expected.items() if getattr(policy, name) != value}
    if wrong:
        found = ", ".join(f"{name}={getattr(policy, name)}" for name in wrong)
        wanted = ", ".join(f"{name}={value}" for name, value in wrong.items())
        flags = " ".join(
            f"--{name.replace('_', '-')} {getattr(policy, name)}"
            for name in wrong
            if name != "obs_dim"
        )
        raise UserError(
            f"The initial policy has {found}, but this run expects {wanted}. "
            + (
                "The policy was trained for another environment; pretrain one for this env."
                if "obs_dim" in wrong
                else f"Pass {flags} so the {algo_name} config matches the policy."
            )
        )
