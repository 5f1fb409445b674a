"""The job contract: a builder makes a valid job; each test changes one field and checks the exact error."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import pytest
from pydantic import ValidationError

from devtools.builders import DROP, WALLET, baseline_fields, improved_fields
from hokusai_registry.contract import (
    BASELINE_ID_HINT,
    REGISTER_TASK,
    REGISTRATION_QUEUE,
    SCHEMA_VERSION,
    WEBHOOK_QUEUE,
    WEBHOOK_TASK,
    BaselineRef,
    RegistrationJob,
    bad_metric_names,
    baseline_model_name,
    is_contributor_address,
    job_json_schema,
    model_type_of_name,
    parse_baseline_id,
    parse_signature_dict,
)
from hokusai_registry.errors import InvalidJobError
from hokusai_registry.settings import Settings
from hokusai_registry.validation import validate_job

_DROP = DROP


def errors_of(fields: dict[str, Any]) -> list[tuple[tuple[Any, ...], str, str]]:
    """(loc, type, msg) of every error validating ``fields``; fails if they are valid."""
    with pytest.raises(ValidationError) as caught:
        RegistrationJob.model_validate(fields)
    return [(tuple(e["loc"]), e["type"], e["msg"]) for e in caught.value.errors()]


def test_builders_make_valid_jobs() -> None:
    assert RegistrationJob.model_validate(baseline_fields()).kind == "baseline"
    improved = RegistrationJob.model_validate(improved_fields())
    assert improved.contributor == WALLET
    assert improved.delta_metrics == {"auroc": 0.02}


def test_missing_field() -> None:
    assert errors_of(baseline_fields(artifact_uri=_DROP)) == [(("artifact_uri",), "missing", "Field required")]


def test_unknown_field_is_forbidden() -> None:
    assert errors_of(baseline_fields(model_name="x")) == [
        (("model_name",), "extra_forbidden", "Extra inputs are not permitted")
    ]


def test_bad_model_type() -> None:
    assert errors_of(baseline_fields(model_type="vision")) == [
        (
            ("model_type",),
            "literal_error",
            "Input should be 'lead_scoring', 'classification', 'regression' or 'ranking'",
        )
    ]


def test_bad_contributor() -> None:
    assert errors_of(improved_fields(contributor="0x1234")) == [
        (("contributor",), "value_error", "Value error, must be 0x followed by 40 hex characters")
    ]


def test_improved_without_baseline_id() -> None:
    fields = improved_fields()
    del fields["baseline_id"]
    assert errors_of(fields) == [((), "value_error", "Value error, an improved job needs baseline_id")]


def test_improved_without_any_improvement_fields_names_them_all() -> None:
    assert errors_of(baseline_fields(kind="improved")) == [
        ((), "value_error", "Value error, an improved job needs baseline_id, delta_metrics, contributor")
    ]


def test_baseline_with_contributor() -> None:
    assert errors_of(baseline_fields(contributor=WALLET)) == [
        ((), "value_error", "Value error, a baseline job must not set contributor")
    ]


def test_bad_baseline_id() -> None:
    assert errors_of(improved_fields(baseline_id="hokusai_classification_baseline")) == [
        (("baseline_id",), "value_error", f"Value error, {BASELINE_ID_HINT}")
    ]


MAX_METADATA_BYTES = Settings().max_metadata_bytes


def test_metadata_over_the_cap() -> None:
    metadata = {"blob": "x" * MAX_METADATA_BYTES}
    size = len(json.dumps(metadata).encode())
    assert errors_of(baseline_fields(metadata=metadata)) == [
        (
            ("metadata",),
            "value_error",
            f"Value error, is {size} bytes as JSON; the limit is {MAX_METADATA_BYTES} (MAX_METADATA_BYTES)",
        )
    ]


def test_metadata_at_the_cap_is_accepted() -> None:
    overhead = len(json.dumps({"blob": ""}).encode())
    metadata = {"blob": "x" * (MAX_METADATA_BYTES - overhead)}
    assert RegistrationJob.model_validate(baseline_fields(metadata=metadata)).metadata == metadata


def test_non_json_metadata() -> None:
    assert errors_of(baseline_fields(metadata={"when": object()})) == [
        (
            ("metadata",),
            "value_error",
            "Value error, metadata['when'] is a builtins.object, which cannot be stored as JSON; convert it to a "
            "string, number, list or dict first",
        )
    ]


def test_nan_in_metadata_is_not_json() -> None:
    [(loc, kind, msg)] = errors_of(baseline_fields(metadata={"auroc": float("nan")}))
    assert (loc, kind) == (("metadata",), "value_error")
    assert msg == "Value error, metadata['auroc'] is nan; JSON has no NaN or infinity"


def test_signature_that_is_not_json() -> None:
    assert errors_of(baseline_fields(signature={"inputs": "[{'type': 'double'"})) == [
        (
            ("signature",),
            "value_error",
            "Value error, 'inputs' is not valid JSON: Expecting property name enclosed in double quotes: "
            "line 1 column 3 (char 2)",
        )
    ]


def test_signature_without_inputs() -> None:
    assert errors_of(baseline_fields(signature={"outputs": "[]"})) == [
        (("signature",), "value_error", "Value error, needs 'inputs' (the JSON string from ModelSignature.to_dict())")
    ]


def test_signature_with_unknown_key() -> None:
    assert errors_of(baseline_fields(signature={"inputs": "[]", "schema": "[]"})) == [
        (("signature",), "value_error", "Value error, has unknown keys ['schema']; expected inputs, outputs, params")
    ]


def test_valid_signature_is_kept() -> None:
    signature = {"inputs": '[{"type": "double", "name": "f0", "required": true}]', "outputs": None}
    assert RegistrationJob.model_validate(baseline_fields(signature=signature)).signature == signature


def test_token_id_is_lower_cased() -> None:
    assert RegistrationJob.model_validate(baseline_fields(token_id="LEAD-Score-2")).token_id == "lead-score-2"


def test_token_id_with_bad_characters() -> None:
    assert errors_of(baseline_fields(token_id="lead_score")) == [
        (("token_id",), "value_error", "Value error, must contain only letters, digits and '-'")
    ]


def test_schema_version_defaults_to_current() -> None:
    assert RegistrationJob.model_validate(baseline_fields()).schema_version == SCHEMA_VERSION == 1


def test_unsupported_schema_version() -> None:
    assert errors_of(baseline_fields(schema_version=2)) == [(("schema_version",), "literal_error", "Input should be 1")]


def test_job_id_generated_when_absent() -> None:
    first = RegistrationJob.model_validate(baseline_fields())
    second = RegistrationJob.model_validate(baseline_fields())
    assert isinstance(first.job_id, UUID) and first.job_id.version == 4
    assert first.job_id != second.job_id


def test_job_id_given_is_kept() -> None:
    job_id = "6f1c1a0e-3c3b-4a5e-9d39-2f9f5b1f0c11"
    assert str(RegistrationJob.model_validate(baseline_fields(job_id=job_id)).job_id) == job_id


def test_job_id_must_be_a_uuid() -> None:
    [(loc, kind, _msg)] = errors_of(baseline_fields(job_id="job-1"))
    assert (loc, kind) == (("job_id",), "uuid_parsing")


def test_bad_git_commit() -> None:
    assert errors_of(baseline_fields(git={"commit": "HEAD"})) == [
        (("git", "commit"), "value_error", "Value error, must be a lower-case hex commit hash of 7 to 64 characters")
    ]


def test_job_round_trips_through_json() -> None:
    job = RegistrationJob.model_validate(improved_fields(git={"commit": "abc1234"}))
    payload = job.model_dump(mode="json")
    assert json.loads(json.dumps(payload)) == payload
    assert RegistrationJob.model_validate(payload) == job


def test_schema_describes_the_job() -> None:
    schema = job_json_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"kind", "model_type", "artifact_uri"}
    assert "job_id" in schema["properties"]


def test_task_and_queue_names() -> None:
    assert (REGISTER_TASK, WEBHOOK_TASK) == ("hokusai.register_model", "hokusai.emit_webhook")
    assert (REGISTRATION_QUEUE, WEBHOOK_QUEUE) == ("hokusai.registrations", "hokusai.webhooks")


# ------------------------------------------------------------------ InvalidJobError messages
def test_invalid_job_error_names_the_field_and_problem() -> None:
    with pytest.raises(InvalidJobError) as caught:
        validate_job(improved_fields(contributor="0x1234"))
    assert str(caught.value) == (
        "invalid registration job: contributor: must be 0x followed by 40 hex characters (got '0x1234')"
    )


def test_invalid_job_error_lists_every_field() -> None:
    with pytest.raises(InvalidJobError) as caught:
        validate_job(baseline_fields(kind=_DROP, colour="red"))
    assert str(caught.value) == (
        "invalid registration job: kind: Field required; colour: Extra inputs are not permitted"
    )


def test_invalid_job_error_for_a_whole_job_rule() -> None:
    with pytest.raises(InvalidJobError) as caught:
        validate_job(baseline_fields(contributor=WALLET))
    assert str(caught.value) == "invalid registration job: a baseline job must not set contributor"


def test_invalid_job_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        validate_job(["not", "a", "mapping"])  # type: ignore[arg-type]


# ------------------------------------------------------------------ one predicate per rule, shared with the worker
def test_a_job_parses_its_baseline_id_once_and_carries_the_parts() -> None:
    job = RegistrationJob.model_validate(
        improved_fields(model_type="lead_scoring", baseline_id="hokusai_lead_scoring_baseline/3")
    )
    assert job.baseline == BaselineRef(
        name="hokusai_lead_scoring_baseline",
        version="3",
        improved_name="hokusai_lead_scoring_improved",
        model_type="lead_scoring",
    )
    assert job.baseline is job.baseline
    assert RegistrationJob.model_validate(baseline_fields()).baseline is None
    unvalidated = RegistrationJob.model_construct(**improved_fields(baseline_id="custom_baseline/2"))
    assert unvalidated.baseline == parse_baseline_id("custom_baseline/2")
    assert RegistrationJob.model_validate_json(job.model_dump_json()).baseline == job.baseline


def test_the_baseline_name_rule_and_its_inverse() -> None:
    assert baseline_model_name("ranking") == "hokusai_ranking_baseline"
    assert model_type_of_name("hokusai_ranking_baseline") == "ranking"
    assert model_type_of_name("hokusai_ranking_improved") == "ranking"
    assert model_type_of_name("hokusai_fraud_baseline") is None
    assert model_type_of_name("custom_baseline") is None


def test_the_contributor_and_metric_predicates_are_what_the_worker_applies() -> None:
    from worker.registration import model_inputs

    for good in (WALLET, WALLET.upper().replace("0X", "0x"), "0x" + "aB" * 20):
        assert is_contributor_address(good)
        model_inputs.check_contributor(good)
    for bad in ("0x123", "", None, 42, "0x" + "g" * 40):
        assert not is_contributor_address(bad)
        with pytest.raises(ValueError, match="contributor must be 0x followed by 40 hex characters"):
            model_inputs.check_contributor(bad)
    assert bad_metric_names(["auc", "/a", "a//b", "ok:1"]) == ["/a", "a//b"]
    with pytest.raises(ValueError, match=r"\['/a'\]"):
        model_inputs.check_delta_metrics({"auc": 1, "/a": 2})


def test_the_signature_form_is_parsed_by_one_function_from_a_dict_or_its_json() -> None:
    inputs = json.dumps([{"name": "x", "type": "double"}])
    given = {"inputs": inputs, "outputs": None}
    assert parse_signature_dict(given) == given
    assert parse_signature_dict(json.dumps(given)) == given
    assert parse_signature_dict(None) is None and parse_signature_dict("") is None
    for bad, message in (
        ("{not json", "is not JSON"),
        ("[]", "must be a JSON object"),
        ({"outputs": inputs}, "needs 'inputs'"),
        ({"inputs": inputs, "extra": None}, "unknown keys"),
        ({"inputs": "{}"}, "'inputs' must be a JSON list"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_signature_dict(bad)
