"""SERVED_ARTIFACTS_DESTINATION: served artifacts written straight to the server's store.

Against a real ``mlflow server`` (PostgreSQL, ``--artifacts-destination``), through a counting
proxy: with the setting a registration writes the model's files into the server's store itself
(no upload requests), the recorded URIs stay ``mlflow-artifacts:``, and a client without the
setting reads the model through the server. A destination the server does not serve is detected
before the first write: an error naming the setting, and the files go through the server.
"""

from __future__ import annotations

import filecmp
import logging
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from pydantic import ValidationError

from devtools.request_counter import RequestCounter
from hokusai_app.doctor import check_served_artifacts
from hokusai_registry.settings import Settings
from tests.mlflow_server import running_mlflow_server
from worker.registration import served_artifacts
from worker.registration.registry import HokusaiModelRegistry

pytestmark = [pytest.mark.server]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A tracking server and its ``--artifacts-destination`` folder."""
    artifacts = tmp_path_factory.mktemp("served") / "artifacts"
    with running_mlflow_server(artifacts_dir=artifacts) as url:
        yield url, artifacts


@pytest.fixture
def proxy(server: tuple[str, Path]) -> Iterator[RequestCounter]:
    with RequestCounter(server[0]) as counter:
        yield counter


def uploads(counts: dict[str, int]) -> int:
    return sum(n for route, n in counts.items() if route.startswith("PUT /api/2.0/mlflow-artifacts/"))


def artifact_reads(counts: dict[str, int]) -> int:
    return sum(n for route, n in counts.items() if route.startswith("GET /api/2.0/mlflow-artifacts/"))


def model_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and served_artifacts.PROBE_DIR not in p.parts)


def test_a_registration_writes_straight_to_the_store_and_readers_still_go_through_the_server(
    server: tuple[str, Path],
    proxy: RequestCounter,
    tmp_path: Path,
    sk_model,
    example_records,  # type: ignore[no-untyped-def]
) -> None:
    _, artifacts = server
    settings = Settings(hokusai_home=tmp_path / "home", served_artifacts_destination=str(artifacts))
    registry = HokusaiModelRegistry(proxy.url, settings=settings)
    registry.register_baseline(sk_model, "classification", {"run": 1}, input_example=example_records)
    before = proxy.snapshot()
    result = registry.register_baseline(sk_model, "classification", {"run": 2}, input_example=example_records)
    during = proxy.snapshot() - before

    uuid = result["model_uuid"]
    stored = artifacts / str(registry.experiment_id()) / "models" / uuid / "artifacts"
    assert (stored / "MLmodel").is_file() and (stored / "input_example.json").is_file()
    assert uploads(during) == 0 and artifact_reads(during) == 0, dict(during)
    assert sum(during.values()) <= 13, dict(during)  # 20 with the uploads (tests below)
    logged = MlflowClient(proxy.url).get_logged_model(uuid)
    assert logged.artifact_location.startswith("mlflow-artifacts:/"), "the recorded URI is unchanged"

    # A reader without the setting (a pipeline, the UI) downloads the model through the server.
    served_artifacts.uninstall()
    before = proxy.snapshot()
    mlflow.set_tracking_uri(proxy.url)
    downloaded = Path(mlflow.artifacts.download_artifacts(f"models:/{uuid}", dst_path=str(tmp_path / "reader")))
    assert artifact_reads(proxy.snapshot() - before) >= 1, "read through the server"
    comparison = filecmp.dircmp(stored, downloaded)
    assert not comparison.left_only and not comparison.diff_files and comparison.common_files
    assert set(comparison.right_only) <= {"registered_model_meta"}  # MLflow adds it to models:/ downloads
    assert registry.get_model_by_uuid(uuid)["version"] == result["version"]
    assert not list((artifacts / served_artifacts.PROBE_DIR).iterdir()), "the probe file is removed"


def test_without_the_setting_the_files_are_uploaded_through_the_server(
    server: tuple[str, Path],
    proxy: RequestCounter,
    tmp_path: Path,
    sk_model,
    example_records,  # type: ignore[no-untyped-def]
) -> None:
    registry = HokusaiModelRegistry(proxy.url, settings=Settings(hokusai_home=tmp_path / "home"))
    before = proxy.snapshot()
    result = registry.register_baseline(sk_model, "classification", {}, input_example=example_records)
    during = proxy.snapshot() - before
    folder = server[1] / str(registry.experiment_id()) / "models" / result["model_uuid"]
    assert uploads(during) == len(model_files(folder)) >= 5


def test_a_destination_the_server_does_not_serve_is_detected_and_uploads_go_through_the_server(
    server: tuple[str, Path],
    proxy: RequestCounter,
    tmp_path: Path,
    sk_model,
    caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
) -> None:
    _, artifacts = server
    elsewhere = tmp_path / "not-the-servers-folder"
    settings = Settings(hokusai_home=tmp_path / "home", served_artifacts_destination=str(elsewhere))
    registry = HokusaiModelRegistry(proxy.url, settings=settings)
    before = proxy.snapshot()
    with caplog.at_level(logging.ERROR, logger="worker.registration.served_artifacts"):
        result = registry.register_baseline(sk_model, "classification", {})
    during = proxy.snapshot() - before

    (error,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "SERVED_ARTIFACTS_DESTINATION" in error.getMessage() and "through the server" in error.getMessage()
    assert uploads(during) >= 5, "the files went through the server"
    assert (
        artifacts / str(registry.experiment_id()) / "models" / result["model_uuid"] / "artifacts" / "MLmodel"
    ).is_file()
    assert model_files(elsewhere) == [], "nothing stranded where readers cannot find it"

    problem = check_served_artifacts(settings.model_copy(update={"mlflow_tracking_uri": proxy.url}))
    assert problem is not None and problem.status == "fail" and str(elsewhere) in problem.detail
    good = Settings(mlflow_tracking_uri=proxy.url, served_artifacts_destination=str(artifacts))
    verdict = check_served_artifacts(good)
    assert verdict is not None and verdict.status == "ok", verdict


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("mlflow-artifacts:/1/models/m-1/artifacts", "1/models/m-1/artifacts"),
        ("mlflow-artifacts:/", ""),
        ("mlflow-artifacts:/1/../../etc", None),  # climbing out of the destination: left to the server
        ("mlflow-artifacts:/../secrets", None),
        ("mlflow-artifacts://other-host:5000/1/models", None),  # another server's store
        ("mlflow-artifacts:/1\\..\\..\\x", None),
    ],
)
def test_only_plain_paths_of_this_server_are_mapped_to_the_destination(uri: str, expected: str | None) -> None:
    assert served_artifacts._relative_path(uri) == expected


@pytest.mark.parametrize("value", ["relative/folder", "mlflow-artifacts:/x", "http://mlflow:5000/artifacts"])
def test_a_destination_that_cannot_be_the_store_is_refused_naming_the_variable(value: str) -> None:
    with pytest.raises(ValidationError, match="SERVED_ARTIFACTS_DESTINATION"):
        Settings(served_artifacts_destination=value)
