"""The benchmark's stack: its own Redis, a fresh MLflow store (sqlite, or a server on PostgreSQL), workers.

Processes (Redis, workers, the MLflow server, PostgreSQL databases) come from
``devtools.devstack``; nothing here re-implements process handling. The server runs as a
``bench.topologies`` topology says.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.machine import pids_matching, tree_pids
from bench.topologies import ServerTopology, compose_topology
from devtools import devstack

SECRET = "whsec_" + base64.b64encode(b"hokusai-bench-secret-0123456789a").decode()


STORES = ("sqlite", "postgres")


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
