"""Shared pieces of ``bench.run`` and ``bench.load``: stores, workers, receiver, statistics, machine info.

Processes (Redis, workers, the MLflow server, PostgreSQL databases) come from
``devtools.devstack``; nothing here re-implements process handling.
Only what ``pip install -e '.[test]'`` installs is needed (no psutil: RSS is read from /proc).
"""

from __future__ import annotations

import base64
import json
import os
import platform
import statistics
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devtools import devstack
from devtools.builders import baseline_fields
from devtools.devstack import PROJECT_ROOT

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SECRET = "whsec_" + base64.b64encode(b"hokusai-bench-secret-0123456789a").decode()
METADATA = {"dataset": "leads-2026-11", "notes": "benchmark"}
STORES = ("sqlite", "postgres")


# ---------------------------------------------------------------------------- machine and statistics
def machine_info() -> dict[str, Any]:
    import celery
    import mlflow
    import sklearn

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_total = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = f"{int(line.split()[1]) // 1024} MiB"
    except OSError:
        pass
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "memory": mem_total,
        "os": platform.platform(),
        "python": platform.python_version(),
        "mlflow": mlflow.__version__,
        "celery": celery.__version__,
        "scikit_learn": sklearn.__version__,
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))  # ceil(q/100 * n)
    return ordered[rank - 1]


def bootstrap_ratio(
    top: list[float], bottom: list[float], *, rounds: int = 2000, seed: int = 13
) -> tuple[float, float] | None:
    """95% bootstrap interval of median(top) / median(bottom) (each resampled with replacement)."""
    import random

    if not top or not bottom:
        return None
    rng = random.Random(seed)
    ratios = sorted(
        statistics.median(rng.choices(top, k=len(top))) / statistics.median(rng.choices(bottom, k=len(bottom)))
        for _ in range(rounds)
    )
    return round(ratios[int(0.025 * rounds)], 3), round(ratios[int(0.975 * rounds) - 1], 3)


def bootstrap_difference_ms(top: list[float], bottom: list[float], *, rounds: int = 2000, seed: int = 13) -> Any:
    """95% bootstrap interval of median(top) - median(bottom), seconds in, milliseconds out."""
    import random

    if not top or not bottom:
        return None
    rng = random.Random(seed)
    diffs = sorted(
        statistics.median(rng.choices(top, k=len(top))) - statistics.median(rng.choices(bottom, k=len(bottom)))
        for _ in range(rounds)
    )
    return round(1000 * diffs[int(0.025 * rounds)], 2), round(1000 * diffs[int(0.975 * rounds) - 1], 2)


def bootstrap_paired_difference_ms(
    top: list[float], bottom: list[float], *, rounds: int = 2000, seed: int = 13
) -> tuple[float, float] | None:
    """95% bootstrap interval of the median of ``top[i] - bottom[i]`` (rounds resampled), in ms."""
    interval = bootstrap_median([a - b for a, b in zip(top, bottom, strict=True)], rounds=rounds, seed=seed)
    return (round(1000 * interval[0], 2), round(1000 * interval[1], 2)) if interval else None


def bootstrap_median(values: list[float], *, rounds: int = 2000, seed: int = 13) -> tuple[float, float] | None:
    """95% bootstrap interval of the median of ``values`` (per-round differences or ratios, resampled)."""
    import random

    if not values:
        return None
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(rounds))
    return medians[int(0.025 * rounds)], medians[int(0.975 * rounds) - 1]


def per_round_ratios(ones: list[dict[str, Any]], twos: list[dict[str, Any]]) -> list[float]:
    """2w/1w of each round: the jobs/s of its 2-worker batch over its 1-worker batch (run next to each other)."""
    return [round(two["jobs_per_s"] / one["jobs_per_s"], 3) for one, two in zip(ones, twos, strict=False)]


def loadavg() -> str | None:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return None


def summarize(seconds: list[float]) -> dict[str, Any]:
    """Median, p95 (nearest rank), mean, min, max in milliseconds, and n."""
    if not seconds:
        return {"n": 0, "median_ms": None, "p95_ms": None, "mean_ms": None, "min_ms": None, "max_ms": None}
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 2),
        "p95_ms": round(percentile(ms, 95), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
        "min_ms": round(min(ms), 2),
        "max_ms": round(max(ms), 2),
    }


def write_json(path: Path, payload: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------------- the model
def make_model() -> Any:
    """The benchmark's model: a small fitted LogisticRegression on three named float columns."""
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(7)
    frame = pd.DataFrame(rng.random((40, 3)), columns=["f0", "f1", "f2"])
    target = (frame["f0"] > 0.5).astype(int)
    return LogisticRegression().fit(frame, target)


def signature_and_example(model: Any) -> tuple[Any, Any]:
    """The model's signature and a 3-row input example (the same frame it was fitted on)."""
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature

    frame = pd.DataFrame(np.random.default_rng(7).random((3, 3)), columns=["f0", "f1", "f2"])
    return infer_signature(frame, model.predict(frame)), frame


def explicit_requirements() -> list[str]:
    """The explicit pip requirements every 'cheap' variant passes (computed once, outside timings)."""
    import mlflow.sklearn

    return list(mlflow.sklearn.get_default_pip_requirements())


def stage_model(model: Any, staging: Path, requirements: list[str]) -> Path:
    """Save ``model`` in MLflow format under ``staging`` as a pipeline would (explicit requirements)."""
    import mlflow.sklearn

    target = staging / f"model-{uuid.uuid4().hex[:8]}"
    mlflow.sklearn.save_model(model, str(target), pip_requirements=requirements)
    return target


def job_fields(model_dir: Path, **overrides: Any) -> dict[str, Any]:
    defaults = {"metadata": dict(METADATA), "token_id": "BENCH", "tags": {"user_id": "u-bench"}}
    return baseline_fields(model_dir, **{**defaults, **overrides})


# ---------------------------------------------------------------------------- Redis
@contextmanager
def own_redis(work: Path) -> Iterator[str]:
    """A ``redis-server`` of the benchmark's own on a free port (never a shared one); yields its URL."""
    unused = f"redis://127.0.0.1:{devstack.free_port()}/0"  # nothing listens there: devstack starts one
    with devstack.redis_server(unused, work / "redis") as url:
        yield url


def redis_client(redis_url: str) -> Any:
    import redis

    client = redis.Redis.from_url(redis_url)
    client.ping()
    return client


def redis_snapshot(client: Any) -> dict[str, Any]:
    """used_memory (whole instance), this database's bytes (MEMORY USAGE summed), keys by prefix, TTL-less keys.

    ``used_memory`` is INFO for the whole Redis instance, which other databases share; ``db_bytes``
    sums ``MEMORY USAGE`` over this database's keys only.
    """
    info = client.info("memory")
    by_prefix: dict[str, int] = {}
    bytes_by_prefix: dict[str, int] = {}
    no_ttl: dict[str, int] = {}
    for key in client.scan_iter(count=1000):
        prefix = key_prefix(key.decode(errors="replace"))
        by_prefix[prefix] = by_prefix.get(prefix, 0) + 1
        bytes_by_prefix[prefix] = bytes_by_prefix.get(prefix, 0) + int(client.memory_usage(key, samples=0) or 0)
        if client.ttl(key) == -1:
            no_ttl[prefix] = no_ttl.get(prefix, 0) + 1
    return {
        "used_memory": int(info["used_memory"]),
        "used_memory_human": info.get("used_memory_human"),
        "db_bytes": sum(bytes_by_prefix.values()),
        "keys": int(client.dbsize()),
        "keys_by_prefix": dict(sorted(by_prefix.items())),
        "bytes_by_prefix": dict(sorted(bytes_by_prefix.items())),
        "keys_without_ttl_by_prefix": dict(sorted(no_ttl.items())),
    }


def key_prefix(key: str) -> str:
    """``celery-task-meta-<id>`` → ``celery-task-meta-*``; ``hokusai:event:<id>`` → ``hokusai:event:*``."""
    if key.startswith("celery-task-meta-"):
        return "celery-task-meta-*"
    if key.startswith("_kombu.binding."):
        return key
    parts = key.split(":")
    return ":".join(parts[:-1]) + ":*" if len(parts) >= 2 else key


# ---------------------------------------------------------------------------- MLflow stores
@dataclass
class Store:
    kind: str  # "sqlite" or "postgres"
    tracking_uri: str
    work: Path  # scratch folder: artifacts, staging, logs
    backend: str | None = None  # the server's PostgreSQL URI
    #: The server's --artifacts-destination when clients write it themselves (SERVED_ARTIFACTS_DESTINATION)
    served_destination: Path | None = None
    #: The server's database, when queue workers write it directly (TRACKING_DATABASE_URI)
    workers_database: str | None = None

    def process_groups(self) -> dict[str, list[int]]:
        """The MLflow server's process tree and the PostgreSQL backends of its database (empty for sqlite)."""
        if self.backend is None:
            return {}
        port = self.tracking_uri.rsplit(":", 1)[1]
        server = [p for pid in pids_matching("mlflow", "server", f"--port {port}") for p in tree_pids(pid)]
        return {"mlflow_server": sorted(set(server)), "postgres": pids_matching(self.backend.rsplit("/", 1)[1])}

    def artifact_location(self, name: str) -> str | None:
        """Artifacts of a benchmark-made experiment: in the scratch folder (sqlite), served (server)."""
        return (self.work / "artifacts" / name).as_uri() if self.kind == "sqlite" else None


#: ``mlflow server`` flags that name this deployment's places (replaced by local ones), not how it serves.
_PLACE_FLAGS = ("--backend-store-uri", "--artifacts-destination", "--host", "--port", "--allowed-hosts")


@dataclass(frozen=True)
class ServerTopology:
    """How the tracking server runs: ``--workers``, the other ``mlflow server`` flags, its environment."""

    name: str
    workers: int | None
    flags: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    #: Workers write the served artifacts into the server's store themselves (SERVED_ARTIFACTS_DESTINATION).
    workers_write_artifacts: bool = False
    #: Queue workers write the server's database directly (TRACKING_DATABASE_URI).
    workers_on_database: bool = False

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "workers": self.workers, "flags": list(self.flags), "env": dict(self.env),
                "workers_write_artifacts": self.workers_write_artifacts,
                "workers_on_database": self.workers_on_database}  # fmt: skip


def compose_topology(compose_file: Path = PROJECT_ROOT / "docker-compose.yml") -> ServerTopology:
    """The ``mlflow`` service of docker-compose.yml: its command's serving flags and its environment.

    The benchmark runs the server exactly so; only the backend URI, artifacts folder, host, port
    and allowed hosts are local ones. Whether the ``worker`` service writes the served artifacts
    itself (``SERVED_ARTIFACTS_DESTINATION``) comes along.
    """
    import shlex

    import yaml

    services = yaml.safe_load(compose_file.read_text())["services"]
    service = services["mlflow"]
    words = shlex.split(_compose_defaults(str(service["command"])))
    # `mlflow server ...`, or the wrapper that passes its options through to it
    launcher = 2 if words[:2] == ["mlflow", "server"] else 3
    assert words[:launcher] in (["mlflow", "server"], ["python", "-m", "hokusai_app.tracking_server"]), words
    flags: list[str] = []
    workers: int | None = None
    rest = iter(words[launcher:])
    for word in rest:
        name, _, inline = word.partition("=")
        takes_value = not inline and not word.startswith("--no-") and word not in ("--dev",)
        value = inline or (next(rest) if takes_value else "")
        if name == "--workers":
            workers = int(value)
        elif name not in _PLACE_FLAGS:
            flags += [name, value] if value else [name]
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    places = ("MLFLOW_SERVER_ALLOWED_HOSTS", "MLFLOW_BACKEND_STORE_URI")  # and the POSTGRES_* of the database
    env = tuple(
        (k, _compose_defaults(str(v)))
        for k, v in environment.items()
        if k not in places and not k.startswith("POSTGRES_")
    )
    worker_env = services["worker"].get("environment") or {}
    return ServerTopology("compose", workers, tuple(flags), env, "SERVED_ARTIFACTS_DESTINATION" in worker_env,
                          "TRACKING_DATABASE_URI" in worker_env)  # fmt: skip


def _compose_defaults(text: str) -> str:
    """``${VAR:-default}`` → default, ``${VAR:?...}`` → a placeholder (those are places, replaced anyway)."""
    import re

    text = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)
    return re.sub(r"\$\{[A-Z_]+:?\?[^}]*\}", "x", text)


#: Topologies the scaling benchmark compares (``compose`` is read from docker-compose.yml).
NO_JOB_RUNNER = (("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false"),)
GTHREAD = ("--gunicorn-opts", "--worker-class gthread --threads 4 --timeout 120 --keep-alive 30")
TOPOLOGIES = {
    "uvicorn-1": ServerTopology("uvicorn-1", 1, (), NO_JOB_RUNNER),
    "uvicorn-2": ServerTopology("uvicorn-2", 2, (), NO_JOB_RUNNER),
    "uvicorn-default": ServerTopology("uvicorn-default (4 processes, job runner on)", None),
    "gunicorn-1": ServerTopology("gunicorn-1", 1, GTHREAD, NO_JOB_RUNNER),
    "gunicorn-2": ServerTopology("gunicorn-2", 2, GTHREAD, NO_JOB_RUNNER),
    # Connections closed after each answer: the next request goes to whichever process accepts it.
    "gthread-2-close": ServerTopology(
        "gthread-2-close",
        2,
        ("--gunicorn-opts", "--worker-class gthread --threads 4 --timeout 120 --keep-alive 0"),
        NO_JOB_RUNNER,
    ),
    "sync-2": ServerTopology("sync-2", 2, ("--gunicorn-opts", "--worker-class sync --timeout 120"), NO_JOB_RUNNER),
    "sync-4": ServerTopology("sync-4", 4, ("--gunicorn-opts", "--worker-class sync --timeout 120"), NO_JOB_RUNNER),
}


@contextmanager
def mlflow_store(
    kind: str, work: Path, *, topology: ServerTopology | None = None, workers_write_artifacts: bool | None = None
) -> Iterator[Store]:
    """A fresh, migrated MLflow store: a sqlite file, or ``mlflow server`` on a new PostgreSQL database.

    The server runs as ``topology`` says (default: as docker-compose.yml runs it). Clients write
    the served artifacts into the server's folder themselves (``SERVED_ARTIFACTS_DESTINATION``)
    when ``workers_write_artifacts`` says so (default: as the topology does), else upload them
    through the server. Queue workers write the server's database directly
    (``TRACKING_DATABASE_URI``) when the topology's do.
    """
    from mlflow.tracking import MlflowClient

    work.mkdir(parents=True, exist_ok=True)
    if kind == "sqlite":
        uri = f"sqlite:///{work / 'mlflow.db'}"
        MlflowClient(tracking_uri=uri).search_experiments()  # runs the migrations once, outside timings
        yield Store(kind, uri, work)
        return
    if kind != "postgres":
        raise ValueError(f"unknown store {kind!r}; use sqlite or postgres")
    topology = topology or compose_topology()
    with ExitStack() as stack:
        backend = stack.enter_context(devstack.postgres_database())
        url = stack.enter_context(
            devstack.mlflow_server(
                backend_uri=backend,
                artifacts_dir=work / "served",
                workers=topology.workers,
                extra_args=topology.flags,
                env=dict(topology.env),
            )
        )
        if workers_write_artifacts is None:
            workers_write_artifacts = topology.workers_write_artifacts
        yield Store(kind, url, work, backend, work / "served" if workers_write_artifacts else None,
                    backend if topology.workers_on_database else None)  # fmt: skip


def activate(tracking_uri: str) -> None:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)


def bench_experiment(store: Store, name: str) -> str:
    """Create (once) an experiment whose artifacts stay in the scratch folder; return its id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store.tracking_uri)
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return str(existing.experiment_id)
    return str(client.create_experiment(name, artifact_location=store.artifact_location(name)))


# ---------------------------------------------------------------------------- workers and receiver
def start_workers(workers: list[devstack.WorkerProcess]) -> None:
    """Start worker processes side by side (each ``start`` waits for its own readiness)."""
    errors: list[BaseException] = []

    def start(worker: devstack.WorkerProcess) -> None:
        try:
            worker.start()
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        for worker in workers:
            worker.stop()
        raise errors[0]


def worker_env(store: Store, redis_url: str, receiver_url: str, staging: Path, **extra: str) -> dict[str, str]:
    return {
        "MLFLOW_TRACKING_URI": store.tracking_uri,
        "REDIS_URL": redis_url,
        "HOKUSAI_HOME": str(store.work / "home"),
        "WEBHOOK_URL": receiver_url,
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_ALLOW_HTTP": "true",
        "ALLOWED_ARTIFACT_ROOTS": str(staging),
        **({"SERVED_ARTIFACTS_DESTINATION": str(store.served_destination)} if store.served_destination else {}),
        **({"TRACKING_DATABASE_URI": store.workers_database} if store.workers_database else {}),
        **extra,
    }


def producer_settings(redis_url: str, home: Path, staging: Path) -> Any:
    """The pipeline's settings: the same Redis and artifact roots as the workers (validate_job checks them)."""
    from hokusai_registry.settings import Settings

    return Settings(redis_url=redis_url, hokusai_home=home, allowed_artifact_roots=str(staging))


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            found.extend(int(child) for child in text)
    except OSError:
        pass
    return found


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss_of(pids: list[int]) -> int:
    """Summed RSS of distinct processes, in bytes."""
    return sum(_rss_bytes(pid) for pid in set(pids))


def tree_rss(pid: int) -> int:
    """RSS of a process and all its descendants, in bytes (Linux /proc)."""
    total, pending, seen = 0, [pid], set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        total += _rss_bytes(current)
        pending.extend(_children(current))
    return total


@dataclass
class MemorySampler:
    """Samples the RSS of worker process trees every ``interval_s`` on a thread; keeps the peaks."""

    pids: list[int]
    interval_s: float = 0.25
    peak_total: int = 0
    peak_each: dict[int, int] = field(default_factory=dict)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        values = {pid: tree_rss(pid) for pid in self.pids}
        self.samples += 1
        self.peak_total = max(self.peak_total, sum(values.values()))
        for pid, value in values.items():
            self.peak_each[pid] = max(self.peak_each.get(pid, 0), value)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> MemorySampler:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sample()


def mib(value: int) -> float:
    return round(value / (1024 * 1024), 1)


def now() -> float:
    return time.perf_counter()


# ---------------------------------------------------------------------------- CPU accounting
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_seconds(pid: int) -> float:
    """utime + stime of one process (its own, not its reaped children's), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (OSError, IndexError, ValueError):
        return 0.0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pids_matching(*needles: str) -> list[int]:
    """Processes whose command line holds every needle (e.g. the server's port, a database name)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            line = _cmdline(int(entry.name))
            if line and all(needle in line for needle in needles):
                found.append(int(entry.name))
    return found


def tree_pids(pid: int) -> list[int]:
    seen: list[int] = []
    pending = [pid]
    while pending:
        current = pending.pop()
        if current not in seen:
            seen.append(current)
            pending.extend(_children(current))
    return seen


def system_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (every process on the machine)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / _TICKS


def cpu_snapshot(groups: Mapping[str, list[int]]) -> dict[str, float]:
    """CPU seconds used so far by each group of processes, plus ``system`` (the whole machine)."""
    snapshot = {name: sum(_cpu_seconds(pid) for pid in pids) for name, pids in groups.items()}
    snapshot["system"] = system_busy_seconds()
    return snapshot
