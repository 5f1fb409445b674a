"""The Celery application and its bootsteps: ``celery -A worker worker`` finds it as ``worker.app``.

The tasks (``worker.tasks``) import this module for ``app``; nothing here imports them (the app
loads them by name, ``include``), so imports point one way.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from celery import Celery, bootsteps, signals

from hokusai_registry import log
from hokusai_registry.contract import stamp_enqueued_at
from hokusai_registry.errors import ConfigurationError
from hokusai_registry.settings import get_settings, settings_or_exit
from hokusai_registry.webhook_policy import check_webhook_config
from worker import mlflow_defaults

mlflow_defaults.apply()  # before anything imports mlflow
settings_or_exit("the worker")  # a bad setting stops here, naming the variable
from worker.metrics import MetricsServer  # noqa: E402  (after mlflow_defaults.apply)
from worker.webhooks.pump import pump_deferred_webhooks  # noqa: E402
from worker.webhooks.store import EventStore  # noqa: E402

app = Celery("hokusai-registry", include=["worker.tasks"], task_cls="worker.base_task:HokusaiTask")
app.config_from_object("celeryconfig")
# Poison messages are quarantined where their raw bytes still exist (see worker/poison.py).
if app.conf.broker_url.split("://", 1)[0] in {"redis", "rediss"}:
    app.conf.broker_transport = "worker.poison:Transport"
app.conf.worker_consumer = "worker.poison:QuarantiningConsumer"


class StartupChecks(bootsteps.Step):
    """Refuse to start a worker whose settings cannot work (e.g. webhooks with no secret)."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        try:
            check_webhook_config(get_settings())
        except ConfigurationError as exc:  # one line naming the variable and the fix, no traceback
            print(f"the worker cannot start: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        super().__init__(parent, **kwargs)


class DeferredWebhookPump(bootsteps.StartStopStep):
    """Every WEBHOOK_SCHEDULE_POLL_S, hand deferred webhook retries that came due to tasks.

    Retries that must wait longer than an in-memory countdown may (see VISIBILITY_TIMEOUT_S)
    wait in a Redis sorted set instead; every worker polls it, and each due event is claimed
    by exactly one of them (``worker.webhooks.pump``). The main process has its own store.
    """

    requires = {"celery.worker.components:Timer"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.timer_ref: Any = None
        self.celery_app: Celery | None = None
        self.event_store: EventStore | None = None

    def start(self, parent: Any) -> None:
        settings = get_settings()
        self.celery_app, self.event_store = parent.app, EventStore.for_settings(settings)
        self.timer_ref = parent.timer.call_repeatedly(settings.webhook_schedule_poll_s, self.pump)

    def stop(self, parent: Any) -> None:
        if self.timer_ref is not None:
            self.timer_ref.cancel()

    def pump(self) -> None:
        """One tick: hand over what came due (a failure is logged; the next tick tries again)."""
        if self.celery_app is None or self.event_store is None:
            return
        try:
            pump_deferred_webhooks(self.event_store, self.celery_app, lease_s=get_settings().visibility_timeout_s)
        except Exception:  # a Redis blip must not stop the timer; the next tick tries again
            logging.getLogger(__name__).exception("could not hand over deferred webhooks")


app.steps["worker"].update({StartupChecks, DeferredWebhookPump, MetricsServer})
# Every message carries its publish time (the oldest waiting job's age is a metric).
signals.before_task_publish.connect(stamp_enqueued_at, weak=False)


@signals.setup_logging.connect
def _configure_logging(loglevel: int | str | None = None, **_: Any) -> None:
    """Our format (job context on every line, LOG_FORMAT=json) instead of Celery's.

    ``--loglevel`` is honoured when more verbose than ``LOG_LEVEL`` (Celery's default is WARNING).
    """
    log.configure_logging(get_settings(), loglevel=loglevel)


@signals.worker_init.connect
def _sweep_scratch(**_: Any) -> None:
    """Remove temp folders that SIGKILLed worker processes left behind."""
    from worker import scratch

    scratch.sweep_dead()


#: Whether the main process found the MLflow store ready before the pool forked (``_prepare_store``).
_store_ready = False


@signals.celeryd_after_setup.connect
def _prepare_store(**_: Any) -> None:
    """Create a new MLflow store once, in the main process and under its lock, before the pool forks.

    Pool processes must not: each would run MLflow's migrations on the same new store at once. This
    signal comes after logging is set up (``worker_init`` comes before) and before the pool starts.
    """
    global _store_ready
    from worker.registration.store_setup import prepare_worker_store

    _store_ready = prepare_worker_store(get_settings())


@signals.worker_process_init.connect
def _warm_up(**_: Any) -> None:
    """Open this pool process's MLflow store now, so the first job does not pay for it.

    Only a store the main process found ready: preparing one here could outlast the 4 s Celery
    gives a pool process to start; the first job prepares it instead.
    """
    from worker import scratch
    from worker.clients import get_registry

    scratch.sweep_dead()
    scratch.use_process_dir()
    if not _store_ready:
        return
    try:
        get_registry().experiment_id()
    except Exception:  # MLflow may be down at start-up; the first job will retry
        logging.getLogger(__name__).warning("MLflow not reachable at start-up", exc_info=True)


@signals.task_prerun.connect
def _bind_job_context(task_id: str | None = None, args: tuple[Any, ...] | None = None, **_: Any) -> None:
    log.clear()
    payload = args[0] if args and isinstance(args[0], dict) else {}
    log.bind(
        job_id=payload.get("job_id") or task_id,
        model_uuid=payload.get("model_uuid"),
        version=payload.get("version"),
    )


@signals.task_postrun.connect
def _clear_job_context(**_: Any) -> None:
    from worker import scratch

    log.clear()
    scratch.clear_process_dir()  # the job's temp copies, also of a job that failed
