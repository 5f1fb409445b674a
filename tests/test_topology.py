"""The compose topology with local processes (Docker cannot run here).

A tracking server on PostgreSQL with served artifacts, a Redis that wants a password, a worker,
and a producer in a separate process with its own folder: it shares no folder with the worker,
uploads its model to the tracking server and enqueues it; the webhook arrives at a receiver.
As in docker-compose.yml, the worker has the server's artifact folder (SERVED_ARTIFACTS_DESTINATION):
it reads the upload and writes the new model there itself, and a reader gets it through the server.
Passwords reach the processes as files (``*_FILE``), never on a command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import mlflow
import pytest
import redis
from mlflow.tracking import MlflowClient

from devtools.devstack import free_port, log_tail, private_redis_server, stop_process_group
from devtools.receiver import WebhookReceiver
from devtools.request_counter import RequestCounter
from tests.mlflow_server import fresh_database
from tests.test_webhooks_e2e import SECRET
from tests.worker_process import ROOT, WorkerProcess, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.server]

PRODUCER = """
import json, sys
import numpy as np, pandas as pd
from sklearn.linear_model import LogisticRegression
from producers import save_and_enqueue

rng = np.random.default_rng(7)
frame = pd.DataFrame(rng.random((40, 3)), columns=["f0", "f1", "f2"])
model = LogisticRegression().fit(frame, (frame["f0"] > 0.5).astype(int))
print(save_and_enqueue(model, json.loads(sys.argv[1])))
"""


def secret_file(folder: Path, name: str, value: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(value + "\n", encoding="utf-8")
    path.chmod(0o600)
    return str(path)


@contextmanager
def tracking_server(artifacts: Path, password_file: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``python -m hokusai_app.tracking_server`` as compose runs it: the password from a file."""
    with fresh_database() as database_uri:
        database = urlsplit(database_uri)
        port = free_port()
        env = {
            **os.environ,
            "POSTGRES_USER": database.username or "postgres",
            "POSTGRES_PASSWORD_FILE": password_file,
            "POSTGRES_HOST": database.hostname or "127.0.0.1",
            "POSTGRES_PORT": str(database.port),
            "POSTGRES_DB": database.path.lstrip("/"),
        }
        command = [sys.executable, "-m", "hokusai_app.tracking_server", "--artifacts-destination", str(artifacts),
                   "--host", "127.0.0.1", "--port", str(port), "--allowed-hosts", f"127.0.0.1:{port}"]  # fmt: skip
        log_path = artifacts.parent / "tracking-server.log"
        artifacts.mkdir(parents=True)
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)  # fmt: skip
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            assert process.poll() is None, log_tail(log_path)
            try:
                return httpx.get(f"{url}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_until(healthy, timeout_s=180, interval_s=0.5, what="the tracking server")
            yield url, process
        finally:
            stop_process_group(process, timeout_s=10)


def command_lines(pid: int) -> list[str]:
    """The command lines of ``pid`` and every process in its process group."""
    lines = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) == os.getpgid(pid):
                lines.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, ProcessLookupError):
            continue
    return lines


def test_a_pipeline_on_another_host_uploads_and_registers_through_the_stack(tmp_path: Path) -> None:
    password, db_password = uuid.uuid4().hex, uuid.uuid4().hex  # PostgreSQL here trusts loopback: any works
    artifacts = tmp_path / "server" / "artifacts"
    worker_dir, producer_dir = tmp_path / "worker", tmp_path / "producer"
    with (
        private_redis_server(tmp_path / "redis", password) as redis_url,  # StackError fails the test
        tracking_server(artifacts, secret_file(tmp_path / "server", "postgres_password", db_password)) as (
            tracking_url,
            server,
        ),
        WebhookReceiver(SECRET) as receiver,
        RequestCounter(tracking_url) as worker_view,  # counts the worker's requests to the server
    ):
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(redis_url).ping()  # no password, no access
        worker_env = {
            "MLFLOW_TRACKING_URI": worker_view.url,
            # as docker-compose.yml: the server's artifact volume is mounted into the worker too
            "SERVED_ARTIFACTS_DESTINATION": str(artifacts),
            "REDIS_URL": redis_url,
            "REDIS_PASSWORD_FILE": secret_file(worker_dir / "secrets", "redis_password", password),
            "WEBHOOK_URL": receiver.url,
            "WEBHOOK_SECRET_FILE": secret_file(worker_dir / "secrets", "webhook_secret", SECRET),
            "WEBHOOK_ALLOW_HTTP": "true",
            "HOKUSAI_HOME": str(worker_dir / "home"),
        }
        with WorkerProcess(worker_env, worker_dir) as worker:
            (producer_dir / "home").mkdir(parents=True)
            producer_env = {
                **{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HOKUSAI_", "REDIS_"))},
                "PYTHONPATH": str(ROOT),
                "HOKUSAI_HOME": str(producer_dir / "home"),
                "REDIS_URL": redis_url,
                "REDIS_PASSWORD_FILE": secret_file(producer_dir / "secrets", "redis_password", password),
                "UPLOAD_TRACKING_URI": tracking_url,
            }
            fields = {"kind": "baseline", "model_type": "classification", "token_id": "LEADS",
                      "metadata": {"dataset": "leads-2026-11"}, "tags": {"user_id": "u-42"}}  # fmt: skip
            produced = subprocess.run(
                [sys.executable, "-c", PRODUCER, json.dumps(fields)], cwd=producer_dir, env=producer_env,
                capture_output=True, text=True, timeout=180,
            )  # fmt: skip
            assert produced.returncode == 0, produced.stderr[-3000:]
            job_id = produced.stdout.strip().splitlines()[-1]
            (event,) = receiver.wait_for(1, timeout_s=120)
            worker_lines = command_lines(worker.process.pid)  # type: ignore[union-attr]
            server_lines = command_lines(server.pid)
            worker_log = worker.log_text()
        (version,) = MlflowClient(tracking_url).search_model_versions(f"tags.job_id = '{job_id}'")
        model_uuid = version.tags["model_uuid"]
        mlflow.set_tracking_uri(tracking_url)  # a reader without the setting: through the server
        downloaded = Path(mlflow.artifacts.download_artifacts(f"models:/{model_uuid}", dst_path=str(tmp_path / "r")))

    assert event["model"]["version"] == str(version.version) and event["model"]["name"] == version.name
    assert receiver.requests[0].hokusai_verified, "signed with the secret the worker read from its file"
    assert (artifacts / "hokusai-uploads" / job_id / "MLmodel").is_file(), "uploaded to the served artifacts"
    assert not any((worker_dir / "home").rglob("MLmodel")), "the worker read the upload from the server's store"
    artifact_routes = [r for r in worker_view.snapshot() if r.split()[1].startswith("/api/2.0/mlflow-artifacts")]
    (probe,) = artifact_routes  # the one check that the server serves what the worker writes there
    assert probe == "GET /api/2.0/mlflow-artifacts/artifacts", artifact_routes  # listing the probe folder
    assert "writing them straight to" in worker_log
    assert "View run" not in worker_log, "MLflow's run link costs a request per job; the worker suppresses it"
    # The registry's run is never active, so MLflow's log_model does not read it back (twice).
    assert "GET /api/2.0/mlflow/runs/get" not in worker_view.snapshot(), dict(worker_view.snapshot())
    assert (artifacts / "1" / "models" / model_uuid / "artifacts" / "MLmodel").is_file()
    assert (downloaded / "MLmodel").is_file()
    assert not (producer_dir / "home" / "staging").exists(), "the producer staged nothing locally"
    assert job_id in worker_log
    assert worker_lines and not any(password in line for line in worker_lines), "a password on a command line"
    assert any("mlflow" in line for line in server_lines)
    assert not any(db_password in line for line in server_lines), "the database password on a command line"
    assert password not in worker_log and SECRET.removeprefix("whsec_") not in worker_log


def test_upload_to_an_unreachable_server_publishes_nothing(
    redis_url: str, sk_model: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hokusai_registry.errors import ConfigurationError, RegistryUnavailableError
    from producers import save_and_enqueue
    from tests.support import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    fields = {"kind": "baseline", "model_type": "classification", "token_id": "LEADS"}
    with pytest.raises(RegistryUnavailableError, match="cannot reach the tracking server"):
        save_and_enqueue(sk_model, fields, upload_tracking_uri=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ConfigurationError, match="UPLOAD_TRACKING_URI must be the http"):
        save_and_enqueue(sk_model, fields, upload_tracking_uri="sqlite:///mlflow.db")
    assert redis.Redis.from_url(redis_url).dbsize() == 0, "nothing was published"
