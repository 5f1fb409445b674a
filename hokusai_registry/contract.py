"""The registration-job contract shared by producers and workers.

A training pipeline builds a :class:`RegistrationJob` and enqueues it by task *name*; a worker
validates it again and registers the model. Field names are part of the contract: add optional
fields only, and bump :data:`SCHEMA_VERSION` for anything else. This module imports only
pydantic and the standard library, so the producer side never pulls in mlflow or the worker.
"""

from __future__ import annotations

import json
import posixpath
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal, NamedTuple
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from hokusai_registry.json_values import to_json
from hokusai_registry.settings import get_settings

SCHEMA_VERSION: Literal[1] = 1

#: Celery task names (producers publish by name; the worker registers these names).
REGISTER_TASK = "hokusai.register_model"
WEBHOOK_TASK = "hokusai.emit_webhook"
#: Sends an event already stored (a deferred retry, or a re-sent event); internal to workers.
DELIVER_WEBHOOK_TASK = "hokusai.deliver_webhook"

#: The webhook step's task id is derived from the job id, so it can be looked up (Flower, status).
WEBHOOK_TASK_ID_SUFFIX = "-webhook"


def webhook_task_id(job_id: str | UUID) -> str:
    """The task id of a job's webhook step (the registration step's task id is the job id)."""
    return f"{job_id}{WEBHOOK_TASK_ID_SUFFIX}"


def job_id_of_task(task_id: str) -> str:
    """The job id a registration or webhook task id belongs to."""
    return task_id.removesuffix(WEBHOOK_TASK_ID_SUFFIX)


#: Message header with the publish time (epoch seconds): the age of the oldest waiting job is read from it.
ENQUEUED_AT_HEADER = "hokusai_enqueued_at"


def stamp_enqueued_at(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """Celery ``before_task_publish`` handler: stamp every published task with its publish time."""
    if headers is not None:
        headers.setdefault(ENQUEUED_AT_HEADER, time.time())


#: Queues: registrations and webhooks scale and fail independently.
REGISTRATION_QUEUE = "hokusai.registrations"
WEBHOOK_QUEUE = "hokusai.webhooks"

#: Celery's serialisation settings, the same for producers and workers: JSON only (a pickle message
#: from an open broker is remote code execution).
CELERY_WIRE_SETTINGS: dict[str, Any] = {
    "task_serializer": "json",
    "result_serializer": "json",
    "event_serializer": "json",
    "accept_content": ["json"],
    "result_accept_content": ["json"],
}

MODEL_TYPES = ("lead_scoring", "classification", "regression", "ranking")
ModelType = Literal["lead_scoring", "classification", "regression", "ranking"]

# Id patterns: the one definition of each. Values that reach MLflow filter strings are matched in
# full against these first (MLflow filters have no escaping).
CONTRIBUTOR_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,256}$")
#: MLflow 3 LoggedModel ids (``m-<32 hex>``) and MLflow 2 MLmodel uuids (32 hex).
MODEL_UUID_RE = re.compile(r"^(m-[0-9a-f]{32}|[0-9a-f]{32})$")
#: A baseline id: ``<name>_baseline/<version>``; its improved models register as ``<name>_improved``.
BASELINE_ID_RE = re.compile(r"^(?P<stem>[A-Za-z0-9_.\-]{1,240})_baseline/(?P<version>[1-9][0-9]{0,17})$")
TOKEN_ID_RE = re.compile(r"^[a-z0-9-]+$")
GIT_COMMIT_RE = re.compile(r"^[0-9a-f]{7,64}$")
#: W3C Trace Context ``traceparent``, version 00 form; nothing else is passed on (it becomes an HTTP
#: header, so a loose value would be a header injection).
TRACEPARENT_RE = re.compile(r"^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")
TRACEPARENT_HINT = "must be a W3C traceparent: 00-<32 hex trace id>-<16 hex span id>-<2 hex flags>, lower case"

_METRIC_NAME_RE = re.compile(r"^[A-Za-z0-9_\-. /:]{1,250}$")
METRIC_NAME_HINT = (
    "metric names may hold only letters, digits, '_', '-', '.', ' ', ':', '/' and must not start with '/' or "
    "'..', end with '/' or contain '//'"
)


def is_plain_path(key: str) -> bool:
    """MLflow refuses param and metric keys that normalise to another path (``a/``, ``/a``, ``a//b``)."""
    norm = posixpath.normpath(key)
    return norm == key and norm != "." and not norm.startswith(("..", "/"))


def is_metric_name(name: str) -> bool:
    """True for a name MLflow accepts as a metric key (checked before any run starts)."""
    return bool(_METRIC_NAME_RE.fullmatch(name)) and is_plain_path(name)


def bad_metric_names(names: Iterable[str]) -> list[str]:
    """The names MLflow would refuse as metric keys (the delta-metrics rule), in order; [] when all pass."""
    return [name for name in names if not is_metric_name(name)]


def is_contributor_address(value: object) -> bool:
    """True for a wallet address, ``0x`` + 40 hex characters in any letter case (the contributor rule)."""
    return isinstance(value, str) and CONTRIBUTOR_RE.fullmatch(value) is not None


CONTRIBUTOR_HINT = "must be 0x followed by 40 hex characters"

#: The parts of ``ModelSignature.to_dict()``: each a JSON list of column specs (``inputs`` required).
SIGNATURE_KEYS = ("inputs", "outputs", "params")


def parse_signature_dict(value: object) -> dict[str, str | None] | None:
    """A signature in its ``ModelSignature.to_dict()`` form, checked; given as that dict or as its JSON text.

    ``None`` and ``""`` are no signature (None). Each part is the JSON text of a list of column specs,
    or null; ``inputs`` is required.

    Raises:
        ValueError: not that form; the message says how (without the word "signature", for the caller to add).
    """
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"is not JSON: {exc}") from exc
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a JSON object (ModelSignature.to_dict()), not {type(value).__name__}")
    unknown = set(value) - set(SIGNATURE_KEYS)
    if unknown:
        raise ValueError(f"has unknown keys {sorted(map(str, unknown))}; expected {', '.join(SIGNATURE_KEYS)}")
    if not value.get("inputs"):
        raise ValueError("needs 'inputs' (the JSON string from ModelSignature.to_dict())")
    for key, text in value.items():
        if text is None:
            continue
        if not isinstance(text, str):
            raise ValueError(f"'{key}' must be a JSON string, not {type(text).__name__}")
        try:
            parsed = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"'{key}' is not valid JSON: {exc}") from exc
        if not isinstance(parsed, list):
            raise ValueError(f"'{key}' must be a JSON list of column specs")
    return dict(value)


def encoded_metadata(metadata: Mapping[str, Any], max_bytes: int) -> str:
    """``metadata`` as JSON, or ValueError when it is not JSON or larger than ``max_bytes`` (MAX_METADATA_BYTES)."""
    try:
        encoded = json.dumps(dict(metadata), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"must be a JSON object ({exc})") from exc
    size = len(encoded.encode())
    if size > max_bytes:
        raise ValueError(f"is {size} bytes as JSON; the limit is {max_bytes} (MAX_METADATA_BYTES)")
    return encoded


BASELINE_ID_HINT = "must look like '<name>_baseline/<version>', e.g. 'hokusai_lead_scoring_baseline/3'"


class BaselineRef(NamedTuple):
    """What a baseline id says: the registered name and version, and where improvements go."""

    name: str
    version: str
    improved_name: str
    #: The model type the name implies (``hokusai_<model_type>_baseline``), or None for other names.
    model_type: str | None


#: Every registered name this product gives a model starts so: ``hokusai_<model_type>_baseline``.
REGISTERED_NAME_PREFIX = "hokusai_"
BASELINE_SUFFIX = "_baseline"
IMPROVED_SUFFIX = "_improved"


def baseline_model_name(model_type: str) -> str:
    """The registered name of a ``model_type``'s baselines: ``hokusai_<model_type>_baseline``."""
    return f"{REGISTERED_NAME_PREFIX}{model_type}{BASELINE_SUFFIX}"


def model_type_of_name(name: str) -> str | None:
    """The model type a registered name implies (``hokusai_<type>_baseline`` / ``_improved``), else None."""
    for suffix in (BASELINE_SUFFIX, IMPROVED_SUFFIX):
        if name.startswith(REGISTERED_NAME_PREFIX) and name.endswith(suffix):
            candidate = name.removeprefix(REGISTERED_NAME_PREFIX).removesuffix(suffix)
            return candidate if candidate in MODEL_TYPES else None
    return None


def parse_baseline_id(baseline_id: object) -> BaselineRef:
    """Split a baseline id ``<name>_baseline/<version>``.

    Raises:
        ValueError: ``baseline_id`` does not have that shape (the message says which shape).
    """
    match = BASELINE_ID_RE.fullmatch(baseline_id) if isinstance(baseline_id, str) else None
    if match is None:
        raise ValueError(f"baseline_id {BASELINE_ID_HINT}; got {baseline_id!r}")
    name = f"{match['stem']}{BASELINE_SUFFIX}"
    return BaselineRef(
        name=name,
        version=match["version"],
        improved_name=f"{match['stem']}{IMPROVED_SUFFIX}",
        model_type=model_type_of_name(name),
    )


class GitInfo(BaseModel):
    """Where the training code came from, for attribution."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repo: str | None = Field(default=None, max_length=2048, description="Remote URL of the repository.")
    commit: str | None = Field(default=None, description="Full or abbreviated commit hash.")
    branch: str | None = Field(default=None, max_length=255)

    @field_validator("commit")
    @classmethod
    def _check_commit(cls, value: str | None) -> str | None:
        if value is not None and not GIT_COMMIT_RE.fullmatch(value):
            raise ValueError("must be a lower-case hex commit hash of 7 to 64 characters")
        return value


class BenchmarkGate(BaseModel):
    """Send the marketplace event only when the model meets its baseline."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric_name: str = Field(min_length=1, max_length=250)
    baseline_value: float
    current_value: float
    higher_is_better: bool = True

    def passes(self) -> bool:
        """True when ``current_value`` is at least as good as ``baseline_value``."""
        if self.higher_is_better:
            return self.current_value >= self.baseline_value
        return self.current_value <= self.baseline_value


class RegistrationJob(BaseModel):
    """One model registration, as enqueued by a training pipeline.

    ``job_id`` is the idempotency key: the same job processed twice yields one model version.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    job_id: UUID = Field(default_factory=uuid4, description="Idempotency key; generated when absent.")
    kind: Literal["baseline", "improved"]
    model_type: ModelType
    artifact_uri: str = Field(min_length=1, max_length=4096, description="An MLflow model directory.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Any JSON object, size-capped.")
    signature: dict[str, str | None] | None = Field(
        default=None, description="ModelSignature.to_dict(): JSON strings under inputs/outputs/params."
    )
    input_example: list[dict[str, Any]] | None = Field(default=None, description="JSON records.")
    pip_requirements: list[str] | None = None
    git: GitInfo | None = None

    # improved models
    baseline_id: str | None = Field(
        default=None, description="Baseline model id '<name>_baseline/<version>'; improvements go to '<name>_improved'."
    )
    delta_metrics: dict[str, float] | None = None
    contributor: str | None = Field(default=None, description="0x + 40 hex wallet address.")

    # marketplace webhook
    token_id: str | None = Field(default=None, max_length=128, description="Token symbol; becomes model.id.")
    tags: dict[str, str] = Field(default_factory=dict, description="Incl. user_id / fulfilled_by_user_id.")
    eval_spec: str | None = None
    scorer_ref: str | None = None
    primary_metric: str | None = None
    benchmark_spec_id: str | None = None
    benchmark: BenchmarkGate | None = None

    # tracing
    traceparent: str | None = Field(
        default=None,
        description="W3C trace context of the pipeline's span; set by enqueue from the caller's OpenTelemetry span.",
    )

    #: ``baseline_id``, parsed once by the validator (None for a baseline job).
    _baseline: BaselineRef | None = PrivateAttr(default=None)

    @property
    def baseline(self) -> BaselineRef | None:
        """What ``baseline_id`` says (registered name, version, improved name, implied type); None without one."""
        if self._baseline is None and self.baseline_id is not None:  # built without validation (model_construct)
            self._baseline = parse_baseline_id(self.baseline_id)
        return self._baseline

    @property
    def trace_context(self) -> str | None:
        """The job's ``traceparent``; for jobs that carry it only in their metadata, that one when well-formed."""
        if self.traceparent is not None:
            return self.traceparent
        legacy = self.metadata.get("traceparent")
        return legacy if isinstance(legacy, str) and TRACEPARENT_RE.fullmatch(legacy) else None

    @field_validator("metadata", mode="before")
    @classmethod
    def _convert_metadata(cls, value: Any) -> Any:
        """numpy scalars and arrays, datetime, date, Decimal, Path, sets: converted as documented in to_json."""
        return to_json(value, "metadata") if isinstance(value, Mapping) else value

    @field_validator("metadata")
    @classmethod
    def _check_metadata(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        context = info.context if isinstance(info.context, Mapping) else {}
        max_bytes = context.get("max_metadata_bytes") or get_settings().max_metadata_bytes
        encoded_metadata(value, max_bytes)
        return value

    @field_validator("delta_metrics")
    @classmethod
    def _check_delta_metrics(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        bad = bad_metric_names(value or {})
        if bad:
            raise ValueError(f"{METRIC_NAME_HINT}: {bad}")
        return value

    @field_validator("signature")
    @classmethod
    def _check_signature(cls, value: dict[str, str | None] | None) -> dict[str, str | None] | None:
        return parse_signature_dict(value)

    @field_validator("pip_requirements")
    @classmethod
    def _check_requirements(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(not req.strip() or "\n" in req for req in value):
            raise ValueError("each requirement must be one non-empty line")
        return value

    @field_validator("baseline_id")
    @classmethod
    def _check_baseline_id(cls, value: str | None) -> str | None:
        if value is not None and not BASELINE_ID_RE.fullmatch(value):
            raise ValueError(BASELINE_ID_HINT)
        return value

    @field_validator("contributor")
    @classmethod
    def _check_contributor(cls, value: str | None) -> str | None:
        if value is not None and not is_contributor_address(value):
            raise ValueError(CONTRIBUTOR_HINT)
        return value

    @field_validator("traceparent")
    @classmethod
    def _check_traceparent(cls, value: str | None) -> str | None:
        if value is not None and not TRACEPARENT_RE.fullmatch(value):
            raise ValueError(TRACEPARENT_HINT)
        return value

    @field_validator("token_id")
    @classmethod
    def _check_token_id(cls, value: str | None) -> str | None:
        if value is None:
            return None
        lowered = value.lower()
        if not TOKEN_ID_RE.fullmatch(lowered):
            raise ValueError("must contain only letters, digits and '-'")
        return lowered

    @model_validator(mode="after")
    def _check_kind(self) -> RegistrationJob:
        improved_fields = {
            "baseline_id": self.baseline_id,
            "delta_metrics": self.delta_metrics,
            "contributor": self.contributor,
        }
        if self.kind == "improved":
            missing = [name for name, val in improved_fields.items() if val is None]
            if missing:
                raise ValueError(f"an improved job needs {', '.join(missing)}")
            self._baseline = parse_baseline_id(self.baseline_id)
            implied = self._baseline.model_type
            if implied is not None and implied != self.model_type:
                raise ValueError(
                    f"model_type: {self.model_type!r} does not match baseline_id {self.baseline_id!r}, "
                    f"which is a {implied!r} model"
                )
        else:
            present = [name for name, val in improved_fields.items() if val is not None]
            if present:
                raise ValueError(f"a baseline job must not set {', '.join(present)}")
        return self


def job_json_schema() -> dict[str, Any]:
    """The JSON Schema of :class:`RegistrationJob` (what ``hokusai-registry schema`` prints)."""
    return RegistrationJob.model_json_schema()
