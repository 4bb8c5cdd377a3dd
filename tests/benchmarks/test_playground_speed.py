"""benchmarks/playground_speed.py on a tiny batch: every measurement runs and the page names
its command, machine and the bridge's cost."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mujoco_playground") is None,
    reason="MuJoCo Playground is not installed (pip install 'flowpolicy[playground]')",
)


def test_the_page_has_every_measurement(tmp_path: Path) -> None:
    from playground_speed import Options, main

    from flowpolicy.envs.playground import clear_compiled

    out = tmp_path / "speed.md"
    main(Options(envs=("CartpoleBalance",), num_envs=2, steps=2, out=out))
    clear_compiled()
    text = out.read_text()
    assert "--num-envs 2 --steps 2" in text and "Machine:" in text
    rows = [line for line in text.splitlines() if line.startswith("| CartpoleBalance")]
    assert [row.split(" | ")[1] for row in rows] == [
        "simulator",
        "bridge copy",
        "bridge dlpack",
        "rollout (fpo acting)",
    ]
    assert rows[1].endswith("% |") and rows[2].endswith("% |")
