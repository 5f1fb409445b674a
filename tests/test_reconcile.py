"""Reconcile from MLflow: after Redis lost its data, the missing event arrives once, the delivered ones never again.

Real worker processes, real Redis (this test's database, flushed as a lost Redis would be), a real
receiver on loopback. The worker writes the MLflow record itself: the job's webhook fields as a
version tag at registration (``job_record_tags``), the delivered tag once a delivery succeeded
(``record_delivery``); the test only reads them.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from devtools.receiver import WebhookReceiver
from hokusai_app.cli_reconcile import reconcile as reconcile_command
from hokusai_registry.contract import WEBHOOK_QUEUE, RegistrationJob, webhook_task_id
from hokusai_registry.webhook_policy import DEFAULT_ENDPOINT
from producers import enqueue_registration
from tests.queue_helpers import client_app, job_fields, save_model_dir, wait_result
from tests.support import free_port
from tests.worker_process import WorkerProcess, wait_until
from worker.queues import queue_keys
from worker.registration import tags
from worker.registration.reads import RegistryStore
from worker.registration.registry import HokusaiModelRegistry
from worker.webhooks import mlflow_record
from worker.webhooks.event import build_event, event_id_for
from worker.webhooks.reconcile import rebuild_event, reconcile
from worker.webhooks.store import EventStore

pytestmark = pytest.mark.slow

SECRET = "whsec_" + base64.b64encode(b"hokusai-test-secret-0123456789ab").decode()
ENDPOINT = DEFAULT_ENDPOINT


def _registered(app: Any, client: MlflowClient, job_id: str) -> dict[str, Any]:
    """The worker's registration result; its version carries the job's webhook fields (the worker wrote them)."""
    result: dict[str, Any] = wait_result(app, job_id, timeout_s=90).result
    job = RegistrationJob.model_validate({**result["job"], "metadata": result["metadata"]})
    version_tags = client.get_model_version(result["model_name"], result["version"]).tags
    for key, value in mlflow_record.job_record_tags(job).items():
        assert version_tags.get(key) == value, f"the registration did not write {key}"
    return result


def _expected_event(result: dict[str, Any]) -> Any:
    """The event the task builds once it passes ``now=event_time(result)``."""
    job = RegistrationJob.model_validate({**result["job"], "metadata": result["metadata"]})
    return build_event(result, job, now=mlflow_record.event_time(result))


def test_after_redis_lost_its_data_reconcile_sends_the_undelivered_event_once_and_no_delivered_one(
    worker_env: dict[str, str], redis_url: str, tracking_uri: str, staging: Path, sk_model: Any, tmp_path: Path
) -> None:
    port = free_port()
    env = {**worker_env, "WEBHOOK_URL": f"http://127.0.0.1:{port}/hooks", "WEBHOOK_SECRET": SECRET,
           "WEBHOOK_ALLOW_HTTP": "true", "WEBHOOK_MAX_ATTEMPTS": "100"}  # fmt: skip
    app = client_app(redis_url)
    client = MlflowClient(tracking_uri)
    redis_client = redis.Redis.from_url(redis_url)
    store = EventStore(redis_client)

    with WorkerProcess(env, tmp_path / "first") as worker:
        # two versions delivered: the webhook task tags each version delivered
        with WebhookReceiver(SECRET, port=port) as first:
            delivered = []
            for token in ("leads-a", "leads-b"):
                job_id = enqueue_registration(job_fields(save_model_dir(sk_model, staging), token_id=token))
                result = _registered(app, client, job_id)
                outcome = wait_result(app, webhook_task_id(job_id), timeout_s=90).result
                assert outcome["status"] == "delivered", worker.log_tail()
                record = store.get(outcome["event_id"])
                assert record is not None and record.delivered_at is not None
                version_tags = client.get_model_version(result["model_name"], result["version"]).tags
                assert mlflow_record.delivered_at(version_tags, ENDPOINT) is not None, "the task did not tag it"
                delivered.append(result)
            assert len(first.events) == 2
        # the receiver is down now: the third version's event is never delivered
        job_id = enqueue_registration(job_fields(save_model_dir(sk_model, staging), token_id="leads-c"))
        missing = _registered(app, client, job_id)
        missing_id = event_id_for(missing["model_name"], missing["version"], missing["run_id"])
        wait_until(lambda: (r := store.get(missing_id)) is not None and r.attempts >= 1, timeout_s=60,
                   what="a failed attempt")  # fmt: skip

    first_build = store.get(missing_id)
    assert first_build is not None
    redis_client.flushdb()  # Redis lost its data: this test's database only
    assert store.get(missing_id) is None

    dry = CliRunner().invoke(reconcile_command, ["--dry-run"], catch_exceptions=False)
    assert dry.exit_code == 0, dry.output
    dry_report = json.loads(dry.stdout)
    assert dry_report["scanned"] == 3 and dry_report["already_delivered"] == 2
    assert [item["event_id"] for item in dry_report["would_send"]] == [missing_id]
    assert redis_client.dbsize() == 0, "a dry run writes nothing"

    registry_store = HokusaiModelRegistry(tracking_uri).store
    with WebhookReceiver(SECRET, port=port) as back, WorkerProcess(env, tmp_path / "second") as worker:
        sent = CliRunner().invoke(reconcile_command, [], catch_exceptions=False)
        assert sent.exit_code == 0, sent.output
        report = json.loads(sent.stdout)
        assert [(i["event_id"], i["job_id"]) for i in report["sent"]] == [(missing_id, missing["job_id"])]
        assert set(report) == {"scanned", "already_delivered", "sent"}
        back.wait_for(1, timeout_s=60)
        wait_until(lambda: (r := store.get(missing_id)) is not None and r.state == "delivered", timeout_s=30,
                   what="the re-sent event delivered")  # fmt: skip
        (request,) = back.requests
        assert request.status == 200 and request.hokusai_verified and request.standard_verified
        assert request.headers["webhook-id"] == missing_id
        assert request.body == _expected_event(missing).body, "the same body, byte for byte"
        # the first build (before the task passes now=event_time(result)) differs in its timestamp only
        assert {**json.loads(first_build.event.body), "timestamp": None} == {
            **json.loads(request.body),
            "timestamp": None,
        }

        assert mlflow_record.delivered_at(client.get_model_version(missing["model_name"], missing["version"]).tags,
                                          ENDPOINT) is not None, "the re-sent delivery was not tagged"  # fmt: skip
        last = reconcile(registry_store, store, app=app)
        assert last.delivered == 3 and last.items == []
        assert len(back.requests) == 1, worker.log_tail()

    for result in delivered:  # a rebuild is the event the task builds, byte for byte
        version = client.get_model_version(result["model_name"], result["version"])
        rebuilt, why_not = rebuild_event(registry_store, version)
        assert why_not is None and rebuilt is not None
        assert (rebuilt.event_id, rebuilt.body) == (_expected_event(result).event_id, _expected_event(result).body)


def test_reconcile_command_dry_run_sends_nothing_and_reports_what_it_would(
    redis_url: str, tracking_uri: str, registry: HokusaiModelRegistry, sk_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    job = RegistrationJob.model_validate(job_fields(Path("/unused"), token_id="leads-d"))
    result = registry.register_baseline(sk_model, "classification", metadata=job.metadata)
    untagged = registry.register_baseline(sk_model, "classification")
    for registered, extra in ((result, mlflow_record.job_record_tags(job)), (untagged, {})):
        for key, value in {tags.TAG_JOB_ID: str(job.job_id), **extra}.items():
            registry.client.set_model_version_tag(registered["model_name"], registered["version"], key, value)
    outcome = CliRunner().invoke(reconcile_command, ["--dry-run"], catch_exceptions=False)
    assert outcome.exit_code == 1, outcome.output  # the version without the record is unrecoverable
    assert '"would_send"' in outcome.stdout and '"unrecoverable"' in outcome.stdout
    assert redis.Redis.from_url(redis_url).dbsize() == 0, "nothing stored, nothing published"


def test_record_delivery_never_raises(registry: HokusaiModelRegistry, sk_model: Any) -> None:
    result = registry.register_baseline(sk_model, "classification")
    at = mlflow_record.event_time(result)
    assert at is not None
    assert mlflow_record.record_delivery(registry, result["model_name"], result["version"], ENDPOINT, at)
    version = registry.client.get_model_version(result["model_name"], result["version"])
    assert version.tags[f"{tags.TAG_WEBHOOK_DELIVERED_PREFIX}{ENDPOINT}"] == at.isoformat()
    assert mlflow_record.delivered_at(version.tags, ENDPOINT) == at
    assert not mlflow_record.record_delivery(registry, "no_such_model", "7", ENDPOINT, at)
    assert not mlflow_record.record_delivery(RegistryStore(registry.client, registry.store_uri),
                                             result["model_name"], result["version"], "bad name!", at)  # fmt: skip


def test_a_rebuilt_event_differs_from_the_first_build_only_in_the_order_of_unsorted_metadata_keys(
    registry: HokusaiModelRegistry, sk_model: Any
) -> None:
    """The documented limit: MLmodel is YAML and sorts the metadata keys; the values all come back."""
    job = RegistrationJob.model_validate(job_fields(Path("/unused"), metadata={"rows": 1, "dataset": "x"}))
    result = registry.register_baseline(sk_model, "classification", metadata=job.metadata)
    for key, value in {tags.TAG_JOB_ID: str(job.job_id), **mlflow_record.job_record_tags(job)}.items():
        registry.client.set_model_version_tag(result["model_name"], result["version"], key, value)
    first = build_event({**result, "job": job.model_dump(mode="json")}, job, now=mlflow_record.event_time(result))
    version = registry.client.get_model_version(result["model_name"], result["version"])
    rebuilt, _ = rebuild_event(registry.store, version)
    assert rebuilt is not None and rebuilt.event_id == first.event_id
    assert json.loads(rebuilt.body) == json.loads(first.body)
    assert list(json.loads(rebuilt.body)["model"]["metadata"]) == ["dataset", "rows"]


def test_events_the_event_store_still_holds_are_not_sent_again(
    redis_url: str, registry: HokusaiModelRegistry, sk_model: Any
) -> None:
    """Pending (the workers own it) and dead-lettered (``webhooks replay`` owns it): reported, never sent."""
    store = EventStore(redis.Redis.from_url(redis_url))
    built = []
    for token in ("leads-e", "leads-f"):
        job = RegistrationJob.model_validate(job_fields(Path("/unused"), token_id=token))
        result = registry.register_baseline(sk_model, "classification", metadata=job.metadata)
        for key, value in {tags.TAG_JOB_ID: str(job.job_id), **mlflow_record.job_record_tags(job)}.items():
            registry.client.set_model_version_tag(result["model_name"], result["version"], key, value)
        built.append(store.save_if_absent(build_event({**result, "job": job.model_dump(mode="json")}, job)))
    pending, dead = built
    store.dead_letter(dead.event_id, "endpoint answered 400")
    report = reconcile(registry.store, store, app=client_app(redis_url))
    assert sum(store.client.llen(key) for key in queue_keys(WEBHOOK_QUEUE)) == 0, "no deliver_webhook published"
    assert [(i.event_id, i.action) for i in report.items] == [(pending.event_id, "pending"),
                                                              (dead.event_id, "dead_lettered")]  # fmt: skip
    assert f"webhooks replay {dead.event_id}" in (report.items[1].reason or "")
