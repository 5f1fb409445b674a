"""The worker's Prometheus metrics: counters from Celery signals, gauges read from Redis at scrape time.

Counters and the histogram are counted in the pool processes that run the tasks, in
``prometheus_client``'s multiprocess mode (one file per process in ``PROMETHEUS_MULTIPROC_DIR``).
With ``METRICS_PORT`` set, the :class:`MetricsServer` bootstep, in the worker's main process and
before the pool forks, chooses that folder (:func:`use_metrics_folder`) and serves ``/metrics`` on
``METRICS_HOST:METRICS_PORT``: the summed counters plus :class:`RedisCollector`, which counts the
stores and the queues in Redis at each scrape, and :class:`BacklogCollector`, the true backlog
(``worker.backlog``). Other commands that load the app (``celery inspect``, ``flower``,
``hokusai-registry``) create no folder. Every metric is in docs/operations.md.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
from celery import bootsteps, signals
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from hokusai_registry.contract import REGISTER_TASK
from hokusai_registry.errors import ConfigurationError, HokusaiError
from hokusai_registry.keys import FAILED_JOBS_KEY, QUARANTINE_KEY
from hokusai_registry.outbox import outbox_summary
from hokusai_registry.redis_client import connect
from hokusai_registry.settings import Settings, get_settings
from hokusai_registry.webhook_policy import DEFAULT_ENDPOINT, configured_endpoints
from worker import scratch
from worker.backlog import STATES, message_age_s, read_backlog
from worker.queues import QUEUES, queue_keys
from worker.webhooks.endpoints import EndpointStates
from worker.webhooks.store import EventStore

logger = logging.getLogger(__name__)

DURATION_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)

REGISTRATIONS = Counter(
    "hokusai_registrations", "Registration task attempts by outcome (success, failure, retry).", ["outcome"]
)
REGISTRATION_SECONDS = Histogram(
    "hokusai_registration_duration_seconds",
    "Duration of one registration task attempt, by outcome.",
    ["outcome"],
    buckets=DURATION_BUCKETS,
)
WEBHOOK_ATTEMPTS = Counter(
    "hokusai_webhook_attempts",
    "Webhook HTTP attempts by endpoint and answer: 2xx, 3xx, 4xx, 5xx, or network.",
    ["status_class", "endpoint"],
)
WEBHOOK_EVENTS = Counter(
    "hokusai_webhook_events",
    "Webhook deliveries a worker task settled, by outcome (delivered, dead_lettered) and endpoint.",
    ["outcome", "endpoint"],
)

#: The names scraped from the endpoint (counters gain ``_total``), as docs and deploy/ must use them.
EXPORTED_METRICS = (
    "hokusai_registrations_total",
    "hokusai_registration_duration_seconds",
    "hokusai_webhook_attempts_total",
    "hokusai_webhook_events_total",
    "hokusai_webhook_dead_letters",
    "hokusai_webhook_deferred_events",
    "hokusai_webhook_endpoint_disabled",
    "hokusai_failed_jobs",
    "hokusai_quarantined_messages",
    "hokusai_queue_depth",
    "hokusai_queue_oldest_job_age_seconds",
    "hokusai_metrics_redis_up",
    "hokusai_outbox_depth",
    "hokusai_outbox_oldest_job_age_seconds",
    "hokusai_backlog_jobs",
    "hokusai_backlog_oldest_age_seconds",
)


def status_class(status_code: int | None) -> str:
    """``2xx`` ... ``5xx`` for an HTTP answer, ``network`` when none came (timeout, refused)."""
    return f"{status_code // 100}xx" if status_code else "network"


def observe_webhook_attempt(status_code: int | None, *, endpoint: str = DEFAULT_ENDPOINT) -> None:
    """Count one webhook HTTP attempt to ``endpoint``: the ``on_attempt`` the webhook tasks give delivery."""
    WEBHOOK_ATTEMPTS.labels(status_class(status_code), endpoint).inc()


def observe_webhook_settled(outcome: str, *, endpoint: str = DEFAULT_ENDPOINT) -> None:
    """Count one delivery a webhook task settled (``delivered``, ``dead_lettered``) for ``endpoint``."""
    WEBHOOK_EVENTS.labels(outcome, endpoint).inc()


# ---------------------------------------------------------------------- counters from signals
_started: dict[str, float] = {}


@signals.task_prerun.connect
def _task_started(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task_id and getattr(task, "name", None) == REGISTER_TASK:
        _started[task_id] = time.monotonic()


@signals.task_postrun.connect
def _task_finished(
    task_id: str | None = None, task: Any = None, retval: Any = None, state: str | None = None, **_: Any
) -> None:
    name = getattr(task, "name", None)
    if name == REGISTER_TASK and state:
        outcome = state.lower()
        REGISTRATIONS.labels(outcome).inc()
        started = _started.pop(task_id or "", None)
        if started is not None:
            REGISTRATION_SECONDS.labels(outcome).observe(time.monotonic() - started)


# ---------------------------------------------------------------------- gauges from Redis
def configured_endpoint_names() -> list[str]:
    """The configured webhook endpoints' names (none when the configuration cannot be read: doctor says why)."""
    try:
        return [endpoint.name for endpoint in configured_endpoints(get_settings())]
    except ConfigurationError:
        return []


def oldest_age_s(client: redis.Redis, queue: str, now: float) -> float:
    """Seconds the oldest waiting message of ``queue`` has waited (0 when empty or unstamped)."""
    ages = [0.0]
    for key in queue_keys(queue):
        raw = client.lindex(key, -1)  # kombu LPUSHes and BRPOPs: the oldest is at the right end
        age = message_age_s(raw, now)
        if age is not None:
            ages.append(age)
    return max(ages)


class RedisCollector(Collector):
    """Counts what waits in Redis at each scrape: dead letters, deferred events, failed jobs, queues."""

    def __init__(self, redis_url: str) -> None:
        self.client = connect(redis_url)
        self.events = EventStore(self.client)
        self.endpoints = EndpointStates(self.client)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("hokusai_metrics_redis_up", "1 when the last scrape could read Redis, else 0.")
        try:
            families = list(self._families())
        except (redis.RedisError, HokusaiError) as exc:
            logger.warning("metrics: cannot read Redis: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self) -> Iterator[GaugeMetricFamily]:
        dead, deferred = self.events.counts()
        pipe = self.client.pipeline(transaction=False)
        pipe.hlen(FAILED_JOBS_KEY)
        pipe.hlen(QUARANTINE_KEY)  # a missing key counts 0
        for queue in QUEUES:
            for key in queue_keys(queue):
                pipe.llen(key)
        failed, quarantined, *lengths = pipe.execute()
        for name, help_text, value in (
            ("hokusai_webhook_dead_letters", "Webhook events in the dead letters now (replay them).", dead),
            ("hokusai_webhook_deferred_events", "Webhook events waiting in the durable schedule.", deferred),
            ("hokusai_failed_jobs", "Registration jobs in the failed-jobs store.", failed),
            ("hokusai_quarantined_messages", "Messages no task could run, kept in the quarantine.", quarantined),
        ):
            yield GaugeMetricFamily(name, help_text, value=value)
        disabled = GaugeMetricFamily(
            "hokusai_webhook_endpoint_disabled",
            "1 for a webhook endpoint disabled now (410 Gone, failing too long, or an operator; its events wait), "
            "else 0.",
            labels=["endpoint"],
        )
        off = set(self.endpoints.disabled_names())
        for endpoint in sorted(off | set(configured_endpoint_names())):
            disabled.add_metric([endpoint], 1 if endpoint in off else 0)
        yield disabled
        depth = GaugeMetricFamily("hokusai_queue_depth", "Messages waiting in a queue.", labels=["queue"])
        age = GaugeMetricFamily(
            "hokusai_queue_oldest_job_age_seconds", "Seconds the oldest waiting message has waited.", labels=["queue"]
        )
        now = time.time()
        for queue in QUEUES:
            steps = len(queue_keys(queue))
            depth.add_metric([queue], sum(lengths[:steps]))
            lengths = lengths[steps:]
            age.add_metric([queue], oldest_age_s(self.client, queue, now))
        yield depth
        yield age


class BacklogCollector(Collector):
    """The true backlog (``worker.backlog``): jobs waiting, held by workers, and scheduled, and the oldest's age.

    Redis down: nothing is yielded (``hokusai_metrics_redis_up`` of :class:`RedisCollector` says so),
    so an autoscaler reads no value rather than an empty backlog.
    """

    def __init__(self, redis_url: str) -> None:
        self.client = connect(redis_url)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            backlog = read_backlog(self.client)
        except HokusaiError as exc:
            logger.warning("metrics: cannot read the backlog: %s", type(exc).__name__)
            return
        jobs = GaugeMetricFamily(
            "hokusai_backlog_jobs",
            "Jobs of the product's queues not done yet, by state: waiting (queued), held (delivered to a worker, "
            "not acked: running, prefetched, or an ETA/countdown retry), scheduled (the durable webhook schedule).",
            labels=["state"],
        )
        for state in STATES:
            jobs.add_metric([state], backlog.count(state))
        yield jobs
        yield GaugeMetricFamily(
            "hokusai_backlog_oldest_age_seconds",
            "Seconds the oldest job of the backlog has been in it (docs/scaling.md).",
            value=backlog.oldest_age_s,
        )


class OutboxCollector(Collector):
    """The producers' outbox folder as this worker sees it (HOKUSAI_OUTBOX_DIR), listed at each scrape."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            summary = outbox_summary(self.folder)
        except OSError as exc:
            logger.warning("metrics: cannot list the outbox %s: %s", self.folder, exc)
            return
        yield GaugeMetricFamily("hokusai_outbox_depth", "Jobs spooled in the outbox folder.", value=summary.depth)
        yield GaugeMetricFamily(
            "hokusai_outbox_oldest_job_age_seconds",
            "Seconds the oldest spooled job has waited.",
            value=summary.oldest_age_s(),
        )


def metrics_registry(settings: Settings, folder: Path) -> CollectorRegistry:
    """What ``/metrics`` serves: every process's counters (from ``folder``) plus the Redis gauges."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(folder))
    registry.register(RedisCollector(settings.redis_url))
    registry.register(BacklogCollector(settings.redis_url))
    registry.register(OutboxCollector(settings.outbox_dir))
    return registry


#: The name of a worker's private metrics folder (when PROMETHEUS_MULTIPROC_DIR is unset) starts so.
PRIVATE_FOLDER_PREFIX = "hokusai-metrics-"


def use_metrics_folder(settings: Settings) -> Path:
    """Point prometheus_client's multiprocess mode at this worker's folder, empty; return it.

    ``PROMETHEUS_MULTIPROC_DIR`` when set (emptied: a previous run's files would be summed into
    this run's counters), else a fresh private temporary folder, removed when this process exits.
    Call it in the worker's main process before the pool forks. prometheus_client may already be
    imported (``celery`` loads Flower's plugin, which imports it) and chose its in-memory values
    then, which no other process can sum: it is switched to the multiprocess ones here. Counter
    values are made per label set, at the first count in each pool process, so none exists yet.
    """
    if settings.prometheus_multiproc_dir is not None:
        folder = settings.prometheus_multiproc_dir
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):
            stale.unlink()
    else:
        scratch.sweep_dead(PRIVATE_FOLDER_PREFIX)  # SIGKILLed workers' folders
        folder = scratch.own_folder(PRIVATE_FOLDER_PREFIX)
        atexit.register(_remove_private_folder, folder, os.getpid())
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    if values.ValueClass is values.MutexValue:  # chosen at import, before the variable was set
        values.ValueClass = values.get_value_class()
    return folder


def _remove_private_folder(folder: Path, owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # not in a pool process that inherited the handler
        shutil.rmtree(folder, ignore_errors=True)


class MetricsServer(bootsteps.StartStopStep):
    """Serve ``/metrics`` from the main worker process when ``METRICS_PORT`` is set."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        settings = get_settings()
        # Steps are made before the pool forks: its processes inherit the folder and the value class.
        self.folder = use_metrics_folder(settings) if settings.metrics_port is not None else None

    def start(self, parent: Any) -> None:
        settings = get_settings()
        if settings.metrics_port is None or self.folder is None:
            return
        registry = metrics_registry(settings, self.folder)
        start_http_server(settings.metrics_port, addr=settings.metrics_host, registry=registry)
        host, port = settings.metrics_host, settings.metrics_port
        logger.info("metrics on http://%s:%d/metrics (counters in %s)", host, port, self.folder)
