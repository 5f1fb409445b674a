"""Logging: every line of a job carries its job_id, model_uuid, version and event id.

``bind(job_id=...)`` sets the context for the current task; a filter copies it onto every
record, and ``LOG_FORMAT=json`` prints one JSON object per line. Secrets are never bound.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType

from hokusai_registry.contract import job_id_of_task
from hokusai_registry.redaction import redact_url
from hokusai_registry.settings import Settings

CONTEXT_FIELDS = ("job_id", "model_uuid", "version", "event_id")
_context: ContextVar[Mapping[str, str]] = ContextVar("hokusai_log_context", default=MappingProxyType({}))


def bind(**fields: object) -> None:
    """Add fields to the log context of the current task (None values are ignored)."""
    current = dict(_context.get())
    current.update({key: str(value) for key, value in fields.items() if value is not None})
    _context.set(current)


def clear() -> None:
    """Forget the log context (at the end of a task)."""
    _context.set({})


@contextmanager
def bound(**fields: object) -> Iterator[None]:
    """``bind`` for the length of a ``with`` block."""
    token = _context.set({**_context.get(), **{k: str(v) for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Copies the bound context onto each record (missing fields become '-').

    Celery's own lines about a task ("Received task", "succeeded", "retry") are logged outside
    the task's context, in the main process; their job id comes from the task id they carry.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        context = _context.get()
        if "job_id" not in context and (task_id := _celery_task_id(record)) is not None:
            context = {"job_id": job_id_of_task(task_id)}
        for field in CONTEXT_FIELDS:
            if getattr(record, field, None) is None:  # a logger's own ``extra`` wins
                setattr(record, field, context.get(field, "-"))
        return True


def _celery_task_id(record: logging.LogRecord) -> str | None:
    """The task id in a Celery log record's arguments (a dict with ``id``, or a task request)."""
    if not record.name.startswith("celery"):
        return None
    args = record.args
    if isinstance(args, Mapping):
        task_id = args.get("id")
    elif isinstance(args, tuple) and args:
        task_id = getattr(args[0], "id", None)
    else:
        task_id = None
    return task_id if isinstance(task_id, str) else None


class RedactUrlFilter(logging.Filter):
    """URLs in log arguments (httpx logs every request's full URL at INFO) shown by ``redact_url``.

    Scheme, host and path at most: never a query string or credentials.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(_redact_arg(arg) for arg in record.args)
        return True


def _redact_arg(arg: object) -> object:
    if type(arg).__name__ == "URL" or (isinstance(arg, str) and arg.startswith(("http://", "https://"))):
        return redact_url(str(arg))
    return arg


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message, context, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in CONTEXT_FIELDS:
            value = getattr(record, field, "-")
            if value != "-":
                entry[field] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


TEXT_FORMAT = (
    "%(asctime)s %(levelname)s %(name)s [job_id=%(job_id)s model_uuid=%(model_uuid)s "
    "version=%(version)s event_id=%(event_id)s] %(message)s"
)


def configure_logging(settings: Settings, *, loglevel: int | str | None = None) -> None:
    """Send logs to stderr in the configured format, with the job context on every line.

    ``loglevel`` (e.g. ``celery worker --loglevel DEBUG``) wins when it is more verbose than ``LOG_LEVEL``.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactUrlFilter())
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    level = logging.getLevelName(settings.log_level.upper())
    if loglevel is not None:
        asked = loglevel if isinstance(loglevel, int) else logging.getLevelName(str(loglevel).upper())
        level = min(level, asked) if isinstance(asked, int) else level
    root.setLevel(level)
    for noisy in ("urllib3", "alembic", "botocore", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # MLflow logs every failed database session (workers on the tracking database) with a traceback and
    # its SQL; the worker reports the failure once itself, in its retry warning or failure record.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


@contextmanager
def logging_kept() -> Iterator[None]:
    """Put back what code inside the block did to the logging configuration.

    MLflow 3.4 creates a SQL store's tables through alembic, whose ``env.py`` runs
    ``logging.config.fileConfig``: the root logger's handlers (our format, JSON, job context) are
    replaced and its level set to WARN for the rest of the process. The root logger's handlers and
    level, and every existing logger's level, are restored on exit.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    loggers = logging.root.manager.loggerDict
    levels = {name: logger.level for name, logger in loggers.items() if isinstance(logger, logging.Logger)}
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, logger in logging.root.manager.loggerDict.items():
            if isinstance(logger, logging.Logger):
                logger.setLevel(levels.get(name, logging.NOTSET))
