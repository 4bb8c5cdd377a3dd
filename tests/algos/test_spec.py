"""The worked example of docs/adding_an_algorithm.md, run as written: its file, registered with
its one line, passes the contract every registered algorithm passes, through the runner and the
CLI. If the example or the spec drifts, this fails."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

from flowpolicy.algos import registry
from flowpolicy.algos.spec import Algorithm, AlgorithmSpec
from tests.algos import test_contract as contract

DOC = Path(__file__).resolve().parents[2] / "docs" / "adding_an_algorithm.md"


@pytest.fixture
def vpg(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """The doc's algorithm file as a module, registered as its one line would register it."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    (source,) = [block for block in blocks if "SPEC = AlgorithmSpec(" in block]
    module = types.ModuleType("flowpolicy_example_vpg")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # dataclasses look it up
    exec(compile(source, str(DOC), "exec"), module.__dict__)
    monkeypatch.setitem(registry.ALGORITHMS, "vpg", module.SPEC)
    return module


def test_the_example_is_a_complete_registration(vpg) -> None:
    assert isinstance(vpg.SPEC, AlgorithmSpec) and vpg.SPEC.name == "vpg"
    contract.test_the_registration_is_complete("vpg")
    algo = contract.build("vpg")
    assert isinstance(algo, Algorithm)


def test_the_example_acts_updates_and_round_trips(vpg) -> None:
    contract.test_builds_acts_and_updates_on_the_device("vpg", "cpu")
    contract.test_a_restored_state_makes_the_same_update("vpg")


@pytest.mark.parametrize("start", ["scratch", "init"])
def test_the_example_resumes_exactly_through_the_runner(
    vpg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start: str
) -> None:
    contract.test_a_crashed_run_resumes_to_the_uninterrupted_numbers(
        tmp_path, monkeypatch, "vpg", "cpu", start
    )


# Registered here after import, the example is not in TrainConfig's union of configs (built
# from the registry when flowpolicy.train is imported), which tyro notes; its line in
# registry.py puts it there.
@pytest.mark.filterwarnings("ignore:.*does not match any type in Union")
def test_the_example_exports_its_policy_and_runs_from_the_cli(vpg, tmp_path: Path, capsys):
    contract.test_the_exported_policy_is_the_evaluated_one_on_any_device(
        tmp_path / "api", "vpg", "cpu"
    )
    contract.test_the_cli_trains_it_and_evaluates_the_run(tmp_path / "cli", "vpg", capsys)
