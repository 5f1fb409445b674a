"""worker.webhooks.store and worker.webhooks.replay on a real Redis, replaying to the real sample receiver."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from celery import Celery
from pydantic import SecretStr
from redis.backoff import NoBackoff
from redis.retry import Retry

from devtools import builders
from devtools.receiver import WebhookReceiver
from hokusai_registry.contract import CELERY_WIRE_SETTINGS, DELIVER_WEBHOOK_TASK, WEBHOOK_QUEUE, webhook_task_id
from hokusai_registry.errors import BrokerUnavailableError, InvalidInputError
from hokusai_registry.settings import Settings
from tests.support import free_port
from worker.webhooks.delivery import send_stored_event
from worker.webhooks.delivery_records import MAX_ATTEMPT_HISTORY
from worker.webhooks.event import WebhookEvent
from worker.webhooks.pump import pump_deferred_webhooks
from worker.webhooks.replay import replay_dead_letters
from worker.webhooks.store import EventStore

SECRET = "replay-test-secret"
T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def make_event(version: str = "1", now: datetime | None = None) -> WebhookEvent:
    event: WebhookEvent = builders.event(version, now=now, model_type="ranking", token_id="tok-1")
    return event


@pytest.fixture(params=[False, True], ids=["bytes", "decoded"])
def store(redis_url: str, request: pytest.FixtureRequest) -> Iterator[EventStore]:
    """The store works with raw and with ``decode_responses`` clients."""
    client = redis.Redis.from_url(redis_url, decode_responses=request.param)
    yield EventStore(client, prefix="test")
    client.close()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET) as running:
        yield running


def settings_for(url: str) -> Settings:
    return Settings(
        webhook_url=url, webhook_secret=SecretStr(SECRET), webhook_allow_http=True, webhook_read_timeout_s=2.0
    )


def dead_letter(store: EventStore, version: str, at: datetime, status: int = 500) -> WebhookEvent:
    event = store.save_if_absent(make_event(version))
    store.record_attempt(event.event_id, status_code=status, error=f"endpoint answered {status}", at=at)
    store.dead_letter(event.event_id, f"gave up: {status}", at=at)
    return event


# ---------------------------------------------------------------------- events
def test_save_if_absent_keeps_the_first_build(store: EventStore) -> None:
    first = make_event(now=T0)
    rebuilt = make_event(now=T0 + timedelta(minutes=3))  # same registration, later timestamp
    assert first.event_id == rebuilt.event_id and first.body != rebuilt.body

    assert store.save_if_absent(first) == first
    kept = store.save_if_absent(rebuilt)
    assert kept.body == first.body  # byte-identical: not re-stamped
    assert kept.created_at == first.created_at == T0
    record = store.get(first.event_id)
    assert record is not None and record.event == first and record.state == "pending" and record.attempts == 0


def test_body_round_trips_byte_identical(store: EventStore) -> None:
    odd = WebhookEvent("evt-bytes", b'{"a":"\xc3\xa9"}\x00\xff\n ', T0, "name", "1", "job-1")
    store.save_if_absent(odd)
    record = store.get("evt-bytes")
    assert record is not None and record.event.body == odd.body and record.event == odd


def test_get_unknown_is_none(store: EventStore) -> None:
    assert store.get("nope") is None


def test_record_attempt_counts_and_keeps_first_and_last(store: EventStore) -> None:
    event = store.save_if_absent(make_event())
    assert store.record_attempt(event.event_id, status_code=503, at=T0) == 1
    assert store.record_attempt(event.event_id, error="ConnectError: refused", at=T0 + timedelta(seconds=4)) == 2
    record = store.get(event.event_id)
    assert record is not None
    assert (record.attempts, record.first_attempt_at, record.last_attempt_at) == (2, T0, T0 + timedelta(seconds=4))
    assert (record.last_status_code, record.last_error) == (None, "ConnectError: refused")


def test_each_attempt_is_kept_in_the_history_with_its_time_status_error_and_duration(store: EventStore) -> None:
    event = store.save_if_absent(make_event())
    store.record_attempt(event.event_id, error="ConnectError: refused", at=T0, duration_s=0.002)
    store.record_attempt(event.event_id, status_code=503, error="endpoint answered 503", at=T0 + timedelta(seconds=2),
                         duration_s=0.25)  # fmt: skip
    store.record_attempt(event.event_id, status_code=200, at=T0 + timedelta(seconds=9), duration_s=0.01)
    record = store.get(event.event_id)
    assert record is not None
    assert [(a.number, a.at, a.status_code, a.error, a.duration_s) for a in record.history] == [
        (1, T0, None, "ConnectError: refused", 0.002),
        (2, T0 + timedelta(seconds=2), 503, "endpoint answered 503", 0.25),
        (3, T0 + timedelta(seconds=9), 200, None, 0.01),
    ]
    shown = record.as_dict(include_history=True)["history"]
    assert shown[0] == {"attempt": 1, "at": "2026-11-26T12:00:00+00:00", "status_code": None,
                        "error": "ConnectError: refused", "duration_s": 0.002}  # fmt: skip
    assert "history" not in record.as_dict()  # `webhooks failed` lists summaries


def test_the_history_keeps_the_last_max_attempt_history_attempts(store: EventStore) -> None:
    event = store.save_if_absent(make_event())
    total = MAX_ATTEMPT_HISTORY + 3
    for n in range(1, total + 1):
        store.record_attempt(event.event_id, status_code=500, at=T0 + timedelta(seconds=n), duration_s=0.1)
    record = store.get(event.event_id)
    assert record is not None and record.attempts == total
    assert [a.number for a in record.history] == list(range(4, total + 1))
    keys = store.client.hkeys(f"test:webhook:event:{event.event_id}")
    fields = {k.decode() if isinstance(k, bytes) else k for k in keys}
    assert len([name for name in fields if name.startswith("attempt:")]) == MAX_ATTEMPT_HISTORY  # bounded in Redis


def test_webhooks_show_lists_the_kept_attempts_and_says_how_many_are_not(redis_url: str) -> None:
    store = EventStore(redis.Redis.from_url(redis_url))  # the prefix the command reads
    event = store.save_if_absent(make_event())
    for _ in range(MAX_ATTEMPT_HISTORY + 2):
        store.record_attempt(event.event_id, status_code=502, error="endpoint answered 502", duration_s=0.05)
    store.dead_letter(event.event_id, "gave up")
    command = [Path(sys.executable).with_name("hokusai-registry"), "webhooks", "show", event.event_id]
    done = subprocess.run(command, env=os.environ, capture_output=True, text=True, timeout=60)  # REDIS_URL: redis_url
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["attempts"] == MAX_ATTEMPT_HISTORY + 2 and len(shown["history"]) == MAX_ATTEMPT_HISTORY
    assert shown["history"][0]["attempt"] == 3 and shown["history"][-1]["status_code"] == 502
    assert f"the history keeps the last {MAX_ATTEMPT_HISTORY}: 2 older one(s) not listed" in done.stderr
    store.client.close()


def test_record_attempt_of_unknown_event_creates_nothing(store: EventStore) -> None:
    with pytest.raises(InvalidInputError, match="no stored webhook event"):
        store.record_attempt("ghost", status_code=500)
    assert store.get("ghost") is None


def test_naive_times_are_refused(store: EventStore) -> None:
    event = store.save_if_absent(make_event())
    with pytest.raises(InvalidInputError, match="timezone-aware"):
        store.record_attempt(event.event_id, status_code=500, at=datetime(2026, 1, 1))


def test_mark_delivered_leaves_dead_letters_and_expires(store: EventStore) -> None:
    event = dead_letter(store, "1", T0)
    store.mark_delivered(event.event_id, at=T0 + timedelta(hours=1))
    record = store.get(event.event_id)
    assert record is not None and record.state == "delivered" and record.delivered_at == T0 + timedelta(hours=1)
    assert store.list_dead_letters() == []
    ttl = store.client.ttl(f"test:webhook:event:{event.event_id}")
    assert 0 < ttl <= store.delivered_ttl_s


def test_the_event_of_a_job_is_found_as_long_as_the_event_is_kept(store: EventStore) -> None:
    event = store.save_if_absent(make_event())
    assert event.job_id is not None
    job_key = f"test:webhook:job:{event.job_id}"
    pending = store.get_for_job(event.job_id)
    assert pending is not None and (pending.event.event_id, pending.state) == (event.event_id, "pending")
    store.dead_letter(event.event_id, "gave up")
    assert store.client.ttl(job_key) == -1  # kept as long as the dead letter
    store.mark_delivered(event.event_id)  # a replay delivered it
    delivered = store.get_for_job(event.job_id)
    assert delivered is not None and delivered.state == "delivered"
    assert 0 < store.client.ttl(job_key) <= store.delivered_ttl_s  # expires with the event
    assert store.get_for_job("no-such-job") is None


def test_a_removed_dead_letter_leaves_no_job_key(store: EventStore) -> None:
    event = dead_letter(store, "1", T0)
    assert event.job_id is not None and store.remove_dead_letter(event.event_id)
    assert store.get_for_job(event.job_id) is None
    assert store.client.exists(f"test:webhook:job:{event.job_id}") == 0


def test_a_dead_letter_stored_without_a_job_key_is_found_by_its_job(store: EventStore) -> None:
    """Events stored before the job key existed: their dead letter names the job."""
    event = dead_letter(store, "1", T0)
    assert event.job_id is not None
    store.client.delete(f"test:webhook:job:{event.job_id}")
    found = store.get_for_job(event.job_id)
    assert found is not None and found.event.event_id == event.event_id


# ---------------------------------------------------------------------- dead letters
def test_dead_letter_keeps_everything_needed_to_replay(store: EventStore) -> None:
    event = store.save_if_absent(make_event(now=T0))
    store.record_attempt(event.event_id, status_code=500, at=T0 + timedelta(seconds=1))
    store.record_attempt(event.event_id, status_code=502, error="endpoint answered 502", at=T0 + timedelta(seconds=9))
    store.dead_letter(event.event_id, "gave up after 2 attempts", at=T0 + timedelta(seconds=10))

    [dead] = store.list_dead_letters()
    assert dead.event.body == event.body and dead.event.event_id == event.event_id  # body and key
    assert dead.state == "dead" and dead.dead_reason == "gave up after 2 attempts"
    assert dead.attempts == 2 and dead.last_status_code == 502 and dead.last_error == "endpoint answered 502"
    assert dead.first_attempt_at == T0 + timedelta(seconds=1)
    assert dead.last_attempt_at == T0 + timedelta(seconds=9)
    assert dead.dead_lettered_at == T0 + timedelta(seconds=10)
    assert dead.event.created_at == T0
    assert store.get(event.event_id) == dead  # "show one"


def test_dead_letter_leaves_the_deferred_schedule(store: EventStore) -> None:
    event = store.save_if_absent(make_event())
    store.defer(event.event_id, T0)
    store.dead_letter(event.event_id, "rejected")
    assert store.claim_due(T0 + timedelta(days=1)) == []


def test_list_dead_letters_since(store: EventStore) -> None:
    old = dead_letter(store, "1", T0)
    middle = dead_letter(store, "2", T0 + timedelta(hours=1))
    new = dead_letter(store, "3", T0 + timedelta(hours=2))
    assert [r.event.event_id for r in store.list_dead_letters()] == [old.event_id, middle.event_id, new.event_id]
    since = store.list_dead_letters(since=T0 + timedelta(hours=1))
    assert [r.event.event_id for r in since] == [middle.event_id, new.event_id]
    assert store.list_dead_letters(since=T0 + timedelta(hours=3)) == []


def test_remove_dead_letter(store: EventStore) -> None:
    kept = dead_letter(store, "1", T0)
    removed = dead_letter(store, "2", T0)
    assert store.remove_dead_letter(removed.event_id) is True
    assert store.remove_dead_letter(removed.event_id) is False
    assert store.get(removed.event_id) is None
    assert [r.event.event_id for r in store.list_dead_letters()] == [kept.event_id]


def test_pending_event_is_not_removable_as_a_dead_letter(store: EventStore) -> None:
    event = store.save_if_absent(make_event())
    assert store.remove_dead_letter(event.event_id) is False
    assert store.get(event.event_id) is not None


# ---------------------------------------------------------------------- deferred retries
def test_claim_due_takes_only_due_events_once(store: EventStore) -> None:
    due = store.save_if_absent(make_event("1"))
    later = store.save_if_absent(make_event("2"))
    store.defer(due.event_id, T0)
    store.defer(later.event_id, T0 + timedelta(hours=1))
    assert store.claim_due(T0) == [due.event_id]
    assert store.claim_due(T0) == []
    store.mark_delivered(due.event_id)  # the claimed retry ran and settled it
    assert store.claim_due(T0 + timedelta(hours=1)) == [later.event_id]


def test_a_claim_that_is_never_settled_comes_due_again_after_its_lease(store: EventStore) -> None:
    """A worker that claims an event and dies before handing it to a task must not lose it."""
    event = store.save_if_absent(make_event("1"))
    store.defer(event.event_id, T0)
    assert store.claim_due(T0, lease_s=60) == [event.event_id]
    assert store.claim_due(T0 + timedelta(seconds=59)) == []
    assert store.claim_due(T0 + timedelta(seconds=60)) == [event.event_id]
    store.undefer(event.event_id)  # a Celery retry took it over
    assert store.claim_due(T0 + timedelta(hours=1)) == []


def test_claim_due_respects_the_limit(store: EventStore) -> None:
    for version in ("1", "2", "3"):
        store.defer(store.save_if_absent(make_event(version)).event_id, T0)
    assert len(store.claim_due(T0, limit=2)) == 2
    assert len(store.claim_due(T0, limit=2)) == 1


def test_defer_unknown_event_is_refused(store: EventStore) -> None:
    with pytest.raises(InvalidInputError):
        store.defer("ghost", T0)


@pytest.mark.parametrize("limit", [0, 1001])
def test_claim_due_limit_is_bounded(store: EventStore, limit: int) -> None:
    with pytest.raises(InvalidInputError, match="limit"):
        store.claim_due(T0, limit=limit)


def test_claim_due_exactly_once_with_racing_claimers(redis_url: str) -> None:
    setup = EventStore(redis.Redis.from_url(redis_url), prefix="race")
    ids = []
    for version in range(1, 301):
        event = setup.save_if_absent(make_event(str(version)))
        setup.defer(event.event_id, T0)
        ids.append(event.event_id)

    start, first_round = threading.Barrier(2), threading.Barrier(2)
    claimed: dict[str, list[str]] = {"a": [], "b": []}

    def claimer(name: str) -> None:
        own = EventStore(redis.Redis.from_url(redis_url), prefix="race")  # its own connection
        start.wait()
        claimed[name].extend(own.claim_due(T0, limit=7))
        first_round.wait()  # on a busy machine one thread could otherwise drain it before the other runs
        while batch := own.claim_due(T0, limit=7):
            claimed[name].extend(batch)
        own.client.close()

    threads = [threading.Thread(target=claimer, args=(name,)) for name in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert set(claimed["a"]).isdisjoint(claimed["b"])
    assert sorted(claimed["a"] + claimed["b"]) == sorted(ids)  # each id exactly once, none lost
    assert claimed["a"] and claimed["b"]  # both really competed
    setup.client.close()


def test_the_pump_hands_due_events_to_deliver_webhook_under_the_jobs_webhook_task_id(
    store: EventStore, redis_url: str
) -> None:
    """What the worker's DeferredWebhookPump bootstep runs each tick, publishing into a real Redis."""
    app = Celery("pump-test", broker=redis_url, set_as_current=False)
    app.conf.update({**CELERY_WIRE_SETTINGS, "task_routes": {DELIVER_WEBHOOK_TASK: {"queue": WEBHOOK_QUEUE}}})

    @app.task(name=DELIVER_WEBHOOK_TASK, shared=False)
    def deliver_webhook(event_id: str) -> None:  # the worker's task stands here; only its name matters
        raise AssertionError("never run here")

    due, later = store.save_if_absent(make_event("1")), store.save_if_absent(make_event("2"))
    store.defer(due.event_id, datetime.now(UTC) - timedelta(seconds=1))
    store.defer(later.event_id, datetime.now(UTC) + timedelta(hours=1))
    assert pump_deferred_webhooks(store, app, lease_s=300) == 1
    assert pump_deferred_webhooks(store, app, lease_s=300) == 0  # leased, not handed over twice
    reader = redis.Redis.from_url(redis_url)
    (message,) = [json.loads(raw) for raw in reader.lrange(WEBHOOK_QUEUE, 0, -1)]
    assert message["headers"]["task"] == DELIVER_WEBHOOK_TASK
    assert due.job_id is not None and message["headers"]["id"] == webhook_task_id(due.job_id)
    assert json.loads(base64.b64decode(message["body"]))[0] == [due.event_id]
    reader.close()
    app.close()


def test_unreachable_redis_is_broker_unavailable() -> None:
    client = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    store = EventStore(client)
    with pytest.raises(BrokerUnavailableError):
        store.get("anything")


# ---------------------------------------------------------------------- replay
def test_replay_sends_the_same_body_and_key_and_removes_delivered(store: EventStore, receiver: WebhookReceiver) -> None:
    receiver.script(400)  # the original attempt is rejected → dead letter
    event = store.save_if_absent(make_event())
    assert send_stored_event(store, event.event_id, settings=settings_for(receiver.url)).status == "dead_lettered"

    report = replay_dead_letters(store, settings=settings_for(receiver.url))

    assert report.delivered == [event.event_id] and report.failed == {}
    original, replayed = receiver.requests
    assert original.body == replayed.body == event.body
    assert original.headers["x-hokusai-idempotency-key"] == replayed.headers["x-hokusai-idempotency-key"]
    assert replayed.headers["webhook-id"] == event.event_id
    assert replayed.hokusai_verified and replayed.standard_verified
    assert store.list_dead_letters() == []
    record = store.get(event.event_id)
    assert record is not None and record.state == "delivered" and record.attempts == 2
    assert [(a.number, a.status_code) for a in record.history] == [(1, 400), (2, 200)]  # the replay's attempt too


def test_replay_keeps_failures_with_the_new_attempt(store: EventStore, receiver: WebhookReceiver) -> None:
    first = dead_letter(store, "1", T0)
    second = dead_letter(store, "2", T0 + timedelta(minutes=1))
    third = dead_letter(store, "3", T0 + timedelta(minutes=2))
    receiver.script(200, 503, 200)  # replayed oldest first

    report = replay_dead_letters(store, settings=settings_for(receiver.url))

    assert report.delivered == [first.event_id, third.event_id]
    assert list(report.failed) == [second.event_id] and "503" in report.failed[second.event_id]
    [still_dead] = store.list_dead_letters()
    assert still_dead.event.event_id == second.event_id
    assert (still_dead.attempts, still_dead.last_status_code) == (2, 503)
    assert still_dead.last_attempt_at is not None and still_dead.last_attempt_at > T0
    assert still_dead.event.body == second.body
    assert {e["model"]["version"] for e in receiver.events} == {"1", "3"}


def test_replay_all_since(store: EventStore, receiver: WebhookReceiver) -> None:
    old = dead_letter(store, "1", T0)
    recent = dead_letter(store, "2", T0 + timedelta(hours=2))

    report = replay_dead_letters(store, settings=settings_for(receiver.url), since=T0 + timedelta(hours=1))

    assert report.delivered == [recent.event_id]
    assert [r.event.event_id for r in store.list_dead_letters()] == [old.event_id]
    assert [r.headers["webhook-id"] for r in receiver.requests] == [recent.event_id]


def test_replay_selected_ids_reports_unknown_ones(store: EventStore, receiver: WebhookReceiver) -> None:
    chosen = dead_letter(store, "1", T0)
    other = dead_letter(store, "2", T0)

    report = replay_dead_letters(store, settings=settings_for(receiver.url), event_ids=[chosen.event_id, "ghost"])

    assert report.delivered == [chosen.event_id]
    assert report.failed == {"ghost": "no such event"}
    assert [r.event.event_id for r in store.list_dead_letters()] == [other.event_id]


def test_replay_to_a_refusing_endpoint_keeps_everything(store: EventStore) -> None:
    event = dead_letter(store, "1", T0)
    url = f"http://127.0.0.1:{free_port()}/hook"

    report = replay_dead_letters(store, settings=settings_for(url))

    assert report.delivered == [] and list(report.failed) == [event.event_id]
    [dead] = store.list_dead_letters()
    assert dead.attempts == 2 and dead.last_status_code is None and "ConnectError" in (dead.last_error or "")
