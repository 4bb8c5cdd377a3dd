"""Standalone policy files: one policy (weights, normalisers, constructor arguments) plus
metadata, readable without the run that made it.

A policy file is a torch file holding ``{"format": "flowpolicy-policy", "version": 1,
"class": "FlowPolicy" | "DiffusionPolicy" | "GaussianPolicy" | "DPPOPolicy" | "DSRLPolicy"
| "OneStepPolicy" (FQL),
"init_kwargs": {...},
"state_dict": {...}, "metadata": {...}}``. The policy is rebuilt from its class name and
constructor arguments, then its state (weights and normaliser buffers) is loaded.
``metadata`` holds what a user needs to know about it: env id, dimensions, dataset, returns.

:func:`load_policy_from` takes whatever a user is likely to pass: a policy file, or a
``flowpolicy pretrain`` or ``flowpolicy train`` run directory (the ``policy.pt`` both export at
every checkpoint: for a train run, the policy it evaluates).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from flowpolicy.algos.dppo import DPPOPolicy
from flowpolicy.algos.noise_steering import DSRLPolicy
from flowpolicy.algos.one_step_policy import OneStepPolicy
from flowpolicy.checkpoint import load_checkpoint, save_checkpoint
from flowpolicy.errors import UserError
from flowpolicy.policies import DiffusionPolicy, FlowPolicy, GaussianPolicy

POLICY_FORMAT = "flowpolicy-policy"
POLICY_VERSION = 1
POLICY_NAME = "policy.pt"
"""File name of the exported policy inside a pretrain run directory."""

POLICY_CLASSES: dict[str, type[nn.Module]] = {
    cls.__name__: cls
    for cls in (
        FlowPolicy,
        DiffusionPolicy,
        GaussianPolicy,
        DPPOPolicy,
        DSRLPolicy,
        OneStepPolicy,
    )
}
"""The classes a policy file can hold. A constructor argument written as ``{"class": NAME,
"init_kwargs": {...}}`` is a nested policy, rebuilt first (DPPO's split chain)."""

_WHAT_TO_PASS = (
    "Pass a policy file written by `flowpolicy pretrain` (RUN_DIR/policy.pt), a pretrain run "
    "directory, or a run directory made by `flowpolicy train`."
)


@dataclass
class PolicyFile:
    """A policy read from a file, with the metadata saved beside it."""

    policy: nn.Module
    metadata: dict[str, Any] = field(default_factory=dict)


def save_policy(
    path: str | Path, policy: nn.Module, metadata: dict[str, Any] | None = None
) -> None:
    """Write ``policy`` and ``metadata`` (JSON-serialisable) to ``path`` atomically.

    Raises:
        ValueError: ``policy`` is not one of the policy classes, or the metadata is not JSON.
    """
    name = type(policy).__name__
    if POLICY_CLASSES.get(name) is not type(policy):
        raise ValueError(f"cannot save a {name}; expected one of {sorted(POLICY_CLASSES)}")
    metadata = dict(metadata or {})
    json.dumps(metadata)  # fail here, not when someone reads the file
    save_checkpoint(
        path,
        {
            "format": POLICY_FORMAT,
            "version": POLICY_VERSION,
            "class": name,
            "init_kwargs": dict(policy.init_kwargs),
            "state_dict": policy.state_dict(),
            "metadata": metadata,
        },
    )


def read_policy_file(path: str | Path) -> PolicyFile:
    """Rebuild the policy in a policy file; its metadata comes along.

    Raises:
        UserError: the file is missing, damaged, or not a policy file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"No policy file at {path}. {_WHAT_TO_PASS}")
    try:
        payload = load_checkpoint(path)
    except UserError as error:
        raise UserError(
            f"Could not read the policy file {path}: it is damaged or not a torch file. "
            f"{_WHAT_TO_PASS}"
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != POLICY_FORMAT:
        raise UserError(
            f"{path} is not a flowpolicy policy file (a run's checkpoint.pt is not one either). "
            f"{_WHAT_TO_PASS}"
        )
    if payload.get("version", 0) > POLICY_VERSION:
        raise UserError(
            f"The policy file {path} has version {payload['version']}, newer than this "
            f"flowpolicy reads ({POLICY_VERSION}). Upgrade flowpolicy to read it."
        )
    policy_class = POLICY_CLASSES.get(payload.get("class", ""))
    if policy_class is None:
        raise UserError(
            f"The policy file {path} holds an unknown policy class {payload.get('class')!r} "
            f"(known: {', '.join(sorted(POLICY_CLASSES))}). Was it written by a newer flowpolicy?"
        )
    try:
        policy = policy_class(**_rebuild_nested(payload["init_kwargs"]))
        policy.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise UserError(
            f"The policy file {path} is damaged: its {payload['class']} could not be rebuilt "
            f"({type(error).__name__}: {error}). Export it again."
        ) from error
    policy.eval()
    return PolicyFile(policy, dict(payload.get("metadata", {})))


def _rebuild_nested(init_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments with every nested ``{"class", "init_kwargs"}`` built as a policy."""
    out = {}
    for name, value in init_kwargs.items():
        if isinstance(value, dict) and set(value) == {"class", "init_kwargs"}:
            value = POLICY_CLASSES[value["class"]](**_rebuild_nested(value["init_kwargs"]))
        out[name] = value
    return out


def load_policy_file(path: str | Path) -> nn.Module:
    """The policy in a policy file, ready to ``act(obs, mode)``."""
    return read_policy_file(path).policy


def load_policy_from(path: str | Path) -> nn.Module:
    """A policy from a policy file, or the ``policy.pt`` that a pretrain or train run directory
    exports at every checkpoint.

    Raises:
        UserError: nothing usable at ``path``; the message says what to pass instead.
    """
    path = Path(path)
    if path.is_file():
        return load_policy_file(path)
    if not path.is_dir():
        raise UserError(f"{path} does not exist. {_WHAT_TO_PASS}")
    if (path / POLICY_NAME).is_file():
        return load_policy_file(path / POLICY_NAME)
    if is_train_run_dir(path):
        raise UserError(
            f"{path} is a `flowpolicy train` run from before runs exported {POLICY_NAME}. "
            f"`flowpolicy train --resume {path}` writes it (a finished run only exports it), "
            "or evaluate the run with `flowpolicy eval`."
        )
    raise UserError(
        f"{path} holds no policy: it has no {POLICY_NAME} (a pretrain run writes one at its "
        f"first checkpoint) and is not a `flowpolicy train` run directory. {_WHAT_TO_PASS}"
    )


def is_train_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a run directory of ``flowpolicy train`` (its config names an
    algorithm; a pretrain run's does not)."""
    config = Path(path) / "config.json"
    return config.is_file() and "algo_name" in _json_keys(config)


def _json_keys(path: Path) -> set[str]:
    """Top-level keys of a JSON object file (empty if it is not one)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return set()
    return set(data) if isinstance(data, dict) else set()
