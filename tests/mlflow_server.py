"""A real ``mlflow server`` process on a fresh PostgreSQL database, for tests that go over REST.

``running_mlflow_server()`` is the context manager (any test may start its own, e.g. to bring
MLflow up in the middle of a test); ``mlflow_server`` is a module-scoped fixture built on it.
Use it from another test module with ``from tests.mlflow_server import mlflow_server``.

Each server gets its own database (``hokusai_test_<hex>``), dropped when the server stops,
so tests never see each other's models. A missing PostgreSQL fails the test, never skips it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import POSTGRES_HOST, POSTGRES_PORT, free_port, require_service

POSTGRES_USER = "postgres"
STARTUP_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 10.0


def _admin_connection():  # type: ignore[no-untyped-def]
    import psycopg2

    connection = psycopg2.connect(
        host=POSTGRES_HOST, port=POSTGRES_PORT, user=POSTGRES_USER, dbname="postgres", connect_timeout=10
    )
    connection.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
    return connection


@contextmanager
def fresh_database() -> Iterator[str]:
    """Create an empty PostgreSQL database; yield its SQLAlchemy URI; drop it afterwards."""
    require_service("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)
    name = f"hokusai_test_{uuid.uuid4().hex[:16]}"
    connection = _admin_connection()
    try:
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql+psycopg2://{POSTGRES_USER}@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.close()


def database_exists(uri: str) -> bool:
    name = uri.rsplit("/", 1)[1]
    connection = _admin_connection()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            return cursor.fetchone() is not None
    finally:
        connection.close()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (uvicorn workers included); SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_TIMEOUT_S)


@contextmanager
def running_mlflow_server(
    *, artifacts_dir: Path, port: int | None = None, backend_uri: str | None = None
) -> Iterator[str]:
    """Start ``mlflow server``; yield its URL, ``http://127.0.0.1:<port>``.

    The backend is ``backend_uri`` when given (a restarted server keeps its data), else a fresh
    PostgreSQL database that is dropped on exit. Waits (with a deadline) until ``/health``
    answers; on exit the server's process group is terminated. Fails the test, with the
    server's log, if it cannot start.
    """
    if backend_uri is None:
        with fresh_database() as fresh_uri:
            with running_mlflow_server(artifacts_dir=artifacts_dir, port=port, backend_uri=fresh_uri) as url:
                yield url
        return
    port = port or free_port()
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    log_path = artifacts_dir.parent / f"mlflow-server-{port}.log"
    with open(log_path, "wb") as log:
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", backend_uri,
            "--artifacts-destination", str(artifacts_dir),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--workers", "1",
            # Since MLflow 3.5 unknown Host headers get 403; name ours explicitly.
            "--allowed-hosts", f"127.0.0.1:{port},localhost:{port}",
        ]  # fmt: skip
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while not _healthy(url):
                if process.poll() is not None or time.monotonic() > deadline:
                    reason = (
                        f"exited with {process.returncode}" if process.poll() is not None else "timed out"
                    )
                    pytest.fail(f"mlflow server {reason} before {url}/health answered:\n{_tail(log_path)}")
                time.sleep(0.25)
            yield url
        finally:
            _stop(process)


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real MLflow tracking server (REST, PostgreSQL) shared by a test module; yields its URL."""
    with running_mlflow_server(artifacts_dir=tmp_path_factory.mktemp("mlflow-server") / "artifacts") as url:
        yield url
