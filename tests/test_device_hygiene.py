"""Algorithms create tensors on the device of their inputs: every torch factory call in the
library's math (algorithms, flows, chains, policies, critics, buffers, returns) outside a
constructor names its device, or is listed below with the reason it need not.

A CPU-only machine cannot catch a tensor made on the wrong device at run time, so this reads
the source instead (the GPU tests in tests/test_device.py catch it at run time on CUDA)."""

from __future__ import annotations

import ast
from pathlib import Path

import flowpolicy

PACKAGE = Path(flowpolicy.__file__).parent
CHECKED = [
    *sorted((PACKAGE / "algos").glob("*.py")),
    *(PACKAGE / name for name in ("flows.py", "chains.py", "policies.py", "critics.py")),
    *(PACKAGE / name for name in ("buffers.py", "returns.py", "ddpm.py")),
]
FACTORIES = {
    "arange",
    "as_tensor",
    "empty",
    "eye",
    "full",
    "linspace",
    "ones",
    "rand",
    "randint",
    "randn",
    "randperm",
    "tensor",
    "zeros",
}
ALLOWED = {
    # Built once at construction, inside the runner's torch.device(...) context.
    ("denoising_mdp.py", "clip_schedule"),
    ("denoising_mdp.py", "denoising_discounts"),
    ("ddpm.py", "cosine_beta_schedule"),
    # A few integers, moved by its one caller (DiffusionPolicy.timesteps) with .to(device).
    ("ddpm.py", "ddim_timesteps"),
    # Drawn from the CPU generator on purpose (the same draws on every device), then moved.
    ("onpolicy.py", "minibatch_indices"),
    ("buffers.py", "sample_round"),
    ("buffers.py", "sample_transitions"),
}


def _undevice_calls(path: Path) -> list[str]:
    found = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            name = function
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = child.name
            if (
                isinstance(child, ast.Call)
                and isinstance(child.func, ast.Attribute)
                and isinstance(child.func.value, ast.Name)
                and child.func.value.id == "torch"
                and child.func.attr in FACTORIES
                and not any(keyword.arg == "device" for keyword in child.keywords)
                and function not in (None, "__init__")
                and (path.name, function) not in ALLOWED
            ):
                found.append(f"{path.name}:{child.lineno} torch.{child.func.attr} in {function}")
            visit(child, name)

    visit(ast.parse(path.read_text()), None)
    return found


def test_factory_calls_outside_constructors_name_their_device() -> None:
    offenders = [call for path in CHECKED for call in _undevice_calls(path)]
    assert offenders == [], "pass device= (or use *_like):\n" + "\n".join(offenders)


def test_the_allow_list_names_functions_that_exist() -> None:
    names = {
        (path.name, node.name)
        for path in CHECKED
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef)
    }
    assert names >= ALLOWED, ALLOWED - names
