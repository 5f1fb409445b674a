"""Several webhook endpoints, secret rotation, per-model order and trace context: real Redis, real
receivers on loopback, the official ``standardwebhooks`` verifier, and real workers SIGKILLed mid-retry."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from standardwebhooks import Webhook

from devtools import builders
from devtools.receiver import ScriptedResponse, WebhookReceiver
from hokusai_app.cli import main
from hokusai_registry.settings import Settings
from hokusai_registry.webhook_policy import configured_endpoints, new_secret
from producers import enqueue_registration
from producers.enqueue import webhook_task_id
from tests.queue_helpers import client_app, job_fields, save_model_dir, wait_result
from tests.worker_process import WorkerProcess, wait_until
from worker.webhooks.delivery import send_stored_event
from worker.webhooks.delivery_records import delivery_id
from worker.webhooks.endpoints import rotate_secret
from worker.webhooks.fanout import store_deliveries
from worker.webhooks.replay import replay_dead_letters
from worker.webhooks.store import EventStore

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def store(redis_url: str) -> Any:
    client = redis.Redis.from_url(redis_url)
    yield EventStore(client)
    client.close()


def write_endpoints(path: Path, *entries: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"endpoints": list(entries)}), encoding="utf-8")
    return path


def file_settings(path: Path, **overrides: Any) -> Settings:
    return Settings(webhook_endpoints_file=path, webhook_allow_http=True, webhook_read_timeout_s=2.0, **overrides)


def verifies(secret: str, request: Any) -> bool:
    try:
        Webhook(secret).verify(request.body, request.headers, json_parse=False)
    except Exception:  # WebhookVerificationError
        return False
    return True


def test_during_a_rotation_receivers_with_only_the_old_or_only_the_new_secret_accept_the_same_delivery(
    store: EventStore, tmp_path: Path
) -> None:
    old = new_secret()
    with WebhookReceiver(None) as receiver:  # records; the official verifier judges below
        path = write_endpoints(tmp_path / "endpoints.json", {"name": "site", "url": receiver.url,
                                                               "secrets": [{"secret": old}]})  # fmt: skip
        settings = file_settings(path)
        fresh = rotate_secret(path, "site")
        document = json.loads(path.read_text())
        assert [entry.get("expires_at") is None for entry in document["endpoints"][0]["secrets"]] == [True, False]
        assert path.stat().st_mode & 0o777 == 0o600
        (site,) = configured_endpoints(settings)
        expiry = site.secrets[1].expires_at
        assert expiry is not None and timedelta(hours=23) < expiry - datetime.now(UTC) <= timedelta(hours=24)

        event = builders.event("3", token_id="xray-7")
        first, _ = store_deliveries(store, event, ["site"])
        assert send_stored_event(store, first, settings=settings).status == "delivered"
        (request,) = receiver.requests
        assert len(request.headers["webhook-signature"].split(" ")) == 2
        assert verifies(old, request) and verifies(fresh, request)  # either receiver accepts it
        assert not verifies(new_secret(), request)

        # after the overlap the old secret no longer signs: a later rotation drops it from the file
        later = rotate_secret(path, "site", now=datetime.now(UTC) + timedelta(hours=25))
        assert len(json.loads(path.read_text())["endpoints"][0]["secrets"]) == 2  # later + fresh, not old
        assert configured_endpoints(settings)[0].active_secrets() == [later, fresh]


def test_a_dead_letter_replayed_after_a_rotation_is_signed_with_the_current_secrets(
    store: EventStore, tmp_path: Path
) -> None:
    old = new_secret()
    with WebhookReceiver(None) as receiver:
        receiver.script(404)
        path = write_endpoints(tmp_path / "endpoints.json", {"name": "site", "url": receiver.url,
                                                               "secrets": [{"secret": old}]})  # fmt: skip
        settings = file_settings(path)
        first, _ = store_deliveries(store, builders.event("3", token_id="xray-7"), ["site"])
        assert send_stored_event(store, first, settings=settings).status == "dead_lettered"
        fresh = rotate_secret(path, "site", keep_old_s=0)  # the old one expires at once
        report = replay_dead_letters(store, settings=settings, endpoint="site")
        assert report.delivered == [first]
        replayed = receiver.requests[-1]
        assert verifies(fresh, replayed) and not verifies(old, replayed)


def test_an_event_fans_out_to_each_matching_endpoint_independently_with_one_id_and_body(
    store: EventStore, tmp_path: Path
) -> None:
    with WebhookReceiver(None) as fast, WebhookReceiver(None) as failing, WebhookReceiver(None) as other:
        failing.script(500)
        secret = new_secret()
        path = write_endpoints(
            tmp_path / "endpoints.json",
            {"name": "fast", "url": fast.url, "secrets": [{"secret": secret}]},
            {"name": "failing", "url": failing.url, "secrets": [{"secret": secret}]},
            {"name": "analytics", "url": other.url, "secrets": [{"secret": secret}], "event_types": ["other"]},
        )
        settings = file_settings(path)
        event = builders.event("3", token_id="xray-7")
        first, others = store_deliveries(store, event, ["fast", "failing"], traceparent=TRACEPARENT)
        assert (first, others) == (event.event_id + "@fast", [event.event_id + "@failing"])
        assert store.claim_due(limit=10) == others  # scheduled at once for its own task
        assert send_stored_event(store, others[0], settings=settings).status == "retry"
        assert send_stored_event(store, first, settings=settings).status == "delivered"
        assert store.get(others[0]).attempts == 1  # type: ignore[union-attr]
        assert send_stored_event(store, others[0], settings=settings).status == "delivered"
        (a,), (b1, b2) = fast.requests, failing.requests
        assert a.body == b1.body == b2.body
        assert {r.headers["webhook-id"] for r in (a, b1, b2)} == {event.event_id}
        assert a.headers["traceparent"] == TRACEPARENT
        assert other.requests == []
        store_deliveries(store, event, ["fast", "failing"])  # a re-run starts nothing again
        assert store.claim_due(limit=10) == []


def test_a_later_version_waits_for_an_earlier_one_of_its_model_unless_it_was_dead_lettered(
    store: EventStore, tmp_path: Path
) -> None:
    with WebhookReceiver(None) as receiver:
        receiver.script(500)
        path = write_endpoints(tmp_path / "e.json", {"name": "site", "url": receiver.url,
                                                      "secrets": [{"secret": new_secret()}]})  # fmt: skip
        settings = file_settings(path, webhook_retry_schedule=(0.0,))
        v2, _ = store_deliveries(store, builders.event("2", token_id="xray-7"), ["site"])
        v3, _ = store_deliveries(store, builders.event("3", token_id="xray-7"), ["site"])
        assert send_stored_event(store, v2, settings=settings).status == "retry"
        waiting = send_stored_event(store, v3, settings=settings)
        assert waiting.status == "waiting" and waiting.attempt == 0 and "version 2" in (waiting.reason or "")
        assert len(receiver.requests) == 1
        receiver.script(404)
        assert send_stored_event(store, v2, settings=settings).status == "dead_lettered"
        assert store.claim_due(limit=10) == [v3]  # woken when v2 settled
        assert send_stored_event(store, v3, settings=settings).status == "delivered"
        assert [json.loads(r.body)["model"]["version"] for r in receiver.requests][-1] == "3"


@pytest.mark.slow
def test_a_version_waiting_behind_the_one_in_flight_goes_when_it_lands_not_at_the_next_poll(
    worker_env: dict[str, str], redis_url: str, staging: Path, sk_model: Any, tmp_path: Path
) -> None:
    """Two workers, one model: version 2's webhook waits while version 1's is in flight (a slow
    receiver), and is sent as soon as version 1 lands, although the schedule polls only every 60 s."""
    secret = new_secret()
    with WebhookReceiver(secret) as receiver:
        receiver.script(ScriptedResponse(200, delay_s=3))
        env = {**worker_env, "WEBHOOK_URL": receiver.url, "WEBHOOK_SECRET": secret, "WEBHOOK_ALLOW_HTTP": "true",
               "WEBHOOK_SCHEDULE_POLL_S": "60"}  # fmt: skip
        app = client_app(redis_url)
        with WorkerProcess(env, tmp_path) as first, WorkerProcess(env, tmp_path) as second:
            model_dir = save_model_dir(sk_model, staging)
            jobs = [enqueue_registration(job_fields(model_dir)) for _ in range(2)]
            for job_id in jobs:
                assert wait_result(app, webhook_task_id(job_id), timeout_s=45).result["status"] == "delivered"
            logs = first.log_text() + second.log_text()
    assert "waits for version 1 of" in logs, "version 2 did not wait: the test saw no overlap"
    versions = [json.loads(r.body)["model"]["version"] for r in receiver.requests]
    assert versions == ["1", "2"]
    gap = (receiver.requests[1].received_at - receiver.requests[0].received_at).total_seconds()
    assert gap < 10, f"version 2 arrived {gap:.1f} s after version 1 (the poll is 60 s)"


def test_a_legacy_event_stored_before_endpoints_is_the_default_endpoints_delivery(store: EventStore) -> None:
    event = store.save_if_absent(builders.event("3", token_id="xray-7"))
    record = store.get(event.event_id)
    assert record is not None and record.endpoint == "default" and record.delivery_id == event.event_id
    assert delivery_id(event.event_id) == event.event_id


@pytest.mark.slow
def test_a_worker_killed_mid_retry_with_several_endpoints_delivers_each_event_to_each_once(
    worker_env: dict[str, str], redis_url: str, staging: Path, sk_model: Any, tmp_path: Path
) -> None:
    secret_a, secret_b = new_secret(), new_secret()
    with WebhookReceiver(secret_a) as steady, WebhookReceiver(secret_b) as flaky:
        flaky.script(500, 500, 500)
        path = write_endpoints(
            tmp_path / "endpoints.json",
            {"name": "steady", "url": steady.url, "secrets": [{"secret": secret_a}]},
            {"name": "flaky", "url": flaky.url, "secrets": [{"secret": secret_b}]},
        )
        env = {**worker_env, "WEBHOOK_ENDPOINTS_FILE": str(path), "WEBHOOK_ALLOW_HTTP": "true",
               "WEBHOOK_BACKOFF_BASE_S": "", "WEBHOOK_RETRY_SCHEDULE": "0.3,3,0.3",
               "WEBHOOK_SCHEDULE_POLL_S": "0.5"}  # fmt: skip
        app = client_app(redis_url)
        worker = WorkerProcess(env, tmp_path).start()
        try:
            jobs = [enqueue_registration(job_fields(save_model_dir(sk_model, staging))) for _ in range(2)]
            for job_id in jobs:
                assert wait_result(app, webhook_task_id(job_id), timeout_s=90).result["status"] == "delivered"
            wait_until(lambda: len(flaky.requests) >= 3, timeout_s=60, what="the flaky endpoint's failures")
            worker.kill()
        finally:
            worker.kill()
        with WorkerProcess(env, tmp_path) as restarted:
            for job_id in jobs:
                outcome = wait_result(app, f"{webhook_task_id(job_id)}-flaky", timeout_s=90)
                assert outcome.result["status"] == "delivered", restarted.log_tail()
        for receiver in (steady, flaky):
            accepted = Counter(r.headers["webhook-id"] for r in receiver.requests if r.status == 200)
            assert len(accepted) == 2 and set(accepted.values()) == {1}, receiver.requests
            assert not any(r.duplicate for r in receiver.requests)
            assert all(r.hokusai_verified and r.standard_verified for r in receiver.requests)


def test_the_endpoints_commands_list_disable_enable_and_rotate_without_printing_old_secrets(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = new_secret()
    path = write_endpoints(tmp_path / "endpoints.json", {"name": "site", "url": "https://example.test/hook",
                                                           "secrets": [{"secret": old}]})  # fmt: skip
    monkeypatch.setenv("WEBHOOK_ENDPOINTS_FILE", str(path))
    runner = CliRunner()
    listed = runner.invoke(main, ["webhooks", "endpoints", "list"])
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout)[0]["name"] == "site" and old not in listed.output
    assert runner.invoke(main, ["webhooks", "endpoints", "disable", "site"]).exit_code == 0
    shown = json.loads(runner.invoke(main, ["webhooks", "endpoints", "show", "site"]).stdout)
    assert shown["enabled"] is False and shown["disabled_reason"] == "disabled by an operator"
    enabled = runner.invoke(main, ["webhooks", "endpoints", "enable", "site"])
    assert enabled.exit_code == 0 and json.loads(enabled.stdout) == {"endpoint": "site", "released": 0}
    assert runner.invoke(main, ["webhooks", "endpoints", "show", "nowhere"]).exit_code != 0
    rotated = runner.invoke(main, ["webhooks", "rotate-secret", "--endpoint", "site"])
    assert rotated.exit_code == 0 and old not in rotated.output
    assert rotated.stdout.strip().startswith("whsec_")
    failed = runner.invoke(main, ["webhooks", "failed", "--endpoint", "site"])
    assert failed.exit_code == 0 and json.loads(failed.stdout) == []
