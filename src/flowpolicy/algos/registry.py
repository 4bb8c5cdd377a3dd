"""Every algorithm ``flowpolicy train`` knows: one line each, its file's ``SPEC``.

Adding an algorithm is writing one file that ends with an ``AlgorithmSpec`` (see
``flowpolicy.algos.spec`` and docs/adding_an_algorithm.md) and adding its ``SPEC`` here; the
CLI's ``train NAME``, ``--preset``, the run's config.json and ``--init``'s policy check all
come from these entries.
"""

from __future__ import annotations

from typing import Any

from flowpolicy.algos import dppo, dsrl, fpo, fql, ppo, qam, reinflow, rldt
from flowpolicy.algos.spec import AlgorithmSpec
from flowpolicy.errors import UserError

ALGORITHMS: dict[str, AlgorithmSpec] = {
    spec.name: spec
    for spec in (
        ppo.SPEC,
        fpo.SPEC,
        rldt.SPEC,
        reinflow.SPEC,
        dppo.SPEC,
        qam.SPEC,
        fql.SPEC,
        dsrl.SPEC,
    )
}
"""The registered algorithms by ``flowpolicy train`` name, in the order the CLI lists them."""


def find_algorithm(name: str) -> AlgorithmSpec:
    """The algorithm registered as ``name``; UserError naming the choices."""
    if name not in ALGORITHMS:
        raise UserError(
            f"Unknown algorithm {name!r}. Choose one of: {', '.join(ALGORITHMS)} "
            "(FPO++ is `flowpolicy train fpo --preset fpo++`)."
        )
    return ALGORITHMS[name]


def spec_of_config(config: Any) -> AlgorithmSpec:
    """The algorithm whose config ``config`` is."""
    for spec in ALGORITHMS.values():
        if type(config) is spec.config:
            return spec
    raise TypeError(f"{type(config).__name__} is not the config of a registered algorithm")
