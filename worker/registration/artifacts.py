"""Job artifacts: check a URI against the allow-list, fetch the MLflow model, re-log it as is.

The worker never unpickles or runs a job's model. It reads the ``MLmodel`` file (YAML), copies
the directory into a new LoggedModel (keeping its flavors and its own ``requirements.txt``, so
no requirement-inference subprocess runs) and lets MLflow record the ``ModelInfo``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from hokusai_registry.errors import ArtifactNotFoundError, ArtifactRejectedError
from hokusai_registry.settings import Settings

MLMODEL_FILE = "MLmodel"


def check_artifact_uri(uri: str, settings: Settings) -> str:
    """Return the URI if the allow-list admits it, else raise ``ArtifactRejectedError``.

    A bare path counts as ``file``. Local paths must resolve (symlinks followed) under one of
    ``ALLOWED_ARTIFACT_ROOTS``; ``..`` segments are refused in any scheme.
    """
    parts = urlsplit(uri)
    scheme = parts.scheme.lower() if len(parts.scheme) > 1 else "file"  # "C:" is a drive, not a scheme
    raw_path = unquote(parts.path if parts.scheme else uri)
    if ".." in PurePosixPath(raw_path).parts or ".." in PurePosixPath(unquote(parts.netloc)).parts:
        raise ArtifactRejectedError(f"artifact_uri must not contain '..' segments: {uri!r}")
    if scheme not in settings.allowed_artifact_schemes:
        raise ArtifactRejectedError(
            f"artifact_uri scheme {scheme!r} is not allowed; ALLOWED_ARTIFACT_SCHEMES is "
            f"{','.join(settings.allowed_artifact_schemes)}"
        )
    if scheme == "file":
        if parts.scheme and parts.netloc not in ("", "localhost"):
            raise ArtifactRejectedError(f"file:// artifact_uri must name a local path, got host {parts.netloc!r}")
        local = Path(raw_path).expanduser().resolve()
        if not any(local == root or root in local.parents for root in settings.artifact_roots):
            roots = ", ".join(str(root) for root in settings.artifact_roots)
            raise ArtifactRejectedError(
                f"artifact_uri {uri!r} is outside the allowed roots ({roots}); set ALLOWED_ARTIFACT_ROOTS"
            )
    return uri


def local_path_of(uri: str) -> Path | None:
    """The local folder a ``file://`` or bare-path URI names, else None."""
    parts = urlsplit(uri)
    if len(parts.scheme) > 1 and parts.scheme.lower() != "file":
        return None
    return Path(unquote(parts.path if parts.scheme else uri)).expanduser().resolve()


@contextmanager
def fetched_model(uri: str) -> Iterator[Path]:
    """A local copy of the MLflow model at ``uri`` (the folder itself when it is local).

    Raises:
        ArtifactNotFoundError: nothing at ``uri``, or no ``MLmodel`` file in it.
    """
    local = local_path_of(uri)
    if local is not None:
        _require_mlmodel(local, uri)
        yield local
        return
    import mlflow
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="hokusai-artifact-") as tmp:
        try:
            path = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        except MlflowException as exc:
            if exc.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}:
                raise ArtifactNotFoundError(f"no MLflow model at artifact_uri {uri!r}: {exc.message}") from exc
            raise
        except FileNotFoundError as exc:
            raise ArtifactNotFoundError(f"no MLflow model at artifact_uri {uri!r}") from exc
        _require_mlmodel(path, uri)
        yield path


def read_model_config(model_dir: Path) -> Any:
    """The model's ``MLmodel`` as an ``mlflow.models.Model`` (YAML only; nothing is unpickled)."""
    from mlflow.models import Model

    return Model.load(str(model_dir / MLMODEL_FILE))


def _require_mlmodel(path: Path, uri: str) -> None:
    if not path.is_dir():
        raise ArtifactNotFoundError(f"artifact_uri {uri!r} is not a folder holding an MLflow model")
    if not (path / MLMODEL_FILE).is_file():
        raise ArtifactNotFoundError(f"artifact_uri {uri!r} holds no {MLMODEL_FILE} file: not an MLflow model")


class CopiedModelFlavor:
    """A 'flavor' for ``mlflow.models.Model.log`` that copies an existing model folder.

    ``Model.log`` creates the LoggedModel, calls :meth:`save_model` to fill a temp folder, and
    uploads it. Here that folder is a copy of the source model, whose ``MLmodel`` flavors and
    files are kept; the new ``MLmodel`` gets the LoggedModel's uuid, the job's signature and
    metadata. ``pip_requirements``, when given, replace the model's ``requirements.txt``.
    """

    __name__ = "hokusai_copy"

    def __init__(self, source_dir: Path, source_config: Any, pip_requirements: list[str] | None) -> None:
        self.source_dir = source_dir
        self.source_config = source_config
        self.pip_requirements = pip_requirements

    @property
    def primary_flavor(self) -> str:
        flavors = [name for name in self.source_config.flavors if name != "python_function"]
        return flavors[0] if flavors else "python_function"

    def save_model(self, path: str, mlflow_model: Any, signature: Any = None, **_: Any) -> None:
        """Copy the source folder to ``path`` and write the merged ``MLmodel``."""
        shutil.copytree(self.source_dir, path, ignore=shutil.ignore_patterns(MLMODEL_FILE, "__pycache__"))
        source = self.source_config
        mlflow_model.flavors = dict(source.flavors)
        mlflow_model.signature = signature if signature is not None else source.signature
        mlflow_model.saved_input_example_info = source.saved_input_example_info
        for attribute in ("model_size_bytes", "databricks_runtime", "resources", "env_vars"):
            if getattr(source, attribute, None) is not None:
                setattr(mlflow_model, attribute, getattr(source, attribute))
        if self.pip_requirements:
            (Path(path) / "requirements.txt").write_text("\n".join(self.pip_requirements) + "\n")
        mlflow_model.save(str(Path(path) / MLMODEL_FILE))
