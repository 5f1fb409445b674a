"""worker.webhooks.delivery against the real sample receiver on loopback (and a real Redis for stored events)."""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from devtools import builders
from devtools.receiver import ScriptedResponse, WebhookReceiver
from hokusai_registry.errors import (
    ConfigurationError,
    WebhookDeliveryError,
    WebhookEndpointGoneError,
    WebhookRejectedError,
)
from hokusai_registry.settings import Settings
from tests.support import free_port
from worker.webhooks.delivery import check_webhook_config, deliver, send_stored_event
from worker.webhooks.endpoints import EndpointStates, enable
from worker.webhooks.event import WebhookEvent
from worker.webhooks.store import EventStore

SECRET = "whsec_" + "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0xMjM0NQ=="
PLAIN_SECRET = "plain-text-secret-that-must-never-be-logged"


def make_settings(url: str | None, **overrides: Any) -> Settings:
    fields: dict[str, Any] = {
        "webhook_url": url,
        "webhook_secret": SECRET,
        "webhook_allow_http": True,  # the receiver is plain http on loopback
        "webhook_connect_timeout_s": 2.0,
        "webhook_read_timeout_s": 2.0,
    }
    fields.update(overrides)
    return Settings(**fields)


def make_event(version: str = "3") -> WebhookEvent:
    event: WebhookEvent = builders.event(version, token_id="xray-7")
    return event


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET) as running:
        yield running


def send(event: WebhookEvent, receiver: WebhookReceiver, **overrides: Any) -> Any:
    settings = make_settings(receiver.url, **overrides)
    return deliver(event, url=receiver.url, secret=SECRET, client=None, settings=settings)


# ---------------------------------------------------------------------- one attempt
def test_2xx_is_success_and_the_receiver_verifies_both_signatures(receiver: WebhookReceiver) -> None:
    receiver.script(202)
    event = make_event()
    result = send(event, receiver)
    assert (result.event_id, result.status_code, result.attempt) == (event.event_id, 202, 1)
    [request] = receiver.requests
    assert request.body == event.body
    assert request.hokusai_verified and request.standard_verified
    assert request.headers["x-hokusai-idempotency-key"] == request.headers["webhook-id"] == event.event_id
    assert request.headers["user-agent"].startswith("hokusai-registry/")
    assert receiver.wait_for(1, timeout_s=2) == [json_of(event)]


@pytest.mark.parametrize("status", [500, 502, 503, 408])
def test_5xx_and_408_are_retryable(receiver: WebhookReceiver, status: int) -> None:
    receiver.script(status)
    with pytest.raises(WebhookDeliveryError) as caught:
        send(make_event(), receiver)
    assert caught.value.status_code == status
    assert caught.value.retry_after_s is None


def test_429_carries_the_parsed_retry_after(receiver: WebhookReceiver) -> None:
    receiver.script(ScriptedResponse(429, headers={"Retry-After": "17"}))
    with pytest.raises(WebhookDeliveryError) as caught:
        send(make_event(), receiver)
    assert (caught.value.status_code, caught.value.retry_after_s) == (429, 17.0)


def test_503_with_an_http_date_retry_after(receiver: WebhookReceiver) -> None:
    later = datetime.now(UTC) + timedelta(seconds=120)
    receiver.script(ScriptedResponse(503, headers={"Retry-After": later.strftime("%a, %d %b %Y %H:%M:%S GMT")}))
    with pytest.raises(WebhookDeliveryError) as caught:
        send(make_event(), receiver)
    assert caught.value.retry_after_s is not None and 100 < caught.value.retry_after_s <= 120


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_other_4xx_are_permanent(receiver: WebhookReceiver, status: int) -> None:
    receiver.script(status)
    with pytest.raises(WebhookRejectedError) as caught:
        send(make_event(), receiver)
    assert caught.value.status_code == status
    assert not isinstance(caught.value, WebhookEndpointGoneError)


def test_410_means_endpoint_gone(receiver: WebhookReceiver) -> None:
    receiver.script(410)
    with pytest.raises(WebhookEndpointGoneError, match="gone") as caught:
        send(make_event(), receiver)
    assert caught.value.status_code == 410
    assert isinstance(caught.value, WebhookRejectedError)  # permanent


@pytest.mark.parametrize("client_follows", [False, True])
def test_302_is_not_followed_and_is_rejected(receiver: WebhookReceiver, client_follows: bool) -> None:
    receiver.script(ScriptedResponse(302, headers={"Location": receiver.url + "/moved"}))
    settings = make_settings(receiver.url)
    # Even a shared client configured to follow redirects must not follow one here.
    with httpx.Client(follow_redirects=client_follows) as client, pytest.raises(WebhookRejectedError) as caught:
        deliver(make_event(), url=receiver.url, secret=SECRET, client=client, settings=settings)
    assert caught.value.status_code == 302
    assert "redirects are not followed" in str(caught.value)
    assert len(receiver.requests) == 1


def test_read_timeout_is_retryable(receiver: WebhookReceiver) -> None:
    receiver.script(ScriptedResponse(200, delay_s=5.0))
    with pytest.raises(WebhookDeliveryError) as caught:
        send(make_event(), receiver, webhook_read_timeout_s=0.3)
    assert caught.value.status_code is None
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)


def test_connection_refused_is_retryable() -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    with pytest.raises(WebhookDeliveryError) as caught:
        deliver(make_event(), url=url, secret=SECRET, client=None, settings=make_settings(url))
    assert caught.value.status_code is None
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


def test_every_attempt_sends_the_same_body_and_key(receiver: WebhookReceiver) -> None:
    receiver.script(500, 200)
    event = make_event()
    with pytest.raises(WebhookDeliveryError):
        send(event, receiver)
    send(event, receiver)
    first, second = receiver.requests
    assert first.body == second.body == event.body
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == event.event_id
    assert len(receiver.events) == 1


def test_receiver_deduplicates_by_idempotency_key(receiver: WebhookReceiver) -> None:
    event = make_event()
    send(event, receiver)
    send(event, receiver)
    assert [r.duplicate for r in receiver.requests] == [False, True]
    assert len(receiver.events) == 1


def test_http_url_refused_without_allow_http(receiver: WebhookReceiver) -> None:
    settings = make_settings(receiver.url, webhook_allow_http=False)
    with pytest.raises(ConfigurationError, match="WEBHOOK_ALLOW_HTTP"):
        deliver(make_event(), url=receiver.url, secret=SECRET, client=None, settings=settings)
    assert receiver.requests == []


def test_unsigned_delivery_only_when_allowed() -> None:
    with WebhookReceiver(None) as open_receiver:
        event = make_event()
        settings = make_settings(open_receiver.url, webhook_secret=None)
        with pytest.raises(ConfigurationError, match="WEBHOOK_ALLOW_UNSIGNED"):
            deliver(event, url=open_receiver.url, secret=None, client=None, settings=settings)
        allowed = make_settings(open_receiver.url, webhook_secret=None, webhook_allow_unsigned=True)
        deliver(event, url=open_receiver.url, secret=None, client=None, settings=allowed)
        [request] = open_receiver.requests
        assert "x-hokusai-signature" not in request.headers and "webhook-signature" not in request.headers


def test_secret_never_appears_in_logs(receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    plain = WebhookReceiver(PLAIN_SECRET).start()
    try:
        plain.script(200, 500, 400, ScriptedResponse(200, delay_s=5.0))
        settings = make_settings(
            plain.url, webhook_secret=PLAIN_SECRET, webhook_read_timeout_s=0.3, webhook_allow_plaintext_secret=True
        )
        events = [make_event(version=str(n)) for n in range(1, 5)]
        messages = []
        for event in events:
            try:
                deliver(event, url=plain.url, secret=PLAIN_SECRET, client=None, settings=settings)
            except (WebhookDeliveryError, WebhookRejectedError) as exc:
                messages.append(str(exc))
        check_webhook_config(settings)
    finally:
        plain.stop()
    assert all(event.event_id in caplog.text for event in events)  # the logs do say what happened
    assert PLAIN_SECRET not in caplog.text
    assert all(PLAIN_SECRET not in str(record.args) for record in caplog.records)
    assert all(PLAIN_SECRET not in message for message in messages)
    assert len(messages) == 3


# ---------------------------------------------------------------------- start-up check
def test_config_without_url_means_no_webhooks() -> None:
    check_webhook_config(make_settings(None, webhook_secret=None))


def test_config_without_secret_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"WEBHOOK_SECRET.*WEBHOOK_ALLOW_UNSIGNED"):
        check_webhook_config(make_settings("https://site.example/hook", webhook_secret=None))


def test_config_without_secret_but_unsigned_allowed_passes() -> None:
    check_webhook_config(make_settings("https://site.example/hook", webhook_secret=None, webhook_allow_unsigned=True))


def test_config_with_http_url_needs_allow_http() -> None:
    with pytest.raises(ConfigurationError, match=r"WEBHOOK_URL.*WEBHOOK_ALLOW_HTTP"):
        check_webhook_config(make_settings("http://site.example/hook", webhook_allow_http=False))
    check_webhook_config(make_settings("http://site.example/hook", webhook_allow_http=True))


def test_config_with_malformed_whsec_secret_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="WEBHOOK_SECRET"):
        check_webhook_config(make_settings("https://site.example/hook", webhook_secret="whsec_***"))


def test_config_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_URL", "https://site.example/hook")
    with pytest.raises(ConfigurationError, match="WEBHOOK_SECRET"):
        check_webhook_config(Settings())
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    check_webhook_config(Settings())


# ---------------------------------------------------------------------- a stored event
@pytest.fixture
def store(redis_url: str) -> Iterator[EventStore]:
    client = redis.Redis.from_url(redis_url)
    yield EventStore(client)
    client.close()


def test_stored_event_delivered(store: EventStore, receiver: WebhookReceiver) -> None:
    event = store.save_if_absent(make_event())
    outcome = send_stored_event(store, event.event_id, settings=make_settings(receiver.url))
    assert (outcome.status, outcome.attempt, outcome.status_code) == ("delivered", 1, 200)
    record = store.get(event.event_id)
    assert record is not None and record.state == "delivered" and record.attempts == 1
    again = send_stored_event(store, event.event_id, settings=make_settings(receiver.url))
    assert again.status == "already_delivered"
    assert len(receiver.requests) == 1


def test_stored_event_retry_uses_backoff_countdown(store: EventStore, receiver: WebhookReceiver) -> None:
    receiver.script(500)
    event = store.save_if_absent(make_event())
    settings = make_settings(receiver.url, webhook_backoff_base_s=4.0)
    outcome = send_stored_event(store, event.event_id, settings=settings, rng=random.Random(1))
    assert (outcome.status, outcome.status_code) == ("retry", 500)
    assert outcome.countdown_s is not None and 2.0 <= outcome.countdown_s <= 4.0  # attempt 1, equal jitter
    record = store.get(event.event_id)
    assert record is not None and (record.state, record.attempts, record.last_status_code) == ("pending", 1, 500)


def test_stored_event_retry_honours_retry_after(store: EventStore, receiver: WebhookReceiver) -> None:
    receiver.script(ScriptedResponse(429, headers={"Retry-After": "90"}))
    event = store.save_if_absent(make_event())
    outcome = send_stored_event(store, event.event_id, settings=make_settings(receiver.url))
    assert (outcome.status, outcome.countdown_s) == ("retry", 90.0)


def test_stored_event_long_retry_after_goes_to_the_durable_schedule(
    store: EventStore, receiver: WebhookReceiver
) -> None:
    receiver.script(ScriptedResponse(503, headers={"Retry-After": "7200"}))
    event = store.save_if_absent(make_event())
    before = datetime.now(UTC)
    outcome = send_stored_event(store, event.event_id, settings=make_settings(receiver.url))
    assert outcome.status == "deferred" and outcome.countdown_s is None
    assert outcome.due_at is not None
    assert before + timedelta(seconds=7200) <= outcome.due_at <= datetime.now(UTC) + timedelta(seconds=7200)
    record = store.get(event.event_id)
    assert record is not None and record.deferred_until is not None and record.state == "pending"
    assert store.claim_due(datetime.now(UTC)) == []
    assert store.claim_due(outcome.due_at + timedelta(seconds=1)) == [event.event_id]


def test_a_retry_after_beyond_the_cap_waits_only_the_cap(store: EventStore, receiver: WebhookReceiver) -> None:
    receiver.script(ScriptedResponse(503, headers={"Retry-After": str(30 * 24 * 3600)}))  # "come back in a month"
    event = store.save_if_absent(make_event())
    settings = make_settings(receiver.url, webhook_retry_after_max_s=7200)
    before = datetime.now(UTC)
    outcome = send_stored_event(store, event.event_id, settings=settings)
    assert outcome.status == "deferred" and outcome.due_at is not None
    assert before + timedelta(seconds=7200) <= outcome.due_at <= datetime.now(UTC) + timedelta(seconds=7200)


def test_stored_event_dead_lettered_after_max_attempts(store: EventStore, receiver: WebhookReceiver) -> None:
    receiver.script(500, 502)
    event = store.save_if_absent(make_event())
    settings = make_settings(receiver.url, webhook_max_attempts=2)
    assert send_stored_event(store, event.event_id, settings=settings).status == "retry"
    outcome = send_stored_event(store, event.event_id, settings=settings)
    assert (outcome.status, outcome.attempt, outcome.status_code) == ("dead_lettered", 2, 502)
    assert outcome.reason is not None and "gave up after 2 attempts" in outcome.reason
    [dead] = store.list_dead_letters()
    assert (dead.event.event_id, dead.attempts, dead.last_status_code) == (event.event_id, 2, 502)
    assert send_stored_event(store, event.event_id, settings=settings).status == "dead_lettered"
    assert len(receiver.requests) == 2  # a dead letter is not sent by the task path again


def test_stored_event_rejected_is_dead_lettered_at_once(store: EventStore, receiver: WebhookReceiver) -> None:
    receiver.script(404)
    event = store.save_if_absent(make_event())
    outcome = send_stored_event(store, event.event_id, settings=make_settings(receiver.url))
    assert (outcome.status, outcome.attempt, outcome.status_code) == ("dead_lettered", 1, 404)
    record = store.get(event.event_id)
    assert record is not None and record.state == "dead" and "answered 404" in (record.dead_reason or "")


def test_an_endpoint_gone_410_is_disabled_and_its_events_kept_until_it_is_enabled(
    store: EventStore, receiver: WebhookReceiver
) -> None:
    """Auto-disable without loss: the 410'd event and a later one are held, then released oldest first."""
    receiver.script(410)
    settings = make_settings(receiver.url)
    first = store.save_if_absent(make_event("1"))
    outcome = send_stored_event(store, first.event_id, settings=settings)
    assert (outcome.status, outcome.attempt, outcome.status_code) == ("held", 1, 410)
    states = EndpointStates.of(store)
    assert states.get("default").disabled_reason is not None and states.disabled_names() == ["default"]
    other = store.save_if_absent(make_event("2"))
    assert send_stored_event(store, other.event_id, settings=settings).status == "held"
    assert len(receiver.requests) == 1, "nothing is sent to a disabled endpoint"
    assert store.list_dead_letters() == [] and store.held("default") == [first.event_id, other.event_id]
    assert enable(store, "default") == 2
    assert states.disabled_names() == [] and store.held("default") == []
    assert store.claim_due(limit=10) == [first.event_id, other.event_id]  # due now, oldest first
    for event_id in (first.event_id, other.event_id):
        assert send_stored_event(store, event_id, settings=settings).status == "delivered"
    assert [r.status for r in receiver.requests] == [410, 200, 200]


def test_an_endpoint_failing_longer_than_the_disable_window_is_disabled(store: EventStore) -> None:
    settings = make_settings(f"http://127.0.0.1:{free_port()}/hook", webhook_disable_after_s=0.2)
    event = store.save_if_absent(make_event())
    assert send_stored_event(store, event.event_id, settings=settings).status == "retry"
    time.sleep(0.3)
    assert send_stored_event(store, event.event_id, settings=settings).status == "held"
    assert EndpointStates.of(store).get("default").disabled_at is not None
    assert store.get(event.event_id).state == "pending"  # type: ignore[union-attr]


def test_stored_event_that_settings_cannot_send_is_kept_for_replay(store: EventStore) -> None:
    event = store.save_if_absent(make_event())
    settings = make_settings("http://127.0.0.1:9/hook", webhook_allow_http=False)
    outcome = send_stored_event(store, event.event_id, settings=settings)
    assert (outcome.status, outcome.attempt) == ("dead_lettered", 0)
    assert outcome.reason is not None and "WEBHOOK_ALLOW_HTTP" in outcome.reason
    [dead] = store.list_dead_letters()
    assert dead.event.event_id == event.event_id and dead.attempts == 0


def test_every_attempt_of_the_delivery_path_is_in_the_history(store: EventStore, receiver: WebhookReceiver) -> None:
    """No answer, then 503, then 200: each attempt recorded by send_stored_event, listed by `webhooks show`."""
    event = store.save_if_absent(make_event())
    refused_url = f"http://127.0.0.1:{free_port()}/hook"
    before = datetime.now(UTC)
    assert send_stored_event(store, event.event_id, settings=make_settings(refused_url)).status == "retry"
    receiver.script(ScriptedResponse(503, delay_s=0.2), 200)
    assert send_stored_event(store, event.event_id, settings=make_settings(receiver.url)).status == "retry"
    assert send_stored_event(store, event.event_id, settings=make_settings(receiver.url)).status == "delivered"

    done = subprocess.run([Path(sys.executable).with_name("hokusai-registry"), "webhooks", "show", event.event_id],
                          env=os.environ, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    history = json.loads(done.stdout)["history"]
    assert [(a["attempt"], a["status_code"]) for a in history] == [(1, None), (2, 503), (3, 200)]
    assert "ConnectError" in history[0]["error"] and history[1]["error"] == "endpoint answered 503"
    assert history[2]["error"] is None
    times = [datetime.fromisoformat(a["at"]) for a in history]
    assert all(t.utcoffset() == timedelta(0) for t in times) and before <= times[0] <= times[1] <= times[2]
    assert 0.2 <= history[1]["duration_s"] < 2.0  # the receiver took 0.2 s to answer 503
    assert all(0 < a["duration_s"] < 2.0 for a in history)
    received = [request.received_at for request in receiver.requests]
    assert times[1] <= received[0] and times[2] <= received[1]  # an attempt's time is when it started


def test_on_attempt_hears_every_http_attempt_and_only_those(store: EventStore, receiver: WebhookReceiver) -> None:
    """How the task layer counts its metrics: no answer (None), 503, 200; nothing for an event not sent."""
    heard: list[int | None] = []
    event = store.save_if_absent(make_event())
    refused = make_settings(f"http://127.0.0.1:{free_port()}/hook")
    assert send_stored_event(store, event.event_id, settings=refused, on_attempt=heard.append).status == "retry"
    receiver.script(503, 200)
    for expected in ("retry", "delivered", "already_delivered"):
        outcome = send_stored_event(
            store, event.event_id, settings=make_settings(receiver.url), on_attempt=heard.append
        )
        assert outcome.status == expected
    unsendable = store.save_if_absent(make_event("4"))
    blocked = make_settings("http://127.0.0.1:9/hook", webhook_allow_http=False)
    assert send_stored_event(store, unsendable.event_id, settings=blocked, on_attempt=heard.append).attempt == 0
    assert heard == [None, 503, 200]


def test_unknown_stored_event_is_reported_missing(store: EventStore, receiver: WebhookReceiver) -> None:
    outcome = send_stored_event(store, "no-such-event", settings=make_settings(receiver.url))
    assert outcome.status == "missing"
    assert receiver.requests == []


def json_of(event: WebhookEvent) -> Any:
    return json.loads(event.body)
