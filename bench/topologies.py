"""How the benchmark's tracking server runs: docker-compose.yml's ``mlflow`` service, or a named topology.

``compose_topology`` reads the compose file's serving flags and environment (the places, such as
the backend URI and the port, are replaced by local ones); ``TOPOLOGIES`` are the other ways the
scaling benchmarks compare.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools.devstack import PROJECT_ROOT

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
