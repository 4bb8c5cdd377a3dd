"""Every algorithm's presets: ``flowpolicy train ALGO --preset NAME``.

A preset is a function (or a config class) that returns an algorithm config. Its docstring says
where the values come from (the authors' repository, file and commit where known) and where it
deviates; ``--help`` shows that docstring, and ``tests/algos/test_presets.py`` pins every
preset's values so that none can drift silently. The first preset of an algorithm is the one
``flowpolicy train ALGO`` uses; the name of the preset a run started from is recorded in its
``config.json`` together with the values that command-line options replaced.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flowpolicy.algos.dppo import DPPOConfig
from flowpolicy.algos.fpo import FPOConfig, fpo_finetune, fpo_plus_plus
from flowpolicy.algos.ppo import PPOConfig, ppo_fpo_paper
from flowpolicy.algos.qam import QAMConfig, qam_cpu, qam_rldt
from flowpolicy.algos.reinflow import ReinFlowConfig
from flowpolicy.algos.rldt import RLDTConfig, rldt_gym
from flowpolicy.errors import UserError


@dataclass(frozen=True)
class Preset:
    """A named starting config of one algorithm."""

    name: str
    """``--preset`` name."""
    algo: str
    """the algorithm (``flowpolicy train ALGO``)."""
    make: Callable[[], Any]
    """returns the config; its docstring names the source of the values."""

    @property
    def source(self) -> str:
        """Where the values come from: the docstring of :attr:`make`."""
        return inspect.getdoc(self.make) or ""

    def config(self) -> Any:
        return self.make()


PRESETS: dict[str, tuple[Preset, ...]] = {
    "ppo": (Preset("ppo", "ppo", PPOConfig), Preset("ppo-fpo-paper", "ppo", ppo_fpo_paper)),
    "fpo": (
        Preset("fpo", "fpo", FPOConfig),
        Preset("fpo++", "fpo", fpo_plus_plus),
        Preset("fpo-finetune", "fpo", fpo_finetune),
    ),
    "rldt": (Preset("rldt", "rldt", RLDTConfig), Preset("rldt-gym", "rldt", rldt_gym)),
    "reinflow": (Preset("reinflow", "reinflow", ReinFlowConfig),),
    "dppo": (Preset("dppo", "dppo", DPPOConfig),),
    "qam": (
        Preset("qam", "qam", QAMConfig),
        Preset("qam-cpu", "qam", qam_cpu),
        Preset("qam-rldt", "qam", qam_rldt),
    ),
}
"""The presets of every algorithm, its default first."""

ALGOS: tuple[str, ...] = tuple(PRESETS)


def find_preset(algo: str, name: str | None = None) -> Preset:
    """The preset ``name`` of ``algo`` (its default when None); UserError naming the choices."""
    if algo not in PRESETS:
        raise UserError(
            f"Unknown algorithm {algo!r}. Choose one of: {', '.join(ALGOS)} "
            "(FPO++ is `flowpolicy train fpo --preset fpo++`)."
        )
    presets = PRESETS[algo]
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
