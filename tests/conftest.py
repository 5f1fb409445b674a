"""Shared fixtures: a real MLflow sqlite store per test, a real Redis database per test.

Services are never mocked and never skipped: a test that needs Redis or PostgreSQL fails
with a message naming the service when it is missing (``scripts/test.sh`` starts them).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.doc_samples import FreshInstall, make_fresh_install
from tests.support import STAGED_MODELS_ROOT, TEST_REDIS_URL, require_service


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No test reads the developer's settings, and each test's HOKUSAI_HOME is its own."""
    for key in list(os.environ):
        if key.startswith(
            (
                "WEBHOOK_",
                "MLFLOW_TRACKING",
                "MLFLOW_REGISTRY",
                "MLFLOW_SERVER_URL",
                "REDIS_URL",
                "HOKUSAI_HOME",
                "ALLOWED_ARTIFACT",
            )
        ):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOKUSAI_HOME", str(tmp_path / "home"))
    from hokusai_registry.settings import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
    _reset_mlflow_globals()


@pytest.fixture(autouse=True)
def _no_exit_flush_left_behind() -> Iterator[None]:
    """A test that spools to an outbox in this process does not leave pytest a flush to run at its exit."""
    yield
    import atexit

    from producers import outbox

    atexit.unregister(outbox._flush_at_exit)
    outbox._exit_flush.clear()


def _reset_mlflow_globals() -> None:
    """Forget the tracking and registry URIs a test set process-wide.

    ``HokusaiModelRegistry`` sets them globally (MLflow's SQL registry resolves ``models:/``
    through them), and MLflow also exports them as environment variables, which would point a
    later test's clients, and the worker processes it starts, at this test's store.
    """
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils

    mlflow.set_tracking_uri(None)  # also unsets MLFLOW_TRACKING_URI
    registry_utils._registry_uri = None
    os.environ.pop("MLFLOW_REGISTRY_URI", None)
    served_artifacts = sys.modules.get("worker.registration.served_artifacts")
    if served_artifacts is not None:  # a registry with SERVED_ARTIFACTS_DESTINATION installed it process-wide
        served_artifacts.uninstall()


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty sqlite store, made once; each test copies it (migrations take seconds)."""
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("mlflow-template")
    db = folder / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def tracking_uri(_mlflow_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh, real MLflow sqlite tracking store in this test's temp dir."""
    store = tmp_path / "mlflow"
    store.mkdir()
    shutil.copy(_mlflow_template, store / "mlflow.db")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture
def registry(tracking_uri: str):  # type: ignore[no-untyped-def]
    from worker.registration.registry import HokusaiModelRegistry

    return HokusaiModelRegistry(tracking_uri)


@pytest.fixture
def redis_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real Redis database reserved for tests, empty before and after the test."""
    import redis

    require_service("Redis", "127.0.0.1", 6379)
    client = redis.Redis.from_url(TEST_REDIS_URL)
    client.flushdb()
    monkeypatch.setenv("REDIS_URL", TEST_REDIS_URL)
    yield TEST_REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture
def sk_model():  # type: ignore[no-untyped-def]
    """A small fitted scikit-learn classifier on three named float columns."""
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(7)
    frame = pd.DataFrame(rng.random((40, 3)), columns=["f0", "f1", "f2"])
    target = (frame["f0"] > 0.5).astype(int)
    return LogisticRegression().fit(frame, target)


@pytest.fixture
def example_records() -> list[dict[str, float]]:
    return [{"f0": 0.1, "f1": 0.2, "f2": 0.3}, {"f0": 0.9, "f1": 0.8, "f2": 0.7}]


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    """$HOKUSAI_HOME/staging: where pipelines stage models, and the default allowed artifact root."""
    folder = tmp_path / "home" / "staging"
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def staged_models_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Producers accept the stand-in model folders of tests.support.staged_model (besides $HOKUSAI_HOME/staging)."""
    from hokusai_registry.settings import get_settings

    monkeypatch.setenv("ALLOWED_ARTIFACT_ROOTS", f"{STAGED_MODELS_ROOT},{os.environ['HOKUSAI_HOME']}/staging")
    get_settings.cache_clear()


@pytest.fixture
def worker_env(tracking_uri: str, redis_url: str) -> dict[str, str]:
    """Environment for a worker process sharing this test's MLflow store and Redis database."""
    return {"MLFLOW_TRACKING_URI": tracking_uri, "REDIS_URL": redis_url}


@pytest.fixture
def stand_in_worker(redis_url: str) -> Iterator[Any]:
    """A real Celery worker (thread, solo pool) with stand-in tasks under the contract's names.

    It proves that the message a producer publishes is what a worker defining
    ``register_model(job: dict) -> dict`` and ``emit_webhook(result: dict) -> dict`` consumes,
    without MLflow. A job whose metadata has ``refuse`` or whose artifact_uri ends in ``/refused`` fails.
    """
    from celery import Celery
    from celery.contrib.testing.worker import start_worker
    from kombu import Queue

    from hokusai_registry.contract import (
        CELERY_WIRE_SETTINGS,
        REGISTER_TASK,
        REGISTRATION_QUEUE,
        WEBHOOK_QUEUE,
        WEBHOOK_TASK,
        RegistrationJob,
    )
    from hokusai_registry.errors import InvalidJobError

    app = Celery("stand-in-worker", broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.update(
        **CELERY_WIRE_SETTINGS,
        task_queues=[Queue(REGISTRATION_QUEUE), Queue(WEBHOOK_QUEUE)],
        worker_hijack_root_logger=False,
    )

    @app.task(name=REGISTER_TASK, shared=False)  # shared tasks would leak into later apps
    def register_model(job: dict[str, Any]) -> dict[str, Any]:
        checked = RegistrationJob.model_validate(job)
        if checked.metadata.get("refuse") or checked.artifact_uri.endswith("/refused"):
            raise InvalidJobError("artifact_uri: the stand-in refuses this model")
        return {"job_id": str(checked.job_id), "model_id": f"hokusai_{checked.model_type}_baseline/1"}

    @app.task(name=WEBHOOK_TASK, shared=False)
    def emit_webhook(result: dict[str, Any]) -> dict[str, Any]:
        return {"delivered": True, "model_id": result["model_id"]}

    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=20):
        yield app


@pytest.fixture(scope="session")
def fresh_install(tmp_path_factory: pytest.TempPathFactory) -> FreshInstall:
    """A clean copy of the checkout with ``pip install ".[server]"`` in a fresh virtualenv, made once.

    The docs' samples that install and the operator walk-through share it (tests/doc_samples.py).
    """
    return make_fresh_install(tmp_path_factory.mktemp("fresh-install"))
