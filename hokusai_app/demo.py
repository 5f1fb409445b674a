"""The demo: the real pipeline on embedded defaults, from a fresh clone, in one command.

It uses database :data:`DEMO_REDIS_DB` of the Redis server at ``REDIS_URL`` (or starts a local
``redis-server`` when none answers), MLflow on a sqlite store under ``HOKUSAI_HOME``, one real
worker process and a local receiver that verifies both webhook signatures. The example pipeline
(``examples/train_pipeline.py``) runs as its own process, as a training job would, and enqueues
its model. The demo prints the ``ModelInfo``, the ``ModelVersion`` and the webhook the receiver
got, then stops what it started and deletes the Redis keys it created.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from devtools import devstack
from hokusai_registry.redaction import redact_url
from hokusai_registry.settings import Settings
from hokusai_registry.webhook_policy import new_secret

if TYPE_CHECKING:
    from devtools.receiver import WebhookReceiver

PIPELINE = devstack.PROJECT_ROOT / "examples" / "train_pipeline.py"

#: The demo's own Redis database: never 0 (what workers and pipelines use by default), nor the
#: tests' (15 and down, 14 for the oldest-MLflow pass).
DEMO_REDIS_DB = 7


def run_demo(settings: Settings, *, timeout_s: float = 180) -> dict[str, Any]:
    """Run one registration through the whole stack; return what it printed as a dict."""
    from devtools.receiver import WebhookReceiver

    home = settings.hokusai_home.resolve()
    logs = home / "logs"
    secret = new_secret()
    demo_url = devstack.with_redis_database(settings.redis_url, DEMO_REDIS_DB)
    with devstack.redis_server(demo_url, home / "redis") as server_url, WebhookReceiver(secret) as receiver:
        redis_url = devstack.with_redis_database(server_url, DEMO_REDIS_DB)  # a redis-server of its own, too
        with devstack.new_keys_removed(redis_url):  # entered first, left last: after the worker stopped
            status = _register_one(redis_url, settings, receiver, secret, logs, timeout_s)
    result = status["result"]
    request = receiver.requests[-1]
    return {
        "model_info": {key: result[key] for key in (
            "model_uuid", "model_uri", "artifact_path", "flavors", "signature", "mlflow_version", "metadata")},
        "model_version": _model_version(settings.tracking_uri, result["model_name"], result["version"]),
        "webhook": {
            "hokusai_signature_verified": request.hokusai_verified,
            "standard_webhooks_signature_verified": request.standard_verified,
            "idempotency_key": request.headers.get("x-hokusai-idempotency-key"),
            "body": json.loads(request.body),
        },
    }  # fmt: skip


def _register_one(
    redis_url: str, settings: Settings, receiver: WebhookReceiver, secret: str, logs: Path, timeout_s: float
) -> dict[str, Any]:
    """Start a worker, run the example pipeline, wait for its job and its webhook; the job's status."""
    from producers import wait_for_job

    env = {
        "REDIS_URL": redis_url,
        "HOKUSAI_HOME": str(settings.hokusai_home.resolve()),
        "MLFLOW_TRACKING_URI": settings.tracking_uri,
        "WEBHOOK_URL": receiver.url,
        "WEBHOOK_SECRET": secret,
        "WEBHOOK_ALLOW_HTTP": "true",
    }
    _step(f"Redis at {redact_url(redis_url)}; MLflow store {settings.tracking_uri}; receiver at {receiver.url}")
    with devstack.WorkerProcess(env, logs) as worker:
        _step(f"worker started (log: {worker.log_path})")
        job_id = _run_pipeline(env)
        _step(f"pipeline enqueued job {job_id}; waiting for the worker")
        status = wait_for_job(job_id, timeout_s, settings.model_copy(update={"redis_url": redis_url}))
        if status["state"] != "SUCCESS":
            raise click.ClickException(f"job {job_id} ended {status['state']}: {status['error']}\n"
                                       f"{worker.log_tail()}")  # fmt: skip
        receiver.wait_for(1, timeout_s=60)
    return status


def _run_pipeline(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, str(PIPELINE)],
        env={**os.environ, **env},
        cwd=devstack.PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise click.ClickException(f"the example pipeline failed:\n{done.stderr[-3000:]}")
    return str(json.loads(done.stdout.strip().splitlines()[-1])["job_id"])


def _model_version(tracking_uri: str, name: str, version: str) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    found = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).get_model_version(name, version)
    return {
        "name": found.name,
        "version": found.version,
        "source": found.source,
        "run_id": found.run_id,
        "status": found.status,
        "tags": dict(found.tags),
    }


def _step(message: str) -> None:
    click.echo(click.style("==> ", fg="cyan") + message, err=True)


def print_report(report: dict[str, Any]) -> None:
    """Print the three parts of a demo run, each as readable JSON."""
    for title, key in (("ModelInfo", "model_info"), ("ModelVersion", "model_version"), ("Webhook received", "webhook")):
        click.echo(click.style(f"\n{title}", bold=True))
        click.echo(json.dumps(report[key], indent=2, default=str))
