"""Job artifacts: fetch the MLflow model a job names, and re-log it as is.

The allow-list rules are core's (``hokusai_registry.artifact_uri``, applied by ``validate_job``
on both sides).

The worker never unpickles or runs a job's model. It reads the ``MLmodel`` file (YAML), copies
the directory into a new LoggedModel (keeping its flavors and its own ``requirements.txt``, so
no requirement-inference subprocess runs) and lets MLflow record the ``ModelInfo``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hokusai_registry.artifact_uri import MLMODEL_FILE, local_path_of, require_mlmodel
from hokusai_registry.errors import ArtifactNotFoundError


@contextmanager
def fetched_model(uri: str) -> Iterator[Path]:
    """A local copy of the MLflow model at ``uri`` (the folder itself when it is local).

    Raises:
        ArtifactNotFoundError: nothing at ``uri``, or no ``MLmodel`` file in it.
    """
    local = local_path_of(uri)
    if local is not None:
        require_mlmodel(local, uri)
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
        require_mlmodel(path, uri)
        yield path


def read_model_config(model_dir: Path) -> Any:
    """The model's ``MLmodel`` as an ``mlflow.models.Model`` (YAML only; nothing is unpickled)."""
    from mlflow.models import Model

    return Model.load(str(model_dir / MLMODEL_FILE))


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
