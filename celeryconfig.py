"""Celery's own settings, derived from the one Settings object (see hokusai_registry.settings).

Nothing is configured here by hand: change the environment variables, not this file.
Why each value is what it is: the comment beside it, docs/configuration.md ("Celery settings") and
docs/scaling.md (the visibility timeout, redelivery, prefetch).
"""

from __future__ import annotations

from kombu import Queue

from hokusai_registry.contract import (
    CELERY_WIRE_SETTINGS,
    DELIVER_WEBHOOK_TASK,
    REGISTER_TASK,
    REGISTRATION_QUEUE,
    WEBHOOK_QUEUE,
    WEBHOOK_TASK,
)
from hokusai_registry.settings import settings_or_exit

_settings = settings_or_exit("the worker")

#: Seconds the unacked sweep's Redis lock outlives a holder that died (kombu's default: 300).
UNACKED_MUTEX_EXPIRE_S = 10

broker_url = _settings.redis_url
result_backend = _settings.redis_url
broker_connection_retry_on_startup = True

# JSON only: a pickle message from an open broker is remote code execution. The same settings as
# the producers' (accept_content, task/result/event serializers), defined once in the contract.
globals().update(CELERY_WIRE_SETTINGS)

# Delivery: ack after the task returns, requeue when the process running it dies, one message at a time.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
# Pool processes open the MLflow store before reporting ready (worker.celery_app._warm_up).
worker_proc_alive_timeout = 60
# Must exceed the longest task plus the longest retry countdown (Settings validates this),
# or Redis redelivers a message that is still being worked on or waiting for its retry.
broker_transport_options = {
    "visibility_timeout": _settings.visibility_timeout_s,
    # Sweep for a dead worker's unacked messages every interval (kombu's default is ~100 s).
    "unacked_restore_interval": _settings.unacked_restore_interval_s,
    "unacked_restore_throttle": 1,
    # The sweep's lock in Redis. A worker killed, or cut off from Redis, while it holds the lock
    # stops every worker's sweep until the lock expires: kombu's 300 s would add five minutes to a
    # crashed job's redelivery. A sweep takes milliseconds, and a sweep that overlaps another is
    # safe: each message is restored in a transaction.
    "unacked_mutex_expire": UNACKED_MUTEX_EXPIRE_S,
}
result_backend_transport_options = {"visibility_timeout": _settings.visibility_timeout_s}
task_time_limit = _settings.task_time_limit_s
# The soft limit raises inside the task first, so it can clean up (10% of the hard limit earlier).
task_soft_time_limit = max(1, _settings.task_time_limit_s - max(1, _settings.task_time_limit_s // 10))

# Monitoring (Flower): task events from workers and producers. Flower builds its task list
# (name, args, state, result, worker) from these events, not from the result backend.
worker_send_task_events = True
task_send_sent_event = True
# STARTED in the result backend: `job_status` shows a running job. One extra write per task,
# 0.2 ms (bench/profile_celery.py).
task_track_started = True
# Off: it would copy each task's name and arguments into its stored result (a job's two results
# 1.3 KB -> 3.3 KB in Redis), which nothing reads; Flower has them from the events.
result_extended = False
result_expires = _settings.result_expires_s

# Registrations and webhooks on their own queues, so a slow marketplace never delays registrations.
task_queues = (Queue(REGISTRATION_QUEUE), Queue(WEBHOOK_QUEUE))
task_default_queue = REGISTRATION_QUEUE
task_routes = {
    REGISTER_TASK: {"queue": REGISTRATION_QUEUE},
    WEBHOOK_TASK: {"queue": WEBHOOK_QUEUE},
    DELIVER_WEBHOOK_TASK: {"queue": WEBHOOK_QUEUE},
}
worker_hijack_root_logger = False
