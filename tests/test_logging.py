"""The logger's console: a live bar on a terminal, plain lines otherwise, nothing when quiet."""

from __future__ import annotations

import io

from rich.console import Console

from flowpolicy.logging import Logger


def _logger(tmp_path, terminal: bool, quiet: bool = False) -> tuple[Logger, io.StringIO]:
    logger = Logger(tmp_path, tensorboard=False, quiet=quiet)
    out = io.StringIO()
    logger.console = Console(
        file=out, force_terminal=terminal, width=160, quiet=quiet, highlight=False
    )
    return logger, out


def test_plain_lines_when_not_a_terminal(tmp_path) -> None:
    logger, out = _logger(tmp_path, terminal=False)
    logger.progress(2048, 10_000, 1234.4, "return 1.00 | eval zero 2.00 random 3.00")
    logger.progress(4096, 10_000, 999.6, "return 1.50 | eval zero 2.00 random 3.00")
    logger.close()
    assert out.getvalue().splitlines() == [
        "step     2,048/10,000  1,234/s return 1.00 | eval zero 2.00 random 3.00",
        "step     4,096/10,000  1,000/s return 1.50 | eval zero 2.00 random 3.00",
    ]


def test_live_bar_on_a_terminal_shows_steps_speed_eta_and_returns(tmp_path) -> None:
    logger, out = _logger(tmp_path, terminal=True)
    assert logger.bar is None
    logger.progress(2048, 10_000, 1234.4, "return 1.00 | eval zero 2.00")
    assert logger.bar is not None
    logger.progress(4096, 10_000, 1500.0, "return 7.25 | eval zero 2.00")
    task = logger.bar.tasks[0]
    assert (task.completed, task.total, task.fields["sps"]) == (4096, 10_000, 1500.0)
    logger.close()
    text = out.getvalue()
    assert "step 4,096/10,000" in text and "1,500 steps/s ETA" in text
    assert "return 7.25" in text


def test_quiet_prints_nothing(tmp_path) -> None:
    logger, out = _logger(tmp_path, terminal=True, quiet=True)
    logger.progress(2048, 10_000, 1.0, "return 1.00")
    logger.close()
    assert logger.bar is None and out.getvalue() == ""
