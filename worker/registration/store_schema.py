"""What state an MLflow SQL store's schema is in, read without changing anything.

MLflow keeps its schema revision in ``alembic_version``; a store is usable when that revision is
the head of the installed MLflow's migrations (MLflow itself refuses any other). Reading it here
creates no file, table or database: a sqlite file is opened read-only and only when it exists.
``hokusai-registry doctor`` and the workers' start-up read it; ``store_setup`` acts on it.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import sqlalchemy
from sqlalchemy.pool import NullPool

from hokusai_registry.errors import RegistryUnavailableError
from hokusai_registry.redaction import redact_url
from hokusai_registry.store_uris import TRACKING_DATABASE_DIALECTS, database_dialect, sqlite_file

#: Seconds to wait for one connection to a database store. MLflow opens one by retrying its first
#: connection 10 times over ~100 s, inside one task attempt (or a pool process's start-up, which Celery
#: gives 4 s); a database that does not answer fails within this instead, and Celery's backoff retries.
CONNECT_TIMEOUT_S = 3
#: alembic's table of the schema revision, and the prefix of the tables its sqlite "batch" steps
#: copy through (one left behind means a migration was cut off half-way).
VERSION_TABLE = "alembic_version"
LEFTOVER_PREFIX = "_alembic_tmp_"

Condition = Literal["ready", "not created", "out of date", "newer", "half-migrated"]


def is_sql_store(uri: str) -> bool:
    """A store MLflow keeps in a SQL database (sqlite file or server), not a tracking server or folder."""
    return sqlite_file(uri) is not None or database_dialect(uri) in TRACKING_DATABASE_DIALECTS


def open_engine(uri: str, timeout_s: float = CONNECT_TIMEOUT_S, *, read_only: bool = False) -> sqlalchemy.Engine:
    """An engine on ``uri`` that holds no connection between uses and fails within ``timeout_s``.

    ``read_only`` opens a sqlite file with ``mode=ro``: it must exist, and nothing is written.
    """
    path = sqlite_file(uri)
    if path is not None and read_only:
        target = f"{path.resolve().as_uri()}?mode=ro"
        return sqlalchemy.create_engine(
            "sqlite://", poolclass=NullPool, creator=lambda: sqlite3.connect(target, uri=True, timeout=timeout_s)
        )
    dialect = database_dialect(uri)
    connect_args = {"connect_timeout": int(timeout_s)} if dialect in {"postgresql", "mysql"} else {}
    return sqlalchemy.create_engine(uri, poolclass=NullPool, connect_args=connect_args)


@dataclass(frozen=True)
class StoreState:
    """A store's schema as found: its revision against the head of the installed MLflow."""

    uri: str
    condition: Condition
    revision: str | None
    #: Tables an interrupted migration left behind (``_alembic_tmp_*``).
    leftovers: tuple[str, ...] = ()
    #: The tracking server's own database (TRACKING_DATABASE_URI): the server creates and migrates it.
    server_owned: bool = False

    @property
    def ready(self) -> bool:
        return self.condition == "ready"

    @property
    def head(self) -> str:
        return schema_head()

    @property
    def shown(self) -> str:
        return redact_url(self.uri)

    def describe(self) -> str:
        """What was found, in one clause."""
        if self.condition == "ready":
            return f"schema at revision {self.head}, the one MLflow {_mlflow_version()} needs"
        if self.condition == "not created":
            if self.server_owned:
                return "has no MLflow tables yet; the tracking server creates them when it starts on it"
            return "not created yet; the first worker creates it"
        if self.condition == "out of date":
            return f"schema at revision {self.revision}, out of date: MLflow {_mlflow_version()} needs {self.head}"
        if self.condition == "newer":
            return (f"schema at revision {self.revision}, which MLflow {_mlflow_version()} does not know "
                    "(a newer MLflow migrated it)")  # fmt: skip
        left = f"tables {', '.join(self.leftovers)} left by" if self.leftovers else "MLflow's tables missing after"
        return f"half-migrated: schema at revision {self.revision or 'none'}, {left} an interrupted migration"

    def fix(self) -> str | None:
        """How an operator makes the store usable; None when it is, or a worker will create it."""
        if self.condition == "ready" or (self.condition == "not created" and not self.server_owned):
            return None
        if self.condition == "not created":
            return "start the tracking server on this database (workers never create its tables)"
        if self.condition == "newer":
            return "run the MLflow version that migrated it (the tracking server's) on this host"
        drop = f"drop the tables {', '.join(self.leftovers)}, " if self.leftovers else ""
        return (f"stop the workers, back the store up, {drop}run `mlflow db upgrade {self.shown}`, start them "
                "again (docs/upgrade.md)")  # fmt: skip

    def raise_unless_ready(self) -> None:
        """Raises RegistryUnavailableError (retried): the store cannot be used until the fix is applied."""
        if not self.ready:
            fix = self.fix()
            raise RegistryUnavailableError(
                f"MLflow store {self.shown} is not usable: {self.describe()}" + (f"; fix: {fix}" if fix else "")
            )


def inspect_store(uri: str, *, server_owned: bool = False, timeout_s: float = CONNECT_TIMEOUT_S) -> StoreState:
    """Read the schema state of the SQL store ``uri``; writes nothing, creates nothing.

    Raises:
        sqlalchemy.exc.OperationalError (and the driver's errors): the database cannot be reached.
    """
    path = sqlite_file(uri)
    if path is not None and not path.exists():
        return StoreState(uri, "not created", None, server_owned=server_owned)
    engine = open_engine(uri, timeout_s, read_only=True)
    try:
        with engine.connect() as connection:
            tables = set(sqlalchemy.inspect(connection).get_table_names())
            revision = None
            if VERSION_TABLE in tables:
                revision = connection.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}").scalar()
    finally:
        engine.dispose()
    leftovers = tuple(sorted(name for name in tables if name.startswith(LEFTOVER_PREFIX)))
    mlflow_tables = {name for name in tables if not name.startswith(("alembic_", LEFTOVER_PREFIX))}
    condition: Condition
    if revision is None and not leftovers:
        condition = "not created"  # an empty database, or tables whose first migration never ran
    elif revision == schema_head():
        condition = "ready"  # leftovers at the head are harmless to MLflow, which uses such a store
    elif revision is not None and revision not in known_revisions():
        condition = "newer"
    elif leftovers or not mlflow_tables:
        condition = "half-migrated"
    else:
        condition = "out of date"
    return StoreState(uri, condition, revision, leftovers, server_owned)


@lru_cache(maxsize=1)
def schema_head() -> str:
    """The schema revision the installed MLflow needs (the head of its migrations)."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    return str(_get_latest_schema_revision())


@lru_cache(maxsize=1)
def known_revisions() -> frozenset[str]:
    """Every schema revision the installed MLflow's migrations know."""
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    script = ScriptDirectory.from_config(_get_alembic_config(db_url=""))
    return frozenset(revision.revision for revision in script.walk_revisions())


def _mlflow_version() -> str:
    from importlib.metadata import version

    return version("mlflow")
