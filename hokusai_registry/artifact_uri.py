"""Which artifact URIs a job may name: the scheme allow-list, ``..`` segments and local roots.

Both sides apply these rules (the producer at enqueue, the worker again before fetching), from
the same settings. Imports only the standard library and core.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from hokusai_registry.errors import ArtifactNotFoundError, ArtifactRejectedError
from hokusai_registry.settings import Settings

MLMODEL_FILE = "MLmodel"


def check_artifact_uri(uri: str, settings: Settings) -> str:
    """Return the URI if the allow-list admits it, else raise ``ArtifactRejectedError``.

    A bare path counts as ``file`` and must be absolute. Local paths must resolve (symlinks followed) under one of
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
        if not Path(raw_path).expanduser().is_absolute():  # a worker would resolve it against its own folder
            raise ArtifactRejectedError(f"artifact_uri must be an absolute path or URI, got {uri!r}")
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


def require_mlmodel(path: Path, uri: str) -> None:
    """Raise ``ArtifactNotFoundError`` unless ``path`` is a folder holding an ``MLmodel`` file."""
    if not path.is_dir():
        raise ArtifactNotFoundError(f"artifact_uri {uri!r} is not a folder holding an MLflow model")
    if not (path / MLMODEL_FILE).is_file():
        raise ArtifactNotFoundError(f"artifact_uri {uri!r} holds no {MLMODEL_FILE} file: not an MLflow model")


def check_job_artifact(uri: str, settings: Settings) -> None:
    """Every artifact rule that needs no MLflow: the allow-list, and a local model that exists."""
    check_artifact_uri(uri, settings)
    local = local_path_of(uri)
    if local is not None:
        require_mlmodel(local, uri)
