"""What per-model webhook order costs: the check on every attempt, and the wait behind a failing version.

Two measurements on a real Redis and a loopback receiver (``devtools.receiver``), no worker:

* ``check_ms``: the per-attempt cost of the order check (``EventStore.earlier_pending``), and the
  whole attempt's time (``send_ms``) beside it, over ``--events`` deliveries spread over
  ``--models`` models, each model's versions in order;
* ``head_of_line_s``: how long version 3 of a model waits when version 2's first attempt fails and
  its retry comes ``--retry-s`` later (the cost a receiver outage adds to later versions), while
  another model's event goes at once.

    python -m bench.ordering --redis-url redis://127.0.0.1:6379/15 --events 200 --models 20

The database is flushed first: give it one nothing else uses.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import redis

from devtools import builders
from devtools.receiver import WebhookReceiver
from hokusai_registry.settings import Settings
from hokusai_registry.webhook_policy import new_secret
from worker.webhooks.delivery import send_stored_event
from worker.webhooks.event import WebhookEvent, build_event
from worker.webhooks.fanout import store_deliveries
from worker.webhooks.store import EventStore


def _settings(url: str, secret: str, retry_s: float) -> Settings:
    return Settings(
        webhook_url=url,
        webhook_secret=secret,
        webhook_allow_http=True,
        webhook_retry_schedule=(retry_s,),
        webhook_backoff_max_s=0.01,  # every retry through the durable schedule, as a long one would
        webhook_schedule_poll_s=0.05,
    )


def _event(model_name: str, version: int) -> WebhookEvent:
    registered = builders.job(token_id="bench-token")
    return build_event(builders.registration_result(registered, version=version, model_name=model_name), registered)


def measure_check(
    store: EventStore, receiver: WebhookReceiver, settings: Settings, events: int, models: int
) -> dict[str, float]:
    """Mean ms of the order check and of a whole attempt, over ``events`` in-order deliveries."""
    check, send = [], []
    for number in range(events):
        event = _event(f"bench-model-{number % models}", number // models + 1)
        ident, _ = store_deliveries(store, event, ["default"])
        record = store.get(ident)
        assert record is not None
        started = time.perf_counter()
        store.earlier_pending(record)
        check.append(time.perf_counter() - started)
        started = time.perf_counter()
        send_stored_event(store, ident, settings=settings)
        send.append(time.perf_counter() - started)
    return {"check_ms": 1000 * statistics.mean(check), "send_ms": 1000 * statistics.mean(send)}


def measure_head_of_line(store: EventStore, receiver: WebhookReceiver, settings: Settings) -> dict[str, float]:
    """Seconds version 3 waits behind version 2's retry; seconds another model's event waits."""
    receiver.script(500)
    v2, _ = store_deliveries(store, _event("hol-model", 2), ["default"])
    v3, _ = store_deliveries(store, _event("hol-model", 3), ["default"])
    other, _ = store_deliveries(store, _event("hol-other", 1), ["default"])
    ready = time.monotonic()
    send_stored_event(store, v2, settings=settings)  # fails: its retry waits retry_s in the schedule
    send_stored_event(store, v3, settings=settings)  # waits behind it
    send_stored_event(store, other, settings=settings)  # another model: at once
    done = {other: time.monotonic() - ready}
    while v3 not in done:
        for ident in store.claim_due(limit=10, lease_s=1):
            if send_stored_event(store, ident, settings=settings).status == "delivered":
                done[ident] = time.monotonic() - ready
        time.sleep(0.01)
    return {"head_of_line_s": done[v3], "v2_delivered_s": done[v2], "other_model_s": done[other]}


def run(redis_url: str, events: int, models: int, retry_s: float) -> dict[str, Any]:
    """Both measurements on a flushed ``redis_url`` database."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    secret = new_secret()
    try:
        with WebhookReceiver(secret) as receiver:
            store = EventStore(client)
            settings = _settings(receiver.url, secret, retry_s)
            return {
                "events": events,
                "models": models,
                "retry_s": retry_s,
                **measure_check(store, receiver, settings, events, models),
                **measure_head_of_line(store, receiver, settings),
            }
    finally:
        client.flushdb()
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--retry-s", type=float, default=0.5)
    args = parser.parse_args()
    print(json.dumps(run(args.redis_url, args.events, args.models, args.retry_s), indent=2))


if __name__ == "__main__":
    main()
