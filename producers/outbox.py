"""The producer's durable outbox: a job Redis could not take is kept on disk until it is published.

``enqueue_registration`` retries Redis for ``ENQUEUE_RETRY_S``; when the broker is still
unreachable or timing out (``BrokerUnavailableError``, never an invalid job nor a refused
password) it calls :func:`spool_job`, which writes the job to the outbox folder
(``HOKUSAI_OUTBOX_DIR``, default ``$HOKUSAI_HOME/outbox``; layout in ``hokusai_registry.outbox``)
and returns. ``HOKUSAI_OUTBOX=false`` turns this off: the error is raised as before.

A spooled file is JSON, ``{"format", "job_id", "spooled_at", "reason", "job"}``: ``job`` is exactly
the message's ``args[0]``, and ``reason`` the error's message (which never holds a password).
It is written whole: a temporary file (flocked by its writer), fsync, rename, fsync of the folder.

Who sends it (:func:`flush_outbox`), oldest first, each job by its job id:

* the next successful enqueue from any process sharing the folder, after its own job is published,
  within ``HOKUSAI_OUTBOX_FLUSH_S`` and :data:`FLUSH_ON_ENQUEUE_MAX_JOBS` jobs (:func:`flush_after_enqueue`);
* ``hokusai-registry outbox flush``;
* a process that spooled a job, once more at interpreter exit, within ``HOKUSAI_OUTBOX_FLUSH_S``
  (plus one connection attempt).

A flusher takes an exclusive, non-blocking ``flock`` on the file, checks that the path still names
the file it locked, publishes the job, removes the file and fsyncs the folder; another flusher skips
a file that is locked. Killed anywhere, a job is still spooled or published (or both, killed between
the two: the next flush publishes it again under the same job id, which the worker registers once).
Temporary files that no writer holds any more are removed by the next flush.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hokusai_registry.contract import RegistrationJob
from hokusai_registry.errors import BrokerUnavailableError, InvalidInputError, NotFoundError
from hokusai_registry.outbox import SPOOLED, is_temp, spooled_entries, spooled_file, temp_file
from hokusai_registry.settings import Settings
from producers.publish import publish_job

__all__ = [
    "FLUSH_ON_ENQUEUE_MAX_JOBS",
    "SPOOLED",
    "FlushReport",
    "SpooledJob",
    "flush_after_enqueue",
    "flush_outbox",
    "is_spooled",
    "list_spooled",
    "read_spooled",
    "spool_job",
    "spooled_job_ids",
    "spooled_status",
]

logger = logging.getLogger(__name__)

#: The version of a spooled file's layout.
FORMAT = 1
#: At most this many spooled jobs are sent after one successful enqueue (a healthy enqueue stays fast).
FLUSH_ON_ENQUEUE_MAX_JOBS = 100
#: A temporary file no writer holds is removed once it is this old (it closes the instant between
#: a writer creating the file and locking it).
TEMP_GRACE_S = 2.0


@dataclass(frozen=True)
class SpooledJob:
    """One job in the outbox, as read from its file."""

    job_id: str
    path: Path
    spooled_at: str  #: ISO-8601, UTC
    reason: str  #: why it was spooled (the broker error's message)
    job: dict[str, Any]  #: exactly what is published as the registration's argument

    def as_dict(self, *, include_job: bool = True) -> dict[str, Any]:
        shown: dict[str, Any] = {
            "job_id": self.job_id,
            "file": str(self.path),
            "spooled_at": self.spooled_at,
            "reason": self.reason,
            "kind": self.job.get("kind"),
            "model_type": self.job.get("model_type"),
        }
        if include_job:
            shown["job"] = self.job
        return shown


@dataclass
class FlushReport:
    """What one flush did. ``error`` is the broker error that stopped it (the rest stays spooled)."""

    published: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)  #: locked by another flusher (or a writer) right now
    invalid: list[dict[str, str]] = field(default_factory=list)  #: files that are no job: {file, error}
    remaining: int = 0  #: spooled files in the folder when it stopped (busy and invalid ones included)
    removed_temp_files: int = 0
    stopped: str | None = None  #: why it stopped before the end: the broker error, or the budget
    error: BrokerUnavailableError | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "published": self.published,
            "busy": self.busy,
            "invalid": self.invalid,
            "remaining": self.remaining,
            "removed_temp_files": self.removed_temp_files,
            "stopped": self.stopped,
        }


# ------------------------------------------------------------------ writing
def spool_job(payload: Mapping[str, Any], settings: Settings, *, cause: BrokerUnavailableError) -> Path:
    """Write the validated job ``payload`` to the outbox whole; log how it will be sent; return its file.

    A job id already spooled keeps its file (the same job id is one registration).

    Raises:
        BrokerUnavailableError: the outbox could not be written either (``cause``'s message, then why).
    """
    job_id = str(payload["job_id"])
    folder = settings.outbox_dir
    target = spooled_file(folder, job_id)
    envelope = {
        "format": FORMAT,
        "job_id": job_id,
        "spooled_at": datetime.now(UTC).isoformat(),
        "reason": str(cause),
        "job": dict(payload),
    }
    try:
        if not target.exists():
            _write_whole(folder, target, json.dumps(envelope, sort_keys=True).encode("utf-8"), job_id)
    except OSError as exc:
        raise BrokerUnavailableError(
            f"{cause}; and job {job_id} could not be kept in the outbox {folder} (HOKUSAI_OUTBOX_DIR): "
            f"{exc.strerror or exc}"
        ) from exc
    logger.warning(
        "job %s spooled to the outbox %s: Redis stayed unreachable for ENQUEUE_RETRY_S (%gs). It is sent by the "
        "next successful enqueue from a process that shares the outbox, by `hokusai-registry outbox flush`, "
        "or at this process's exit if Redis is back by then",
        job_id,
        target,
        settings.enqueue_retry_s,
    )
    _flush_at_exit_once(settings)
    return target


def _write_whole(folder: Path, target: Path, data: bytes, job_id: str) -> None:
    """Temp file (flocked while written), fsync, rename to ``target``, fsync the folder."""
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        _fsync_folder(folder.parent)
    temp = temp_file(folder, job_id)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a flusher removes only temp files no writer holds
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        os.rename(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    finally:
        os.close(fd)
    _fsync_folder(folder)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------ reading
def _parse(path: Path, data: bytes) -> SpooledJob:
    """A spooled file's job, checked against the contract (the file's name must be its job id).

    Raises:
        InvalidInputError: the file is not a spooled job.
    """
    try:
        envelope = json.loads(data)
        if not isinstance(envelope, dict) or envelope.get("format") != FORMAT:
            raise InvalidInputError(f"not an outbox file of format {FORMAT}")
        job = envelope["job"]
        checked = RegistrationJob.model_validate(job)
    except (ValueError, KeyError, TypeError, ValidationError) as exc:
        raise InvalidInputError(f"{path.name} is not a spooled job: {str(exc)[:300]}") from exc
    job_id = str(checked.job_id)
    if path.name != spooled_file(path.parent, job_id).name:
        raise InvalidInputError(f"{path.name} holds job {job_id}, not the job its name says")
    return SpooledJob(job_id, path, str(envelope.get("spooled_at", "")), str(envelope.get("reason", "")), job)


def _check_job_id(job_id: str) -> str:
    try:
        return str(uuid.UUID(str(job_id)))
    except ValueError as exc:
        raise InvalidInputError(f"job_id must be a UUID, got {str(job_id)[:80]!r}") from exc


def is_spooled(settings: Settings, job_id: str) -> bool:
    """True while the job ``job_id`` waits in the outbox."""
    return spooled_file(settings.outbox_dir, str(job_id)).exists()


def read_spooled(settings: Settings, job_id: str) -> SpooledJob:
    """The spooled job ``job_id``.

    Raises:
        InvalidInputError: ``job_id`` is not a UUID, or its file is not a spooled job.
        NotFoundError: no such job in the outbox.
    """
    path = spooled_file(settings.outbox_dir, _check_job_id(job_id))
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"no job {job_id} in the outbox {settings.outbox_dir}") from None
    return _parse(path, data)


def list_spooled(settings: Settings) -> tuple[list[SpooledJob], list[dict[str, str]]]:
    """The spooled jobs, oldest first, and the files that are no job (``{file, error}``)."""
    jobs: list[SpooledJob] = []
    invalid: list[dict[str, str]] = []
    for entry in spooled_entries(settings.outbox_dir):
        try:
            jobs.append(_parse(entry.path, entry.path.read_bytes()))
        except FileNotFoundError:  # published meanwhile
            continue
        except InvalidInputError as exc:
            invalid.append({"file": str(entry.path), "error": str(exc)})
    return jobs, invalid


def spooled_job_ids(settings: Settings) -> set[str]:
    """The ids of the jobs in the outbox (their staged folders must stay until they are published)."""
    return {entry.job_id for entry in spooled_entries(settings.outbox_dir)}


def spooled_status(settings: Settings, job_id: str) -> dict[str, Any] | None:
    """``job_status``'s answer for a job that waits in the outbox (state ``SPOOLED``), or None."""
    path = spooled_file(settings.outbox_dir, job_id)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        spooled_at: str | None = _parse(path, data).spooled_at
    except InvalidInputError:
        spooled_at = None
    return {"file": str(path), "spooled_at": spooled_at}


# ------------------------------------------------------------------ flushing
def flush_outbox(
    settings: Settings,
    *,
    retry_s: float | None = None,
    budget_s: float | None = None,
    max_jobs: int | None = None,
) -> FlushReport:
    """Publish the spooled jobs, oldest first, each once by its job id; remove each file once published.

    Stops at the first broker error (``report.error``; the rest stays spooled), after ``budget_s``
    seconds or ``max_jobs`` jobs. Files another flusher holds are skipped (``busy``), files that are no
    job are left where they are (``invalid``, see ``hokusai-registry outbox show``).

    Args:
        retry_s: each publish's retry budget; default ``ENQUEUE_RETRY_S``.
        budget_s: no new job is started after this many seconds (None: no limit).
        max_jobs: at most this many jobs are published (None: no limit).
    Raises:
        ConfigurationError: Redis refused the credentials in ``REDIS_URL``.
    """
    started = time.monotonic()
    folder = settings.outbox_dir
    report = FlushReport(removed_temp_files=_remove_dead_temp_files(folder))
    for entry in spooled_entries(folder):
        if _out_of_budget(report, started, budget_s, max_jobs):
            break
        with _locked(entry.path) as data:
            if data is None:
                if entry.path.exists():
                    report.busy.append(entry.job_id)
                continue
            try:
                job = _parse(entry.path, data)
            except InvalidInputError as exc:
                report.invalid.append({"file": str(entry.path), "error": str(exc)})
                continue
            try:
                publish_job(job.job, settings, retry_s=retry_s)
            except BrokerUnavailableError as exc:
                report.error = exc
                report.stopped = str(exc)
                break
            os.unlink(entry.path)
            _fsync_folder(folder)
        report.published.append(job.job_id)
        logger.info("published job %s from the outbox %s", job.job_id, folder)
    report.remaining = len(spooled_entries(folder))
    return report


def _out_of_budget(report: FlushReport, started: float, budget_s: float | None, max_jobs: int | None) -> bool:
    if max_jobs is not None and len(report.published) >= max_jobs:
        report.stopped = f"published {max_jobs} job(s), the most one flush sends"
        return True
    if budget_s is not None and time.monotonic() - started >= budget_s:
        report.stopped = f"used its time budget ({budget_s:g}s, HOKUSAI_OUTBOX_FLUSH_S)"
        return True
    return False


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[bytes | None]:
    """Yield the file's bytes under an exclusive flock, or None when it is held elsewhere or gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        try:
            current = os.stat(path)
        except FileNotFoundError:  # published and removed by the flusher that held it
            yield None
            return
        if not os.path.samestat(current, os.fstat(fd)):
            yield None
            return
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        yield b"".join(chunks)
    finally:
        os.close(fd)  # releases the lock after the file is removed


def _remove_dead_temp_files(folder: Path) -> int:
    """Remove the temporary files whose writer died (no flock held, older than ``TEMP_GRACE_S``)."""
    removed = 0
    try:
        candidates = [Path(item.path) for item in os.scandir(folder) if is_temp(Path(item.path))]
    except FileNotFoundError:
        return 0
    for path in candidates:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # renamed into place meanwhile
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if time.time() - os.fstat(fd).st_mtime >= TEMP_GRACE_S and os.path.samestat(os.stat(path), os.fstat(fd)):
                os.unlink(path)
                removed += 1
                logger.info("removed %s, left by a writer that died", path)
        except (BlockingIOError, FileNotFoundError):
            pass  # a writer holds it, or it was renamed into place
        finally:
            os.close(fd)
    return removed


def flush_after_enqueue(settings: Settings, *, published: str) -> FlushReport | None:
    """The bounded flush that follows a successful enqueue; never raises (the caller's job is published).

    Costs one listing of the folder when the outbox is empty.
    """
    if settings.hokusai_outbox_flush_s <= 0:
        return None
    try:
        if not spooled_entries(settings.outbox_dir):
            return None
        report = flush_outbox(
            settings,
            retry_s=0,
            budget_s=settings.hokusai_outbox_flush_s,
            max_jobs=FLUSH_ON_ENQUEUE_MAX_JOBS,
        )
    except Exception as exc:  # the new job is published: a flush problem must not fail its enqueue
        logger.warning("could not flush the outbox %s after enqueueing %s: %s", settings.outbox_dir, published, exc)
        return None
    if report.published or report.error:
        logger.info(
            "outbox %s: published %d spooled job(s) after enqueueing %s, %d left",
            settings.outbox_dir,
            len(report.published),
            published,
            report.remaining,
        )
    return report


_exit_flush: list[Settings] = []


def _flush_at_exit_once(settings: Settings) -> None:
    """In a process that spooled a job: one more bounded flush at interpreter exit (registered once)."""
    if _exit_flush or settings.hokusai_outbox_flush_s <= 0:
        return
    _exit_flush.append(settings)
    atexit.register(_flush_at_exit)


def _flush_at_exit() -> None:
    settings = _exit_flush[0]
    try:
        report = flush_outbox(settings, retry_s=0, budget_s=settings.hokusai_outbox_flush_s)
    except Exception as exc:  # never turn an exit into a traceback
        logger.warning("outbox %s not flushed at exit: %s", settings.outbox_dir, exc)
        return
    if report.published:
        logger.warning("outbox %s: published %d spooled job(s) at exit", settings.outbox_dir, len(report.published))
    if report.remaining:
        logger.warning(
            "outbox %s: %d job(s) still spooled at exit; send them with `hokusai-registry outbox flush`",
            settings.outbox_dir,
            report.remaining,
        )
