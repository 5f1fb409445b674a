"""The artifact allow-list, and fetching a model folder without loading it."""

from __future__ import annotations

from pathlib import Path

import pytest

from hokusai_registry.artifact_uri import check_artifact_uri
from hokusai_registry.errors import ArtifactNotFoundError, ArtifactRejectedError
from hokusai_registry.settings import Settings
from worker.registration.artifacts import fetched_model


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    root = tmp_path / "staging"
    (root / "model").mkdir(parents=True)
    return Settings(hokusai_home=tmp_path, allowed_artifact_roots=[root])


@pytest.mark.parametrize("uri", ["{root}/model", "file://{root}/model", "file://localhost{root}/model",
                                 "runs:/0123abcd/model", "models:/m-0123", "s3://bucket/models/x",
                                 "mlflow-artifacts:/1/models/m-1/artifacts"])  # fmt: skip
def test_allowed_uris(settings: Settings, uri: str) -> None:
    root = settings.artifact_roots[0]
    assert check_artifact_uri(uri.format(root=root), settings) == uri.format(root=root)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("file:///etc/passwd", "outside the allowed roots"),
        ("/etc", "outside the allowed roots"),
        ("{root}/../../etc", "'..'"),
        ("file://{root}/model/%2e%2e/%2e%2e", "'..'"),
        ("s3://bucket/../secrets", "'..'"),
        ("gopher://host/model", "scheme 'gopher' is not allowed"),
        ("file://evil.example{root}/model", "must name a local path"),
    ],
)
def test_rejected_uris_name_the_problem(settings: Settings, uri: str, message: str) -> None:
    with pytest.raises(ArtifactRejectedError, match=message):
        check_artifact_uri(uri.format(root=settings.artifact_roots[0]), settings)


def test_a_symlink_out_of_the_allowed_root_is_rejected(settings: Settings, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    link = settings.artifact_roots[0] / "sneaky"
    link.symlink_to(outside)
    with pytest.raises(ArtifactRejectedError, match="outside the allowed roots"):
        check_artifact_uri(str(link), settings)


def test_the_scheme_list_is_a_setting(tmp_path: Path) -> None:
    only_s3 = Settings(hokusai_home=tmp_path, allowed_artifact_schemes="s3")
    assert check_artifact_uri("s3://bucket/m", only_s3) == "s3://bucket/m"
    with pytest.raises(ArtifactRejectedError, match="ALLOWED_ARTIFACT_SCHEMES is s3"):
        check_artifact_uri("runs:/abc/model", only_s3)


def test_a_folder_without_mlmodel_is_not_a_model(settings: Settings) -> None:
    with (
        pytest.raises(ArtifactNotFoundError, match="holds no MLmodel"),
        fetched_model(str(settings.artifact_roots[0] / "model")),
    ):
        pass
