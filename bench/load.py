"""Load run: N jobs end to end against worker processes and a receiver that fails 10% of first attempts.

Run from the repository root (Redis on 127.0.0.1:6379 must be up; PostgreSQL too with ``--store postgres``):

    .venv/bin/python -m bench.load                          # 1,000 jobs, 2 workers, sqlite store
    .venv/bin/python -m bench.load --jobs 200 --workers 2 --store postgres

What happens: one model is staged, ``--workers`` worker processes (concurrency 1 each) start, one
untimed warm-up job runs, then all jobs are enqueued at once with ``enqueue_registration``. The
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
from pathlib import Path
from typing import Any

from bench import common
from devtools import devstack

REGISTERED_NAME = "hokusai_classification_baseline"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="worker processes, concurrency 1 each")
    parser.add_argument("--store", choices=common.STORES, default="sqlite")
    parser.add_argument("--fail-every", type=int, default=10, help="500 on the first attempt of every Nth key")
    parser.add_argument("--output", type=Path, default=common.RESULTS_DIR / "load-latest.json")
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


def all_versions(client: Any) -> list[Any]:
    found: list[Any] = []
    token = None
    while True:
        page = client.search_model_versions(f"name = '{REGISTERED_NAME}'", max_results=1000, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found


def run_load(args: argparse.Namespace) -> dict[str, Any]:
    from celery import Celery
    from mlflow.tracking import MlflowClient

    from producers.enqueue import enqueue_registration, webhook_task_id

    work = devstack.scratch_dir("hokusai-load-")
    print(f"scratch folder {work}", flush=True)
    receiver = make_receiver(common.SECRET, args.fail_every)
    report: dict[str, Any] = {"benchmark": "bench.load", "machine": common.machine_info(),
                              "parameters": {"jobs": args.jobs, "workers": args.workers, "store": args.store,
                                             "fail_every": args.fail_every}}  # fmt: skip
    try:
        with common.own_redis(work) as redis_url, common.mlflow_store(args.store, work) as store, receiver:
            redis_client = common.redis_client(redis_url)
            # the server store runs as docker-compose.yml: workers on its database, writing its artifacts
            report["parameters"] |= {"workers_on_database": store.workers_database is not None,
                                     "workers_write_artifacts": store.served_destination is not None}  # fmt: skip
            results = Celery("bench-load", broker=redis_url, backend=redis_url)
            results.conf.update(accept_content=["json"], result_serializer="json")
            common.activate(store.tracking_uri)
            staging = work / "staging"
            staging.mkdir(parents=True)
            model_dir = common.stage_model(common.make_model(), staging, common.explicit_requirements())
            settings = common.producer_settings(redis_url, work / "producer", staging)
            env = common.worker_env(store, redis_url, receiver.url, staging)
            workers = [devstack.WorkerProcess(env, work / "logs", concurrency=1) for _ in range(args.workers)]
            common.start_workers(workers)
            try:
                warm = enqueue_registration(common.job_fields(model_dir, metadata={"warmup": True}), settings=settings)
                receiver.wait_for(1, timeout_s=120)
                print(f"warm-up job {warm} done; enqueueing {args.jobs} jobs", flush=True)
                redis_before = common.redis_snapshot(redis_client)
                load_before = Path("/proc/loadavg").read_text().strip()
                enqueued_at: dict[str, float] = {}
                sampler = common.MemorySampler([w.process.pid for w in workers if w.process is not None])
                with sampler:
                    first = time.time()
                    for n in range(args.jobs):
                        fields = common.job_fields(model_dir, metadata={"n": n})
                        wall = time.time()
                        enqueued_at[enqueue_registration(fields, settings=settings)] = wall
                    enqueue_s = time.time() - first
                    print(f"enqueued in {enqueue_s:.1f} s; waiting for {args.jobs} webhook events", flush=True)
                    deadline = time.monotonic() + 120 + 10 * args.jobs
                    while len(receiver.events) < args.jobs + 1:
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"{len(receiver.events) - 1} of {args.jobs} events after the deadline")
                        time.sleep(1)
                        print(f"  {len(receiver.events) - 1}/{args.jobs} events", end="\r", flush=True)
                    print()
                    devstack.wait_until(
                        lambda: all(results.AsyncResult(webhook_task_id(j)).ready() for j in enqueued_at),
                        timeout_s=120, interval_s=1, what="every webhook task to finish",
                    )  # fmt: skip
                devstack.wait_until(
                    lambda: redis_client.llen("hokusai.registrations") == 0
                    and redis_client.llen("hokusai.webhooks") == 0
                    and redis_client.hlen("unacked") == 0,
                    timeout_s=60, what="queues drained and nothing unacked",
                )  # fmt: skip
                load_after = Path("/proc/loadavg").read_text().strip()
            finally:
                for worker in workers:
                    worker.stop()
            redis_after = common.redis_snapshot(redis_client)
            versions = all_versions(MlflowClient(tracking_uri=store.tracking_uri))
            state_of_job = {j: results.AsyncResult(j).state for j in enqueued_at}  # read while Redis runs
            job_states = Counter(state_of_job.values())
            webhook_results = {j: results.AsyncResult(webhook_task_id(j)) for j in enqueued_at}
            webhook_outcome = {j: (r.state, r.result if r.state == "SUCCESS" else None)
                               for j, r in webhook_results.items()}  # fmt: skip
            webhook_states = Counter(state for state, _ in webhook_outcome.values())
            webhook_status = Counter((result or {}).get("status") if state == "SUCCESS" else state
                                     for state, result in webhook_outcome.values())  # fmt: skip
            event_of_job = {j: (result or {}).get("event_id") for j, (state, result) in webhook_outcome.items()
                            if state == "SUCCESS"}  # fmt: skip
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    # ------------------------------------------------------------------ checks
    jobs = set(enqueued_at)
    per_job = Counter(v.tags.get("job_id") for v in versions)
    per_job.pop(warm, None)
    duplicates = {j: c for j, c in per_job.items() if c > 1}
    missing_versions = sorted(jobs - set(per_job))
    lost = sorted(j for j in jobs if state_of_job[j] != "SUCCESS"
                  or (webhook_outcome[j][1] or {}).get("status") != "delivered")  # fmt: skip
    requests = receiver.requests
    accepted = Counter(r.headers.get("x-hokusai-idempotency-key") for r in requests
                       if 200 <= r.status < 300 and not r.duplicate)  # fmt: skip
    accepted_twice = {k: c for k, c in accepted.items() if c > 1}
    duplicate_deliveries = sum(1 for r in requests if r.duplicate)
    status_counts = Counter(r.status for r in requests)
    failed_never_accepted = sorted(k for k in receiver.failed_first if k not in accepted)
    job_keys = {event_of_job.get(j) for j in jobs}
    keys_not_accepted = sorted(str(k) for k in job_keys if k not in accepted)

    accepted_at = {r.headers.get("x-hokusai-idempotency-key"): r.received_at.timestamp() for r in requests
                   if 200 <= r.status < 300 and not r.duplicate}  # fmt: skip
    latencies, retried_latencies, clean_latencies = [], [], []
    for job_id, wall in enqueued_at.items():
        key = event_of_job.get(job_id)
        if key in accepted_at:
            value = accepted_at[key] - wall
            latencies.append(value)
            (retried_latencies if key in receiver.failed_first else clean_latencies).append(value)
    last_event = max(accepted_at[k] for k in job_keys if k in accepted_at) if accepted_at else first
    elapsed = last_event - first

    growth = {
        prefix: redis_after["keys_by_prefix"].get(prefix, 0) - redis_before["keys_by_prefix"].get(prefix, 0)
        for prefix in set(redis_after["keys_by_prefix"]) | set(redis_before["keys_by_prefix"])
    }
    growing_without_ttl = {
        prefix: count for prefix, count in redis_after["keys_without_ttl_by_prefix"].items()
        if count > redis_before["keys_without_ttl_by_prefix"].get(prefix, 0)
    }  # fmt: skip
    checks = {
        "zero_jobs_lost": not lost and job_states == Counter({"SUCCESS": args.jobs}),
        "zero_duplicate_versions": not duplicates and not missing_versions and len(versions) == args.jobs + 1,
        "each_event_accepted_once": not accepted_twice and not keys_not_accepted and len(accepted) == args.jobs + 1,
        "every_failed_first_attempt_recovered": not failed_never_accepted,
        "nothing_without_ttl_grows_per_job": not growing_without_ttl,
    }
    report.update(
        ok=all(checks.values()),
        checks=checks,
        jobs={
            "enqueued": args.jobs,
            "registration_states": dict(job_states),
            "webhook_task_states": dict(webhook_states),
            "webhook_outcomes": dict(webhook_status),
            "lost": lost[:20],
            "lost_count": len(lost),
        },
        versions={
            "total_including_warmup": len(versions),
            "jobs_with_versions": len(per_job),
            "duplicates": duplicates,
            "jobs_without_version": missing_versions[:20],
        },
        receiver={
            "requests": len(requests),
            "status_counts": {str(k): v for k, v in sorted(status_counts.items())},
            "accepted_keys": len(accepted),
            "first_attempts_failed": len(receiver.failed_first),
            "failed_first_never_accepted": failed_never_accepted,
            "keys_accepted_more_than_once": accepted_twice,
            "deliveries_after_acceptance": duplicate_deliveries,
        },
        throughput={
            "jobs_per_s": round(args.jobs / elapsed, 3) if elapsed > 0 else None,
            "seconds": round(elapsed, 2),
            "enqueue_seconds": round(enqueue_s, 2),
            "enqueue_per_job_ms": round(1000 * enqueue_s / args.jobs, 2),
        },
        latency={
            "all": common.summarize(latencies),
            "first_attempt_ok": common.summarize(clean_latencies),
            "after_a_500": common.summarize(retried_latencies),
            "note": "enqueue -> receiver accepted the event; all jobs were enqueued at once, so this includes "
            "the wait in the queue (about position / throughput); a 500 adds the webhook backoff",
        },
        worker_memory={
            "peak_total_mib": common.mib(sampler.peak_total),
            "peak_per_worker_tree_mib": [common.mib(v) for v in sampler.peak_each.values()],
            "samples": sampler.samples,
            "what": "RSS of each worker's process tree (celery main process + its pool child)",
        },
        redis={
            "before": redis_before,
            "after": redis_after,
            "used_memory_delta_bytes": redis_after["used_memory"] - redis_before["used_memory"],
            "db_bytes_delta": redis_after["db_bytes"] - redis_before["db_bytes"],
            "db_bytes_delta_per_job": round((redis_after["db_bytes"] - redis_before["db_bytes"]) / args.jobs, 1),
            "note": "used_memory is the whole instance (other databases share it); db_bytes is this database",
            "key_growth_by_prefix": dict(sorted(growth.items())),
            "growing_prefixes_without_ttl": growing_without_ttl,
        },
        loadavg={"before": load_before, "after": load_after},
    )
    return report


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
    common.write_json(args.output, report)
    print_summary(report)
    print(f"\nwrote {args.output}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
