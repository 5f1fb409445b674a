"""Soak run: 10,000 jobs through 2 workers on the PostgreSQL/server topology; leaks, drift and losses checked.

Run from the repository root (PostgreSQL on 127.0.0.1:5432, ``redis-server`` installed):

    .venv/bin/python -m bench.soak                   # 10,000 jobs (~15-25 min on 2 cores)
    .venv/bin/python -m bench.soak --jobs 200        # smoke

The stack is ``bench.load --store postgres``'s (``bench.stack_setup``): a Redis of its own, ``mlflow
server`` on a new PostgreSQL database run as docker-compose.yml runs it, workers on its database
writing its artifacts, and ``bench.load``'s receiver answering 500 to the first attempt of every
``--fail-every``-th event. Jobs rotate over the four model types (four registered names: the
webhooks of one model are delivered in version order, so a failed first attempt holds back its
model's later versions for the first retry wait; ``--retry-schedule`` shortens that wait to 0.5 s
and ``--schedule-poll`` the durable schedule's poll to 0.5 s for the run). Unlike ``bench.load``,
jobs are not enqueued all at once: a feeder keeps at most ``--backlog`` jobs waiting for their
webhook, so the run is a steady state. The latency includes the wait behind up to ``--backlog`` jobs
(Little's law: about backlog / throughput), as a pipeline's job waits behind the others. Results and
delivered events expire after ``--result-expires`` seconds (``RESULT_EXPIRES_S``, for the workers
and the producer), and after the last job the run waits for them.

Checked (each pass/fail in the JSON and printed; exit status 1 when any fails):
* ``none_lost``: every job has a model version and an accepted event; no failed-job record, no dead letter;
* ``no_duplicate_version``: exactly one version per ``job_id`` tag;
* ``every_event_delivered_once``: each job's event accepted once (by idempotency key and by job id);
* ``worker_rss_growth_within_5pct``: RSS of each worker's process tree at job 10,000 vs job 1,000
  (at ``jobs/10`` and ``jobs``; the median of the samples within ``jobs/50`` jobs of each point);
* ``redis_memory_back_within_10pct``: ``used_memory`` (the run's own instance) after expiry vs start;
* ``throughput_last_vs_first_within_5pct``: jobs/s of the last 1,000 (``jobs/10``) ≥ 95% of the first.
Reported: p50/p99 enqueue → accepted latency, the timeline (every second: jobs done, RSS, Redis
memory), load averages. Writes ``bench/results/soak-latest.json`` and ``soak-latest.png``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import load, machine, redis_usage, reports, stack_setup, stats, workload
from devtools import devstack
from hokusai_registry import keys
from hokusai_registry.contract import REGISTRATION_QUEUE, WEBHOOK_QUEUE


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2, help="worker processes, concurrency 1 each")
    parser.add_argument("--fail-every", type=int, default=10, help="500 on the first attempt of every Nth key")
    parser.add_argument("--backlog", type=int, default=100, help="most jobs enqueued and not yet delivered")
    workload.add_webhook_timing_arguments(parser)
    parser.add_argument("--result-expires", type=int, default=60, help="RESULT_EXPIRES_S for the run, seconds")
    parser.add_argument("--output", type=Path, default=reports.RESULTS_DIR / "soak-latest.json")
    parser.add_argument("--plot", type=Path, default=reports.RESULTS_DIR / "soak-latest.png")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (logs, store)")
    return parser.parse_args(argv)


@dataclass
class Timeline:
    """Every ``interval_s``: seconds since start, jobs done, each worker tree's RSS, Redis used_memory."""

    worker_pids: list[int]
    redis_client: Any
    done: Any  # () -> jobs done so far
    interval_s: float = 1.0
    rows: list[dict[str, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _start: float = 0.0

    def sample(self) -> None:
        self.rows.append({
            "t_s": round(time.monotonic() - self._start, 2),
            "done": self.done(),
            "rss_bytes": [machine.tree_rss(pid) for pid in self.worker_pids],
            "redis_used_memory": int(self.redis_client.info("memory")["used_memory"]),
        })  # fmt: skip

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> Timeline:
        self._start = time.monotonic()
        self.sample()
        self._thread = threading.Thread(target=self._run, name="soak-timeline", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sample()


def run_soak(args: argparse.Namespace) -> dict[str, Any]:
    """The whole run: the stack, the jobs, the expiry wait, and the checks."""
    work = devstack.scratch_dir("hokusai-soak-")
    print(f"scratch folder {work}", flush=True)
    receiver = load.make_receiver(stack_setup.SECRET, args.fail_every)
    report: dict[str, Any] = {"benchmark": "bench.soak", "machine": machine.machine_info(),
                              "parameters": {k: v for k, v in vars(args).items() if k not in {"output", "plot"}}
                              | {"store": "postgres"}}  # fmt: skip
    try:
        with stack_setup.own_redis(work) as redis_url, stack_setup.mlflow_store("postgres", work) as store, receiver:
            report["parameters"] |= {"workers_on_database": store.workers_database is not None,
                                     "workers_write_artifacts": store.served_destination is not None}  # fmt: skip
            report.update(observe(args, work, redis_url, store, receiver))
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return report


def feed(args: argparse.Namespace, model_dir: Path, settings: Any, receiver: Any) -> dict[str, float]:
    """Enqueue every job, keeping at most ``--backlog`` not yet delivered; when each job was enqueued."""
    from producers.enqueue import enqueue_registration

    enqueued_at: dict[str, float] = {}
    deadline = time.monotonic() + 300 + 2 * args.jobs
    while len(enqueued_at) < args.jobs:
        if time.monotonic() > deadline:
            raise TimeoutError(f"feeder stuck at {len(enqueued_at)} of {args.jobs} jobs")
        done = len(receiver.events) - 1  # minus the warm-up job's event
        room = min(args.backlog - (len(enqueued_at) - done), args.jobs - len(enqueued_at))
        if room <= 0:
            time.sleep(0.05)
            continue
        for _ in range(room):
            n = len(enqueued_at)
            fields = workload.rotating_job_fields(model_dir, n)
            wall = time.time()
            enqueued_at[enqueue_registration(fields, settings=settings)] = wall
        if len(enqueued_at) % 1000 < room:
            print(f"  enqueued {len(enqueued_at)}, delivered {done}", flush=True)
    receiver.wait_for(args.jobs + 1, timeout_s=float(os.environ.get("SOAK_TAIL_S", "300")))
    return enqueued_at


def observe(args: argparse.Namespace, work: Path, redis_url: str, store: stack_setup.Store,
            receiver: Any) -> dict[str, Any]:  # fmt: skip
    """Start the workers, run the warm-up and every job, wait for expiry, and judge what was seen."""
    from mlflow.tracking import MlflowClient

    from producers.enqueue import enqueue_registration

    client = stack_setup.redis_client(redis_url)
    stack_setup.activate(store.tracking_uri)
    staging = work / "staging"
    staging.mkdir(parents=True)
    model_dir = workload.stage_model(workload.make_model(), staging, workload.explicit_requirements())
    expires = str(args.result_expires)
    settings = stack_setup.producer_settings(redis_url, work / "producer", staging).model_copy(
        update={"result_expires_s": args.result_expires}
    )
    env = stack_setup.worker_env(store, redis_url, receiver.url, staging, RESULT_EXPIRES_S=expires,
                                 **workload.webhook_timing_env(args))  # fmt: skip
    workers = [devstack.WorkerProcess(env, work / "logs", concurrency=1) for _ in range(args.workers)]
    stack_setup.start_workers(workers)
    loads: dict[str, Any] = {"before": machine.loadavg()}
    try:
        warm = enqueue_registration(workload.job_fields(model_dir, metadata={"warmup": True}), settings=settings)
        receiver.wait_for(1, timeout_s=120)
        redis_start = redis_usage.redis_snapshot(client)
        pids = [w.process.pid for w in workers if w.process is not None]
        timeline = Timeline(pids, client, lambda: len(receiver.events) - 1)
        with timeline:
            first = time.time()
            enqueued_at = feed(args, model_dir, settings, receiver)
            loads["end_of_jobs"] = machine.loadavg()
            devstack.wait_until(
                lambda: client.llen(REGISTRATION_QUEUE) == 0 and client.llen(WEBHOOK_QUEUE) == 0
                and client.hlen("unacked") == 0,
                timeout_s=120, what="queues drained and nothing unacked",
            )  # fmt: skip
            redis_peak = redis_usage.redis_snapshot(client)
            failed_jobs, dead_letters = client.hlen(keys.FAILED_JOBS_KEY), client.hlen(dead_letters_key())
            print(f"all {args.jobs} delivered; waiting for results to expire ({args.result_expires} s)", flush=True)
            redis_end = wait_for_expiry(client, redis_start, args.result_expires)
        loads["after_expiry"] = machine.loadavg()
    finally:
        for worker in workers:
            worker.stop()
    mlflow_client = MlflowClient(tracking_uri=store.tracking_uri)
    versions = workload.all_versions(mlflow_client)
    seen = Seen(warm, enqueued_at, first, versions, failed_jobs, dead_letters, timeline.rows)
    return judge(args, seen, receiver, redis_start, redis_peak, redis_end, loads)


def dead_letters_key() -> str:
    return keys.WebhookKeys(keys.PREFIX).dead_letters


def wait_for_expiry(client: Any, start: dict[str, Any], expires_s: int) -> dict[str, Any]:
    """Wait past the expiry, then until used_memory is within 10% of the start (or a deadline)."""
    time.sleep(expires_s + 5)
    limit = start["used_memory"] * 1.10
    deadline = time.monotonic() + max(60, expires_s)
    while int(client.info("memory")["used_memory"]) > limit and time.monotonic() < deadline:
        time.sleep(2)
    return redis_usage.redis_snapshot(client)


@dataclass
class Seen:
    warm: str
    enqueued_at: dict[str, float]
    first: float
    versions: list[Any]
    failed_jobs: int
    dead_letters: int
    timeline: list[dict[str, Any]]


def rss_at(rows: list[dict[str, Any]], job: int, half_window: int) -> list[float]:
    """Each worker's median RSS over the samples taken within ``half_window`` jobs of ``job``."""
    near = [r["rss_bytes"] for r in rows if abs(r["done"] - job) <= half_window]
    if not near:
        near = [min(rows, key=lambda r: abs(r["done"] - job))["rss_bytes"]]
    return [statistics.median(sample[i] for sample in near) for i in range(len(near[0]))]


def judge(args: argparse.Namespace, seen: Seen, receiver: Any, redis_start: dict[str, Any],
          redis_peak: dict[str, Any], redis_end: dict[str, Any], loads: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """The checks and every section of the report."""
    jobs = set(seen.enqueued_at)
    accepted = [r for r in receiver.requests if 200 <= r.status < 300 and not r.duplicate]
    key_counts = Counter(r.headers.get("x-hokusai-idempotency-key") for r in accepted)
    job_of_version = {(v.name, str(v.version)): v.tags.get("job_id") for v in seen.versions}
    accepted_at: dict[str, list[float]] = {}
    for r in accepted:
        model = load_json(r.body).get("model") or {}
        job_id = job_of_version.get((model.get("name"), str(model.get("version"))), "?")
        accepted_at.setdefault(job_id, []).append(r.received_at.timestamp())
    per_job = Counter(v.tags.get("job_id") for v in seen.versions)
    per_job.pop(seen.warm, None)
    without_version = sorted(jobs - set(per_job))
    without_event = sorted(jobs - set(accepted_at))
    duplicates = {j: c for j, c in per_job.items() if c > 1}
    twice = {j: len(t) for j, t in accepted_at.items() if len(t) > 1}
    latency = [min(accepted_at[j]) - wall for j, wall in seen.enqueued_at.items() if j in accepted_at]
    accepted_latency = [(min(accepted_at[j]) - seen.first, min(accepted_at[j]) - wall)
                        for j, wall in seen.enqueued_at.items() if j in accepted_at]  # fmt: skip
    done_times = sorted(min(t) for j, t in accepted_at.items() if j in jobs)
    window = max(1, args.jobs // 10)
    first_rate = window / (done_times[window - 1] - seen.first) if len(done_times) >= window else None
    last_rate = (window / (done_times[-1] - done_times[-window - 1])) if len(done_times) > window else None
    half = max(1, args.jobs // 50)
    rss_early, rss_late = rss_at(seen.timeline, window, half), rss_at(seen.timeline, args.jobs, half)
    growth = [round(late / early - 1, 4) for early, late in zip(rss_early, rss_late, strict=True)]
    redis_ratio = redis_end["used_memory"] / redis_start["used_memory"]
    checks = {
        "none_lost": not without_version and not without_event and not seen.failed_jobs and not seen.dead_letters,
        "no_duplicate_version": not duplicates and len(per_job) == args.jobs,
        "every_event_delivered_once": not twice and all(c == 1 for c in key_counts.values())
        and len(key_counts) == args.jobs + 1 and not sorted(k for k in receiver.failed_first if k not in key_counts),
        "worker_rss_growth_within_5pct": all(g <= 0.05 for g in growth),
        "redis_memory_back_within_10pct": redis_ratio <= 1.10,
        "throughput_last_vs_first_within_5pct": bool(first_rate and last_rate and last_rate >= 0.95 * first_rate),
    }  # fmt: skip
    return {
        "ok": all(checks.values()),
        "checks": checks,
        "jobs": {
            "enqueued": args.jobs,
            "without_version": without_version[:20],
            "without_event": without_event[:20],
            "failed_job_records": seen.failed_jobs,
            "dead_letters": seen.dead_letters,
        },
        "versions": {"total_including_warmup": len(seen.versions), "duplicates": duplicates},
        "receiver": {
            "requests": len(receiver.requests),
            "status_counts": {str(k): v for k, v in sorted(Counter(r.status for r in receiver.requests).items())},
            "first_attempts_failed": len(receiver.failed_first),
            "jobs_accepted_more_than_once": twice,
        },
        "throughput": {
            "window_jobs": window,
            "first_window_jobs_per_s": round(first_rate, 3) if first_rate else None,
            "last_window_jobs_per_s": round(last_rate, 3) if last_rate else None,
            "last_over_first": round(last_rate / first_rate, 3) if first_rate and last_rate else None,
            "overall_jobs_per_s": round(len(done_times) / (done_times[-1] - seen.first), 3) if done_times else None,
            "run_seconds": round(done_times[-1] - seen.first, 1) if done_times else None,
        },
        "latency": stats.summarize(latency)
        | {
            "note": f"enqueue -> receiver accepted; backlog at most {args.backlog} jobs; a 500 adds the webhook backoff"
        },
        "worker_rss": {
            "at_job": [window, args.jobs],
            "early_mib": [machine.mib(int(v)) for v in rss_early],
            "late_mib": [machine.mib(int(v)) for v in rss_late],
            "growth": growth,
            "what": f"each worker's process tree (celery main + pool child); median of the samples within "
            f"{half} jobs of each point",
        },
        "redis": {
            "start": redis_start,
            "end_of_jobs": redis_peak,
            "after_expiry": redis_end,
            "used_memory_after_over_start": round(redis_ratio, 4),
            "note": "the run's own redis-server: used_memory is this run's alone",
        },
        "loadavg": loads,
        "timeline": seen.timeline,
        "latency_timeline": latency_windows(accepted_latency, LATENCY_WINDOW_S),
    }


#: Seconds per point of the latency timeline (by the time each job's event was accepted).
LATENCY_WINDOW_S = 30.0


def latency_windows(accepted: list[tuple[float, float]], window_s: float) -> list[dict[str, float]]:
    """p50/p99 enqueue → accepted latency of the jobs accepted in each ``window_s`` since the first job."""
    by_window: dict[int, list[float]] = {}
    for at_s, latency_s in accepted:
        by_window.setdefault(int(at_s // window_s), []).append(latency_s)
    rows = []
    for index in sorted(by_window):
        values = sorted(by_window[index])
        rows.append({
            "t_s": round((index + 0.5) * window_s, 1),
            "n": len(values),
            "p50_ms": round(1000 * values[len(values) // 2], 1),
            "p99_ms": round(1000 * values[min(len(values) - 1, int(len(values) * 0.99))], 1),
        })  # fmt: skip
    return rows


def load_json(body: bytes) -> dict[str, Any]:
    import json

    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def plot(report: dict[str, Any], path: Path) -> None:
    """RSS, throughput (per 10 s), latency (p50/p99 per 30 s) and Redis memory over the run, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["timeline"]
    t = [r["t_s"] for r in rows]
    fig, (ax_rss, ax_rate, ax_latency, ax_redis) = plt.subplots(4, 1, figsize=(9, 11), sharex=True)
    for i in range(len(rows[0]["rss_bytes"])):
        ax_rss.plot(t, [r["rss_bytes"][i] / 2**20 for r in rows], label=f"worker {i + 1}")
    ax_rss.set_ylabel("worker tree RSS (MiB)")
    ax_rss.legend()
    step = 10
    rate_t = [rows[i]["t_s"] for i in range(step, len(rows), step)]
    rate = [(rows[i]["done"] - rows[i - step]["done"]) / (rows[i]["t_s"] - rows[i - step]["t_s"])
            for i in range(step, len(rows), step)]  # fmt: skip
    ax_rate.plot(rate_t, rate, color="tab:green")
    ax_rate.set_ylabel("jobs/s (10 s windows)")
    windows = report["latency_timeline"]
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
        ax_latency.plot([w["t_s"] for w in windows], [w[key] / 1000 for w in windows], label=label)
    ax_latency.set_ylabel(f"enqueue → webhook (s, {LATENCY_WINDOW_S:.0f} s windows)")
    ax_latency.legend()
    ax_redis.plot(t, [r["redis_used_memory"] / 2**20 for r in rows], color="tab:red")
    ax_redis.set_ylabel("Redis used_memory (MiB)")
    ax_redis.set_xlabel("seconds since the first job")
    lat = report["latency"]
    p = report["parameters"]
    fig.suptitle(f"bench.soak: {p['jobs']} jobs, {p['workers']} workers, postgres/server; latency p50 "
                 f"{lat['median_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms")  # fmt: skip
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_summary(report: dict[str, Any]) -> None:
    t, lat, rss, red = report["throughput"], report["latency"], report["worker_rss"], report["redis"]
    p = report["parameters"]
    print(f"\nsoak: {p['jobs']} jobs, {p['workers']} workers, postgres/server, 500 on first attempt of every "
          f"{p['fail_every']}th event, backlog {p['backlog']}, RESULT_EXPIRES_S {p['result_expires']}")  # fmt: skip
    for name, ok in report["checks"].items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    print(
        f"  throughput first/last {t['window_jobs']}  {t['first_window_jobs_per_s']} / {t['last_window_jobs_per_s']}"
        f" jobs/s (x{t['last_over_first']}); overall {t['overall_jobs_per_s']} jobs/s over {t['run_seconds']} s"
    )
    print(f"  latency p50 / p99          {lat['median_ms']:.0f} ms / {lat['p99_ms']:.0f} ms")
    print(f"  worker RSS at jobs {rss['at_job']}  {rss['early_mib']} -> {rss['late_mib']} MiB ({rss['growth']})")
    print(f"  redis used_memory          {red['start']['used_memory']} -> {red['end_of_jobs']['used_memory']} -> "
          f"{red['after_expiry']['used_memory']} bytes (x{red['used_memory_after_over_start']})")  # fmt: skip
    print(f"  redis keys after expiry    {red['after_expiry']['keys_by_prefix']}")
    print(f"  load average               {report['loadavg']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    report = run_soak(args)
    report["duration_s"] = round(time.perf_counter() - started, 1)
    reports.write_json(args.output, report)
    plot(report, args.plot)
    print_summary(report)
    print(f"\nwrote {args.output} and {args.plot}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
