"""Make the benchmark scripts' sibling modules (``results``) importable, as the scripts do;
fixtures shared by the harness tests."""

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))


@pytest.fixture
def fake_training(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Replace the training subprocess: record the command and write done.json."""
    commands: list[list[str]] = []

    def execute(command: list[str], log_path: Path) -> int:
        commands.append(command)
        run_dir = (
            Path(command[-1])
            if "--resume" in command
            else Path(command[command.index("--run-dir") + 1])
        )
        (run_dir / "done.json").write_text('{"step": 64}')
        return 0

    import bench  # after the sys.path line above

    monkeypatch.setattr(bench, "execute", execute)
    return commands
