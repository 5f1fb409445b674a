"""Load run: N jobs end to end against worker processes and a receiver that fails 10% of first attempts.

Run from the repository root (Redis on 127.0.0.1:6379 must be up; PostgreSQL too with ``--store postgres``):

    .venv/bin/python -m bench.load                          # 1,000 jobs, 2 workers, sqlite store
    .venv/bin/python -m bench.load --jobs 200 --workers 2 --store postgres

What happens: one model is staged, ``--workers`` worker processes (concurrency 1 each) start, one
untimed warm-up job runs, then all jobs are enqueued at once with ``enqueue_registration``, the four
model types in turn (``workload.rotating_job_fields``: one model's webhooks go in version order, so a
failed first attempt holds back that model's later versions for the first retry wait, shortened to
0.5 s for the run by ``--retry-schedule``; the default's 5 s would make the run measure that wait). The
receiver (a ``WebhookReceiver``) answers 500 to the first attempt of every ``--fail-every``-th new
idempotency key in arrival order (10th, 20th, ...: exactly 10% by default), 200 otherwise.

Checked (exit status 1 and ``"ok": false`` when any fails):
* zero jobs lost: every registration task and every webhook task ends SUCCESS, webhook "delivered";
* zero duplicate versions: exactly one model version per ``job_id`` tag, versions == jobs;
* every event accepted exactly once by the receiver's dedup (by idempotency key), and every key
  that got a 500 was accepted later.
Reported: jobs/s, enqueue-to-webhook latency (p50/p99, from enqueue to the receiver accepting the
event, so retried events include their backoff), peak RSS of each worker's process tree (sampled
every 0.25 s from /proc), Redis ``used_memory`` and key counts by prefix before/after, and which
prefixes have keys without a TTL (those would grow forever). Writes ``bench/results/load-latest.json``.
Starts a ``redis-server`` of its own (never touches a shared Redis).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import machine, redis_usage, reports, stack_setup, stats, workload
from devtools import devstack
from hokusai_registry.contract import REGISTRATION_QUEUE, WEBHOOK_QUEUE
from hokusai_registry.keys import WebhookKeys


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="worker processes, concurrency 1 each")
    parser.add_argument("--store", choices=stack_setup.STORES, default="sqlite")
    parser.add_argument("--fail-every", type=int, default=10, help="500 on the first attempt of every Nth key")
    workload.add_webhook_timing_arguments(parser)
    parser.add_argument("--output", type=Path, default=reports.RESULTS_DIR / "load-latest.json")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (logs, store)")
    return parser.parse_args(argv)


def make_receiver(secret: str, fail_every: int) -> Any:
    from devtools.receiver import WebhookReceiver

    class FlakyReceiver(WebhookReceiver):
        """Fails the first attempt of every ``fail_every``-th new idempotency key (arrival order)."""

        def __init__(self) -> None:
            super().__init__(secret)
            self.key_order: dict[str, int] = {}
            self.failed_first: set[str] = set()
            self._rule = threading.Lock()

        def handle(self, headers: dict[str, str], body: bytes) -> Any:
            key = headers.get("x-hokusai-idempotency-key", "")
            with self._rule:  # serialises handling, so the scripted 500 goes to this request
                if key not in self.key_order:
                    self.key_order[key] = len(self.key_order) + 1
                    if fail_every and self.key_order[key] % fail_every == 0:
                        self.failed_first.add(key)
                        self.script(500)
                return super().handle(headers, body)

    return FlakyReceiver()


@dataclass
class Observed:
    """What one load run saw, read while its Redis and store were still up."""

    warm: str
    enqueued_at: dict[str, float]  # job id -> when it was enqueued (epoch seconds)
    first: float
    enqueue_s: float
    sampler: machine.MemorySampler
    redis_before: dict[str, Any]
    redis_after: dict[str, Any]
    load_before: str
    load_after: str
    versions: list[Any]
    state_of_job: dict[str, str]
    webhook_outcome: dict[str, tuple[str, Any]]  # job id -> (webhook task state, its result when SUCCESS)


def run_load(args: argparse.Namespace) -> dict[str, Any]:
    """The whole run: the stack, the jobs, what they left, and the checks."""
    work = devstack.scratch_dir("hokusai-load-")
    print(f"scratch folder {work}", flush=True)
    receiver = make_receiver(stack_setup.SECRET, args.fail_every)
    report: dict[str, Any] = {"benchmark": "bench.load", "machine": machine.machine_info(),
                              "parameters": {"jobs": args.jobs, "workers": args.workers, "store": args.store,
                                             "fail_every": args.fail_every, "retry_schedule": args.retry_schedule,
                                             "schedule_poll": args.schedule_poll}}  # fmt: skip
    try:
        with stack_setup.own_redis(work) as redis_url, stack_setup.mlflow_store(args.store, work) as store, receiver:
            # the server store runs as docker-compose.yml: workers on its database, writing its artifacts
            report["parameters"] |= {"workers_on_database": store.workers_database is not None,
                                     "workers_write_artifacts": store.served_destination is not None}  # fmt: skip
            observed = observe(args, work, redis_url, store, receiver)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report.update(findings(args, observed, receiver))
    return report


def observe(args: argparse.Namespace, work: Path, redis_url: str, store: stack_setup.Store, receiver: Any) -> Observed:
    """Start the workers, run the warm-up job and then every job, and read how each one ended."""
    from celery import Celery
    from mlflow.tracking import MlflowClient

    from producers.enqueue import enqueue_registration

    redis_client = stack_setup.redis_client(redis_url)
    results = Celery("bench-load", broker=redis_url, backend=redis_url)
    results.conf.update(accept_content=["json"], result_serializer="json")
    stack_setup.activate(store.tracking_uri)
    staging = work / "staging"
    staging.mkdir(parents=True)
    model_dir = workload.stage_model(workload.make_model(), staging, workload.explicit_requirements())
    settings = stack_setup.producer_settings(redis_url, work / "producer", staging)
    env = stack_setup.worker_env(store, redis_url, receiver.url, staging, **workload.webhook_timing_env(args))
    workers = [devstack.WorkerProcess(env, work / "logs", concurrency=1) for _ in range(args.workers)]
    stack_setup.start_workers(workers)
    try:
        warm = enqueue_registration(workload.job_fields(model_dir, metadata={"warmup": True}), settings=settings)
        receiver.wait_for(1, timeout_s=120)
        print(f"warm-up job {warm} done; enqueueing {args.jobs} jobs", flush=True)
        redis_before = redis_usage.redis_snapshot(redis_client)
        load_before = Path("/proc/loadavg").read_text().strip()
        sampler = machine.MemorySampler([w.process.pid for w in workers if w.process is not None])
        with sampler:
            enqueued_at, first, enqueue_s = enqueue_all(args.jobs, model_dir, settings)
            wait_for_every_event(args.jobs, receiver, results, enqueued_at)
        devstack.wait_until(
            lambda: redis_client.llen(REGISTRATION_QUEUE) == 0
            and redis_client.llen(WEBHOOK_QUEUE) == 0
            and redis_client.hlen("unacked") == 0,
            timeout_s=60, what="queues drained and nothing unacked",
        )  # fmt: skip
        load_after = Path("/proc/loadavg").read_text().strip()
    finally:
        for worker in workers:
            worker.stop()
    redis_after = redis_usage.redis_snapshot(redis_client)
    versions = workload.all_versions(MlflowClient(tracking_uri=store.tracking_uri))
    state_of_job, webhook_outcome = outcomes(results, enqueued_at)  # read while Redis runs
    return Observed(warm, enqueued_at, first, enqueue_s, sampler, redis_before, redis_after, load_before, load_after,
                    versions, state_of_job, webhook_outcome)  # fmt: skip


def enqueue_all(jobs: int, model_dir: Path, settings: Any) -> tuple[dict[str, float], float, float]:
    """Enqueue every job at once: when each was enqueued, when the first was, and how long it all took."""
    from producers.enqueue import enqueue_registration

    enqueued_at: dict[str, float] = {}
    first = time.time()
    for n in range(jobs):
        fields = workload.rotating_job_fields(model_dir, n)
        wall = time.time()
        enqueued_at[enqueue_registration(fields, settings=settings)] = wall
    enqueue_s = time.time() - first
    print(f"enqueued in {enqueue_s:.1f} s; waiting for {jobs} webhook events", flush=True)
    return enqueued_at, first, enqueue_s


def wait_for_every_event(jobs: int, receiver: Any, results: Any, enqueued_at: dict[str, float]) -> None:
    """Until the receiver got an event for every job (and the warm-up) and every webhook task finished."""
    from producers.enqueue import webhook_task_id

    deadline = time.monotonic() + 120 + 10 * jobs
    while len(receiver.events) < jobs + 1:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(receiver.events) - 1} of {jobs} events after the deadline")
        time.sleep(1)
        print(f"  {len(receiver.events) - 1}/{jobs} events", end="\r", flush=True)
    print()
    devstack.wait_until(
        lambda: all(results.AsyncResult(webhook_task_id(j)).ready() for j in enqueued_at),
        timeout_s=120, interval_s=1, what="every webhook task to finish",
    )  # fmt: skip


def outcomes(results: Any, enqueued_at: dict[str, float]) -> tuple[dict[str, str], dict[str, tuple[str, Any]]]:
    """Each job's registration state, and its webhook task's state and result (when SUCCESS)."""
    from producers.enqueue import webhook_task_id

    state_of_job = {j: results.AsyncResult(j).state for j in enqueued_at}
    webhook_results = {j: results.AsyncResult(webhook_task_id(j)) for j in enqueued_at}
    webhook_outcome = {j: (r.state, r.result if r.state == "SUCCESS" else None)
                       for j, r in webhook_results.items()}  # fmt: skip
    return state_of_job, webhook_outcome


def findings(args: argparse.Namespace, seen: Observed, receiver: Any) -> dict[str, Any]:
    """The checks and every section of the report, from what the run saw."""
    jobs = set(seen.enqueued_at)
    job_states = Counter(seen.state_of_job.values())
    webhook_states = Counter(state for state, _ in seen.webhook_outcome.values())
    webhook_status = Counter((result or {}).get("status") if state == "SUCCESS" else state
                             for state, result in seen.webhook_outcome.values())  # fmt: skip
    event_of_job = {j: (result or {}).get("event_id") for j, (state, result) in seen.webhook_outcome.items()
                    if state == "SUCCESS"}  # fmt: skip
    per_job = Counter(v.tags.get("job_id") for v in seen.versions)
    per_job.pop(seen.warm, None)
    duplicates = {j: c for j, c in per_job.items() if c > 1}
    missing_versions = sorted(jobs - set(per_job))
    lost = sorted(j for j in jobs if seen.state_of_job[j] != "SUCCESS"
                  or (seen.webhook_outcome[j][1] or {}).get("status") != "delivered")  # fmt: skip
    requests = receiver.requests
    accepted = Counter(r.headers.get("x-hokusai-idempotency-key") for r in requests
                       if 200 <= r.status < 300 and not r.duplicate)  # fmt: skip
    accepted_twice = {k: c for k, c in accepted.items() if c > 1}
    failed_never_accepted = sorted(k for k in receiver.failed_first if k not in accepted)
    job_keys = {event_of_job.get(j) for j in jobs}
    keys_not_accepted = sorted(str(k) for k in job_keys if k not in accepted)
    growth, growing_without_ttl = redis_growth(seen.redis_before, seen.redis_after)
    checks = {
        "zero_jobs_lost": not lost and job_states == Counter({"SUCCESS": args.jobs}),
        "zero_duplicate_versions": not duplicates and not missing_versions and len(seen.versions) == args.jobs + 1,
        "each_event_accepted_once": not accepted_twice and not keys_not_accepted and len(accepted) == args.jobs + 1,
        "every_failed_first_attempt_recovered": not failed_never_accepted,
        "nothing_without_ttl_grows_per_job": not growing_without_ttl,
    }
    elapsed, latency = latencies(seen, receiver, event_of_job, job_keys)
    red_before, red_after = seen.redis_before, seen.redis_after
    return {
        "ok": all(checks.values()),
        "checks": checks,
        "jobs": {
            "enqueued": args.jobs,
            "registration_states": dict(job_states),
            "webhook_task_states": dict(webhook_states),
            "webhook_outcomes": dict(webhook_status),
            "lost": lost[:20],
            "lost_count": len(lost),
        },
        "versions": {
            "total_including_warmup": len(seen.versions),
            "jobs_with_versions": len(per_job),
            "duplicates": duplicates,
            "jobs_without_version": missing_versions[:20],
        },
        "receiver": {
            "requests": len(requests),
            "status_counts": {str(k): v for k, v in sorted(Counter(r.status for r in requests).items())},
            "accepted_keys": len(accepted),
            "first_attempts_failed": len(receiver.failed_first),
            "failed_first_never_accepted": failed_never_accepted,
            "keys_accepted_more_than_once": accepted_twice,
            "deliveries_after_acceptance": sum(1 for r in requests if r.duplicate),
        },
        "throughput": {
            "jobs_per_s": round(args.jobs / elapsed, 3) if elapsed > 0 else None,
            "seconds": round(elapsed, 2),
            "enqueue_seconds": round(seen.enqueue_s, 2),
            "enqueue_per_job_ms": round(1000 * seen.enqueue_s / args.jobs, 2),
        },
        "latency": latency,
        "worker_memory": {
            "peak_total_mib": machine.mib(seen.sampler.peak_total),
            "peak_per_worker_tree_mib": [machine.mib(v) for v in seen.sampler.peak_each.values()],
            "samples": seen.sampler.samples,
            "what": "RSS of each worker's process tree (celery main process + its pool child)",
        },
        "redis": {
            "before": red_before,
            "after": red_after,
            "used_memory_delta_bytes": red_after["used_memory"] - red_before["used_memory"],
            "db_bytes_delta": red_after["db_bytes"] - red_before["db_bytes"],
            "db_bytes_delta_per_job": round((red_after["db_bytes"] - red_before["db_bytes"]) / args.jobs, 1),
            "note": "used_memory is the whole instance (other databases share it); db_bytes is this database",
            "key_growth_by_prefix": dict(sorted(growth.items())),
            "growing_prefixes_without_ttl": growing_without_ttl,
        },
        "loadavg": {"before": seen.load_before, "after": seen.load_after},
    }


def latencies(
    seen: Observed, receiver: Any, event_of_job: dict[str, Any], job_keys: set[Any]
) -> tuple[float, dict[str, Any]]:
    """Seconds from the first enqueue to the last event accepted, and enqueue-to-accepted latencies."""
    requests = receiver.requests
    accepted_at = {r.headers.get("x-hokusai-idempotency-key"): r.received_at.timestamp() for r in requests
                   if 200 <= r.status < 300 and not r.duplicate}  # fmt: skip
    every: list[float] = []
    retried: list[float] = []
    clean: list[float] = []
    for job_id, wall in seen.enqueued_at.items():
        key = event_of_job.get(job_id)
        if key in accepted_at:
            value = accepted_at[key] - wall
            every.append(value)
            (retried if key in receiver.failed_first else clean).append(value)
    last_event = max(accepted_at[k] for k in job_keys if k in accepted_at) if accepted_at else seen.first
    return last_event - seen.first, {
        "all": stats.summarize(every),
        "first_attempt_ok": stats.summarize(clean),
        "after_a_500": stats.summarize(retried),
        "note": "enqueue -> receiver accepted the event; all jobs were enqueued at once, so this includes "
        "the wait in the queue (about position / throughput); a 500 adds the webhook backoff",
    }


#: Key families without a TTL that are bounded by the configuration, not by the jobs: one state hash
#: per webhook endpoint (``WebhookKeys.endpoint_state``). Their growth is not growth per job.
BOUNDED_BY_CONFIGURATION = frozenset({redis_usage.key_prefix(WebhookKeys().endpoint_state("name"))})


def redis_growth(before: dict[str, Any], after: dict[str, Any]) -> tuple[dict[str, int], dict[str, int]]:
    """Keys gained per prefix, and the prefixes whose keys without a TTL grew (bar configuration-bounded ones)."""
    growth = {
        prefix: after["keys_by_prefix"].get(prefix, 0) - before["keys_by_prefix"].get(prefix, 0)
        for prefix in set(after["keys_by_prefix"]) | set(before["keys_by_prefix"])
    }
    growing_without_ttl = {
        prefix: count for prefix, count in after["keys_without_ttl_by_prefix"].items()
        if count > before["keys_without_ttl_by_prefix"].get(prefix, 0) and prefix not in BOUNDED_BY_CONFIGURATION
    }  # fmt: skip
    return growth, growing_without_ttl


def print_summary(report: dict[str, Any]) -> None:
    t, lat, mem, red = report["throughput"], report["latency"], report["worker_memory"], report["redis"]
    p = report["parameters"]
    print(f"\nload: {p['jobs']} jobs, {p['workers']} workers, {p['store']} store, 500 on first attempt of every "
          f"{p['fail_every']}th event")  # fmt: skip
    for name, ok in report["checks"].items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    print(
        f"  jobs/s                     {t['jobs_per_s']}  ({t['seconds']} s; enqueue {t['enqueue_per_job_ms']} ms/job)"
    )
    print(f"  latency p50 / p99          {lat['all']['median_ms']:.0f} ms / {lat['all']['p99_ms']:.0f} ms "
          f"(first attempt ok p50 {lat['first_attempt_ok']['median_ms']} ms; after a 500 p50 "
          f"{lat['after_a_500']['median_ms']} ms)")  # fmt: skip
    print(f"  receiver                   {report['receiver']['status_counts']} requests, "
          f"{report['receiver']['accepted_keys']} keys accepted once each")  # fmt: skip
    print(f"  peak worker RSS            {mem['peak_per_worker_tree_mib']} MiB per worker tree, "
          f"{mem['peak_total_mib']} MiB total")  # fmt: skip
    print(f"  redis used_memory          {red['before']['used_memory_human']} -> {red['after']['used_memory_human']} "
          f"(instance); this db {red['before']['db_bytes']} -> {red['after']['db_bytes']} bytes "
          f"({red['db_bytes_delta_per_job']} B/job)")  # fmt: skip
    print(f"  redis keys before          {red['before']['keys_by_prefix']}")
    print(f"  redis keys after           {red['after']['keys_by_prefix']}")
    print(f"  keys without TTL after     {red['after']['keys_without_ttl_by_prefix']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    report = run_load(args)
    report["duration_s"] = round(time.perf_counter() - started, 1)
    reports.write_json(args.output, report)
    print_summary(report)
    print(f"\nwrote {args.output}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
