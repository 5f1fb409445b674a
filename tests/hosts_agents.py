"""The programs ``tests/test_hosts.py`` runs inside its network namespaces, one per host role.

``python -m tests.hosts_agents receiver HOST PORT OUT``: a webhook receiver (``devtools.receiver``)
on ``HOST:PORT`` that writes every accepted event body, one JSON line each, to ``OUT``.

``python -m tests.hosts_agents pipeline``: a pipeline host. It reads one JSON command per line on
stdin and answers one JSON line on stdout, so the test drives it without a Python start-up per step
(mlflow's import is slow). Its settings (Redis, the tracking server, the object store) come from the
environment the test gives its namespace; it has its own ``HOKUSAI_HOME`` and temp folder.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tests.object_store import BUCKET, create_bucket, upload_folder


def run_receiver(host: str, port: int, out: Path, secret: str) -> None:
    """Serve until killed; rewrite ``out`` (atomically) whenever a new event is accepted."""
    from devtools.receiver import WebhookReceiver

    receiver = WebhookReceiver(secret, host, port).start()
    written = 0
    while True:
        events = receiver.events
        if len(events) != written:
            scratch = out.with_suffix(".tmp")
            scratch.write_text("".join(json.dumps(event) + "\n" for event in events), encoding="utf-8")
            scratch.replace(out)
            written = len(events)
        time.sleep(0.1)


class Pipeline:
    """The pipeline host's commands (each returns a JSON-able answer)."""

    def __init__(self, endpoint_url: str, server_url: str, redis_url: str) -> None:
        from celery import Celery
        from mlflow.tracking import MlflowClient

        from hokusai_registry.contract import CELERY_WIRE_SETTINGS

        self.endpoint_url = endpoint_url
        self.server_url = server_url
        self.app = Celery("hosts-pipeline", broker=redis_url, backend=redis_url)
        self.app.conf.update(CELERY_WIRE_SETTINGS)
        self.client = MlflowClient(server_url)
        self.model = _model()

    def bucket(self) -> str:
        create_bucket(self.endpoint_url)
        return BUCKET

    def upload(self, padding_mb: int = 0) -> str:
        """A model folder uploaded to the object store by the pipeline itself: its ``s3://`` URI.

        ``padding_mb``: an extra file of that size, so that registering it takes a while.
        """
        import mlflow.sklearn

        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch) / "model"
            mlflow.sklearn.save_model(self.model, str(folder), pip_requirements=["scikit-learn"])
            if padding_mb:
                (folder / "padding.bin").write_bytes(os.urandom(padding_mb * 1024 * 1024))
            return upload_folder(self.endpoint_url, folder, f"pipeline-uploads/{uuid.uuid4().hex}")

    def save_and_enqueue(self) -> str:
        """``save_and_enqueue`` uploading through the tracking server (``UPLOAD_TRACKING_URI``)."""
        from producers.pipeline import save_and_enqueue

        return save_and_enqueue(self.model, _fields())

    def enqueue(self, uri: str, count: int) -> list[str]:
        from producers import enqueue_registration

        return [enqueue_registration({**_fields(), "artifact_uri": uri}) for _ in range(count)]

    def states(self, ids: list[str]) -> dict[str, str]:
        return {job_id: self.app.AsyncResult(job_id).state for job_id in ids}

    def run_batch(self, uri: str, count: int, timeout_s: float) -> dict[str, Any]:
        """Enqueue ``count`` jobs and wait for them all: the seconds from the first enqueue to the last result."""
        started = time.monotonic()
        ids = self.enqueue(uri, count)
        deadline = started + timeout_s
        while True:
            states = self.states(ids)
            if all(state in {"SUCCESS", "FAILURE"} for state in states.values()) or time.monotonic() > deadline:
                return {"ids": ids, "states": states, "elapsed_s": time.monotonic() - started}
            time.sleep(0.2)

    def broker_state(self) -> dict[str, Any]:
        """What the broker holds: queue lengths, unacked messages, the restore mutex's TTL (for diagnostics)."""
        import redis

        client = redis.Redis.from_url(self.app.conf.broker_url)
        keys = sorted(key.decode() for key in client.scan_iter(count=1000) if not key.startswith(b"celery-task-meta"))
        return {
            "keys": keys[:50],
            "unacked": client.hlen("unacked"),
            "unacked_index": client.zrange("unacked_index", 0, -1, withscores=True),
            "mutex_ttl": client.ttl("unacked_mutex"),
            "now": time.time(),
        }

    def versions(self, ids: list[str]) -> dict[str, list[str]]:
        """Per job, the registered versions carrying its id (as ``name/version``)."""
        return {
            job_id: [f"{v.name}/{v.version}" for v in self.client.search_model_versions(f"tags.job_id = '{job_id}'")]
            for job_id in ids
        }

    def artifact_locations(self, ids: list[str]) -> list[str]:
        locations = []
        for job_id in ids:
            for found in self.client.search_model_versions(f"tags.job_id = '{job_id}'"):
                model_id = str(found.source).removeprefix("models:/")  # the version's source: the LoggedModel
                locations.append(self.client.get_logged_model(model_id).artifact_location)
        return locations


def run_pipeline(endpoint_url: str, server_url: str, redis_url: str) -> None:
    pipeline = Pipeline(endpoint_url, server_url, redis_url)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        try:
            answer = {"ok": getattr(pipeline, command["op"])(**command.get("args", {}))}
        except Exception as exc:  # the test shows it, with the command
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)


def _fields() -> dict[str, Any]:
    return {
        "kind": "baseline",
        "model_type": "classification",
        "metadata": {"dataset": "leads-2026-11"},
        "token_id": "LEADS",
        "tags": {"user_id": "u-42"},
    }


def _model() -> Any:
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(7)
    frame = pd.DataFrame(rng.random((40, 3)), columns=["f0", "f1", "f2"])
    return LogisticRegression().fit(frame, (frame["f0"] > 0.5).astype(int))


def main(argv: list[str]) -> None:
    if argv[0] == "receiver":
        run_receiver(argv[1], int(argv[2]), Path(argv[3]), os.environ["WEBHOOK_SECRET"])
    elif argv[0] == "pipeline":
        run_pipeline(os.environ["MLFLOW_S3_ENDPOINT_URL"], os.environ["UPLOAD_TRACKING_URI"], os.environ["REDIS_URL"])
    else:
        raise SystemExit(f"unknown agent {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
