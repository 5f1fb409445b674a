"""Local processes for the demo, the benchmarks and the tests: Redis, workers, an MLflow server.

Everything here starts real processes in their own process group and stops them again;
waits poll with a deadline. Only the standard library is imported at module level.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from hokusai_registry.contract import REGISTRATION_QUEUE, WEBHOOK_QUEUE

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class StackError(RuntimeError):
    """A local process could not be started; the message carries the end of its log."""


def wait_until(predicate: Callable[[], Any], *, timeout_s: float, interval_s: float = 0.1, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; raise ``TimeoutError`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g}s waiting for {what or predicate}")
        time.sleep(interval_s)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def log_tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def stop_process_group(process: subprocess.Popen[bytes], *, timeout_s: float = 30, kill: bool = False) -> None:
    """SIGTERM (or SIGKILL) a process started with ``start_new_session``; SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout_s)


@contextmanager
def redis_server(redis_url: str, work_dir: Path) -> Iterator[str]:
    """Yield a reachable Redis URL: ``redis_url`` when it answers, else a local ``redis-server``."""
    parts = urlsplit(redis_url)
    if port_open(parts.hostname or "127.0.0.1", parts.port or 6379):
        yield redis_url
        return
    if shutil.which("redis-server") is None:
        raise StackError(f"Redis is not reachable at {parts.hostname}:{parts.port} and redis-server is not installed")
    with private_redis_server(work_dir) as url:
        yield url


@contextmanager
def private_redis_server(work_dir: Path, password: str | None = None) -> Iterator[str]:
    """A fresh ``redis-server`` on a free loopback port, keeping nothing on disk; yield its URL.

    With ``password`` it runs with ``requirepass``; the password goes into a config file in
    ``work_dir``, never onto the command line (and not into the URL).
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise StackError("redis-server is not installed")
    port = free_port()
    work_dir.mkdir(parents=True, exist_ok=True)
    log_path = work_dir / f"redis-{port}.log"
    config = work_dir / f"redis-{port}.conf"
    config.write_text(
        f'port {port}\nbind 127.0.0.1\nsave ""\nappendonly no\ndir {work_dir}\nlogfile {log_path}\n'
        + (f"requirepass {password}\n" if password else ""),
        encoding="utf-8",
    )
    config.chmod(0o600)
    process = subprocess.Popen([binary, str(config)], start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT)  # fmt: skip
    try:
        try:
            wait_until(lambda: port_open("127.0.0.1", port), timeout_s=20, what="redis-server")
        except TimeoutError as exc:
            raise StackError(f"redis-server did not start:\n{log_tail(log_path)}") from exc
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_process_group(process)


def with_redis_database(redis_url: str, database: int) -> str:
    """``redis_url`` with its database number replaced (``redis://h:6379/0`` → ``redis://h:6379/<database>``)."""
    parts = urlsplit(redis_url)
    if parts.scheme == "unix":
        query = "&".join(item for item in parts.query.split("&") if item and not item.startswith("db="))
        return urlunsplit(parts._replace(query="&".join(filter(None, [query, f"db={database}"]))))
    return urlunsplit(parts._replace(path=f"/{database}"))


@contextmanager
def new_keys_removed(redis_url: str) -> Iterator[None]:
    """Delete, on the way out, every key of ``redis_url``'s database that was not there on the way in.

    What the demo uses to leave its Redis database as it found it (queues, results, records, locks).
    """
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        before = set(client.scan_iter(count=1000))
        yield
        added = [key for key in client.scan_iter(count=1000) if key not in before]
        for start in range(0, len(added), 500):
            client.delete(*added[start : start + 500])
    finally:
        client.close()


def postgres_binary(name: str) -> str:
    """``initdb``, ``postgres``, ...: on PATH, else the newest of Debian's ``/usr/lib/postgresql/*/bin``."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    if not candidates:
        raise StackError(f"PostgreSQL's {name} is not installed")
    return str(candidates[-1])


class PostgresCluster:
    """A PostgreSQL server of its own (``initdb`` in a new folder, trust auth on loopback), killable.

    For faults of the database itself: :meth:`kill` SIGKILLs the postmaster and its backends (a
    crash; :meth:`start` recovers it on the same port and data). ``initdb`` refuses to run as root,
    so as root the cluster belongs to the ``postgres`` user. ``fsync`` is off: a test cluster.
    """

    def __init__(self, work_dir: Path | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="hokusai-pg-", dir=work_dir))
        self.data = self.root / "data"
        self.port = free_port()
        self.log_path = self.root / "postgres.log"
        self.process: subprocess.Popen[bytes] | None = None
        # The postmaster is this process's own child (no runuser in between), so a kill reaps it.
        self._user: dict[str, Any] = {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}
        if self._user:
            shutil.chown(self.root, "postgres", "postgres")
        init = subprocess.run(
            [postgres_binary("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync"],
            capture_output=True, text=True, timeout=120, cwd=self.root, **self._user,
        )  # fmt: skip
        if init.returncode != 0:
            raise StackError(f"initdb failed:\n{init.stdout[-2000:]}{init.stderr[-2000:]}")

    @property
    def admin_dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def uri(self, database: str) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def start(self, timeout_s: float = 60) -> PostgresCluster:
        command = [postgres_binary("postgres"), "-D", str(self.data), "-p", str(self.port),
                   "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}",
                   "-c", "fsync=off", "-c", "full_page_writes=off"]  # fmt: skip
        log = open(self.log_path, "ab")  # noqa: SIM115 - the server's log for as long as it runs
        with log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                            cwd=self.root, **self._user)  # fmt: skip

        def accepting() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise StackError(f"postgres exited with {self.process.returncode}:\n{log_tail(self.log_path)}")
            ready = subprocess.run([postgres_binary("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)])
            return ready.returncode == 0

        wait_until(accepting, timeout_s=timeout_s, interval_s=0.1, what="the PostgreSQL cluster")
        return self

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend (its process group): the database is gone at once."""
        if self.process is not None:
            stop_process_group(self.process, kill=True)
            wait_until(lambda: not port_open("127.0.0.1", self.port), timeout_s=10, what="the port to close")

    def create_database(self, name: str) -> str:
        """Create ``name``; return its SQLAlchemy URI."""
        import psycopg2

        connection = psycopg2.connect(self.admin_dsn, connect_timeout=10)
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return self.uri(name)

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process, timeout_s=20)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


class WorkerProcess:
    """One ``celery -A worker worker`` in its own process group, logging to a file."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_dir: Path,
        *,
        concurrency: int = 1,
        queues: tuple[str, ...] = (REGISTRATION_QUEUE, WEBHOOK_QUEUE),
        pool: str = "prefork",
        loglevel: str = "INFO",
    ) -> None:
        self.env = {**os.environ, **env}
        self.name = f"worker-{uuid.uuid4().hex[:8]}"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{self.name}.log"
        self.command = [
            sys.executable, "-m", "celery", "-A", "worker", "worker",
            "--loglevel", loglevel,
            "--queues", ",".join(queues),
            "--concurrency", str(concurrency),
            "--pool", pool,
            "--hostname", f"{self.name}@%h",
            "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout_s: float = 90) -> WorkerProcess:
        """Start the worker and wait until it says it is ready; raise ``StackError`` if it exits."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command, cwd=PROJECT_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        wait_until(self._ready, timeout_s=ready_timeout_s, what=f"worker {self.name} to be ready")
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise StackError(f"worker exited with {self.process.returncode}:\n{self.log_tail()}")
        return " ready." in self.log_text()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return log_tail(self.log_path, lines)

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children), as a host crash would."""
        if self.process is not None:
            stop_process_group(self.process, kill=True)

    def stop(self, timeout_s: float = 30) -> None:
        """Warm shutdown (SIGTERM): running tasks finish; SIGKILL if it does not stop in time."""
        if self.process is not None:
            stop_process_group(self.process, timeout_s=timeout_s)

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def mlflow_server(
    *,
    backend_uri: str,
    artifacts_dir: Path,
    port: int | None = None,
    workers: int | None = 1,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    startup_timeout_s: float = 180,
    started: list[subprocess.Popen[bytes]] | None = None,
) -> Iterator[str]:
    """Run ``mlflow server`` on ``backend_uri`` with served artifacts; yield ``http://127.0.0.1:<port>``.

    ``started`` (when given) receives the server's process, the leader of its own process group
    (a test can SIGKILL the whole group, as a host crash would). ``workers=None`` leaves
    ``--workers`` out (MLflow's default); ``extra_args`` are appended to the command (e.g. the
    compose service's own flags) and ``env`` to the environment.
    """
    port = port or free_port()
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    log_path = artifacts_dir.parent / f"mlflow-server-{port}.log"
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend_uri,
        "--artifacts-destination", str(artifacts_dir),
        "--host", "127.0.0.1",
        "--port", str(port),
        *(["--workers", str(workers)] if workers is not None else []),
        *extra_args,
    ]  # fmt: skip
    # Since MLflow 3.5 unknown Host headers get 403; name ours explicitly (3.4 has no such check).
    # The variable, not the flag: `mlflow server` refuses --allowed-hosts with --gunicorn-opts.
    hosts = {"MLFLOW_SERVER_ALLOWED_HOSTS": f"127.0.0.1:{port},localhost:{port}"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, **(env or {}), **hosts})  # fmt: skip
    if started is not None:
        started.append(process)
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not _healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                state = f"exited with {process.returncode}" if process.poll() is not None else "timed out"
                raise StackError(f"mlflow server {state} before {url}/health answered:\n{log_tail(log_path)}")
            time.sleep(0.25)
        yield url
    finally:
        stop_process_group(process, timeout_s=10)
        # The leader can exit before its workers (MLflow 3.4's server) have released the port.
        deadline = time.monotonic() + 15
        while port_open("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.1)
        if port_open("127.0.0.1", port):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


@contextmanager
def postgres_database(
    admin_dsn: str = "host=127.0.0.1 port=5432 user=postgres dbname=postgres", *, template: str | None = None
) -> Iterator[str]:
    """Create a PostgreSQL database (empty, or a copy of ``template``); yield its SQLAlchemy URI; drop it after."""
    import psycopg2

    name = f"hokusai_{uuid.uuid4().hex[:16]}"
    connection = psycopg2.connect(admin_dsn, connect_timeout=10)
    connection.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
    params = dict(part.split("=", 1) for part in admin_dsn.split())
    try:
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        yield f"postgresql+psycopg2://{params['user']}@{params['host']}:{params['port']}/{name}"
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.close()


def scratch_dir(prefix: str) -> Path:
    """A new temporary folder (the caller removes it)."""
    return Path(tempfile.mkdtemp(prefix=prefix))
