"""Every Redis key this product writes, named once (as arq keeps its names in ``arq/constants.py``).

Producers, workers and the CLI build their keys here; the values are those deployed data already
use, so they never change. ``<p>`` is the event store's prefix (:data:`PREFIX` unless a test
gives it another), ``<id>`` a job id (a UUID) or an event id::

    hokusai:enqueued:<job_id>        string  what a producer enqueued ({job_id, enqueued_at}), kept
                                             RESULT_EXPIRES_S: an id never enqueued reads UNKNOWN
    hokusai:job:started:<job_id>     string  an attempt of the job started (SET NX before any MLflow
                                             call), kept RESULT_EXPIRES_S: a first delivery skips the
                                             idempotency look-ups
    hokusai:lock:job:<job_id>        string  the per-job lock (redis-py Lock), expires with the task
                                             time limit: two deliveries never register at once
    hokusai:failed_jobs              hash    job_id -> FailureRecord (JSON)    } a RecordStore
    hokusai:failed_jobs:by_time      zset    job_id -> failed_at (Unix s)      } (records.py)
    hokusai:quarantine               hash    quarantine id -> QuarantineRecord (JSON)  } a RecordStore
    hokusai:quarantine:by_time       zset    quarantine id -> received_at (Unix s)     }
    <p>:webhook:event:<event_id>     hash    a stored webhook event, its state and attempt history
    <p>:webhook:job:<job_id>         string  the event id of the job's event (``jobs status``)
    <p>:webhook:dead_letters         hash    event_id -> DeadLetter (JSON)     } a RecordStore
    <p>:webhook:dead_letters:by_time zset    event_id -> dead-lettered at (Unix s)
    <p>:webhook:deferred             zset    event_id -> due time (Unix s): the durable retry schedule
    <p>:webhook:held:<endpoint>      zset    event_id -> created at (Unix s): deliveries kept while the
                                             endpoint is disabled, released oldest first on enable
    <p>:webhook:order:<endpoint>:<model>  zset  event_id -> version: the model's undelivered versions
                                             to that endpoint (a later one waits for an earlier one)
    <p>:webhook:endpoint:<endpoint>  hash    disabled_at, disabled_reason, failing_since, last_success_at
    <p>:webhook:disabled_endpoints   zset    endpoint name -> disabled at (Unix s)

Webhook ``event_id`` members above are delivery ids: the event id itself for the ``default``
endpoint (every event stored before endpoints existed), ``<event_id>@<endpoint>`` for the others.

The task queues are Redis lists too, but their layout is kombu's, not ours: the queue names
(``hokusai.registrations``, ``hokusai.webhooks``) are part of the wire contract
(``hokusai_registry.contract``), and ``worker.queues`` derives the lists kombu keeps each in (one
per priority step). Celery's own keys (``celery-task-meta-<id>``, ``unacked``, ...) are Celery's.

Imports nothing.
"""

from __future__ import annotations

#: The first part of every key of this product.
PREFIX = "hokusai"
#: A RecordStore named ``<n>`` keeps its time index in ``<n>:by_time``.
INDEX_SUFFIX = ":by_time"

FAILED_JOBS_KEY = f"{PREFIX}:failed_jobs"
QUARANTINE_KEY = f"{PREFIX}:quarantine"
ENQUEUED_KEY_PREFIX = f"{PREFIX}:enqueued:"
JOB_STARTED_KEY_PREFIX = f"{PREFIX}:job:started:"
JOB_LOCK_KEY_PREFIX = f"{PREFIX}:lock:job:"


def index_key(name: str) -> str:
    """The time index of the RecordStore named ``name``."""
    return f"{name}{INDEX_SUFFIX}"


FAILED_JOBS_INDEX_KEY = index_key(FAILED_JOBS_KEY)
QUARANTINE_INDEX_KEY = index_key(QUARANTINE_KEY)


def enqueued_key(job_id: str) -> str:
    """What a producer enqueued as ``job_id`` (``producers.enqueue``)."""
    return f"{ENQUEUED_KEY_PREFIX}{job_id}"


def job_started_key(job_id: str) -> str:
    """The marker an attempt of ``job_id`` sets when it starts (``worker.registration.attempts``)."""
    return f"{JOB_STARTED_KEY_PREFIX}{job_id}"


def job_lock_key(job_id: str) -> str:
    """The per-job lock of ``job_id`` (``worker.tasks.job_lock``)."""
    return f"{JOB_LOCK_KEY_PREFIX}{job_id}"


class WebhookKeys:
    """The keys of one webhook event store, under ``prefix`` (``worker.webhooks.store``)."""

    def __init__(self, prefix: str = PREFIX) -> None:
        self.prefix = prefix
        self.dead_letters = f"{prefix}:webhook:dead_letters"
        self.deferred = f"{prefix}:webhook:deferred"
        self.disabled_endpoints = f"{prefix}:webhook:disabled_endpoints"

    def event(self, event_id: str) -> str:
        """The hash of one stored event."""
        return f"{self.prefix}:webhook:event:{event_id}"

    def job(self, job_id: str) -> str:
        """The id of the event of job ``job_id``."""
        return f"{self.prefix}:webhook:job:{job_id}"

    def held(self, endpoint: str) -> str:
        """The deliveries kept for ``endpoint`` while it is disabled."""
        return f"{self.prefix}:webhook:held:{endpoint}"

    def order(self, endpoint: str, model_name: str) -> str:
        """The undelivered versions of ``model_name`` to ``endpoint``, by version."""
        return f"{self.prefix}:webhook:order:{endpoint}:{model_name}"

    def endpoint_state(self, endpoint: str) -> str:
        """The runtime state of ``endpoint`` (disabled, failing since, last success)."""
        return f"{self.prefix}:webhook:endpoint:{endpoint}"
