"""Reconcile from MLflow: the events of registered versions that the site may never have heard of, sent again.

MLflow outlives Redis: when Redis lost its data (no AOF, a failover), the event store no longer
says which events were delivered. :func:`reconcile` scans MLflow for the versions this product
registered (they carry ``job_id`` and ``model_uuid`` tags), and for each one, in registration order:

* a ``webhook_delivered.<endpoint>`` tag → delivered, left alone;
* its event in the event store: delivered (the tag is written now), dead-lettered (left to
  ``webhooks replay``), or still pending (the workers deliver it) → not sent;
* otherwise the event is rebuilt from MLflow (:func:`rebuild_event`: the same event id and body as
  the first build) and sent through :func:`reemit`.

A version without a ``webhook_job`` tag (registered before it was written) cannot be rebuilt
(its ``token_id`` is known nowhere else): it is reported as unrecoverable. Filters sent to MLflow
hold no value from outside: the scan reads every version and selects here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import kombu.exceptions
from celery import Celery
from mlflow.entities.model_registry import ModelVersion

from hokusai_registry.contract import DELIVER_WEBHOOK_TASK, WEBHOOK_QUEUE, RegistrationJob
from hokusai_registry.errors import BrokerUnavailableError, InvalidInputError
from hokusai_registry.webhook_policy import DEFAULT_ENDPOINT
from worker.registration import lookups, reads, results, tags
from worker.registration.reads import RegistryStore
from worker.webhooks import event as events
from worker.webhooks import fanout, mlflow_record
from worker.webhooks.delivery_records import delivery_id
from worker.webhooks.event import WebhookEvent
from worker.webhooks.store import EventStore

logger = logging.getLogger(__name__)

Action = Literal["sent", "would_send", "tagged", "would_tag", "pending", "dead_lettered", "skipped", "unrecoverable"]


@dataclass(frozen=True)
class ReconcileItem:
    """What reconcile did (or, in a dry run, would do) about one version's event, and why."""

    model_name: str
    version: str
    job_id: str
    event_id: str
    action: Action
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly."""
        return {
            "model_name": self.model_name,
            "version": self.version,
            "job_id": self.job_id,
            "event_id": self.event_id,
            "action": self.action,
            "reason": self.reason,
        }


@dataclass
class ReconcileReport:
    """The versions scanned, how many MLflow already shows delivered, and an item for every other one."""

    scanned: int = 0
    delivered: int = 0
    items: list[ReconcileItem] = field(default_factory=list)

    def of(self, *actions: Action) -> list[ReconcileItem]:
        """The items with one of ``actions``."""
        return [item for item in self.items if item.action in actions]

    def as_dict(self) -> dict[str, Any]:
        """``scanned``, ``already_delivered`` and the items by action (``sent``, ``would_send``, ...)."""
        by_action: dict[str, list[dict[str, Any]]] = {}
        for item in self.items:
            by_action.setdefault(item.action, []).append(item.as_dict())
        return {"scanned": self.scanned, "already_delivered": self.delivered, **by_action}


def product_versions(store: RegistryStore, since: datetime | None = None) -> list[ModelVersion]:
    """The versions this product registered (``job_id`` and ``model_uuid`` tags), oldest first.

    ``since``: only those registered at or after it. The search has no filter: nothing from
    outside reaches MLflow's filter language.
    """
    floor_ms = int(since.timestamp() * 1000) if since is not None else None
    found = [
        version
        for version in reads.search_versions(store, None)
        if _is_ours(version.tags or {}) and (floor_ms is None or (version.creation_timestamp or 0) >= floor_ms)
    ]
    return sorted(found, key=lambda v: (v.creation_timestamp or 0, v.name, int(v.version)))


def rebuild_event(store: RegistryStore, version: ModelVersion) -> tuple[WebhookEvent | None, str | None]:
    """The version's event rebuilt from MLflow as ``(event, None)``, or ``(None, why)`` for a job that yields none.

    The result is read back as lookups do (``lookups.describe_version``), the job from the
    version's tags, and the event built with the version's registration time as its ``timestamp``.
    A job yields no event without ``token_id`` or with a failed benchmark gate (``event.skip_reason``).

    Raises:
        RegistryUnavailableError: MLflow could not be reached.
        InvalidInputError: the version cannot be rebuilt: no ``webhook_job`` tag (registered
            before it was written), or tags or a model that make no valid job or event.
    """
    version_tags = dict(version.tags or {})
    record = mlflow_record.job_record(version_tags)
    if record is None:
        raise InvalidInputError(
            f"no {tags.TAG_WEBHOOK_JOB} tag (registered before the registry wrote it): its token_id, "
            "the event's model.id, is known nowhere in MLflow"
        )
    result = lookups.describe_version(store, version)
    job = _job_of(store, version, version_tags, record, result)
    reason = events.skip_reason(job)
    if reason is not None:
        return None, reason
    return events.build_event(result, job, now=results.utc_datetime(version.creation_timestamp)), None


def reemit(event: WebhookEvent, store: EventStore, app: Celery, *, endpoint: str = DEFAULT_ENDPOINT) -> str:
    """Send ``event`` to ``endpoint`` again through the workers; return the delivery's id.

    The one emission path of reconcile: the delivery is stored (unless stored) as the emit task
    stores it (``fanout.store_deliveries``), then ``deliver_webhook`` is published under the task
    id the first delivery had, so ``jobs status`` finds its outcome.

    Raises:
        BrokerUnavailableError: Redis could not be reached.
    """
    ident, _ = fanout.store_deliveries(store, event, [endpoint])
    task_id = fanout.delivery_task_id(event.job_id, endpoint, first=endpoint == DEFAULT_ENDPOINT)
    try:
        app.send_task(DELIVER_WEBHOOK_TASK, args=[ident], queue=WEBHOOK_QUEUE, task_id=task_id)
    except (kombu.exceptions.OperationalError, OSError) as exc:
        raise BrokerUnavailableError(f"cannot publish {DELIVER_WEBHOOK_TASK} for {ident}: {exc}") from exc
    logger.info("webhook event %s of %s/%s sent again to %s", event.event_id, event.model_name, event.version, endpoint)
    return ident


def reconcile(
    registry_store: RegistryStore,
    event_store: EventStore,
    *,
    app: Celery | None,
    since: datetime | None = None,
    dry_run: bool = False,
    endpoint: str = DEFAULT_ENDPOINT,
) -> ReconcileReport:
    """Find the product's versions whose event ``endpoint`` never got, and send each again once.

    ``dry_run``: report what would be sent (and tagged) and change nothing; ``app`` may then be None.

    Raises:
        RegistryUnavailableError: MLflow could not be reached.
        BrokerUnavailableError: Redis could not be reached.
    """
    if app is None and not dry_run:
        raise InvalidInputError("reconcile needs a Celery app to publish with, unless dry_run")
    report = ReconcileReport()
    for version in product_versions(registry_store, since):
        report.scanned += 1
        version_tags = dict(version.tags or {})
        if mlflow_record.delivered_at(version_tags, endpoint) is not None:
            report.delivered += 1
            continue
        report.items.append(_reconcile_one(registry_store, event_store, version, app, dry_run=dry_run,
                                           endpoint=endpoint))  # fmt: skip
    sent = report.of("sent", "would_send")
    logger.info("reconcile: %d version(s) scanned, %d event(s) %s", report.scanned, len(sent),
                "to send" if dry_run else "sent")  # fmt: skip
    return report


def _reconcile_one(
    registry_store: RegistryStore,
    event_store: EventStore,
    version: ModelVersion,
    app: Celery | None,
    *,
    dry_run: bool,
    endpoint: str,
) -> ReconcileItem:
    name, number = version.name, str(version.version)
    job_id = (version.tags or {}).get(tags.TAG_JOB_ID, "")
    event_id = events.event_id_for(name, number, version.run_id)

    def item(action: Action, reason: str | None = None) -> ReconcileItem:
        return ReconcileItem(name, number, job_id, event_id, action, reason)

    stored = event_store.get(delivery_id(event_id, endpoint))
    if stored is not None:
        if stored.state == "delivered":
            if dry_run:
                return item("would_tag", "delivered by the event store; the MLflow tag is missing")
            at = stored.delivered_at or stored.last_attempt_at or stored.event.created_at
            mlflow_record.record_delivery(registry_store, name, number, endpoint, at)
            return item("tagged", "delivered by the event store; the MLflow tag is written now")
        if stored.state == "dead":
            return item("dead_lettered", f"a dead letter: hokusai-registry webhooks replay {event_id}")
        return item("pending", "in the event store, not delivered yet: the workers deliver it")
    try:
        event, why_not = rebuild_event(registry_store, version)
    except InvalidInputError as exc:
        return item("unrecoverable", str(exc))
    if event is None:
        return item("skipped", why_not)
    if event.event_id != event_id:  # build_event derives it the same way: a bug if not
        raise AssertionError(f"rebuilt event id {event.event_id} differs from {event_id}")
    if dry_run:
        return item("would_send", "not in the event store and not tagged delivered")
    assert app is not None
    reemit(event, event_store, app, endpoint=endpoint)
    return item("sent", "not in the event store and not tagged delivered")


def _is_ours(version_tags: Mapping[str, str]) -> bool:
    return bool(version_tags.get(tags.TAG_JOB_ID)) and bool(version_tags.get(tags.TAG_MODEL_UUID))


def _job_of(
    store: RegistryStore,
    version: ModelVersion,
    version_tags: Mapping[str, str],
    record: Mapping[str, Any],
    result: Mapping[str, Any],
) -> RegistrationJob:
    """The job as far as the event needs it: ids, kind, type and lineage from the tags, the rest from the record."""
    fields: dict[str, Any] = {
        "job_id": version_tags[tags.TAG_JOB_ID],
        "kind": "baseline" if version_tags.get(tags.TAG_IS_BASELINE) == tags.TRUE else "improved",
        "model_type": version_tags.get(tags.TAG_MODEL_TYPE),
        "artifact_uri": str(version.source),
        "metadata": dict(result.get("metadata") or {}),
        **record,
    }
    if fields["kind"] == "improved":
        run = reads.run_of(store, version.run_id)
        fields.update(
            baseline_id=version_tags.get(tags.TAG_BASELINE_ID),
            contributor=version_tags.get(tags.TAG_CONTRIBUTOR),
            delta_metrics=dict(run.data.metrics) if run is not None else {},
        )
    try:
        return RegistrationJob.model_validate(fields)
    except ValueError as exc:  # pydantic's ValidationError
        raise InvalidInputError(f"{version.name}/{version.version}: its tags make no valid job: {exc}") from exc
