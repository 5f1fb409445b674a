"""The staging layout: where a producer saves a job's model, and which folders may be removed.

A staging root (``$HOKUSAI_HOME/staging`` by default, ``Settings.staging_dir``) holds::

    <root>/<job_id>/                  a staged model (``MLmodel``, ...): the job's artifact_uri
    <root>/.<job_id>.<hex>.tmp/       a model being written, renamed to <root>/<job_id> when complete

Who removes a folder, and when (docs/configuration.md, ``STAGING_RETENTION_S``):

* a worker removes ``<its own staging root>/<job_id>`` once the job's version exists, and only
  when the job's ``artifact_uri`` is exactly that folder, never another path a job names
  (``worker.registration.job``);
* a producer prunes its own staging root on each ``save_and_enqueue`` by the jobs' states in
  Redis and by age (``producers.staging``), for hosts whose workers do not share its disk.

Imports only the standard library and core.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from hokusai_registry.artifact_uri import local_path_of

_SCRATCH_PREFIX = "."
_SCRATCH_SUFFIX = ".tmp"


def staged_folder(root: Path, job_id: str) -> Path:
    """Where the model of ``job_id`` is staged under ``root``."""
    return root / str(job_id)


def scratch_folder(root: Path, job_id: str) -> Path:
    """A new temporary sibling to write the model of ``job_id`` into before renaming it into place."""
    return root / f"{_SCRATCH_PREFIX}{job_id}.{uuid.uuid4().hex[:8]}{_SCRATCH_SUFFIX}"


def job_id_of(folder: Path) -> str | None:
    """The job id a staged folder belongs to (``<job_id>``), or None for anything else in the root."""
    try:
        parsed = str(uuid.UUID(folder.name))
    except ValueError:
        return None
    return parsed if parsed == folder.name else None


def is_scratch(folder: Path) -> bool:
    """True for a folder an interrupted save left (``.<job_id>.<hex>.tmp``)."""
    name = folder.name
    return name.startswith(_SCRATCH_PREFIX) and name.endswith(_SCRATCH_SUFFIX) and name.count(".") == 3


def own_staged_folder(root: Path, job_id: str, artifact_uri: str) -> Path | None:
    """``<root>/<job_id>`` when ``artifact_uri`` names exactly that folder (symlinks resolved), else None.

    ``root`` must be resolved (``Settings.staging_dir`` is). Any other path, even one under
    ``root``, is not this job's staged folder and is never removed on its behalf.
    """
    expected = staged_folder(root, job_id)
    local = local_path_of(artifact_uri)
    if local is None or local != expected or expected.is_symlink() or not expected.is_dir():
        return None
    return expected


def remove_folder(folder: Path) -> bool:
    """Delete ``folder`` and everything in it; True if it was there (a symlink is never followed).

    Raises:
        OSError: it could not be removed (permissions, a busy file system).
    """
    if folder.is_symlink() or not folder.is_dir():
        return False
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:  # removed meanwhile by someone else
        return False
    return True
