"""Smoke run of the benchmarks with tiny sizes: the commands work and write what the README promises.

Not a benchmark: the numbers are meaningless at these sizes. Runs ``bench.run`` (sqlite only,
2 repetitions, the slow old path skipped), ``bench.load`` (5 jobs) and ``bench.soak`` (100 jobs;
its correctness checks must pass, the drift checks need the full run) as subprocesses; each starts
a ``redis-server`` of its own (fails, never skips, when the binary is missing).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from devtools.devstack import PROJECT_ROOT

pytestmark = pytest.mark.slow


def run_module(module: str, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout_s, env={**os.environ, "TZ": "Asia/Tokyo"},
    )  # fmt: skip


def test_bench_run_and_load_smoke(tmp_path: Path) -> None:
    latest = tmp_path / "latest.json"
    bench = run_module(
        "bench.run", "--stores", "sqlite", "--reps", "2", "--old-reps", "0", "--batch", "2",
        "--throughput-reps", "1", "--output", str(latest),
    )  # fmt: skip
    assert bench.returncode == 0, bench.stdout[-3000:] + bench.stderr[-3000:]
    report = json.loads(latest.read_text())
    assert {"machine", "parameters", "targets", "stores"} <= set(report)
    assert {"cpu_model", "cores", "python", "mlflow", "date_utc"} <= set(report["machine"])
    sqlite = report["stores"]["sqlite"]
    assert len({tuple(order) for order in sqlite["orders"]}) >= 1 and sorted(sqlite["orders"][0]) == sorted(
        ["bare", "bare_sig", "registry", "registry_nogit", "queue_1w", "queue_2w"]
    )  # every round runs every variant (old skipped), in a shuffled order
    for name in ("bare", "bare_sig", "registry", "registry_nogit", "queue_1w", "queue_2w"):
        assert sqlite["variants"][name]["n"] == 2, name
        assert {"median_ms", "p95_ms", "n"} <= set(sqlite["variants"][name])
    assert sqlite["variants"]["old"]["n"] == 0
    assert set(sqlite["ratios"]) >= {"registry_over_bare", "old_over_registry", "queue_over_bare",
                                     "throughput_2w_over_1w"}  # fmt: skip
    assert sqlite["throughput"]["1"]["median_jobs_per_s"] > 0 and sqlite["throughput"]["2"]["median_jobs_per_s"] > 0
    assert set(sqlite["targets"]) == {"registry_over_bare", "old_over_registry", "queue_minus_bare_ms",
                                      "requests_per_queued_job", "throughput_2w_over_1w"}  # fmt: skip
    low, high = sqlite["ratios"]["registry_over_bare_ci95"]
    assert low <= high
    # verdicts use the estimates paired by round (per-round differences, per-pair ratios)
    diffs = [1000 * (q - b) for q, b in zip(sqlite["samples_s"]["queue_1w"], sqlite["samples_s"]["bare"], strict=True)]
    assert sqlite["targets"]["queue_minus_bare_ms"]["value"] == sqlite["ratios"]["queue_minus_bare_ms_paired"]
    assert abs(sqlite["ratios"]["queue_minus_bare_ms_paired"] - statistics.median(diffs)) < 0.01
    assert sqlite["targets"]["throughput_2w_over_1w"]["value"] == sqlite["ratios"]["throughput_2w_over_1w_paired"]
    assert report["machine"]["loadavg_at_start"]
    assert datetime.fromisoformat(report["finished_utc"]).utcoffset() == timedelta(0)  # UTC, whatever the TZ
    assert "sqlite median" in bench.stdout and "3/1b <= 1.02" in bench.stdout  # the table was printed

    load_json = tmp_path / "load.json"
    load = run_module("bench.load", "--jobs", "5", "--workers", "2", "--output", str(load_json))
    assert load.returncode == 0, load.stdout[-3000:] + load.stderr[-3000:]
    outcome = json.loads(load_json.read_text())
    assert outcome["ok"] is True, outcome["checks"]
    assert outcome["jobs"]["lost_count"] == 0
    assert outcome["versions"]["duplicates"] == {}
    assert outcome["versions"]["total_including_warmup"] == 6
    assert outcome["receiver"]["accepted_keys"] == 6
    assert outcome["throughput"]["jobs_per_s"] > 0
    assert {"before", "after"} <= set(outcome["redis"]) and outcome["worker_memory"]["peak_total_mib"] > 0


def test_bench_soak_smoke(tmp_path: Path) -> None:
    output, plot = tmp_path / "soak.json", tmp_path / "soak.png"
    soak = run_module(
        "bench.soak", "--jobs", "100", "--result-expires", "10", "--output", str(output), "--plot", str(plot),
        timeout_s=600,
    )  # fmt: skip
    assert output.exists() and plot.stat().st_size > 0, soak.stdout[-3000:] + soak.stderr[-3000:]
    report = json.loads(output.read_text())
    assert set(report["checks"]) == {"none_lost", "no_duplicate_version", "every_event_delivered_once",
                                     "worker_rss_growth_within_5pct", "redis_memory_back_within_10pct",
                                     "throughput_last_vs_first_within_5pct"}  # fmt: skip
    # correctness holds at any size; RSS and throughput drift need the full run to mean anything
    for name in ("none_lost", "no_duplicate_version", "every_event_delivered_once", "redis_memory_back_within_10pct"):
        assert report["checks"][name], (name, soak.stdout[-3000:])
    assert report["latency"]["n"] == 100 and report["latency"]["p99_ms"] >= report["latency"]["median_ms"]
    windows = report["latency_timeline"]  # the plot's latency panel
    assert sum(w["n"] for w in windows) == 100 and all(w["p99_ms"] >= w["p50_ms"] > 0 for w in windows)
    assert soak.returncode == (0 if report["ok"] else 1)
