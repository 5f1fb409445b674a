"""A worker's MLflow store, prepared once: its tables created by one process, under a lock.

MLflow creates and migrates a SQL store's tables the first time a process opens it, without a
lock: the pool processes of a worker opening a new store together ran the migrations side by side
and could leave it half-migrated for good. So a worker prepares its store in its main process before
the pool forks (``worker.celery_app``), and every other opener (a pool process, a task, the
in-process registry) calls :func:`prepare_store` too, which finds it ready (one read) or takes the
store's lock (``store_lock``) and looks again before creating anything.

What is prepared, by store (docs/upgrade.md):

- **a store of its own** (the embedded sqlite file, or ``MLFLOW_TRACKING_URI`` naming a database):
  created when it does not exist or has no MLflow tables. One at another schema revision is never
  migrated (MLflow asks for a backup and ``mlflow db upgrade`` first); it is refused with the fix.
- **the tracking server's database** (``TRACKING_DATABASE_URI``): the server owns its schema. Workers
  only check it is at their MLflow's revision; they never create or migrate it.
- **a tracking server** (``http(s)://``): nothing to prepare.
"""

from __future__ import annotations

import logging

from hokusai_registry.errors import RegistryUnavailableError
from hokusai_registry.log import logging_kept
from hokusai_registry.settings import Settings
from hokusai_registry.store_uris import sqlite_file
from worker.registration.store_lock import schema_lock
from worker.registration.store_schema import StoreState, inspect_store, is_sql_store

logger = logging.getLogger(__name__)

#: How long a process waits for another one creating the store: many times what creating one takes
#: (bench/results has the figures), so a loaded machine does not time out.
LOCK_WAIT_S = 120.0


def prepare_store(uri: str, *, artifact_root: str | None, lock_wait_s: float = LOCK_WAIT_S) -> StoreState:
    """Make sure the SQL store ``uri`` (this product's own) exists at MLflow's schema; return its state.

    A ready store costs one read. Otherwise, under the store's lock and after looking again, a store
    that does not exist or has no tables yet is created as MLflow creates one (tables, migrations, the
    default experiment, whose artifacts go to ``artifact_root``). Any other state is returned as found:
    callers raise (:meth:`StoreState.raise_unless_ready`) or report it.

    Raises:
        RegistryUnavailableError: another process held the lock for ``lock_wait_s``.
        sqlalchemy.exc.OperationalError (and the driver's errors): the database cannot be reached.
    """
    path = sqlite_file(uri)
    try:
        state = inspect_store(uri)
    except Exception:
        if path is None:  # a database that does not answer: nothing to wait for
            raise
        state = None  # a sqlite file being created by another process may be locked: wait for it below
    if state is not None and state.condition != "not created":
        return state
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    shown = state.shown if state is not None else str(path)

    def waiting() -> None:
        logger.info("MLflow store %s: waiting for another process that is creating it", shown)

    with schema_lock(uri, wait_s=lock_wait_s, on_wait=waiting):
        state = inspect_store(uri)
        if state.condition == "not created":
            logger.info("MLflow store %s: creating MLflow's tables (once, under a lock)", shown)
            _create(uri, artifact_root)
            state = inspect_store(uri)
    return state


def _create(uri: str, artifact_root: str | None) -> None:
    """Open the store with MLflow's own SQL store, which creates what it finds missing; drop its connections.

    The connections are closed before the caller's process forks its pool: a child must not share them.
    """
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    with logging_kept():  # MLflow 3.4's migrations reconfigure logging (see hokusai_registry.log)
        store = SqlAlchemyStore(uri, artifact_root or "./mlruns")
    store.engine.dispose()


def open_for_registry(store_uri: str, *, server_owned: bool, artifact_root: str | None) -> None:
    """Before a registry opens its store: a ready schema, or RegistryUnavailableError (retried) saying why.

    A tracking server's URI needs nothing; the tracking server's database is checked, never created.
    """
    if server_owned:
        inspect_store(store_uri, server_owned=True).raise_unless_ready()
    elif is_sql_store(store_uri):
        prepare_store(store_uri, artifact_root=artifact_root).raise_unless_ready()


def prepare_worker_store(settings: Settings) -> bool:
    """At a worker's start, before its pool forks: prepare (or check) the store once; True when it is ready.

    Never raises, and waits long only for another worker creating the store. A database that does
    not answer (within ``CONNECT_TIMEOUT_S``) is a warning: the first job prepares the store, retrying while MLflow is
    down. A store the worker must not or cannot prepare is an ERROR naming the fix; its jobs retry.
    """
    database = settings.tracking_database_url
    uri = database or settings.tracking_uri
    try:
        open_for_registry(uri, server_owned=database is not None,
                          artifact_root=settings.artifact_location_for(uri))  # fmt: skip
    except RegistryUnavailableError as exc:
        logger.error("%s. Its jobs are retried until it is usable.", exc)
        return False
    except Exception:  # MLflow may be down at start-up; the first job will retry
        logger.warning("MLflow store not reachable at start-up; the first job prepares it", exc_info=True)
        return False
    return True
