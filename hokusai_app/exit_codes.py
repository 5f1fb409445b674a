"""The exit codes of the ``hokusai-registry`` command: the one table, and the one rule from errors to codes.

docs/cli.md shows this table (a test compares the two) and ``hokusai-registry --help`` prints it.
Every command exits with one of these codes; errors from ``hokusai_registry.errors`` are mapped
by :func:`exit_code_for`, nowhere else.
"""

from __future__ import annotations

import textwrap
from enum import IntEnum, unique

from hokusai_registry.errors import HokusaiError, NotFoundError, RetryableError


@unique
class ExitCode(IntEnum):
    """What the command's exit status means (the same for every command)."""

    OK = 0
    NOT_OK = 1
    USAGE = 2
    TIMEOUT = 3
    UNAVAILABLE = 4
    INTERNAL = 5

    @property
    def meaning(self) -> str:
        """One line for users: when a command exits with this code."""
        return _MEANINGS[self]


_MEANINGS = {
    ExitCode.OK: "done",
    ExitCode.NOT_OK: (
        "the command ran and the answer is no: what it names does not exist (`jobs status` reads UNKNOWN, "
        "no such failed job, event or quarantined message), `doctor` found a failing check, a job waited "
        "for with `--wait` failed, or a replayed event is still undelivered"
    ),
    ExitCode.USAGE: (
        "bad usage or invalid input: click's own usage errors, an invalid job, id, time or setting (nothing was done)"
    ),
    ExitCode.TIMEOUT: "`enqueue --wait` reached `--timeout` before the job finished (it may still finish)",
    ExitCode.UNAVAILABLE: (
        "a service is unreachable: Redis, or the MLflow store (after the command's own retries); "
        "try again once it is back"
    ),
    ExitCode.INTERNAL: "an unexpected error (a bug): the traceback is printed on stderr",
}


def exit_code_for(exc: BaseException) -> ExitCode:
    """The exit code of an error a command raised (the rule, once)."""
    if isinstance(exc, HokusaiError) and isinstance(exc, TimeoutError):  # JobTimeoutError: also retryable
        return ExitCode.TIMEOUT
    if isinstance(exc, NotFoundError):
        return ExitCode.NOT_OK
    if isinstance(exc, RetryableError):
        return ExitCode.UNAVAILABLE
    if isinstance(exc, HokusaiError) or type(exc).__module__.startswith("mlflow."):
        return ExitCode.USAGE  # permanent: the same input fails the same way
    return ExitCode.INTERNAL


def help_table(width: int = 78) -> str:
    """The table as plain text, for ``--help``."""
    return "\n".join(
        textwrap.fill(f"{code.value}  {code.name}: {code.meaning.replace('`', '')}", width, subsequent_indent="   ")
        for code in ExitCode
    )
