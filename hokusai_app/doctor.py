"""``hokusai-registry doctor``: check Redis, MLflow, the webhook settings and the workers.

Each check says what it found and, when something is wrong, how to fix it. A ``fail`` makes
the command exit non-zero; a ``warn`` is worth knowing but does not stop the system. Checks only
read: no store, table, folder or Redis key is created, and each service that does not answer costs
about 3 s (its connect timeout), once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

from hokusai_registry.contract import CELERY_WIRE_SETTINGS
from hokusai_registry.errors import ConfigurationError
from hokusai_registry.outbox import outbox_summary
from hokusai_registry.redaction import redact_url, scrub
from hokusai_registry.redis_client import connect
from hokusai_registry.settings import Settings
from hokusai_registry.store_uris import is_tracking_server
from worker.registration.store_schema import StoreState, inspect_store, is_sql_store

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return asdict(self)


def check_redis(settings: Settings) -> Check:
    import redis

    try:
        client = connect(settings.redis_url)
        client.ping()
        version = client.info("server").get("redis_version", "?")
    except redis.RedisError as exc:
        return Check("redis", "fail", f"{redact_url(settings.redis_url)} does not answer: {exc}",
                     "start Redis, or set REDIS_URL to one that runs")  # fmt: skip
    return Check("redis", "ok", f"{redact_url(settings.redis_url)} answers (Redis {version})")


def check_mlflow(settings: Settings) -> Check:
    """A SQL store's schema is read, never created or migrated; a tracking server gets one request."""
    uri = settings.tracking_uri
    if is_sql_store(uri):
        try:
            state = inspect_store(uri)
        except Exception as exc:  # any failure here means the store is not usable
            return Check("mlflow", "fail", f"{redact_url(uri)} is not usable: {type(exc).__name__}: {str(exc)[:300]}",
                         "fix MLFLOW_TRACKING_URI, or start the database it names")  # fmt: skip
        return store_check("mlflow", state)
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models(max_results=1)
    except Exception as exc:  # any failure here means the store is not usable
        return Check("mlflow", "fail", f"{redact_url(uri)} is not usable: {type(exc).__name__}: {str(exc)[:300]}",
                     "start the tracking server, or fix MLFLOW_TRACKING_URI")  # fmt: skip
    return Check("mlflow", "ok", f"{redact_url(uri)} answers")


def store_check(name: str, state: StoreState) -> Check:
    """A SQL store's schema state as a check: a store a worker will create is fine, one it cannot use fails."""
    if state.condition == "not created" and not state.server_owned:
        return Check(name, "ok", f"{state.shown}: {state.describe()}")
    if not state.ready:
        return Check(name, "fail", f"{state.shown} is not usable: {state.describe()}", state.fix())
    if state.leftovers:
        return Check(name, "warn", f"{state.shown} answers, but an interrupted migration left the tables "
                     f"{', '.join(state.leftovers)}", "drop them before the next `mlflow db upgrade`")  # fmt: skip
    return Check(name, "ok", f"{state.shown} answers; {state.describe()}")


def check_served_artifacts(settings: Settings) -> Check | None:
    """With SERVED_ARTIFACTS_DESTINATION: does the tracking server serve what this host writes there?"""
    destination = settings.served_artifacts_destination
    if destination is None:
        return None
    if not is_tracking_server(settings.tracking_uri):
        return Check("served artifacts", "warn",
                     "SERVED_ARTIFACTS_DESTINATION is set but the tracking URI is not a server: it is not used",
                     "unset it, or point MLFLOW_TRACKING_URI at the server")  # fmt: skip
    from worker.registration.served_artifacts import check_destination

    try:
        problem = check_destination(destination, settings.tracking_uri)
    except Exception as exc:  # the server could not be asked: the mlflow check says why
        return Check("served artifacts", "warn", f"could not check: {type(exc).__name__}: {str(exc)[:200]}")
    if problem:
        return Check("served artifacts", "fail", f"SERVED_ARTIFACTS_DESTINATION={destination}: {problem}; workers "
                     "upload through the server instead", "set it to the server's --artifacts-destination as "
                     "this host sees it (a shared volume or bucket), or unset it")  # fmt: skip
    return Check("served artifacts", "ok", f"written straight to {destination}, which the server serves")


def check_tracking_database(settings: Settings) -> Check | None:
    """With TRACKING_DATABASE_URI: can this host open the tracking server's database as the workers do?"""
    url = settings.tracking_database_url
    if url is None:
        return None
    shown = redact_url(url)
    try:
        state = inspect_store(url, server_owned=True)  # MLflow's schema revision, read only
    except Exception as exc:  # any failure means workers cannot register on it
        detail = scrub(f"{type(exc).__name__}: {str(exc)[:300]}", url)
        return Check("tracking database", "fail", f"{shown} is not usable: {detail}",
                     "start PostgreSQL, fix TRACKING_DATABASE_URI / TRACKING_DATABASE_PASSWORD, run the server's "
                     "MLflow version, or unset it to register through the server")  # fmt: skip
    if state.ready:
        return Check("tracking database", "ok", f"{shown} answers; workers register on it directly")
    return store_check("tracking database", state)


def check_webhooks(settings: Settings) -> Check:
    from hokusai_registry.webhook_policy import check_webhook_config

    if settings.webhook_url is None:
        return Check("webhooks", "warn", "WEBHOOK_URL is not set: events are kept as dead letters, not sent",
                     "set WEBHOOK_URL and WEBHOOK_SECRET, then `hokusai-registry webhooks replay --all`")  # fmt: skip
    try:
        check_webhook_config(settings)
    except ConfigurationError as exc:
        return Check("webhooks", "fail", str(exc), "see docs/configuration.md (WEBHOOK_*)")
    signed = "signed" if settings.webhook_secret else "UNSIGNED (WEBHOOK_ALLOW_UNSIGNED)"
    return Check("webhooks", "ok", f"events go to {redact_url(settings.webhook_url)}, {signed}")


def check_workers(settings: Settings) -> Check:
    """Ping the workers (2 s), unless none listens: a ping writes kombu's reply bookkeeping into Redis."""
    from celery import Celery

    app = Celery(broker=settings.redis_url)
    app.conf.update(CELERY_WIRE_SETTINGS)
    try:
        if not _control_listeners(settings, app.control.mailbox.exchange.name):
            return Check("workers", "warn", "no worker is listening: jobs wait in the queue until one starts",
                         "start one with `celery -A worker worker`")  # fmt: skip
        replies = app.control.ping(timeout=2.0)
    except Exception as exc:  # broker errors surface in the redis check
        return Check("workers", "warn", f"could not ask workers: {exc}")
    finally:
        app.close()
    if not replies:
        return Check("workers", "warn", "no worker answered: jobs wait in the queue until one starts",
                     "start one with `celery -A worker worker`")  # fmt: skip
    return Check(
        "workers", "ok", f"{len(replies)} worker(s) answered: {', '.join(sorted(k for r in replies for k in r))}"
    )


def _control_listeners(settings: Settings, exchange: str) -> bool:
    """Does any queue listen to Celery's control exchange? (kombu's Redis transport keeps its bindings in a set.)"""
    from kombu.transport.redis import Channel

    client = connect(settings.redis_url)
    try:
        return bool(client.exists(Channel.keyprefix_queue % exchange))
    finally:
        client.close()


def check_backlog(settings: Settings) -> Check:
    from hokusai_registry import failed_jobs, quarantine
    from worker.webhooks.store import EventStore

    try:
        client = connect(settings.redis_url)
        dead = len(EventStore.for_settings(settings, client).dead_letters.list())
        failed = len(failed_jobs.list_failures(client))
        poisoned = len(quarantine.store(client).list())
    except Exception as exc:  # already reported by the redis check
        return Check("backlog", "warn", f"could not read the failure stores: {exc}")
    if dead or failed or poisoned:
        return Check("backlog", "warn",
                     f"{failed} failed job(s), {dead} undelivered webhook(s), {poisoned} quarantined message(s)",
                     "inspect with `hokusai-registry jobs failed`, `hokusai-registry webhooks failed` and "
                     "`hokusai-registry jobs quarantined`")  # fmt: skip
    return Check("backlog", "ok", "no failed jobs, no undelivered webhooks, no quarantined messages")


def check_outbox(settings: Settings) -> Check:
    """Jobs producers sharing this outbox spooled while Redis was unreachable (the folder is only listed)."""
    folder = settings.outbox_dir
    try:
        depth, oldest_at = outbox_summary(folder)
    except OSError as exc:
        return Check("outbox", "warn", f"cannot list {folder}: {exc}")
    if oldest_at is None:
        return Check("outbox", "ok", f"no job waits in {folder}")
    detail = f"{depth} job(s) spooled in {folder}, the oldest since {oldest_at.isoformat()}"
    fix = "send them with `hokusai-registry outbox flush` (the next successful enqueue sends them too)"
    return Check("outbox", "warn", detail, fix)


CHECKS: tuple[Callable[[Settings], Check | None], ...] = (
    check_redis, check_mlflow, check_tracking_database, check_served_artifacts, check_webhooks, check_workers,
    check_backlog, check_outbox,
)  # fmt: skip
#: Checks that only read Redis: when it does not answer they are not tried (each would wait for it again).
NEEDS_REDIS = (check_workers, check_backlog)


#: A doctor answers in seconds: one attempt per MLflow request, 3 s at most (MLflow's defaults retry
#: a server that is down for ~4 minutes). An operator's own values of these variables win.
MLFLOW_FAIL_FAST = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"}


def run_checks(settings: Settings) -> list[Check]:
    """Every check, in order; a check that crashes is reported as failed, not raised.

    Nothing is changed: no store, table, folder or Redis key is created by a check.
    """
    for variable, value in MLFLOW_FAIL_FAST.items():
        os.environ.setdefault(variable, value)
    results: list[Check] = []
    redis_down = False
    for check in CHECKS:
        name = check.__name__.removeprefix("check_")
        if redis_down and check in NEEDS_REDIS:
            results.append(Check(name, "warn", "not checked: Redis does not answer (see the redis check)"))
            continue
        try:
            result = check(settings)
        except Exception as exc:  # a doctor must finish its round
            result = Check(name, "fail", f"{type(exc).__name__}: {exc}")
        if result is not None:  # None: the check does not apply to this configuration
            results.append(result)
            redis_down = redis_down or (check is check_redis and result.status == "fail")
    return results
