"""``worker.registration.registry.HokusaiModelRegistry`` against a real MLflow sqlite store (one per test)."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import mlflow.sklearn
import pandas as pd
import pytest
from mlflow.entities import ViewType
from mlflow.models import ModelSignature, infer_signature
from mlflow.tracking import MlflowClient

from hokusai_registry.errors import InvalidInputError, RegistryUnavailableError, SignatureError
from tests.support import free_port
from worker.registration.registry import HokusaiModelRegistry

CONTRIBUTOR = "0x" + "ab12" * 10
OTHER_CONTRIBUTOR = "0x" + "cd34" * 10
MODEL_UUID = re.compile(r"m-[0-9a-f]{32}")
GIT_RUN_TAGS = ("mlflow.source.git.commit", "mlflow.source.git.branch", "mlflow.source.git.repoURL")
GIT_VERSION_TAGS = ("git_commit", "git_branch", "git_repo")
RESULT_FIELDS = {
    "model_id", "model_name", "version", "model_type", "is_baseline", "run_id", "registration_timestamp",
    "model_uri", "model_uuid", "artifact_path", "flavors", "signature", "mlflow_version", "metadata",
}  # fmt: skip


class ConstantModel(mlflow.pyfunc.PythonModel):
    """What existing training code passes today: a plain pyfunc PythonModel."""

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        return [0.5] * len(model_input)


# ---------------------------------------------------------------------------------- helpers
def versions_of(tracking_uri: str, name: str) -> list[Any]:
    versions = MlflowClient(tracking_uri).search_model_versions(f"name = '{name}'")
    return sorted(versions, key=lambda v: int(v.version))


def everything_logged(tracking_uri: str) -> dict[str, list[Any]]:
    """Every run, logged model, registered model and version in the store."""
    client = MlflowClient(tracking_uri)
    experiment_ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return {
        "runs": list(client.search_runs(experiment_ids, run_view_type=ViewType.ALL)),
        "logged_models": list(client.search_logged_models(experiment_ids)),
        "registered_models": list(client.search_registered_models()),
        "versions": list(client.search_model_versions()),
    }


def assert_nothing_logged(tracking_uri: str) -> None:
    assert everything_logged(tracking_uri) == {
        "runs": [],
        "logged_models": [],
        "registered_models": [],
        "versions": [],
    }


def download_model(result: dict[str, Any], tmp_path: Path) -> Path:
    target = tmp_path / f"download-{result['model_uuid']}"
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=result["model_uri"], dst_path=str(target)))


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=Trainer", "-c", "user.email=trainer@example.com", "-C", str(cwd), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def make_git_repo(path: Path, *, branch: str, remote: str | None) -> Path:
    """A real git repository with one committed ``train.py``."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", branch)
    (path / "train.py").write_text("def features(frame):\n    return frame[['f0', 'f1', 'f2']]\n")
    git(path, "add", "train.py")
    git(path, "commit", "-q", "-m", "training code")
    if remote:
        git(path, "remote", "add", "origin", remote)
    return path


def strings_in(tags: dict[str, str]) -> str:
    return json.dumps(tags, sort_keys=True)


# ---------------------------------------------------------------------------------- registration
def test_register_baseline_captures_model_info(
    registry: HokusaiModelRegistry, tracking_uri: str, sk_model: Any, example_records: list[dict[str, float]]
) -> None:
    before = datetime.now(UTC)
    result = registry.register_baseline(sk_model, "classification", {"owner": "team-a"}, input_example=example_records)

    client = MlflowClient(tracking_uri)
    version = client.get_model_version("hokusai_classification_baseline", "1")
    logged = client.get_logged_model(result["model_uuid"])
    assert set(result) == RESULT_FIELDS
    assert result["model_id"] == "hokusai_classification_baseline/1"
    assert result["model_name"] == "hokusai_classification_baseline"
    assert result["version"] == "1" == str(version.version)
    assert result["model_type"] == "classification"
    assert result["is_baseline"] is True
    assert MODEL_UUID.fullmatch(result["model_uuid"])
    assert logged.model_id == result["model_uuid"]
    assert result["model_uri"] == f"models:/{result['model_uuid']}" == version.source
    assert result["artifact_path"] == logged.artifact_location
    assert result["flavors"] == ["python_function", "sklearn"]
    signature = ModelSignature.from_dict(json.loads(result["signature"]))
    assert signature.inputs.to_dict() == [
        {"type": "double", "name": name, "required": True} for name in ("f0", "f1", "f2")
    ]
    assert result["mlflow_version"] == mlflow.__version__
    assert result["metadata"] == {"owner": "team-a"}
    registered_at = datetime.fromisoformat(result["registration_timestamp"])
    assert registered_at.utcoffset() is not None and registered_at.utcoffset().total_seconds() == 0
    assert registered_at == datetime.fromtimestamp(version.creation_timestamp / 1000, tz=UTC)
    assert before.replace(microsecond=0) <= registered_at <= datetime.now(UTC)
    assert result["run_id"] == version.run_id == logged.source_run_id
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "hokusai_classification_baseline"
    assert [o.model_id for o in run.outputs.model_outputs] == [result["model_uuid"]]  # the run's logged model
    assert mlflow.models.get_model_info(result["model_uri"]).run_id == result["run_id"]  # in its MLmodel too
    assert logged.params == {"owner": "team-a"}  # searchable with search_logged_models; not the run's params
    assert run.data.params["metadata_owner"] == "team-a" and run.data.params["model_type"] == "classification"
    assert version.tags["model_uuid"] == result["model_uuid"]
    assert version.tags["model_type"] == "classification"
    assert version.tags["is_baseline"] == "true"


class _Unpicklable(mlflow.pyfunc.PythonModel):
    """A model whose saving fails after its run and LoggedModel exist (a lock cannot be pickled)."""

    def __init__(self) -> None:
        import threading

        self.lock = threading.Lock()

    def predict(self, context: Any, model_input: list[Any]) -> list[Any]:
        return model_input


def test_failed_save_marks_run_and_logged_model_failed(registry: HokusaiModelRegistry, tracking_uri: str) -> None:
    with pytest.raises(Exception, match=r"(?i)pickl|serializ"):
        registry.register_baseline(_Unpicklable(), "classification", {}, pip_requirements=["mlflow"])

    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([registry.experiment_id()], run_view_type=ViewType.ALL)
    (logged,) = client.search_logged_models([registry.experiment_id()])
    assert run.info.status == "FAILED"
    assert str(logged.status) == "FAILED" and logged.source_run_id == run.info.run_id
    assert client.search_model_versions("name = 'hokusai_classification_baseline'") == []


def test_refuses_while_a_caller_run_is_active(registry: HokusaiModelRegistry, tracking_uri: str, sk_model: Any) -> None:
    with mlflow.start_run() as caller_run, pytest.raises(InvalidInputError, match="run is active in this thread") as e:
        registry.register_baseline(sk_model, "classification", {})
    assert caller_run.info.run_id in str(e.value)
    assert MlflowClient(tracking_uri).get_run(caller_run.info.run_id).outputs.model_outputs == []
    assert MlflowClient(tracking_uri).search_model_versions("name = 'hokusai_classification_baseline'") == []


def test_exactly_one_version_per_call(registry: HokusaiModelRegistry, tracking_uri: str, sk_model: Any) -> None:
    first = registry.register_baseline(sk_model, "regression", {})
    assert [str(v.version) for v in versions_of(tracking_uri, "hokusai_regression_baseline")] == ["1"]
    second = registry.register_baseline(sk_model, "regression", {})
    versions = versions_of(tracking_uri, "hokusai_regression_baseline")
    assert [str(v.version) for v in versions] == ["1", "2"]
    assert (first["version"], second["version"]) == ("1", "2")
    assert [v.tags["model_uuid"] for v in versions] == [first["model_uuid"], second["model_uuid"]]
    assert first["model_uuid"] != second["model_uuid"]

    improved = registry.register_improved_model(sk_model, first["model_id"], {"rmse": -0.1}, CONTRIBUTOR)
    assert [str(v.version) for v in versions_of(tracking_uri, "hokusai_regression_improved")] == ["1"]
    assert improved["model_id"] == "hokusai_regression_improved/1"
    logged = everything_logged(tracking_uri)
    assert len(logged["runs"]) == len(logged["logged_models"]) == len(logged["versions"]) == 3


def test_a_registered_model_deleted_between_registrations_is_created_again(
    registry: HokusaiModelRegistry, tracking_uri: str, sk_model: Any
) -> None:
    """The second version of a known name skips `register_model`'s create-model request, safely."""
    reqs = ["scikit-learn>=1.3"]
    first = registry.register_baseline(sk_model, "regression", {}, pip_requirements=reqs)  # via register_model
    second = registry.register_baseline(sk_model, "regression", {}, pip_requirements=reqs)  # the direct path
    assert second["version"] == "2"
    [written] = json.loads(mlflow.get_logged_model(first["model_uuid"]).tags["mlflow.modelVersions"])
    link = json.loads(mlflow.get_logged_model(second["model_uuid"]).tags["mlflow.modelVersions"])
    assert link == [{"name": "hokusai_regression_baseline", "version": type(written["version"])(2)}]
    assert versions_of(tracking_uri, "hokusai_regression_baseline")[-1].tags["model_uuid"] == second["model_uuid"]
    registry.client.delete_registered_model("hokusai_regression_baseline")
    again = registry.register_baseline(sk_model, "regression", {}, pip_requirements=reqs)
    assert again["version"] == "1"
    assert [v.tags["model_uuid"] for v in versions_of(tracking_uri, "hokusai_regression_baseline")] == [
        again["model_uuid"]
    ]


def test_register_baseline_skips_requirements_inference(
    registry: HokusaiModelRegistry, sk_model: Any, tmp_path: Path
) -> None:
    """MLflow's inference spawns a Python process per call (~3 s); passing requirements avoids it."""
    import sklearn

    first = registry.register_baseline(sk_model, "classification", {})  # warms imports (skops, flavors)
    durations = []
    for _ in range(5):
        started = time.perf_counter()
        registry.register_baseline(sk_model, "classification", {})
        durations.append(time.perf_counter() - started)
    # Tens of milliseconds when the machine is idle; inference alone would take seconds.
    assert statistics.median(durations) < 2.0, f"register_baseline took {durations}"

    requirements = (download_model(first, tmp_path) / "requirements.txt").read_text().splitlines()
    assert requirements == [f"mlflow=={mlflow.__version__}", f"scikit-learn=={sklearn.__version__}"]
    custom = registry.register_baseline(
        sk_model, "classification", {}, pip_requirements=["scikit-learn>=1.3", "pandas"]
    )
    requirements = (download_model(custom, tmp_path) / "requirements.txt").read_text().splitlines()
    assert requirements == [f"mlflow=={mlflow.__version__}", "scikit-learn>=1.3", "pandas"]


# ---------------------------------------------------------------------------------- lookups
def test_get_model_by_uuid(
    registry: HokusaiModelRegistry, sk_model: Any, example_records: list[dict[str, float]]
) -> None:
    baseline = registry.register_baseline(
        sk_model, "lead_scoring", {"dataset": "leads-2024", "rows": 40}, input_example=example_records
    )
    improved = registry.register_improved_model(
        sk_model, baseline["model_id"], {"auc": 0.03}, CONTRIBUTOR, metadata={"notes": "more trees"}
    )

    found = registry.get_model_by_uuid(baseline["model_uuid"])
    assert found is not None
    assert {key: found[key] for key in RESULT_FIELDS} == baseline
    assert found["tags"] == {
        "model_uuid": baseline["model_uuid"],
        "model_type": "lead_scoring",
        "is_baseline": "true",
        **{key: value for key, value in found["tags"].items() if key in GIT_VERSION_TAGS},
    }
    assert "baseline_id" not in found

    found = registry.get_model_by_uuid(improved["model_uuid"])
    assert found is not None
    assert {key: found[key] for key in RESULT_FIELDS} == {key: improved[key] for key in RESULT_FIELDS}
    assert found["model_id"] == "hokusai_lead_scoring_improved/1"
    assert found["metadata"] == {"notes": "more trees"}
    assert (found["baseline_id"], found["contributor"]) == (baseline["model_id"], CONTRIBUTOR)
    assert found["tags"]["contributor"] == CONTRIBUTOR
    assert found["tags"]["baseline_model_id"] == baseline["model_id"]
    assert found["tags"]["is_baseline"] == "false"

    assert registry.get_model_by_uuid("m-" + "0" * 32) is None
    assert registry.get_model_by_uuid(baseline["model_uuid"].removeprefix("m-")) is None


def test_model_uuid_searchability(
    registry: HokusaiModelRegistry, sk_model: Any, example_records: list[dict[str, float]]
) -> None:
    results = [registry.register_baseline(sk_model, model_type, {"type": model_type}) for model_type in
               ("lead_scoring", "classification", "regression", "ranking")]  # fmt: skip
    results.append(registry.register_baseline(ConstantModel(), "ranking", {"kind": "pyfunc"}))
    results.append(registry.register_baseline(sk_model, "classification", {}, input_example=example_records))
    results.append(registry.register_improved_model(sk_model, results[1]["model_id"], {"f1": 0.01}, CONTRIBUTOR))
    results.append(registry.register_improved_model(ConstantModel(), results[3]["model_id"], {}, OTHER_CONTRIBUTOR))

    assert len({r["model_uuid"] for r in results}) == len(results)
    for result in results:
        found = registry.get_model_by_uuid(result["model_uuid"])
        assert found is not None, result["model_id"]
        assert (found["model_id"], found["model_uuid"], found["metadata"], found["flavors"]) == (
            result["model_id"],
            result["model_uuid"],
            result["metadata"],
            result["flavors"],
        )
    assert [r["model_id"] for r in results] == [
        "hokusai_lead_scoring_baseline/1",
        "hokusai_classification_baseline/1",
        "hokusai_regression_baseline/1",
        "hokusai_ranking_baseline/1",
        "hokusai_ranking_baseline/2",
        "hokusai_classification_baseline/2",
        "hokusai_classification_improved/1",
        "hokusai_ranking_improved/1",
    ]


HOSTILE_UUIDS: list[Any] = [
    "' OR 1=1 --",
    "m-00000000000000000000000000000000' OR name LIKE '%",
    "m-00000000000000000000000000000000'",
    'm-00000000000000000000000000000000"',
    "%",
    "m-%",
    "m-0000000000000000000000000000000%",
    " m-00000000000000000000000000000000",
    "m-00000000000000000000000000000000 ",
    "m-0000000000000000 0000000000000000",
    "m-00000000000000000000000000000000\n",
    "M-00000000000000000000000000000000",
    "m-0000000000000000000000000000000g",
    "",
    None,
    123,
    b"m-00000000000000000000000000000000",
    ["m-00000000000000000000000000000000"],
]


@pytest.mark.parametrize("hostile", HOSTILE_UUIDS, ids=repr)
def test_uuid_filter_injection_rejected(registry: HokusaiModelRegistry, sk_model: Any, hostile: Any) -> None:
    registry.register_baseline(sk_model, "classification", {})
    with pytest.raises(InvalidInputError, match="model_uuid must look like") as raised:
        registry.get_model_by_uuid(hostile)
    assert isinstance(raised.value, ValueError)


def test_invalid_lookups_never_reach_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """Against an MLflow that is down, a search would fail as unavailable; rejected input never gets there."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    registry = HokusaiModelRegistry(f"http://127.0.0.1:{free_port()}")
    hostile_calls = [
        *[(registry.get_model_by_uuid, value) for value in HOSTILE_UUIDS],
        (registry.get_model_lineage, "hokusai_classification_baseline' OR name LIKE '%"),
        (registry.get_model_lineage, "name with spaces"),
        (registry.get_model_lineage, 42),
    ]
    for call, value in hostile_calls:
        with pytest.raises(InvalidInputError):
            call(value)
    # An address that is not one finds nothing, as before the upgrade (no RegistryUnavailableError: not searched).
    for address in ("0x' OR tags.contributor LIKE '%", CONTRIBUTOR + "'", None):
        assert registry.get_contributor_models(address) == []  # type: ignore[arg-type]
    # The control: a well-formed value is searched, and the search does reach (the absent) MLflow.
    with pytest.raises(RegistryUnavailableError):
        registry.get_model_by_uuid("m-" + "0" * 32)


# ---------------------------------------------------------------------------------- signatures
def test_signature_validation(
    registry: HokusaiModelRegistry,
    tracking_uri: str,
    sk_model: Any,
    example_records: list[dict[str, float]],
) -> None:
    frame = pd.DataFrame(example_records)
    signature = infer_signature(frame, sk_model.predict(frame))
    inputs_json = signature.to_dict()["inputs"]
    rejected: list[tuple[dict[str, Any], str]] = [
        # mismatched input examples
        (
            {"signature": signature, "input_example": [{"f0": 0.1, "f1": 0.2}]},
            "missing required column(s) ['f2']",
        ),
        ({"signature": signature.to_dict(), "input_example": [{"f1": 0.2, "f2": 0.3}]}, "['f0']"),
        ({"signature": signature, "input_example": [{"f0": "high", "f1": 0.2, "f2": 0.3}]}, "f0"),
        ({"signature": signature, "input_example": [{"f0": 0.1, "f1": True, "f2": 0.3}]}, "f1"),
        ({"signature": signature, "input_example": "not a table"}, "cannot be read as a table"),
        # malformed signatures
        ({"signature": {"inputs": "{not json"}}, "JSONDecodeError"),
        ({"signature": {"inputs": '{"f0": "double"}'}}, "signature is malformed"),
        ({"signature": {"inputs": '[{"type": "decimal", "name": "f0"}]'}}, "'decimal'"),
        ({"signature": {"inputs": '[{"name": "f0"}]'}}, "KeyError"),
        ({"signature": {"inputs": inputs_json, "outputs": "[{"}}, "JSONDecodeError"),
        ({"signature": {"outputs": inputs_json}}, "no 'inputs'"),
        ({"signature": inputs_json}, "must be a ModelSignature or its to_dict() form, not str"),
        ({"signature": ["f0", "f1"], "input_example": example_records}, "not list"),
    ]
    for kwargs, message in rejected:
        with pytest.raises(SignatureError) as raised:
            registry.register_baseline(sk_model, "classification", {}, **kwargs)
        assert isinstance(raised.value, ValueError)
        assert message in str(raised.value), (kwargs, str(raised.value))
        with pytest.raises(SignatureError):
            registry.register_improved_model(sk_model, "hokusai_classification_baseline/1", {}, CONTRIBUTOR, **kwargs)
    assert_nothing_logged(tracking_uri)

    as_object = registry.register_baseline(
        sk_model, "classification", {}, signature=signature, input_example=example_records
    )
    as_dict = registry.register_baseline(
        sk_model, "classification", {}, signature=signature.to_dict(), input_example=example_records
    )
    # JSON examples carry ints where the schema says double: widened, not rejected.
    whole_numbers = registry.register_baseline(
        sk_model, "classification", {}, signature=signature, input_example=[{"f0": 1, "f1": 0, "f2": 1}]
    )
    no_example = registry.register_baseline(sk_model, "classification", {}, signature=signature.to_dict())
    for result in (as_object, as_dict, whole_numbers, no_example):
        assert json.loads(result["signature"]) == signature.to_dict()
        assert registry.get_model_by_uuid(result["model_uuid"])["signature"] == result["signature"]

    inferred = registry.register_baseline(sk_model, "classification", {}, input_example=example_records)
    parsed = ModelSignature.from_dict(json.loads(inferred["signature"]))
    assert parsed.inputs.to_dict() == signature.inputs.to_dict()
    assert parsed.outputs is not None
    assert registry.register_baseline(sk_model, "classification", {})["signature"] is None


# ---------------------------------------------------------------------------------- compatibility
def test_backward_compatibility(registry: HokusaiModelRegistry, tracking_uri: str, sk_model: Any) -> None:
    def baseline(model: Any = sk_model, model_type: Any = "classification", metadata: Any = None, **kwargs: Any) -> Any:
        metadata = {} if metadata is None else metadata
        return lambda: registry.register_baseline(model, model_type, metadata, **kwargs)

    def improved(
        model: Any = sk_model,
        baseline_id: Any = "hokusai_ranking_baseline/1",
        deltas: Any = None,
        contributor: Any = CONTRIBUTOR,
    ) -> Any:
        deltas = {} if deltas is None else deltas
        return lambda: registry.register_improved_model(model, baseline_id, deltas, contributor)

    invalid_calls = [
        *[(baseline(model_type=t), "model_type must be one of") for t in ("fraud", "Classification", "", None)],
        (baseline(model=None), "model must not be None"),
        (baseline(model=object()), "PythonModel or a scikit-learn estimator, not object"),
        (baseline(metadata=["a"]), "metadata must be a dict"),
        (baseline(metadata={"x": [1, object()]}), "metadata['x'][1] is a builtins.object, which cannot be stored"),
        (baseline(metadata={"x": float("nan")}), "metadata['x'] is nan; JSON has no NaN"),
        (baseline(code_paths=["/nope.py"]), "code_paths do not exist"),
        (improved(model=None), "model must not be None"),
        *[
            (improved(baseline_id=bad), "baseline_id must look like")
            for bad in (
                "hokusai_ranking_baseline/0",
                "hokusai_ranking_improved/1",
                "hokusai_ranking_baseline/1\n",
                "hokusai_ranking_baseline",
                None,
            )
        ],
        # A baseline whose name implies no model type is looked up; one that does not exist is refused.
        (improved(baseline_id="hokusai_fraud_baseline/1"), "no such model version"),
        (improved(deltas={"a": "x"}), "delta_metrics values must be numbers"),
        (improved(deltas={"acc/": 1}), "['acc/']"),
        (improved(deltas={"acc\n": 1}), "['acc\\n']"),
        (improved(deltas=[1]), "delta_metrics must be a dict"),
        *[
            (improved(contributor=bad), "contributor must be 0x followed by 40 hex")
            for bad in (
                "0x123",
                "ab12" * 10,
                "0x" + "g" * 40,
                "0x" + "a" * 41,
                " " + CONTRIBUTOR,
                CONTRIBUTOR + "\n",
                None,
                42,
            )
        ],
    ]
    for call, message in invalid_calls:
        with pytest.raises(ValueError) as raised:
            call()
        assert message in str(raised.value)
    assert_nothing_logged(tracking_uri)

    # The shapes existing training code uses: positional three and four arguments, a PythonModel.
    baseline = registry.register_baseline(ConstantModel(), "ranking", {"source": "legacy"})
    assert baseline["model_id"] == "hokusai_ranking_baseline/1"
    assert baseline["flavors"] == ["python_function"]
    assert baseline["metadata"] == {"source": "legacy"}
    improved = registry.register_improved_model(ConstantModel(), baseline["model_id"], {"ndcg": 0.04}, CONTRIBUTOR)
    assert improved["model_id"] == "hokusai_ranking_improved/1"
    assert (improved["baseline_id"], improved["contributor"], improved["delta_metrics"]) == (
        baseline["model_id"],
        CONTRIBUTOR,
        {"ndcg": 0.04},
    )
    assert improved["is_baseline"] is False
    loaded = mlflow.pyfunc.load_model(improved["model_uri"])
    assert list(loaded.predict(pd.DataFrame({"f0": [1.0, 2.0]}))) == [0.5, 0.5]

    sk_baseline = registry.register_baseline(sk_model, "lead_scoring", {"k": 1})
    sk_improved = registry.register_improved_model(sk_model, sk_baseline["model_id"], {"auc": 1}, OTHER_CONTRIBUTOR)
    assert sk_improved["flavors"] == ["python_function", "sklearn"]
    assert sk_improved["delta_metrics"] == {"auc": 1.0}
    keyword = registry.register_baseline(model=sk_model, model_type="regression", metadata=None)
    assert keyword["metadata"] == {}
    assert len(everything_logged(tracking_uri)["versions"]) == 5


# ---------------------------------------------------------------------------------- metadata
def test_long_nested_metadata_round_trip(registry: HokusaiModelRegistry, tracking_uri: str, sk_model: Any) -> None:
    long_text = "model card. " * 1000 + "end"
    metadata = {
        "description": long_text,
        "exact_param_limit": "p" * 6000,
        "just_over_param_limit": "q" * 6001,
        "at_searchable_limit": "s" * 250,
        "over_searchable_limit": "t" * 251,
        "nested": {"layers": [{"units": 64, "dropout": 0.5}, {"units": 1, "activation": None}], "empty": {}},
        "matrix": [[1, 2.5], [], [True, False, None]],
        "unicode": "東京 — naïve café ✓ \U0001f600",
        "yes": "yes",
        "null": "null",
        "no": "no",
        "on": "on",
        "true_string": "true",
        "tilde": "~",
        "date_like": "2024-01-01",
        "number_like": "1e3",
        "octal_like": "0o17",
        "hex_like": "0x1F",
        "int": 3,
        "float": 3.0,
        "negative_zero": -0.0,
        "huge_int": 2**70,
        "bool": True,
        "none": None,
        "padded": "  spaces  \n",
        "key/with/slashes": "ok",
        "trailing/": "a key MLflow refuses as a param",
        "../escape": "a key MLflow refuses as a param",
        "newline\n": "a key MLflow refuses as a param",
        "with 'quotes'": 'and "quotes"',
    }
    encoded = json.dumps(metadata, sort_keys=True)
    assert len(long_text) > 10_000

    result = registry.register_baseline(sk_model, "classification", metadata)
    assert json.dumps(result["metadata"], sort_keys=True) == encoded
    found = registry.get_model_by_uuid(result["model_uuid"])
    assert found is not None
    # Compared as JSON text, so 3 vs 3.0, True vs 1 and "null" vs None all count as differences.
    assert json.dumps(found["metadata"], sort_keys=True) == encoded
    improved = registry.register_improved_model(sk_model, result["model_id"], {}, CONTRIBUTOR, metadata=metadata)
    assert json.dumps(registry.get_model_by_uuid(improved["model_uuid"])["metadata"], sort_keys=True) == encoded

    # Short scalars are params of the LoggedModel (logged with it in one request), for search.
    params = MlflowClient(tracking_uri).get_logged_model(result["model_uuid"]).params
    assert params == {
        "at_searchable_limit": "s" * 250,
        "unicode": "東京 — naïve café ✓ \U0001f600",
        "yes": "yes",
        "null": "null",
        "no": "no",
        "on": "on",
        "true_string": "true",
        "tilde": "~",
        "date_like": "2024-01-01",
        "number_like": "1e3",
        "octal_like": "0o17",
        "hex_like": "0x1F",
        "int": "3",
        "float": "3.0",
        "negative_zero": "-0.0",
        "huge_int": str(2**70),
        "bool": "True",
        "padded": "  spaces  \n",
        "key/with/slashes": "ok",
    }


# ---------------------------------------------------------------------------------- contributors, lineage
def test_improved_model_tags_and_contributor_lookup(
    registry: HokusaiModelRegistry, tracking_uri: str, sk_model: Any
) -> None:
    mixed_case = "0x" + "AbCd" * 10
    classification = registry.register_baseline(sk_model, "classification", {})
    regression = registry.register_baseline(sk_model, "regression", {})
    first = registry.register_improved_model(sk_model, classification["model_id"], {"accuracy": 0.02}, mixed_case)
    other = registry.register_improved_model(sk_model, classification["model_id"], {"accuracy": 0.01}, CONTRIBUTOR)
    second = registry.register_improved_model(sk_model, regression["model_id"], {"rmse": -0.5, "mae": -0.1}, mixed_case)

    client = MlflowClient(tracking_uri)
    version = client.get_model_version("hokusai_classification_improved", first["version"])
    assert version.tags["contributor"] == mixed_case.lower()
    assert version.tags["baseline_model_id"] == "hokusai_classification_baseline/1"
    assert version.tags["model_type"] == "classification"
    assert version.tags["is_baseline"] == "false"
    assert version.tags["model_uuid"] == first["model_uuid"]
    assert client.get_run(second["run_id"]).data.metrics == {"rmse": -0.5, "mae": -0.1}
    linked = client.get_logged_model(second["model_uuid"]).metrics or []
    assert {m.key: m.value for m in linked} == {"rmse": -0.5, "mae": -0.1}  # the metrics are the model's too
    assert (first["baseline_id"], first["contributor"], first["delta_metrics"]) == (
        "hokusai_classification_baseline/1",
        mixed_case,
        {"accuracy": 0.02},
    )

    for address in (mixed_case, mixed_case.lower(), "0x" + mixed_case[2:].upper()):
        found = registry.get_contributor_models(address)
        assert [m["model_id"] for m in found] == [first["model_id"], second["model_id"]]
        assert [m["model_uuid"] for m in found] == [first["model_uuid"], second["model_uuid"]]
        assert {m["contributor"] for m in found} == {mixed_case.lower()}
        assert [m["baseline_id"] for m in found] == [classification["model_id"], regression["model_id"]]
    assert [m["model_id"] for m in registry.get_contributor_models(CONTRIBUTOR)] == [other["model_id"]]
    assert registry.get_contributor_models(OTHER_CONTRIBUTOR) == []

    registry.promote_model_to_production(second["model_name"], second["version"])
    assert [m["aliases"] for m in registry.get_contributor_models(mixed_case)] == [[], ["production"]]


def test_get_model_lineage_and_promotion(registry: HokusaiModelRegistry, tracking_uri: str, sk_model: Any) -> None:
    baseline = registry.register_baseline(sk_model, "ranking", {})
    one = registry.register_improved_model(sk_model, baseline["model_id"], {"ndcg": 0.1}, CONTRIBUTOR)
    two = registry.register_improved_model(sk_model, baseline["model_id"], {"ndcg": 0.2}, OTHER_CONTRIBUTOR)

    lineage = registry.get_model_lineage("hokusai_ranking_improved")
    assert [
        (v["model_id"], v["model_uuid"], v["baseline_id"], v["contributor"], v["is_baseline"]) for v in lineage
    ] == [
        (one["model_id"], one["model_uuid"], baseline["model_id"], CONTRIBUTOR, False),
        (two["model_id"], two["model_uuid"], baseline["model_id"], OTHER_CONTRIBUTOR, False),
    ]
    assert [v["run_id"] for v in lineage] == [one["run_id"], two["run_id"]]
    assert [v["registration_timestamp"] for v in lineage] == [
        one["registration_timestamp"],
        two["registration_timestamp"],
    ]
    assert [(v["model_id"], v["is_baseline"]) for v in registry.get_model_lineage("hokusai_ranking_baseline")] == [
        (baseline["model_id"], True)
    ]
    with pytest.raises(ValueError, match="Model hokusai_regression_baseline not found"):
        registry.get_model_lineage("hokusai_regression_baseline")

    client = MlflowClient(tracking_uri)
    promoted = registry.promote_model_to_production("hokusai_ranking_improved", one["version"])
    assert {key: promoted[key] for key in ("model_id", "model_name", "version", "stage", "alias")} == {
        "model_id": "hokusai_ranking_improved",
        "model_name": "hokusai_ranking_improved",
        "version": "1",
        "stage": "Production",
        "alias": "production",
    }
    assert str(client.get_model_version_by_alias("hokusai_ranking_improved", "production").version) == "1"
    registry.promote_model_to_production("hokusai_ranking_improved", 2)
    assert str(client.get_model_version_by_alias("hokusai_ranking_improved", "production").version) == "2"
    assert [v["aliases"] for v in registry.get_model_lineage("hokusai_ranking_improved")] == [
        [],
        ["production"],
    ]
    for name, version in [("hokusai_ranking_improved", "1 OR 1=1"), ("x' OR name LIKE '%", 1), ("ok", "-1")]:
        with pytest.raises(ValueError):
            registry.promote_model_to_production(name, version)
    assert str(client.get_model_version_by_alias("hokusai_ranking_improved", "production").version) == "2"


# ---------------------------------------------------------------------------------- git lineage, code paths
def test_lineage_tags_from_the_code_paths_repository(
    registry: HokusaiModelRegistry, tracking_uri: str, sk_model: Any, tmp_path: Path
) -> None:
    repo = make_git_repo(
        tmp_path / "training",
        branch="feature/better-features",
        remote="https://alice:ghp_S3cretT0ken@github.com/hokusai/training.git",
    )
    (repo / "helpers").mkdir()
    (repo / "helpers" / "scaling.py").write_text("SCALE = 2\n")
    commit = git(repo, "rev-parse", "HEAD")

    result = registry.register_baseline(
        sk_model, "classification", {}, code_paths=[str(repo / "train.py"), str(repo / "helpers")]
    )
    client = MlflowClient(tracking_uri)
    run_tags = client.get_run(result["run_id"]).data.tags
    version_tags = client.get_model_version(result["model_name"], result["version"]).tags
    expected = (commit, "feature/better-features", "https://github.com/hokusai/training.git")
    assert tuple(run_tags[key] for key in GIT_RUN_TAGS) == expected
    assert tuple(version_tags[key] for key in GIT_VERSION_TAGS) == expected
    assert registry.get_model_by_uuid(result["model_uuid"])["tags"]["git_commit"] == commit
    for secret in ("ghp_S3cretT0ken", "alice"):
        assert secret not in strings_in(run_tags) and secret not in strings_in(version_tags)

    # The code is packaged with the model.
    model_dir = download_model(result, tmp_path)
    assert (model_dir / "code" / "train.py").read_text() == (repo / "train.py").read_text()
    assert (model_dir / "code" / "helpers" / "scaling.py").read_text() == "SCALE = 2\n"

    # A detached HEAD has no branch; a repository without a remote has no URL.
    git(repo, "remote", "remove", "origin")
    git(repo, "checkout", "-q", "--detach")
    detached = registry.register_baseline(sk_model, "classification", {}, code_paths=[str(repo / "train.py")])
    run_tags = client.get_run(detached["run_id"]).data.tags
    version_tags = client.get_model_version(detached["model_name"], detached["version"]).tags
    assert {key: run_tags[key] for key in GIT_RUN_TAGS if key in run_tags} == {"mlflow.source.git.commit": commit}
    assert {key: version_tags[key] for key in GIT_VERSION_TAGS if key in version_tags} == {"git_commit": commit}


def test_no_lineage_tags_outside_git(
    registry: HokusaiModelRegistry,
    tracking_uri: str,
    sk_model: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code = tmp_path / "loose" / "train.py"
    code.parent.mkdir()
    code.write_text("print('not in git')\n")
    monkeypatch.chdir(tmp_path)
    with_code = registry.register_baseline(sk_model, "regression", {}, code_paths=[str(code)])
    without_code = registry.register_baseline(sk_model, "regression", {})  # working directory: not in git
    client = MlflowClient(tracking_uri)
    for result in (with_code, without_code):
        run_tags = client.get_run(result["run_id"]).data.tags
        version_tags = client.get_model_version(result["model_name"], result["version"]).tags
        assert not set(GIT_RUN_TAGS) & set(run_tags)
        assert not set(GIT_VERSION_TAGS) & set(version_tags)
    assert (download_model(with_code, tmp_path) / "code" / "train.py").read_text() == code.read_text()


def test_lineage_ignores_the_git_state_of_the_calling_script(tracking_uri: str, tmp_path: Path) -> None:
    """A training script in its own repository must not lend its git state to code that lives elsewhere.

    MLflow tags every run with the git state of ``sys.argv[0]``; only a separate process can be a
    script that lives in a repository, so this one runs as a subprocess.
    """
    script_repo = make_git_repo(tmp_path / "pipeline", branch="main", remote="https://github.com/hokusai/pipeline.git")
    code_repo = make_git_repo(tmp_path / "models", branch="experiment", remote=None)
    loose = tmp_path / "loose" / "features.py"
    loose.parent.mkdir()
    loose.write_text("X = 1\n")
    script = script_repo / "register.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, sys
            import numpy as np, pandas as pd
            from sklearn.linear_model import LogisticRegression
            from worker.registration.registry import HokusaiModelRegistry

            frame = pd.DataFrame(np.random.default_rng(7).random((20, 3)), columns=["f0", "f1", "f2"])
            model = LogisticRegression().fit(frame, (frame["f0"] > 0.5).astype(int))
            registry = HokusaiModelRegistry(sys.argv[1])
            for path in sys.argv[2:]:
                result = registry.register_baseline(model, "ranking", {}, code_paths=[path])
                print(json.dumps(result["model_id"]))
            """
        )
    )
    git(script_repo, "add", "register.py")
    git(script_repo, "commit", "-q", "-m", "registration script")
    done = subprocess.run(
        [sys.executable, str(script), tracking_uri, str(loose), str(code_repo / "train.py")],
        cwd=tmp_path,
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert [json.loads(line) for line in done.stdout.splitlines() if line.startswith('"')] == [
        "hokusai_ranking_baseline/1",
        "hokusai_ranking_baseline/2",
    ]

    client = MlflowClient(tracking_uri)
    loose_version, code_version = versions_of(tracking_uri, "hokusai_ranking_baseline")
    loose_tags = client.get_run(loose_version.run_id).data.tags
    assert loose_tags["mlflow.source.name"] == str(script)  # the run did come from the script in git
    assert not set(GIT_RUN_TAGS) & set(loose_tags)
    assert not set(GIT_VERSION_TAGS) & set(loose_version.tags)
    code_tags = client.get_run(code_version.run_id).data.tags
    expected = {
        "mlflow.source.git.commit": git(code_repo, "rev-parse", "HEAD"),
        "mlflow.source.git.branch": "experiment",
    }
    assert {key: code_tags[key] for key in GIT_RUN_TAGS if key in code_tags} == expected
    assert {key: code_version.tags[key] for key in GIT_VERSION_TAGS if key in code_version.tags} == {
        "git_commit": expected["mlflow.source.git.commit"],
        "git_branch": "experiment",
    }


# ---------------------------------------------------------------------------------- upgrade path
def register_the_old_way(tracking_uri: str, sk_model: Any, name: str) -> str:
    """What production code did before: log with registered_model_name, then register again."""
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("legacy-training")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("legacy-training")
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        info = mlflow.sklearn.log_model(
            sk_model, name="model", registered_model_name=name, pip_requirements=["scikit-learn"]
        )
    mlflow.register_model(f"runs:/{run.info.run_id}/model", name)
    return info.model_uuid


def test_backfill_model_uuids_on_versions_made_the_old_way(
    registry: HokusaiModelRegistry, tracking_uri: str, sk_model: Any, tmp_path: Path
) -> None:
    legacy = "hokusai_lead_scoring_baseline"
    first_uuid = register_the_old_way(tracking_uri, sk_model, legacy)
    second_uuid = register_the_old_way(tracking_uri, sk_model, legacy)
    client = MlflowClient(tracking_uri)
    # An MLflow 2-era version whose source is the model's artifact folder, not models:/.
    folder_source = client.create_model_version(
        legacy, client.get_logged_model(second_uuid).artifact_location, run_id=None
    )
    # Versions whose model cannot be read: reported, never fatal.
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "MLmodel").write_text("flavors: {{{ not yaml\n")
    client.create_registered_model("hokusai_ranking_baseline")
    client.create_model_version("hokusai_ranking_baseline", str(broken))
    client.create_model_version("hokusai_ranking_baseline", (tmp_path / "gone").as_uri())
    current = registry.register_baseline(sk_model, "classification", {})

    legacy_versions = versions_of(tracking_uri, legacy)
    assert [str(v.version) for v in legacy_versions] == ["1", "2", "3", "4", "5"]
    assert str(folder_source.version) == "5"
    for version in legacy_versions:
        if "model_uuid" in version.tags:
            client.delete_model_version_tag(legacy, version.version, "model_uuid")
    expected_tagged = [
        {"model_name": legacy, "version": "1", "model_uuid": first_uuid},
        {"model_name": legacy, "version": "2", "model_uuid": first_uuid},
        {"model_name": legacy, "version": "3", "model_uuid": second_uuid},
        {"model_name": legacy, "version": "4", "model_uuid": second_uuid},
        {"model_name": legacy, "version": "5", "model_uuid": second_uuid},
    ]
    expected_unresolved = [
        {"model_name": "hokusai_ranking_baseline", "version": "1"},
        {"model_name": "hokusai_ranking_baseline", "version": "2"},
    ]

    def normalised(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # Unresolved entries say why; the reason is checked below, the rest compared here.
        rows = [{**entry, "version": str(entry["version"])} for entry in entries]
        for row in rows:
            if "reason" in row:
                reason = row.pop("reason")
                assert reason.startswith("cannot read the model at ") and str(tmp_path) in reason, row
        return sorted(rows, key=lambda e: (e["model_name"], int(e["version"])))

    assert registry.get_model_by_uuid(first_uuid) is None
    dry = registry.backfill_model_uuids(dry_run=True)
    assert (dry["dry_run"], dry["scanned"], dry["already_tagged"]) == (True, 8, 1)
    assert normalised(dry["tagged"]) == expected_tagged
    assert normalised(dry["unresolved"]) == expected_unresolved
    assert all("model_uuid" not in v.tags for v in versions_of(tracking_uri, legacy))
    assert registry.get_model_by_uuid(first_uuid) is None

    progressed: list[tuple[str, str]] = []
    done = registry.backfill_model_uuids(on_progress=lambda v: progressed.append((v.name, str(v.version))))
    assert (done["dry_run"], done["scanned"], done["already_tagged"]) == (False, 8, 1)
    assert normalised(done["tagged"]) == expected_tagged
    assert normalised(done["unresolved"]) == expected_unresolved
    assert sorted(progressed) == sorted(
        [(legacy, str(n)) for n in range(1, 6)]
        + [("hokusai_ranking_baseline", "1"), ("hokusai_ranking_baseline", "2"), (current["model_name"], "1")]
    )
    assert [v.tags["model_uuid"] for v in versions_of(tracking_uri, legacy)] == [
        e["model_uuid"] for e in expected_tagged
    ]

    again = registry.backfill_model_uuids()
    assert (again["scanned"], again["already_tagged"], again["tagged"]) == (8, 6, [])
    assert normalised(again["unresolved"]) == expected_unresolved

    found = registry.get_model_by_uuid(first_uuid)
    assert found is not None
    assert (found["model_id"], found["model_uri"], found["flavors"]) == (
        f"{legacy}/1",
        f"models:/{first_uuid}",
        ["python_function", "sklearn"],
    )
    assert registry.get_model_by_uuid(second_uuid)["model_id"] == f"{legacy}/3"
    assert registry.get_model_by_uuid(current["model_uuid"])["model_id"] == current["model_id"]


def test_logged_model_lives_in_the_registry_experiment_beside_the_store(
    registry: HokusaiModelRegistry, sk_model: Any, tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not in MLflow's default experiment, whose artifacts would land in ./mlruns of the caller."""
    monkeypatch.chdir(tmp_path)
    result = registry.register_baseline(sk_model, "classification", {})
    logged = MlflowClient(tracking_uri).get_logged_model(result["model_uuid"])
    assert logged.experiment_id == registry.experiment_id() != "0"
    store_folder = Path(tracking_uri.removeprefix("sqlite:///")).parent
    assert result["artifact_path"].startswith((store_folder / "artifacts").as_uri())
    assert not (tmp_path / "mlruns").exists()


def test_the_artifact_location_has_one_rule(tmp_path: Path) -> None:
    """The registry's new experiments and a new store's Default one: one rule, in the settings."""
    from hokusai_registry.settings import Settings

    settings = Settings(hokusai_home=tmp_path / "home")
    sqlite = f"sqlite:///{tmp_path / 'stores' / 'mlflow.db'}"
    assert settings.artifact_location_for(sqlite) == (tmp_path / "stores" / "artifacts").as_uri()
    assert settings.artifact_location_for("http://tracking:5000") is None
    assert settings.artifact_location_for("postgresql://mlflow@db/mlflow") == (tmp_path / "home" / "artifacts").as_uri()
    assert settings.artifact_location_for() == (tmp_path / "home" / "artifacts").as_uri()  # the embedded store
    explicit = Settings(mlflow_artifact_location="s3://bucket/artifacts")
    assert {explicit.artifact_location_for(uri) for uri in (sqlite, "http://tracking:5000")} == {
        "s3://bucket/artifacts"
    }


def test_a_new_experiment_takes_the_one_rules_location(tracking_uri: str) -> None:
    registry = HokusaiModelRegistry(tracking_uri)
    experiment = MlflowClient(tracking_uri).get_experiment(registry.experiment_id())
    assert experiment.artifact_location == registry.settings.artifact_location_for(tracking_uri)
