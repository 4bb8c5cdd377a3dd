"""Errors a user can fix: the CLI prints their message and exits with code 2, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (env id, hyper-parameter, run directory, file).

    The message is one paragraph that names what was wrong and what to do about it.
    """


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or inf; the update was not applied."""
