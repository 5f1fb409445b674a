"""Served artifacts written straight to the server's store (``SERVED_ARTIFACTS_DESTINATION``).

A tracking server started with ``--artifacts-destination D`` keeps ``mlflow-artifacts:/P`` at
``D/P`` and proxies every read and write of it: each file of a model is one HTTP request, and the
server's CPU copies every byte. A worker that can write ``D`` itself (the same volume, the same
bucket) can skip the proxy: with ``SERVED_ARTIFACTS_DESTINATION=D`` its MLflow client reads and
writes ``mlflow-artifacts:/P`` at ``D/P`` directly. The URIs MLflow records are unchanged, so every
other client (pipelines, the UI, ``models:/`` downloads) still reads them through the server and
needs no access to ``D``.

Before its first direct access a process checks that it and the server see the same store: it
writes a probe file under ``D`` and looks for it through the server. If the server does not
list it (another folder or bucket, a server with workspaces), the process logs an error naming
the setting and goes on through the server, so nothing is written where readers cannot find it.
:func:`check_destination` runs the same check for ``hokusai-registry doctor``.

A worker that writes the server's database directly (``TRACKING_DATABASE_URI``) has that
database as its MLflow tracking URI, which cannot resolve ``mlflow-artifacts:``; it installs this
with the server's URL, and every ``mlflow-artifacts:`` URI is then the server's (proxied or direct).
"""

from __future__ import annotations

import logging
import posixpath
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mlflow.store.artifact.artifact_repository_registry import _artifact_repository_registry, get_artifact_repository
from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

logger = logging.getLogger(__name__)

SCHEME = "mlflow-artifacts"
#: Folder (under the destination) of the probe files; each is removed after its check.
PROBE_DIR = ".hokusai-probe"
_SERVICE_ROOT = "/api/2.0/mlflow-artifacts/artifacts"

_lock = threading.Lock()
_destination: str | None = None
#: The tracking server that serves mlflow-artifacts: when this process's tracking URI is its database.
_server_url: str | None = None
#: Per tracking server (its base URL): whether it serves what this process writes to the destination.
_verified: dict[str, bool] = {}


def install(destination: str | None, *, server_url: str | None = None) -> None:
    """Read and write ``mlflow-artifacts:`` URIs at ``destination`` in this process (idempotent).

    ``destination`` None: through the server, as MLflow does. ``server_url``: the server whose
    ``mlflow-artifacts:`` these are, whatever tracking URI MLflow hands over (for a process whose
    tracking URI is the server's database). Process-wide, as MLflow's artifact repositories are;
    an unverified or mismatched server keeps the proxied repository.
    """
    global _destination, _server_url
    with _lock:
        stripped = destination.rstrip("/") if destination else None
        if _destination != stripped:
            _destination = stripped
            _verified.clear()
        _server_url = server_url
        _artifact_repository_registry.register(SCHEME, _repository)


def uninstall() -> None:
    """Back to MLflow's own proxied repository (the tests reset it between tests)."""
    global _destination, _server_url
    with _lock:
        _destination = None
        _server_url = None
        _verified.clear()
        _artifact_repository_registry.register(SCHEME, MlflowArtifactsRepository)


def _repository(artifact_uri: str, tracking_uri: str | None = None, *args: Any, **kwargs: Any) -> Any:
    """MLflow's repository factory for ``mlflow-artifacts:``: the destination itself when verified."""
    served = MlflowArtifactsRepository(artifact_uri, _server_url or tracking_uri, *args, **kwargs)
    destination = _destination
    relative = _relative_path(artifact_uri)
    if destination is None or relative is None or not _serves_destination(served, destination):
        return served
    return get_artifact_repository(posixpath.join(destination, relative) if relative else destination)


def _relative_path(artifact_uri: str) -> str | None:
    """``mlflow-artifacts:/1/abc/artifacts`` → ``1/abc/artifacts``; None for another host or an unsafe path."""
    parts = urlsplit(artifact_uri)
    if parts.netloc:  # mlflow-artifacts://other-host/...: that host's store, not ours
        return None
    path = parts.path.lstrip("/")
    if not path:
        return ""
    if "\\" in path or ".." in path.split("/"):
        return None  # left to the server, which refuses it
    return posixpath.normpath(path)


def _server_base(served: MlflowArtifactsRepository) -> str:
    return str(served.artifact_uri).partition(_SERVICE_ROOT)[0].rstrip("/")


def _serves_destination(served: MlflowArtifactsRepository, destination: str) -> bool:
    base = _server_base(served)
    with _lock:
        known = _verified.get(base)
        if known is not None:
            return known
        problem = probe(served, destination)  # connection errors propagate: not cached, retried
        _verified[base] = problem is None
    if problem is None:
        logger.info("served artifacts: writing them straight to %s (the server at %s serves it)", destination, base)
    else:
        logger.error(
            "SERVED_ARTIFACTS_DESTINATION=%s is not what the tracking server at %s serves (%s); "
            "uploading artifacts through the server instead. Set it to the server's --artifacts-destination "
            "as this worker sees it (a shared volume or bucket), or unset it.",
            destination,
            base,
            problem,
        )
    return problem is None


def probe(served: MlflowArtifactsRepository, destination: str) -> str | None:
    """Write a probe file at the destination, list it through the server; None if they match, else why not.

    Raises:
        MlflowException or OSError from the server round trip when the server cannot be reached.
    """
    name = f"{uuid.uuid4().hex}.txt"
    local_repo = get_artifact_repository(posixpath.join(destination, PROBE_DIR))
    with tempfile.TemporaryDirectory(prefix="hokusai-probe-") as tmp:
        source = Path(tmp) / name
        source.write_text("hokusai-registry: checks that the tracking server serves this folder\n")
        try:
            local_repo.log_artifact(str(source))
        except Exception as exc:  # a store this process cannot write: the check's answer, not an outage
            return f"cannot write {destination}: {type(exc).__name__}: {exc}"
        try:
            # Listed, not fetched: a server answers a missing file with 404 (3.17) or 500 (3.4), an
            # empty listing for a folder it does not have on every version.
            folder = MlflowArtifactsRepository(f"{SCHEME}:/{PROBE_DIR}", tracking_uri=_server_base(served) or None)
            listed = {Path(info.path).name for info in folder.list_artifacts()}
            if name not in listed:
                return "the server does not list the probe file written there"
            return None
        finally:
            try:
                local_repo.delete_artifacts(name)
            except Exception:  # a store without deletes keeps a small probe file
                logger.debug("could not remove the probe file %s/%s/%s", destination, PROBE_DIR, name)


def check_destination(destination: str, tracking_uri: str) -> str | None:
    """``doctor``: None when the server at ``tracking_uri`` serves ``destination``, else the problem."""
    served = MlflowArtifactsRepository(f"{SCHEME}:/", tracking_uri=tracking_uri)
    return probe(served, destination)
