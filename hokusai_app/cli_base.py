"""What every ``hokusai-registry`` command group shares: error display, settings, output, ``--since``.

``Group`` shows errors as ``Error: <message>`` and exits with the code ``exit_code_for`` gives;
machine-readable output (``echo_json``) goes to stdout, messages for humans (``note``) to stderr.
Heavy modules are imported inside the functions that need them, as in the commands.
"""

from __future__ import annotations

import json
import sys
import traceback
from datetime import datetime
from typing import Any, NoReturn

import click
from pydantic import ValidationError

from hokusai_app.exit_codes import ExitCode, exit_code_for
from hokusai_registry.errors import ConfigurationError, HokusaiError, InvalidInputError
from hokusai_registry.settings import Settings, describe_invalid, get_settings


class ProductError(click.ClickException):
    """``Error: <message>`` on stderr and the exit code of the table."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.exit_code = int(code)  # type: ignore[misc]  # click reads it from the instance


class Group(click.Group):
    """A group that shows errors as ``Error: <message>`` and exits with their code (``exit_code_for``).

    Product and MLflow errors carry no traceback; anything else is a bug: traceback, then ``INTERNAL``.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # click's own: usage errors exit 2, and the codes commands chose
        except Exception as exc:
            code = exit_code_for(exc)
            if code is ExitCode.INTERNAL:
                traceback.print_exc(file=sys.stderr)
                message = f"unexpected {type(exc).__name__}: {exc} (a bug: please report it with the traceback)"
            elif isinstance(exc, HokusaiError):
                message = str(exc)
            else:  # e.g. an MLflow store that refuses a request
                message = f"MLflow: {exc}"
            raise ProductError(message, code) from exc


def exit_with(code: ExitCode) -> NoReturn:
    sys.exit(int(code))


def load_settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:  # never echo the input: it may hold a password
        raise ConfigurationError(describe_invalid(exc)) from None


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def note(message: str) -> None:
    click.echo(message, err=True)


def since_option(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    """The ``--since`` callback: ``parse_since``, its errors as click's usage errors."""
    from hokusai_registry.records import parse_since  # Redis's client stays out of the CLI's start-up

    if value is None:
        return None
    try:
        return parse_since(value)
    except InvalidInputError as exc:
        raise click.BadParameter(str(exc)) from exc


SINCE_HELP = "ISO-8601 time with a zone, or naive = UTC (e.g. 2026-11-27T09:23:14)."
