"""One lock per MLflow database, held while its schema is created: across processes, workers and hosts.

- sqlite: an exclusive ``flock`` on ``<file>.lock`` beside the database file (the file stays);
- PostgreSQL: a session advisory lock (advisory locks are per database);
- MySQL: ``GET_LOCK`` on a name that includes the database (its locks are per server).

Each is tried without blocking until a deadline, so a waiter gives up after ``wait_s``; a holder
that dies releases it (the file is closed, the session ends).
"""

from __future__ import annotations

import fcntl
import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy

from hokusai_registry.errors import ConfigurationError, RegistryUnavailableError
from hokusai_registry.redaction import redact_url
from hokusai_registry.store_uris import database_dialect, sqlite_file
from worker.registration.store_schema import open_engine

#: The lock's name (MySQL), and the source of its PostgreSQL key.
LOCK_NAME = "hokusai-registry:mlflow-schema"
#: PostgreSQL's advisory lock key: a signed 64-bit number derived from LOCK_NAME.
ADVISORY_KEY = int.from_bytes(hashlib.sha256(LOCK_NAME.encode()).digest()[:8], "big", signed=True)
POLL_S = 0.2


@contextmanager
def schema_lock(uri: str, *, wait_s: float, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold the schema lock of the database ``uri`` for the block.

    ``on_wait`` is called once when another process holds it.

    Raises:
        RegistryUnavailableError: another process held it for ``wait_s``.
        ConfigurationError: no lock is known for the database's dialect.
        sqlalchemy.exc.OperationalError (and the driver's errors): the database cannot be reached.
    """
    path = sqlite_file(uri)
    dialect = database_dialect(uri)
    if path is not None:
        with _file_lock(path.with_name(f"{path.name}.lock"), uri, wait_s, on_wait):
            yield
    elif dialect in {"postgresql", "mysql"}:
        with _database_lock(uri, dialect, wait_s, on_wait):
            yield
    else:
        raise ConfigurationError(
            f"workers create an MLflow store on sqlite, PostgreSQL or MySQL, not {dialect}: create it once with "
            f"`mlflow server --backend-store-uri {redact_url(uri)}`"
        )


def _poll(try_once: Callable[[], bool], uri: str, wait_s: float, on_wait: Callable[[], None] | None) -> None:
    deadline = time.monotonic() + wait_s
    waited = False
    while not try_once():
        if not waited and on_wait is not None:
            on_wait()
        waited = True
        if time.monotonic() > deadline:
            raise RegistryUnavailableError(
                f"another process has held the schema lock of {redact_url(uri)} for {wait_s:g}s (creating the store)"
            )
        time.sleep(POLL_S)


@contextmanager
def _file_lock(lock_path: Path, uri: str, wait_s: float, on_wait: Callable[[], None] | None) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as handle:

        def try_once() -> bool:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        _poll(try_once, uri, wait_s, on_wait)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextmanager
def _database_lock(uri: str, dialect: str, wait_s: float, on_wait: Callable[[], None] | None) -> Iterator[None]:
    engine = open_engine(uri)
    try:
        with engine.connect() as raw:
            connection = raw.execution_options(isolation_level="AUTOCOMMIT")  # a session lock, no open transaction
            if dialect == "postgresql":
                take = sqlalchemy.text("SELECT pg_try_advisory_lock(:key)").bindparams(key=ADVISORY_KEY)
                release = sqlalchemy.text("SELECT pg_advisory_unlock(:key)").bindparams(key=ADVISORY_KEY)
            else:
                name = f"{LOCK_NAME}:{connection.exec_driver_sql('SELECT DATABASE()').scalar()}"[:64]
                take = sqlalchemy.text("SELECT GET_LOCK(:name, 0)").bindparams(name=name)
                release = sqlalchemy.text("SELECT RELEASE_LOCK(:name)").bindparams(name=name)
            _poll(lambda: bool(connection.execute(take).scalar()), uri, wait_s, on_wait)
            try:
                yield
            finally:
                connection.execute(release)
    finally:
        engine.dispose()
