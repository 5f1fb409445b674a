"""Operator replay of dead-lettered webhook events.

Each dead letter (one event's delivery to one endpoint) is sent again with its stored body and
idempotency key (receivers deduplicate on it), signed with its endpoint's secrets as they are now.
Delivered ones leave the dead letters; the rest stay, with the new attempt recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime

import httpx

from hokusai_registry.errors import ConfigurationError, WebhookDeliveryError, WebhookRejectedError
from hokusai_registry.settings import Settings
from worker.webhooks.delivery import deliver_and_record
from worker.webhooks.store import EventStore

logger = logging.getLogger(__name__)


@dataclass
class ReplayReport:
    """Event ids delivered now, those delivered before the replay, and those still undelivered with why."""

    delivered: list[str] = field(default_factory=list)
    already_delivered: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def replay_dead_letters(
    store: EventStore,
    *,
    settings: Settings,
    event_ids: Collection[str] | None = None,
    since: datetime | None = None,
    client: httpx.Client | None = None,
    endpoint: str | None = None,
) -> ReplayReport:
    """Send dead letters again: the ones named in ``event_ids``, else all dead-lettered since ``since``
    (all of them when both are None); with ``endpoint``, only that endpoint's. Ids are delivery ids
    (the event id for the ``default`` endpoint, ``<event_id>@<endpoint>`` for the others).

    An id in ``event_ids`` that was delivered already is reported in ``already_delivered``; one
    that is not a dead letter otherwise (pending, unknown, expired) in ``failed``.

    Raises:
        ConfigurationError: no ``WEBHOOK_URL``, or the URL/secret breaks the policy (nothing sent).
        BrokerUnavailableError: Redis is unreachable.
    """
    records = store.list_dead_letters(since, endpoint=endpoint)
    report = ReplayReport()
    if event_ids is not None:
        records = [record for record in records if record.delivery_id in event_ids]
        found = {record.delivery_id for record in records}
        for event_id in event_ids:
            if event_id in found:
                continue
            stored = store.get(event_id)
            if stored is not None and stored.state == "delivered":
                report.already_delivered.append(event_id)
            else:
                report.failed[event_id] = "not a dead letter" if stored is not None else "no such event"
    with nullcontext(client) if client is not None else httpx.Client() as shared_client:
        for record in records:
            event_id = record.delivery_id
            try:
                deliver_and_record(store, record, settings=settings, client=shared_client)
            except (WebhookDeliveryError, WebhookRejectedError, ConfigurationError) as exc:
                report.failed[event_id] = str(exc)
            else:
                report.delivered.append(event_id)
    logger.info("replay: %d delivered, %d still dead-lettered", len(report.delivered), len(report.failed))
    return report
