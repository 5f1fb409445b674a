"""Object storage as the artifact store: workers on the tracking database write model files to S3 themselves.

A real ``mlflow server`` on PostgreSQL whose experiments live in ``s3://`` (``--default-artifact-root``)
and whose served artifacts are in the same bucket (``--artifacts-destination``), a real S3 endpoint on
loopback (moto's server, a stand-in for S3) and a real ``celery -A worker worker`` with
``TRACKING_DATABASE_URI`` and ``MLFLOW_S3_ENDPOINT_URL``: no folder is shared between the worker, the
server and the pipeline. A pipeline's upload through the server lands in the bucket, a job naming an
``s3://`` folder is read from it, and what the worker registered is in the bucket, where any client
reads it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from devtools import devstack
from devtools.receiver import WebhookReceiver
from hokusai_registry.settings import get_settings
from producers import enqueue_registration
from producers.pipeline import save_and_enqueue
from tests.mlflow_server import fresh_database
from tests.object_store import BUCKET, create_bucket, moto_server, object_keys, s3_env, upload_folder
from tests.queue_helpers import client_app, job_fields, save_model_dir, versions_of_job, wait_result
from tests.test_webhooks_e2e import SECRET
from tests.worker_process import WorkerProcess

pytestmark = [pytest.mark.slow, pytest.mark.server]

#: The server's artifact roots, both in the bucket.
EXPERIMENTS_ROOT = f"s3://{BUCKET}/mlflow"
SERVED_ROOT = f"s3://{BUCKET}/served"


@pytest.fixture
def object_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The S3 endpoint (with the bucket); this test process is one of its clients."""
    with moto_server(tmp_path / "moto") as endpoint:
        create_bucket(endpoint)
        for key, value in s3_env(endpoint).items():
            monkeypatch.setenv(key, value)
        yield endpoint


def test_workers_write_artifacts_to_the_object_store_and_read_s3_jobs(
    object_store: str, sk_model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ExitStack() as stack:
        redis_url = stack.enter_context(devstack.private_redis_server(tmp_path / "redis"))
        database_uri = stack.enter_context(fresh_database())
        server_url = stack.enter_context(
            devstack.mlflow_server(
                backend_uri=database_uri,
                artifacts_dir=tmp_path / "server" / "unused",
                # the last --artifacts-destination wins: the bucket, not devstack's folder
                extra_args=["--artifacts-destination", SERVED_ROOT, "--default-artifact-root", EXPERIMENTS_ROOT],
                env=s3_env(object_store),
            )
        )
        receiver = stack.enter_context(WebhookReceiver(SECRET))
        worker_home = tmp_path / "worker-home"
        env = {
            **s3_env(object_store),
            "REDIS_URL": redis_url,
            "MLFLOW_TRACKING_URI": server_url,
            "TRACKING_DATABASE_URI": database_uri.replace("postgresql+psycopg2://", "postgresql://"),
            "HOKUSAI_HOME": str(worker_home),
            "WEBHOOK_URL": receiver.url,
            "WEBHOOK_SECRET": SECRET,
            "WEBHOOK_ALLOW_HTTP": "true",
        }
        worker = stack.enter_context(WorkerProcess(env, tmp_path / "worker-logs", concurrency=1))
        monkeypatch.setenv("REDIS_URL", redis_url)
        get_settings.cache_clear()
        app = client_app(redis_url)

        # a pipeline on another host: its upload goes through the server into the bucket
        uploaded = save_and_enqueue(sk_model, _fields(), upload_tracking_uri=server_url)
        assert object_keys(object_store, f"served/hokusai-uploads/{uploaded}/"), "the upload is not in the bucket"
        # a job naming an s3:// folder the pipeline wrote itself
        folder = save_model_dir(sk_model, tmp_path / "pipeline")
        s3_uri = upload_folder(object_store, folder, f"pipeline-uploads/{uuid.uuid4().hex}")
        direct = enqueue_registration(job_fields(folder, artifact_uri=s3_uri))

        for job_id in (uploaded, direct):
            assert wait_result(app, job_id, timeout_s=120).state == "SUCCESS", worker.log_tail()
        events = receiver.wait_for(2, timeout_s=60)

        mlflow.set_tracking_uri(server_url)  # a reader: through the server (conftest forgets it)
        client = MlflowClient(server_url)
        registered = {job_id: versions_of_job(client, job_id) for job_id in (uploaded, direct)}
        assert {(event["model"]["name"], event["model"]["version"]) for event in events} == {
            (version.name, version.version) for versions in registered.values() for version in versions
        }
        for job_id, versions in registered.items():
            (found,) = versions
            logged = client.get_logged_model(str(found.source).removeprefix("models:/"))  # the version's LoggedModel
            version = found
            assert logged.artifact_location.startswith(f"{EXPERIMENTS_ROOT}/"), logged.artifact_location
            key_prefix = logged.artifact_location.removeprefix(f"s3://{BUCKET}/")
            keys = object_keys(object_store, key_prefix)
            assert any(key.endswith("/MLmodel") for key in keys), keys
            # any client reads the registered model from the bucket
            local = Path(mlflow.artifacts.download_artifacts(f"models:/{version.name}/{version.version}",
                                                             dst_path=str(tmp_path / "read" / job_id)))  # fmt: skip
            assert (local / "MLmodel").is_file()
        assert not (worker_home / "artifacts").exists(), "the worker wrote artifacts to a local folder"


def _fields() -> dict[str, Any]:
    """A baseline job's fields without ``artifact_uri`` (save_and_enqueue sets it)."""
    fields = job_fields(Path("unused"))
    del fields["artifact_uri"]
    return fields
