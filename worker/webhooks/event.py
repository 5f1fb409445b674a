"""The ``model_registered`` event: built once, from a registration result and its job.

The body follows the marketplace contract in ``docs/webhooks.md`` (fixed): ``event_type``, ``model``,
``timestamp``, ``source``; optional fields without a value are left out (never ``null``) and there is no
top-level ``token_id``. It is serialised once, compactly, and those bytes are stored, signed and
sent on every attempt and replay. The event id (also the idempotency key) is a UUIDv5 of the
registered name, version and run id, so building the same registration twice yields the same id.

Not every job yields an event: call :func:`skip_reason` first. A job without ``token_id`` has no
``model.id`` (required by the contract), and a job whose benchmark gate fails must not reach the
marketplace; both are reported as a reason to log, not raised, because retrying cannot change them.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hokusai_registry.contract import RegistrationJob, parse_signature_dict
from hokusai_registry.errors import InvalidInputError, InvalidJobError, SignatureError
from worker.registration.signatures import api_schema, parse_signature

logger = logging.getLogger(__name__)

EVENT_TYPE = "model_registered"
EVENT_SOURCE = "mlflow"
MODEL_STATUS = "registered"
#: Namespace of event ids; changing it changes every idempotency key (receivers would re-process).
EVENT_NAMESPACE = uuid.UUID("5b0f4f7e-3c1d-5a8e-9a51-6c2e1f0d7b43")
USER_ID_TAGS = ("user_id", "fulfilled_by_user_id")
_PASSTHROUGH_JOB_FIELDS = ("eval_spec", "scorer_ref", "primary_metric", "benchmark_spec_id")


@dataclass(frozen=True)
class WebhookEvent:
    """One event, exactly as it is stored, signed and sent.

    ``body`` is the serialised JSON; ``event_id`` is the idempotency key (``webhook-id``).
    """

    event_id: str
    body: bytes
    created_at: datetime
    model_name: str
    version: str
    job_id: str


def event_id_for(model_name: str, version: str, run_id: str | None) -> str:
    """The deterministic event id (UUIDv5) of one registered model version."""
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{model_name}/{version}/{run_id or ''}"))


def gate_verdict(job: RegistrationJob) -> str | None:
    """None when the job has no benchmark gate or meets it, else why it does not.

    Example: ``"accuracy 0.71 below baseline 0.8"``.
    """
    gate = job.benchmark
    if gate is None or gate.passes():
        return None
    direction = "below" if gate.higher_is_better else "above"
    return f"{gate.metric_name} {gate.current_value:g} {direction} baseline {gate.baseline_value:g}"


def skip_reason(job: RegistrationJob) -> str | None:
    """Why this job must not produce a webhook event, or None when it should.

    A missing ``token_id`` (the contract's required ``model.id``) or a failed benchmark gate.
    """
    if not job.token_id:
        return "job has no token_id, which the marketplace needs as model.id; no event is sent"
    verdict = gate_verdict(job)
    if verdict is not None:
        return f"benchmark gate not met: {verdict}"
    return None


def build_event(result: Mapping[str, Any], job: RegistrationJob, *, now: datetime | None = None) -> WebhookEvent:
    """Build the ``model_registered`` event of a registration ``result`` (see ``worker.registration.registry``).

    ``now`` fixes the body's ``timestamp`` (default: the current UTC time).

    Raises:
        InvalidJobError: the job has no ``token_id`` (check :func:`skip_reason` first).
        InvalidInputError: the result lacks ``model_name`` or ``version``, or holds a value
            that is not JSON.
        SignatureError: (an ``InvalidInputError``) the result's signature is not JSON or is malformed.
    """
    if not job.token_id:
        raise InvalidJobError("job has no token_id; call skip_reason() before build_event()")
    name, version = _required(result, "model_name"), _required(result, "version")
    created_at = (now or datetime.now(UTC)).astimezone(UTC)
    body = {
        "event_type": EVENT_TYPE,
        "model": _model_fields(result, job),
        "timestamp": created_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "source": EVENT_SOURCE,
    }
    try:
        encoded = json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"the event of {name}/{version} is not valid JSON: {exc}") from exc
    return WebhookEvent(
        event_id=event_id_for(name, version, result.get("run_id")),
        body=encoded,
        created_at=created_at,
        model_name=name,
        version=version,
        job_id=str(job.job_id),
    )


def _model_fields(result: Mapping[str, Any], job: RegistrationJob) -> dict[str, Any]:
    signature_dict = _signature_dict(result.get("signature"))
    signature = parse_signature(signature_dict)
    optional: dict[str, Any] = {
        "run_id": result.get("run_id"),
        "user_id": next((job.tags[tag] for tag in USER_ID_TAGS if job.tags.get(tag)), None),
        "api_schema": api_schema(signature),
        **{field: getattr(job, field) for field in _PASSTHROUGH_JOB_FIELDS},
        "model_uuid": result.get("model_uuid"),
        "model_uri": result.get("model_uri"),
        "signature": signature_dict,
        "metadata": result.get("metadata") or job.metadata,
    }
    return {
        "id": job.token_id,  # validated and lower-cased by RegistrationJob
        "name": result["model_name"],
        "status": MODEL_STATUS,
        "version": str(result["version"]),
        **{key: value for key, value in optional.items() if _has_value(value)},
    }


def _signature_dict(signature: Any) -> dict[str, Any] | None:
    """The ``to_dict()`` form from a result's JSON string (or dict), without null entries.

    Parsed and checked by the contract's one rule (:func:`parse_signature_dict`).
    ``ModelSignature.to_dict()`` writes ``"outputs": null`` / ``"params": null`` for absent
    parts; ``from_dict`` reads a missing key the same way, and the contract sends no nulls.
    """
    try:
        parsed = parse_signature_dict(signature)
    except ValueError as exc:
        raise SignatureError(f"the result's signature {exc}") from exc
    if parsed is None:
        return None
    return {key: value for key, value in parsed.items() if value is not None}


def _required(result: Mapping[str, Any], key: str) -> str:
    value = result.get(key)
    if value is None or str(value) == "":
        raise InvalidInputError(f"the registration result has no {key!r}")
    return str(value)


def _has_value(value: Any) -> bool:
    return value is not None and value != "" and value != {}
