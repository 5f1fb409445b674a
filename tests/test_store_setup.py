"""A new MLflow store is prepared once, under a lock, before any pool process or task opens it.

Real `celery -A worker worker` processes (two at once, two pool processes each) start on stores that
do not exist yet: a sqlite file, the embedded default under an empty HOKUSAI_HOME, and an empty
PostgreSQL database. Every job must succeed and the schema must be MLflow's head, clean.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing, contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from devtools import devstack
from hokusai_registry.errors import RegistryUnavailableError
from producers import enqueue_registration
from tests.mlflow_server import ADMIN_DSN
from tests.queue_helpers import client_app, job_fields, save_model_dir, wait_result
from tests.support import POSTGRES_HOST, POSTGRES_PORT, free_port, require_service
from tests.worker_process import WorkerProcess

pytestmark = pytest.mark.slow

#: Said once per store, by the one process that creates it (worker/registration/store_setup.py).
CREATED = "creating MLflow's tables (once, under a lock)"
#: What worker logs showed when several pool processes created one new store at once: migrations
#: run side by side (sqlite), concurrent CREATEs (PostgreSQL), a pool process that could not open it.
STORE_OPEN_FAILURES = ("CommandError", "table _alembic_tmp_", "Online migration expected", "OperationalError",
                       "UniqueViolation", "DuplicateTable", "MLflow not reachable at start-up")  # fmt: skip


#: Tables every MLflow 3 store has, that registrations write.
REGISTRY_TABLES = frozenset(
    {
        "experiments",
        "runs",
        "params",
        "tags",
        "registered_models",
        "model_versions",
        "model_version_tags",
        "logged_models",
    }
)


def schema_problems(uri: str) -> list[str]:
    """What keeps ``uri`` from being a clean store at MLflow's head, by MLflow's own functions."""
    from mlflow.store.db.utils import _get_latest_schema_revision, _get_schema_version

    engine = sqlalchemy.create_engine(uri)
    try:
        problems = []
        if (revision := _get_schema_version(engine)) != (head := _get_latest_schema_revision()):
            problems.append(f"schema at {revision}, not MLflow's head {head}")
        tables = set(sqlalchemy.inspect(engine).get_table_names())
        # Not MLflow's _all_tables_exist: on 3.4 it compares with an outdated list and is False on every store.
        if missing := sorted(REGISTRY_TABLES - tables):
            problems.append(f"MLflow's tables {missing} are missing")
        leftovers = [t for t in tables if t.startswith("_alembic_tmp_")]
        if leftovers:
            problems.append(f"left by an interrupted migration: {leftovers}")
        return problems
    finally:
        engine.dispose()


@contextmanager
def workers_started_together(env: dict[str, str], log_dir: Path, count: int) -> Iterator[list[WorkerProcess]]:
    """``count`` workers with 2 pool processes each, started at the same moment (they race for the store)."""
    workers = [WorkerProcess(env, log_dir, concurrency=2) for _ in range(count)]
    with ExitStack() as stack:
        for worker in workers:
            stack.callback(worker.stop)
        with ThreadPoolExecutor(count) as pool:
            list(pool.map(lambda worker: worker.start(ready_timeout_s=150), workers))
        yield workers


def run_jobs_on_new_store(
    env: dict[str, str], log_dir: Path, model_dir: Path, redis_url: str, *, workers: int, jobs: int
) -> str:
    """Start the workers on a store that does not exist yet, run ``jobs`` jobs; return the workers' logs."""
    app = client_app(redis_url)
    with workers_started_together(env, log_dir, workers) as started:
        job_ids = [enqueue_registration(job_fields(model_dir, metadata={"n": n})) for n in range(jobs)]
        results = [wait_result(app, job_id, timeout_s=120) for job_id in job_ids]
        logs = "\n".join(worker.log_text() for worker in started)
    failed = [f"{r.id} {r.state}: {str(r.result)[:300]}" for r in results if r.state != "SUCCESS"]
    assert not failed, "\n".join(failed)
    return logs


def assert_prepared_once(uri: str, logs: str) -> None:
    assert schema_problems(uri) == [], logs[-6000:]
    raced = [line for line in logs.splitlines() if any(text in line for text in STORE_OPEN_FAILURES)]
    assert raced == [], "\n".join(raced[:20])
    assert logs.count(CREATED) == 1, "one process of one worker created the store"


@pytest.mark.parametrize("store", ["sqlite file", "embedded default", "sqlite file, again"])
def test_workers_started_together_on_a_new_sqlite_store_create_it_once_and_every_job_succeeds(
    store: str, redis_url: str, staging: Path, sk_model: Any, tmp_path: Path
) -> None:
    home = tmp_path / "home"  # HOKUSAI_HOME (conftest): only the staging folder in it, no store
    if store == "embedded default":
        env: dict[str, str] = {}
        uri = f"sqlite:///{(home / 'mlflow.db').resolve()}"
    else:
        uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
        env = {"MLFLOW_TRACKING_URI": uri}
    assert not (home / "mlflow.db").exists() and not (tmp_path / "new").exists()
    model_dir = save_model_dir(sk_model, staging)

    logs = run_jobs_on_new_store(env, tmp_path / "logs", model_dir, redis_url, workers=2, jobs=4)

    assert_prepared_once(uri, logs)


def test_workers_started_together_on_an_empty_postgresql_database_create_it_once_and_every_job_succeeds(
    redis_url: str, staging: Path, sk_model: Any, tmp_path: Path
) -> None:
    require_service("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)
    model_dir = save_model_dir(sk_model, staging)
    with devstack.postgres_database(ADMIN_DSN) as uri:  # empty: no template, no tables
        assert schema_problems(uri) != []
        logs = run_jobs_on_new_store({"MLFLOW_TRACKING_URI": uri}, tmp_path / "logs", model_dir, redis_url,
                                     workers=2, jobs=4)  # fmt: skip
        assert_prepared_once(uri, logs)


def test_a_worker_starts_at_once_when_its_database_is_down_and_says_the_first_job_prepares_it(
    redis_url: str, tmp_path: Path
) -> None:
    uri = f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/mlflow"  # nothing listens there
    with WorkerProcess({"MLFLOW_TRACKING_URI": uri}, tmp_path, concurrency=2) as worker:
        log = worker.log_text()
    assert "MLflow store not reachable at start-up; the first job prepares it" in log, log[-3000:]
    assert "Timed out waiting for UP message" not in log, "the pool processes did not wait for the store"


def test_an_out_of_date_store_is_not_migrated_by_the_registry_and_the_error_says_how_to_fix_it(
    tracking_uri: str,
) -> None:
    from worker.registration.registry import HokusaiModelRegistry

    older = stamp_older_revision(tracking_uri)

    with pytest.raises(RegistryUnavailableError, match=r"out of date.*fix: .*`mlflow db upgrade sqlite:///"):
        HokusaiModelRegistry(tracking_uri)

    assert revision_of(tracking_uri) == older, "the store was left as it was"


def test_workers_never_create_the_tracking_servers_database_tables(tmp_path: Path) -> None:
    from worker.registration.registry import HokusaiModelRegistry

    require_service("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)
    with devstack.postgres_database(ADMIN_DSN) as database_uri:
        server = f"http://127.0.0.1:{free_port()}"  # the tracking server owns the schema
        with pytest.raises(RegistryUnavailableError, match="the tracking server creates them"):
            HokusaiModelRegistry(server, database_uri=database_uri)
        engine = sqlalchemy.create_engine(database_uri)
        try:
            assert sqlalchemy.inspect(engine).get_table_names() == []
        finally:
            engine.dispose()


# ---------------------------------------------------------------------------- helpers for old stores
def stamp_older_revision(sqlite_uri: str) -> str:
    """Stamp the store at the revision before MLflow's head (as a store of an older MLflow is); return it."""
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config, _get_latest_schema_revision

    older = ScriptDirectory.from_config(_get_alembic_config("")).get_revision(_get_latest_schema_revision())
    assert isinstance(older.down_revision, str)
    with closing(sqlite3.connect(sqlite_uri.removeprefix("sqlite:///"))) as connection, connection:
        connection.execute("UPDATE alembic_version SET version_num = ?", (older.down_revision,))
    return older.down_revision


def revision_of(sqlite_uri: str) -> str:
    with closing(sqlite3.connect(sqlite_uri.removeprefix("sqlite:///"))) as connection:
        return str(connection.execute("SELECT version_num FROM alembic_version").fetchone()[0])
