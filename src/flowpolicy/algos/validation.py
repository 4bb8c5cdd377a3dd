"""Checks that turn a bad hyper-parameter into a message saying what is wrong and what to do.

Configs call these from ``__post_init__``; the CLI shows the ``ValueError`` text and exits 2.
"""

from __future__ import annotations

from typing import Any


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
