"""Every algorithm's presets: ``flowpolicy train ALGO --preset NAME``.

A preset (``flowpolicy.algos.spec.Preset``) is a function (or a config class) that returns an
algorithm config; each algorithm lists its presets in its registration line. Its docstring says
where the values come from (the authors' repository, file and commit where known) and where it
deviates; ``--help`` shows that docstring, and ``tests/algos/test_presets.py`` pins every
preset's values so that none can drift silently. The first preset of an algorithm is the one
``flowpolicy train ALGO`` uses; the name of the preset a run started from is recorded in its
``config.json`` together with the values that command-line options replaced.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flowpolicy.algos.registry import ALGORITHMS, find_algorithm
from flowpolicy.algos.spec import Preset
from flowpolicy.errors import UserError

PRESETS: dict[str, tuple[Preset, ...]] = {name: spec.presets for name, spec in ALGORITHMS.items()}
"""The presets of every algorithm, its default first (from each algorithm's registration)."""

ALGOS: tuple[str, ...] = tuple(PRESETS)


def find_preset(algo: str, name: str | None = None) -> Preset:
    """The preset ``name`` of ``algo`` (its default when None); UserError naming the choices."""
    presets = find_algorithm(algo).presets
    if name is None:
        return presets[0]
    for preset in presets:
        if preset.name == name:
            return preset
    every = "; ".join(f"{a}: {', '.join(p.name for p in PRESETS[a])}" for a in ALGOS)
    raise UserError(
        f"Unknown preset {name!r} for {algo}. Presets for {algo}: "
        f"{', '.join(p.name for p in presets)} (all presets, by algorithm: {every})."
    )


def overridden_values(preset: Preset, config: Any) -> dict[str, dict[str, Any]]:
    """The fields where ``config`` differs from ``preset``'s values:
    ``{field: {"preset": preset value, "value": config value}}``, in field order."""
    base = preset.config()
    if type(base) is not type(config):
        raise ValueError(f"preset {preset.name} makes {type(base).__name__} configs")
    out = {}
    for field in dataclasses.fields(config):
        ours, theirs = getattr(config, field.name), getattr(base, field.name)
        if ours != theirs:
            out[field.name] = {"preset": theirs, "value": ours}
    return out


def describe_overrides(preset: Preset, overrides: dict[str, dict[str, Any]]) -> str:
    """One line per replaced value, as the console shows it."""
    return "\n".join(
        f"--{name.replace('_', '-')} {change['value']!r} replaces preset {preset.name}'s "
        f"{change['preset']!r}"
        for name, change in overrides.items()
    )
