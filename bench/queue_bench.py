"""Worker processes and a receiver on one store: per-job latency, and batches with 1 or N workers consuming.

Every worker process runs all along; ``use(n)`` switches the consumers of all but the first ``n``
off (Celery remote control), so 1- and N-worker measurements share the same processes.
"""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path
from typing import Any

from bench import machine, stack_setup, stats
from bench.workload import job_fields
from devtools import devstack

_SUCCEEDED = re.compile(r"\[(?P<id>[0-9a-f-]{36}(?:-webhook)?)\] succeeded in (?P<s>[0-9.]+)s")


class QueueBench:
    """Worker processes and a receiver; consumers of the last ones are toggled for 1- vs N-worker runs."""

    def __init__(
        self,
        store: stack_setup.Store,
        redis_url: str,
        model_dir: Path,
        staging: Path,
        receiver: Any,
        *,
        workers: int = 2,
        worker_env: list[dict[str, str]] | None = None,
    ) -> None:
        """``worker_env``: per worker process, variables that replace the common ones (investigations)."""
        from celery import Celery

        from hokusai_registry.contract import REGISTRATION_QUEUE, WEBHOOK_QUEUE

        self.redis_url = redis_url
        self.store = store
        self.model_dir = model_dir
        self.receiver = receiver
        self.settings = stack_setup.producer_settings(redis_url, store.work / "producer", staging)
        self.queues = (REGISTRATION_QUEUE, WEBHOOK_QUEUE)
        env = stack_setup.worker_env(store, redis_url, receiver.url, staging)
        own = worker_env or [{} for _ in range(workers)]
        self.workers = [
            devstack.WorkerProcess({**env, **own[i]}, store.work / "logs", concurrency=1) for i in range(workers)
        ]
        self.control = Celery("bench-control", broker=redis_url, backend=redis_url)
        self.control.conf.update(accept_content=["json"], task_serializer="json", result_serializer="json")
        self.results = Celery("bench-results", broker=redis_url, backend=redis_url)
        self.results.conf.update(accept_content=["json"], result_serializer="json")
        self.active = workers
        self.timings: list[dict[str, Any]] = []

    def start(self) -> None:
        stack_setup.start_workers(self.workers)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()

    def nodename(self, worker: devstack.WorkerProcess) -> str:
        return f"{worker.name}@{socket.gethostname()}"

    def use(self, count: int) -> None:
        """Let the first ``count`` worker processes consume; waits for the remote-control replies."""
        for index in range(min(count, self.active), max(count, self.active)):
            name = self.nodename(self.workers[index])
            for queue in self.queues:
                if count < self.active:
                    replies = self.control.control.cancel_consumer(queue, destination=[name], reply=True, timeout=10)
                else:
                    replies = self.control.control.add_consumer(queue, destination=[name], reply=True, timeout=10)
                if not replies:
                    raise RuntimeError(f"worker {name} did not answer the remote-control request for {queue}")
        self.active = count

    def one_job(self) -> float:
        """Seconds from enqueue until the receiver accepted this job's event."""
        from producers.enqueue import enqueue_registration

        expected = len(self.receiver.events) + 1
        wall = time.time()
        start = time.perf_counter()
        job_id = enqueue_registration(job_fields(self.model_dir), settings=self.settings)
        self.receiver.wait_for(expected, timeout_s=180)
        elapsed = time.perf_counter() - start
        self.timings.append({"job_id": job_id, "enqueued_wall": wall, "latency_s": elapsed, "workers": self.active})
        return elapsed

    def batch(self, size: int) -> dict[str, Any]:
        from producers.enqueue import enqueue_registration

        expected = len(self.receiver.events) + size
        groups = {
            "workers": [
                pid for w in self.workers[: self.active] if w.process for pid in machine.tree_pids(w.process.pid)
            ],
            **self.store.process_groups(),
            "redis (the benchmark's own)": machine.pids_matching(
                "redis-server", self.redis_url.rsplit(":", 1)[1].split("/")[0]
            ),
            "benchmark process (receiver)": [os.getpid()],
        }
        cpu_before = machine.cpu_snapshot(groups)
        start = time.perf_counter()
        job_ids = [enqueue_registration(job_fields(self.model_dir), settings=self.settings) for _ in range(size)]
        enqueued = time.perf_counter() - start
        self.receiver.wait_for(expected, timeout_s=60 + 30 * size)
        elapsed = time.perf_counter() - start
        cpu_after = machine.cpu_snapshot(groups)
        # Celery publishes a chain's next step before it stores the step's result: the webhook can
        # arrive a moment before the registration reads SUCCESS.
        deadline = time.monotonic() + 30
        while (states := {self.results.AsyncResult(j).state for j in job_ids}) != {"SUCCESS"}:
            if time.monotonic() > deadline or states & {"FAILURE", "REVOKED"}:
                raise RuntimeError(f"throughput batch: job states {states}")
            time.sleep(0.05)
        used = {name: cpu_after[name] - cpu_before[name] for name in cpu_after}
        ours = sum(v for k, v in used.items() if k != "system")
        return {
            "jobs": size, "seconds": round(elapsed, 3), "enqueue_seconds": round(enqueued, 3),
            "jobs_per_s": round(size / elapsed, 3),
            "cpu_ms_per_job": {k: round(1000 * v / size, 1) for k, v in used.items() if k != "system"},
            "cpu_ms_per_job_ours_total": round(1000 * ours / size, 1),
            "machine_cores_busy": round(used["system"] / elapsed, 2),
            "other_processes_cores_busy": round(max(0.0, used["system"] - ours) / elapsed, 2),
        }  # fmt: skip

    def task_runtimes(self) -> dict[str, float]:
        """Task id → seconds the worker spent in it, from the workers' 'succeeded in' log lines."""
        found: dict[str, float] = {}
        for worker in self.workers:
            for match in _SUCCEEDED.finditer(worker.log_text()):
                found[match["id"]] = float(match["s"])
        return found

    def breakdown(self) -> dict[str, Any]:
        """Where a queued job's time goes: register task, webhook task, and everything else (transport)."""
        from producers.enqueue import webhook_task_id

        runtimes = self.task_runtimes()
        register, webhook, other = [], [], []
        for timing in self.timings:
            if timing["workers"] != 1:
                continue
            reg = runtimes.get(timing["job_id"])
            hook = runtimes.get(webhook_task_id(timing["job_id"]))
            if reg is None or hook is None:
                continue
            register.append(reg)
            webhook.append(hook)
            other.append(timing["latency_s"] - reg - hook)
        return {
            "register_task": stats.summarize(register),
            "webhook_task": stats.summarize(webhook),
            "queue_transport_and_rest": stats.summarize(other),
        }
