"""What an MLflow store URI says: its SQL dialect, its sqlite file, a tracking server, a password added.

Plain string rules on URIs, used by the settings, the worker's store preparation and the doctor.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

#: SQLAlchemy dialects of an MLflow backend store that workers may write directly (not sqlite: a
#: file on the server's host).
TRACKING_DATABASE_DIALECTS = ("postgresql", "mysql", "mssql")


def database_dialect(uri: str) -> str:
    """``postgresql+psycopg2://...`` → ``postgresql``: the SQLAlchemy dialect, without the driver."""
    return urlsplit(uri).scheme.split("+", 1)[0].lower()


def sqlite_file(uri: str) -> Path | None:
    """``sqlite:///path`` → its file; None for other URIs and in-memory databases."""
    if database_dialect(uri) != "sqlite":
        return None
    path = uri.split("://", 1)[1].removeprefix("/").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def with_password(url: str, password: str) -> str:
    """``url`` with ``password`` in its user-info, unless it has one already (or ``password`` is empty).

    >>> with_password("redis://redis:6379/0", "p@ss")
    'redis://:p%40ss@redis:6379/0'
    >>> with_password("postgresql://mlflow@postgres/mlflow", "pw")
    'postgresql://mlflow:pw@postgres/mlflow'
    """
    parts = urlsplit(url)
    if not password or parts.password is not None:
        return url
    user = quote(parts.username, safe="") if parts.username else ""
    netloc = f"{user}:{quote(password, safe='')}@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit(parts._replace(netloc=netloc))


def is_tracking_server(uri: str) -> bool:
    """True for an ``http(s)://`` MLflow tracking server, False for a local store (sqlite, file)."""
    return uri.startswith(("http://", "https://"))
