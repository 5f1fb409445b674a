"""The webhook's record in MLflow: what a model version says about its ``model_registered`` event.

Two tags on the version (names in ``worker.registration.tags``):

* ``webhook_delivered.<endpoint>`` = the UTC ISO-8601 time the event was delivered to that
  endpoint (:func:`record_delivery`, called once a delivery succeeded). MLflow users see there
  whether the site was told; ``webhooks reconcile`` does not send such an event again.
* ``webhook_job`` = the job's webhook fields that MLflow keeps nowhere else (``token_id``,
  the user-id tags, ``eval_spec``, ``scorer_ref``, ``primary_metric``, ``benchmark_spec_id``,
  ``benchmark``) as compact JSON (:func:`job_record_tags`, written with the version's other tags at
  registration). Everything else the event carries is read back from the version and its model.

The event's ``timestamp`` is the version's registration time (:func:`event_time`), so the event
rebuilt from MLflow is the one first built, byte for byte, but for one limit: MLflow keeps the
metadata in the ``MLmodel`` file (YAML, keys sorted), so metadata keys that were not in sorted order
come back sorted (the same values). Writing the delivered tag never fails a
delivery: an error is logged and swallowed (a delivery is not undone by a tag that could not be written).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from mlflow.tracking import MlflowClient

from hokusai_registry.contract import BenchmarkGate, RegistrationJob
from hokusai_registry.errors import InvalidInputError
from hokusai_registry.webhook_policy import ENDPOINT_NAME_RE
from worker.registration import tags
from worker.registration.mlflow_errors import mlflow_boundary
from worker.webhooks.event import USER_ID_TAGS

logger = logging.getLogger(__name__)

#: The job's scalar webhook fields kept in ``webhook_job`` (the user-id tags and the gate too).
_JOB_SCALAR_FIELDS = ("token_id", "eval_spec", "scorer_ref", "primary_metric", "benchmark_spec_id")
_USER_TAGS_KEY, _BENCHMARK_KEY = "tags", "benchmark"


class HasClient(Protocol):
    """What holds an ``MlflowClient`` on the store: ``HokusaiModelRegistry``, ``reads.RegistryStore``."""

    @property
    def client(self) -> MlflowClient: ...


Writer = MlflowClient | HasClient


def delivered_tag(endpoint: str) -> str:
    """The tag key ``webhook_delivered.<endpoint>``.

    Raises:
        InvalidInputError: ``endpoint`` is not an endpoint name (``webhook_policy.ENDPOINT_NAME_RE``).
    """
    if not ENDPOINT_NAME_RE.fullmatch(endpoint):
        raise InvalidInputError(f"a webhook endpoint name must match {ENDPOINT_NAME_RE.pattern}; got {endpoint!r}")
    return f"{tags.TAG_WEBHOOK_DELIVERED_PREFIX}{endpoint}"


def record_delivery(
    client_or_registry: Writer, model_name: str, version: str | int, endpoint: str, at: datetime
) -> bool:
    """Tag ``model_name``/``version`` as delivered to ``endpoint`` at ``at`` (UTC ISO-8601); True when written.

    Never raises: an MLflow (or store) error is logged as a warning and False returned, since
    the delivery happened whatever becomes of the tag.
    """
    client = client_or_registry if isinstance(client_or_registry, MlflowClient) else client_or_registry.client
    moment = at.astimezone(UTC).isoformat() if at.tzinfo else at.replace(tzinfo=UTC).isoformat()
    try:
        key = delivered_tag(endpoint)
        with mlflow_boundary(f"tagging {model_name}/{version} as delivered"):
            client.set_model_version_tag(model_name, str(version), key, moment)
    except Exception as exc:  # the delivery stands: MLflow and its stores raise many types
        logger.warning(
            "webhook delivered to %s, but %s/%s could not be tagged as delivered: %s",
            endpoint,
            model_name,
            version,
            exc,
        )
        return False
    return True


def delivered_at(version_tags: Mapping[str, str], endpoint: str) -> datetime | None:
    """When the version's event was delivered to ``endpoint``, by its tag; None when not (or unreadable)."""
    value = version_tags.get(delivered_tag(endpoint))
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        logger.warning("unreadable %s tag %r: read as not delivered", delivered_tag(endpoint), value)
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def job_record_tags(job: RegistrationJob) -> dict[str, str]:
    """``{"webhook_job": <JSON>}``: the job's webhook fields, for the version's tags at registration.

    Only the fields with a value, and of the job's tags only the user-id ones the event reads.
    """
    record: dict[str, Any] = {field: getattr(job, field) for field in _JOB_SCALAR_FIELDS if getattr(job, field)}
    user_tags = {tag: job.tags[tag] for tag in USER_ID_TAGS if job.tags.get(tag)}
    if user_tags:
        record[_USER_TAGS_KEY] = user_tags
    if job.benchmark is not None:
        record[_BENCHMARK_KEY] = job.benchmark.model_dump(mode="json")
    return {tags.TAG_WEBHOOK_JOB: json.dumps(record, separators=(",", ":"), sort_keys=True)}


def job_record(version_tags: Mapping[str, str]) -> dict[str, Any] | None:
    """The job's webhook fields from a version's ``webhook_job`` tag, as job fields; None without one.

    Raises:
        InvalidInputError: the tag is not the JSON object :func:`job_record_tags` writes.
    """
    text = version_tags.get(tags.TAG_WEBHOOK_JOB)
    if text is None:
        return None
    try:
        record = json.loads(text)
    except ValueError as exc:
        raise InvalidInputError(f"the {tags.TAG_WEBHOOK_JOB} tag is not JSON: {exc}") from exc
    if not isinstance(record, dict):
        raise InvalidInputError(f"the {tags.TAG_WEBHOOK_JOB} tag is not a JSON object")
    fields: dict[str, Any] = {key: record[key] for key in _JOB_SCALAR_FIELDS if key in record}
    fields[_USER_TAGS_KEY] = dict(record.get(_USER_TAGS_KEY) or {})
    if record.get(_BENCHMARK_KEY) is not None:
        fields[_BENCHMARK_KEY] = BenchmarkGate.model_validate(record[_BENCHMARK_KEY])
    return fields


def event_time(result: Mapping[str, Any]) -> datetime | None:
    """The event timestamp of a registration ``result``: its version's registration time (UTC); None without one.

    Passed as ``build_event(result, job, now=event_time(result))``, it makes the event the one
    ``webhooks reconcile`` rebuilds from the version's ``creation_timestamp``.
    """
    text = result.get("registration_timestamp")
    if not text:
        return None
    moment = datetime.fromisoformat(str(text))
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
