"""Helpers tests import (fixtures stay in conftest.py): services, ports and the test Redis database."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from devtools.devstack import free_port, port_open

__all__ = [
    "POSTGRES_HOST",
    "POSTGRES_PORT",
    "STAGED_MODELS_ROOT",
    "TEST_REDIS_DB",
    "TEST_REDIS_URL",
    "free_port",
    "port_open",
    "require_service",
    "staged_model",
]

#: The Redis database the tests own (flushed around each test); parallel runs pick others.
#: With pytest-xdist each worker process (gw0, gw1, ...) takes its own database, counting down from it.
TEST_REDIS_DB = int(os.environ.get("HOKUSAI_TEST_REDIS_DB", "15")) - int(
    os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0
)
TEST_REDIS_URL = f"redis://127.0.0.1:6379/{TEST_REDIS_DB}"
POSTGRES_HOST, POSTGRES_PORT = "127.0.0.1", 5432


#: Model folders (each holding an MLmodel file) under one allowed root, for tests that enqueue jobs
#: a stand-in worker consumes: validate_job checks that a local artifact exists before publishing.
STAGED_MODELS_ROOT = Path(tempfile.gettempdir()) / f"hokusai-test-models-{os.getpid()}"


def staged_model(name: str) -> str:
    """The path of a stand-in model folder ``name`` under :data:`STAGED_MODELS_ROOT` (made on first use)."""
    folder = STAGED_MODELS_ROOT / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "MLmodel").write_text("flavors: {}\n")
    return str(folder)


def require_service(name: str, host: str, port: int) -> None:
    """Fail (never skip) when a service the test needs is not reachable."""
    if not port_open(host, port):
        pytest.fail(f"{name} is not reachable on {host}:{port}; start it (scripts/services.sh does)")
