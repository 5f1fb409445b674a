"""worker.webhooks.event: the model_registered body, field by field against the contract in docs/webhooks.md."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec

from devtools import builders
from hokusai_registry.contract import BenchmarkGate, RegistrationJob
from hokusai_registry.errors import InvalidInputError, InvalidJobError, SignatureError
from worker.registration.signatures import signature_to_json
from worker.webhooks.event import build_event, event_id_for, gate_verdict, skip_reason

NOW = datetime(2026, 11, 26, 23, 31, 48, 585540, tzinfo=UTC)
TIMESTAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
MODEL_UUID = "m-" + "a" * 32

SIGNATURE = ModelSignature(
    inputs=Schema(
        [
            ColSpec("string", "company"),
            ColSpec("integer", "employees"),
            ColSpec("long", "revenue"),
            ColSpec("float", "score"),
            ColSpec("double", "ratio"),
            ColSpec("boolean", "active"),
            ColSpec("binary", "logo"),
            ColSpec("datetime", "founded"),
            ColSpec("string", "notes", required=False),
        ]
    ),
    outputs=Schema([ColSpec("double", "probability")]),
)


def make_job(**overrides: Any) -> RegistrationJob:
    """devtools.builders' job with every marketplace field set."""
    fields: dict[str, Any] = {
        "model_type": "lead_scoring",
        "token_id": "XRAY-7",
        "tags": {"user_id": "user-42"},
        "eval_spec": "eval/v3",
        "scorer_ref": "scorers/auc@2",
        "primary_metric": "auc",
        "benchmark_spec_id": "bench-9",
        "metadata": {"dataset": "leads-2026", "rows": 1200},
    }
    return builders.job(**{**fields, **overrides})


def make_result(**overrides: Any) -> dict[str, Any]:
    """A registration result as ``worker.registration.registry`` returns it."""
    result: dict[str, Any] = {
        "model_id": "hokusai_lead_scoring_baseline/3",
        "model_name": "hokusai_lead_scoring_baseline",
        "version": "3",
        "run_id": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        "model_uuid": MODEL_UUID,
        "model_uri": f"models:/{MODEL_UUID}",
        "signature": signature_to_json(SIGNATURE),
        "metadata": {"dataset": "leads-2026", "rows": 1200},
    }
    result.update(overrides)
    return result


def body_of(result: dict[str, Any] | None = None, job: RegistrationJob | None = None) -> dict[str, Any]:
    event = build_event(result or make_result(), job or make_job(), now=NOW)
    return json.loads(event.body)


def nulls_in(value: Any, path: str = "$") -> list[str]:
    if value is None:
        return [path]
    if isinstance(value, dict):
        return [hit for key, item in value.items() for hit in nulls_in(item, f"{path}.{key}")]
    if isinstance(value, list):
        return [hit for index, item in enumerate(value) for hit in nulls_in(item, f"{path}[{index}]")]
    return []


def test_webhook_payload_unchanged() -> None:
    event = build_event(make_result(), make_job(), now=NOW)
    body = json.loads(event.body)

    assert list(body) == ["event_type", "model", "timestamp", "source"]
    assert "token_id" not in body  # would route the event to the site's flat parser
    assert body["event_type"] == "model_registered"
    assert body["source"] == "mlflow"
    assert body["timestamp"] == "2026-11-26T23:31:48.585540Z"
    assert TIMESTAMP_RE.match(body["timestamp"])

    model = body["model"]
    assert model["id"] == "xray-7"  # lower-cased token symbol
    assert re.match(r"^[a-z0-9-]+$", model["id"])
    assert model["name"] == "hokusai_lead_scoring_baseline"
    assert model["status"] == "registered"
    assert model["version"] == "3" and isinstance(model["version"], str)
    assert model["run_id"] == "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
    assert model["user_id"] == "user-42"
    assert model["eval_spec"] == "eval/v3"
    assert model["scorer_ref"] == "scorers/auc@2"
    assert model["primary_metric"] == "auc"
    assert model["benchmark_spec_id"] == "bench-9"
    assert model["model_uuid"] == MODEL_UUID
    assert model["model_uri"] == f"models:/{MODEL_UUID}"
    assert model["signature"] == {"inputs": SIGNATURE.to_dict()["inputs"], "outputs": SIGNATURE.to_dict()["outputs"]}
    assert ModelSignature.from_dict(model["signature"]) == SIGNATURE
    assert model["metadata"] == {"dataset": "leads-2026", "rows": 1200}
    assert set(model["api_schema"]) == {"inputSchema", "outputSchema"}
    assert set(model) == {
        "id", "name", "status", "version", "run_id", "user_id", "api_schema", "eval_spec", "scorer_ref",
        "primary_metric", "benchmark_spec_id", "model_uuid", "model_uri", "signature", "metadata",
    }  # fmt: skip
    assert "token_id" not in model

    assert nulls_in(body) == []
    assert event.body == json.dumps(body, separators=(",", ":")).encode()  # compact, serialised once
    assert event.body.startswith(b'{"event_type":"model_registered","model":{"id":"xray-7","name":')
    assert event.body.endswith(b'},"timestamp":"2026-11-26T23:31:48.585540Z","source":"mlflow"}')


def test_optional_fields_without_value_are_left_out_not_null() -> None:
    job = make_job(tags={}, eval_spec=None, scorer_ref=None, primary_metric=None, benchmark_spec_id=None, metadata={})
    result = make_result(run_id=None, model_uuid=None, model_uri=None, signature=None, metadata={})
    body = body_of(result, job)
    assert body["model"] == {
        "id": "xray-7",
        "name": "hokusai_lead_scoring_baseline",
        "status": "registered",
        "version": "3",
    }
    assert "api_schema" not in body["model"]  # null would clear the site's stored schema
    assert b"null" not in build_event(result, job, now=NOW).body


def test_integer_version_from_the_result_is_sent_as_a_string() -> None:
    assert body_of(make_result(version=12))["model"]["version"] == "12"


def test_user_id_falls_back_to_fulfilled_by_user_id() -> None:
    body = body_of(job=make_job(tags={"fulfilled_by_user_id": "user-7"}))
    assert body["model"]["user_id"] == "user-7"


def test_user_id_tag_wins_over_fulfilled_by() -> None:
    body = body_of(job=make_job(tags={"user_id": "u-1", "fulfilled_by_user_id": "u-2"}))
    assert body["model"]["user_id"] == "u-1"


def test_metadata_falls_back_to_the_job_when_the_result_has_none() -> None:
    body = body_of(result=make_result(metadata=None), job=make_job(metadata={"source": "job"}))
    assert body["model"]["metadata"] == {"source": "job"}


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        ("company", {"type": "string"}),
        ("employees", {"type": "integer"}),
        ("revenue", {"type": "integer"}),
        ("score", {"type": "number"}),
        ("ratio", {"type": "number"}),
        ("active", {"type": "boolean"}),
        ("logo", {"type": "string", "format": "byte"}),
        ("founded", {"type": "string", "format": "date-time"}),
        ("notes", {"type": "string"}),
    ],
)
def test_api_schema_maps_each_column_type(column: str, expected: dict[str, str]) -> None:
    input_schema = body_of()["model"]["api_schema"]["inputSchema"]
    assert input_schema["type"] == "object"
    assert input_schema["properties"][column] == expected


def test_api_schema_lists_only_required_columns() -> None:
    api_schema = body_of()["model"]["api_schema"]
    assert api_schema["inputSchema"]["required"] == [
        "company", "employees", "revenue", "score", "ratio", "active", "logo", "founded",
    ]  # fmt: skip
    assert api_schema["outputSchema"] == {
        "type": "object",
        "properties": {"probability": {"type": "number"}},
        "required": ["probability"],
    }


def test_tensor_signature_keeps_signature_but_has_no_api_schema() -> None:
    import numpy as np

    tensor = ModelSignature(inputs=Schema([TensorSpec(np.dtype("float32"), (-1, 3))]))
    model = body_of(make_result(signature=signature_to_json(tensor)))["model"]
    assert "api_schema" not in model
    assert ModelSignature.from_dict(model["signature"]) == tensor


def test_malformed_result_signature_raises_signature_error() -> None:
    with pytest.raises(SignatureError):
        build_event(make_result(signature=json.dumps({"inputs": "not json"})), make_job())


def test_result_without_version_is_rejected() -> None:
    with pytest.raises(InvalidInputError, match="version"):
        build_event(make_result(version=None), make_job())


def test_timestamp_is_utc_with_z_whatever_the_input_zone() -> None:
    paris = NOW.astimezone(timezone(timedelta(hours=1)))
    event = build_event(make_result(), make_job(), now=paris)
    assert json.loads(event.body)["timestamp"] == "2026-11-26T23:31:48.585540Z"
    assert event.created_at == NOW and event.created_at.tzinfo == UTC


def test_timestamp_keeps_microseconds_when_they_are_zero() -> None:
    event = build_event(make_result(), make_job(), now=NOW.replace(microsecond=0))
    assert json.loads(event.body)["timestamp"] == "2026-11-26T23:31:48.000000Z"


def test_event_id_is_a_deterministic_uuid5_of_name_version_and_run() -> None:
    first = build_event(make_result(), make_job(), now=NOW)
    rebuilt = build_event(make_result(), make_job(), now=NOW + timedelta(minutes=5))
    assert first.event_id == rebuilt.event_id
    assert first.body != rebuilt.body  # the timestamp moved: only the stored event is re-sent
    assert uuid.UUID(first.event_id).version == 5
    assert first.event_id == event_id_for("hokusai_lead_scoring_baseline", "3", "0f1e2d3c4b5a69788796a5b4c3d2e1f0")
    assert build_event(make_result(version="4"), make_job(), now=NOW).event_id != first.event_id
    assert build_event(make_result(run_id="other"), make_job(), now=NOW).event_id != first.event_id


def test_event_carries_its_identity() -> None:
    job = make_job()
    event = build_event(make_result(), job, now=NOW)
    assert (event.model_name, event.version, event.job_id) == ("hokusai_lead_scoring_baseline", "3", str(job.job_id))


def test_gate_verdict_none_without_gate_or_when_met() -> None:
    assert gate_verdict(make_job()) is None
    met = BenchmarkGate(metric_name="accuracy", baseline_value=0.8, current_value=0.8)
    assert gate_verdict(make_job(benchmark=met)) is None


def test_gate_verdict_explains_a_miss() -> None:
    missed = BenchmarkGate(metric_name="accuracy", baseline_value=0.80, current_value=0.71)
    assert gate_verdict(make_job(benchmark=missed)) == "accuracy 0.71 below baseline 0.8"


def test_gate_verdict_lower_is_better() -> None:
    missed = BenchmarkGate(metric_name="latency_ms", baseline_value=100, current_value=120, higher_is_better=False)
    assert gate_verdict(make_job(benchmark=missed)) == "latency_ms 120 above baseline 100"


def test_skip_reason_none_for_a_sendable_job() -> None:
    assert skip_reason(make_job()) is None


def test_skip_reason_without_token_id_and_build_refuses() -> None:
    job = make_job(token_id=None)
    reason = skip_reason(job)
    assert reason is not None and "token_id" in reason and "model.id" in reason
    with pytest.raises(InvalidJobError, match="token_id"):
        build_event(make_result(), job)


def test_skip_reason_for_a_failed_gate() -> None:
    missed = BenchmarkGate(metric_name="accuracy", baseline_value=0.8, current_value=0.71)
    assert skip_reason(make_job(benchmark=missed)) == "benchmark gate not met: accuracy 0.71 below baseline 0.8"


def test_event_from_a_real_mlflow_registration(registry: Any, sk_model: Any, example_records: list) -> None:
    """The version in the body is the ModelVersion.version that register_model returned."""
    from mlflow.tracking import MlflowClient

    first = registry.register_baseline(sk_model, "lead_scoring", metadata={"rows": 40}, input_example=example_records)
    second = registry.register_baseline(sk_model, "lead_scoring", metadata={"rows": 40}, input_example=example_records)
    model = json.loads(build_event(second, make_job(), now=NOW).body)["model"]

    stored = MlflowClient(registry.tracking_uri).get_model_version(second["model_name"], second["version"])
    assert model["version"] == str(stored.version) == "2" != first["version"]
    assert model["name"] == stored.name == "hokusai_lead_scoring_baseline"
    assert model["run_id"] == stored.run_id
    assert model["model_uuid"] == second["model_uuid"]
    assert set(model["api_schema"]["inputSchema"]["properties"]) == {"f0", "f1", "f2"}
    assert nulls_in(model) == []
