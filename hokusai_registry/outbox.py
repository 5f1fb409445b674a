"""The outbox layout: where a producer spools the jobs Redis could not take, and how deep the outbox is.

An outbox folder (``$HOKUSAI_HOME/outbox`` by default, ``Settings.outbox_dir``) holds::

    <dir>/<job_id>.json             a spooled job (written whole: temp file, fsync, rename, fsync of <dir>)
    <dir>/.<job_id>.<hex>.tmp       a job being written; its writer holds an flock on it

Spooling and flushing are ``producers.outbox``'s; this module only names the files and counts them,
so that the doctor and the worker's metrics (which may not import the producer) read the same folder
the same way. It never creates the folder. Imports only the standard library.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

#: The ``state`` that ``jobs status`` shows for a job that waits in the outbox (it is not in Redis yet).
SPOOLED = "SPOOLED"

_SUFFIX = ".json"
_TEMP_PREFIX = "."
_TEMP_SUFFIX = ".tmp"


def spooled_file(folder: Path, job_id: str) -> Path:
    """Where the spooled job ``job_id`` lives in ``folder``."""
    return folder / f"{job_id}{_SUFFIX}"


def temp_file(folder: Path, job_id: str) -> Path:
    """A new temporary name to write the job ``job_id`` into before renaming it to :func:`spooled_file`."""
    return folder / f"{_TEMP_PREFIX}{job_id}.{uuid.uuid4().hex[:8]}{_TEMP_SUFFIX}"


def job_id_of(path: Path) -> str | None:
    """The job id of a spooled file (``<job_id>.json``, the canonical UUID form), or None for anything else."""
    name = path.name
    if not name.endswith(_SUFFIX):
        return None
    stem = name.removesuffix(_SUFFIX)
    try:
        parsed = str(uuid.UUID(stem))
    except ValueError:
        return None
    return parsed if parsed == stem else None


def is_temp(path: Path) -> bool:
    """True for a file a writer is writing, or left when it died (``.<job_id>.<hex>.tmp``)."""
    name = path.name
    return name.startswith(_TEMP_PREFIX) and name.endswith(_TEMP_SUFFIX) and name.count(".") == 3


class SpooledEntry(NamedTuple):
    """One spooled file as the folder lists it (nothing read from it)."""

    job_id: str
    path: Path
    spooled_at: datetime  #: the file's mtime (written once, when it was spooled), UTC


def spooled_entries(folder: Path) -> list[SpooledEntry]:
    """The spooled jobs in ``folder``, oldest first; an absent folder holds none."""
    found: list[tuple[int, str, Path]] = []
    try:
        with os.scandir(folder) as listing:
            for item in listing:
                job_id = job_id_of(Path(item.path))
                if job_id is None:
                    continue
                try:
                    found.append((item.stat(follow_symlinks=False).st_mtime_ns, job_id, Path(item.path)))
                except FileNotFoundError:  # published and removed meanwhile
                    continue
    except FileNotFoundError:
        return []
    return [SpooledEntry(job_id, path, datetime.fromtimestamp(ns / 1e9, UTC)) for ns, job_id, path in sorted(found)]


class OutboxSummary(NamedTuple):
    """How deep an outbox is: ``depth`` spooled jobs, the oldest spooled at ``oldest_at`` (None: empty)."""

    depth: int
    oldest_at: datetime | None

    def oldest_age_s(self, now: datetime | None = None) -> float:
        """Seconds the oldest spooled job has waited (0 for an empty outbox)."""
        if self.oldest_at is None:
            return 0.0
        return max(0.0, ((now or datetime.now(UTC)) - self.oldest_at).total_seconds())


def outbox_summary(folder: Path) -> OutboxSummary:
    """The depth of the outbox at ``folder`` and when its oldest job was spooled (for doctor and metrics).

    Reads only the folder's listing; an absent folder is an empty outbox.

    Raises:
        OSError: the folder cannot be listed (permissions).
    """
    entries = spooled_entries(folder)
    return OutboxSummary(len(entries), entries[0].spooled_at if entries else None)
