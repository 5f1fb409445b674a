"""Shared-nothing across hosts: every part in a network namespace of its own, joined by a bridge.

The test makes the network itself (as root; CI runs it so): a namespace holding a bridge, and one
namespace per host, each joined to the bridge by a veth pair, on ``10.x.y.0/24`` addresses it picks.
Nothing runs in the host's own network namespace and nothing talks to the host's services:

- ``redis``: a redis-server of its own;
- ``db``: a PostgreSQL cluster of its own (``initdb`` in a temp folder) and ``mlflow server`` on it,
  with experiments in ``s3://`` and served artifacts in the same bucket;
- ``s3``: the object store (moto's server, a stand-in for S3);
- ``w1``, ``w2``: worker hosts (``TRACKING_DATABASE_URI``: they write the database and the bucket
  themselves);
- ``pipe``: a pipeline host (``save_and_enqueue`` uploading through the tracking server, and jobs naming
  an ``s3://`` folder it uploaded itself);
- ``hook``: the webhook receiver.

Each host has its own ``HOKUSAI_HOME``, ``HOME`` and ``TMPDIR``; no folder is shared between hosts (the
test reads their logs). Checks: a job from the pipeline is registered and its webhook arrives; cutting
a worker host's link mid-job, and killing a worker host's processes mid-job, get the job redelivered to
the other host with one version; two worker hosts against one, side by side in the same run.

Everything the test made (processes, namespaces, the bridge) is removed by finalizers, also on failure.
Without root or ``ip`` the test skips, except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from devtools.devstack import PROJECT_ROOT, PostgresCluster, StackError, log_tail, postgres_binary, wait_until
from tests.object_store import BUCKET, s3_env
from tests.test_webhooks_e2e import SECRET
from tests.worker_process import FAST_TIMINGS

pytestmark = [pytest.mark.slow, pytest.mark.server]

ROLES = ("redis", "db", "s3", "w1", "w2", "pipe", "hook")
#: Short enough for a redelivery within the test, and within the settings rule (> time limit + backoff cap).
TIMINGS = {**FAST_TIMINGS, "TASK_TIME_LIMIT_S": "12", "VISIBILITY_TIMEOUT_S": "15"}
#: Jobs per throughput batch.
BATCH = 24
#: The redelivered jobs' models carry this much more, so that the fault lands mid-job.
SLOW_PADDING_MB = 20


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2's ip"
    if shutil.which("redis-server") is None:
        return "needs redis-server"
    try:
        postgres_binary("initdb")
    except StackError as exc:
        return str(exc)
    return None


def _require_namespaces() -> None:
    reason = _unavailable()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"the namespace test cannot run here: {reason} (CI must run it)")
    pytest.skip(reason)


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise StackError(f"ip {' '.join(args)}: {result.stderr.strip()}")


@dataclass
class Network:
    """The namespaces, bridge and processes this test made; :meth:`close` removes them all."""

    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    prefix: str = field(default_factory=lambda: f"10.{random.randint(100, 250)}.{random.randint(0, 255)}")
    namespaces: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="hk-hosts-")))

    @property
    def switch(self) -> str:
        return f"hk-{self.tag}-net"

    @property
    def bridge(self) -> str:
        return f"hk-br-{self.tag}"

    def ns(self, role: str) -> str:
        return f"hk-{self.tag}-{role}"

    def address(self, role: str) -> str:
        return f"{self.prefix}.{10 + ROLES.index(role)}"

    def veth(self, role: str) -> str:
        """The switch-side end of ``role``'s link (setting it down cuts the host off)."""
        return f"v-{role}"

    def build(self) -> None:
        self.root.chmod(0o755)  # the db host's PostgreSQL runs as the postgres user
        _ip("netns", "add", self.switch)
        self.namespaces.append(self.switch)
        _ip("-n", self.switch, "link", "add", self.bridge, "type", "bridge")
        _ip("-n", self.switch, "link", "set", self.bridge, "up")
        for role in ROLES:
            ns = self.ns(role)
            _ip("netns", "add", ns)
            self.namespaces.append(ns)
            _ip("-n", self.switch, "link", "add", self.veth(role), "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", self.switch, "link", "set", self.veth(role), "master", self.bridge, "up")
            _ip("-n", ns, "addr", "add", f"{self.address(role)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def host_dir(self, role: str) -> Path:
        """The host's own folder: its HOKUSAI_HOME, HOME, TMPDIR and logs (no other host uses it)."""
        folder = self.root / role
        for sub in ("home", "tmp", "logs", "hokusai"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return folder

    def host_env(self, role: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        folder = self.host_dir(role)
        keep = {key: os.environ[key] for key in ("PATH", "LANG", "LC_ALL", "VIRTUAL_ENV") if key in os.environ}
        return {
            **keep,
            "HOME": str(folder / "home"),
            "TMPDIR": str(folder / "tmp"),
            "HOKUSAI_HOME": str(folder / "hokusai"),
            "PYTHONPATH": str(PROJECT_ROOT),
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
            **(extra or {}),
        }

    def start(
        self, role: str, command: Sequence[str], *, env: Mapping[str, str], log_name: str, stdin: int | None = None,
        stdout: int | IO[bytes] | None = None, wrap: Sequence[str] = (),
    ) -> subprocess.Popen[bytes]:  # fmt: skip
        """Run ``command`` in ``role``'s namespace (its own process group); stderr to the host's log."""
        log_path = self.host_dir(role) / "logs" / log_name
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                ["ip", "netns", "exec", self.ns(role), *wrap, *command], env=dict(env), cwd=PROJECT_ROOT,
                stdin=stdin, stdout=stdout if stdout is not None else log, stderr=log, start_new_session=True,
            )  # fmt: skip
        self.processes.append(process)
        return process

    def reachable(self, from_role: str, to_role: str, port: int) -> bool:
        """Whether ``to_role``'s ``port`` accepts a connection, tried from ``from_role``'s namespace."""
        probe = f"import socket; socket.create_connection(({self.address(to_role)!r}, {port}), timeout=1).close()"
        result = subprocess.run(["ip", "netns", "exec", self.ns(from_role), sys.executable, "-c", probe],
                                capture_output=True, timeout=20)  # fmt: skip
        return result.returncode == 0

    def wait_port(self, from_role: str, to_role: str, port: int, process: subprocess.Popen[bytes], what: str,
                  timeout_s: float = 120) -> None:  # fmt: skip
        def up() -> bool:
            if process.poll() is not None:
                raise StackError(f"{what} exited with {process.returncode}:\n{self.logs(to_role)}")
            return self.reachable(from_role, to_role, port)

        wait_until(up, timeout_s=timeout_s, interval_s=0.5, what=what)

    def logs(self, role: str, lines: int = 40) -> str:
        folder = self.host_dir(role) / "logs"
        return "\n".join(f"--- {path.name}\n{log_tail(path, lines)}" for path in sorted(folder.glob("*.log")))

    def close(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=20)
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)


class PipelineHost:
    """The pipeline agent (``tests.hosts_agents pipeline``): one JSON command in, one JSON answer out."""

    def __init__(self, process: subprocess.Popen[bytes], network: Network) -> None:
        self.process = process
        self.network = network
        ready = self._read()
        assert ready == {"ready": True}, ready

    def _read(self) -> Any:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise StackError(f"the pipeline agent exited:\n{self.network.logs('pipe')}")
        return json.loads(line)

    def __call__(self, op: str, **args: Any) -> Any:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps({"op": op, "args": args}) + "\n").encode())
        self.process.stdin.flush()
        answer = self._read()
        if "error" in answer:
            raise AssertionError(f"pipeline {op}: {answer['error']}")
        return answer["ok"]

    def wait(self, ids: list[str], timeout_s: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout_s
        while True:
            states: dict[str, str] = self("states", ids=ids)
            if all(state in {"SUCCESS", "FAILURE"} for state in states.values()) or time.monotonic() > deadline:
                return states
            time.sleep(0.3)


@dataclass
class Worker:
    role: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def received(self, job_id: str) -> bool:
        return f"[{job_id}] received" in self.text()

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=20)


@pytest.fixture
def network() -> Iterator[Network]:
    _require_namespaces()
    net = Network()
    try:
        net.build()
        yield net
    finally:
        net.close()


def _start_worker(net: Network, role: str, env: Mapping[str, str], generation: int) -> Worker:
    name = f"{role}-{generation}"
    log_name = f"worker-{name}.log"
    command = [sys.executable, "-m", "celery", "-A", "worker", "worker", "--loglevel", "INFO",
               "--concurrency", "1", "--pool", "prefork", "--hostname", f"{name}@%h",
               "--without-gossip", "--without-mingle"]  # fmt: skip
    process = net.start(role, command, env=net.host_env(role, env), log_name=log_name)
    worker = Worker(role, process, net.host_dir(role) / "logs" / log_name)

    def ready() -> bool:
        if process.poll() is not None:
            raise StackError(f"worker {name} exited with {process.returncode}:\n{net.logs(role)}")
        return " ready." in worker.text()

    wait_until(ready, timeout_s=120, interval_s=0.3, what=f"worker {name}")
    return worker


def test_shared_nothing_hosts_register_redeliver_and_scale(
    network: Network, record_property: Callable[[str, object], None]
) -> None:
    net = network
    redis_addr, db_addr, s3_addr, hook_addr = (net.address(r) for r in ("redis", "db", "s3", "hook"))
    redis_url = f"redis://{redis_addr}:6379/0"
    server_url = f"http://{db_addr}:5000"
    endpoint = f"http://{s3_addr}:9000"
    database_uri = f"postgresql://postgres@{db_addr}:5432/postgres"

    # --- the services, each in its namespace
    redis_dir = net.host_dir("redis")
    redis = net.start("redis", ["redis-server", "--bind", redis_addr, "--port", "6379", "--save", "",
                                "--appendonly", "no", "--dir", str(redis_dir / "tmp"), "--protected-mode", "no"],
                      env=net.host_env("redis"), log_name="redis.log")  # fmt: skip
    moto = net.start("s3", [sys.executable, "-m", "moto.server", "-H", s3_addr, "-p", "9000"],
                     env=net.host_env("s3"), log_name="moto.log")  # fmt: skip
    cluster = PostgresCluster(net.host_dir("db") / "tmp")
    with open(cluster.data / "pg_hba.conf", "a", encoding="utf-8") as hba:  # the test's subnet, trusted
        hba.write(f"host all all {net.prefix}.0/24 trust\n")
    postgres = net.start(
        "db",
        [postgres_binary("postgres"), "-D", str(cluster.data), "-p", "5432", "-c", f"listen_addresses={db_addr}",
         "-c", f"unix_socket_directories={cluster.root}", "-c", "fsync=off", "-c", "full_page_writes=off"],
        env=net.host_env("db"), log_name="postgres.log",
        wrap=["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"],
    )  # fmt: skip
    receiver_out = net.host_dir("hook") / "events.jsonl"
    receiver = net.start("hook", [sys.executable, "-m", "tests.hosts_agents", "receiver", hook_addr, "8787",
                                  str(receiver_out)],
                         env=net.host_env("hook", {"WEBHOOK_SECRET": SECRET}), log_name="receiver.log")  # fmt: skip
    net.wait_port("pipe", "redis", 6379, redis, "redis-server")
    net.wait_port("pipe", "db", 5432, postgres, "postgres")
    server = net.start(
        "db",
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", database_uri,
         "--default-artifact-root", f"s3://{BUCKET}/mlflow", "--serve-artifacts",
         "--artifacts-destination", f"s3://{BUCKET}/served", "--host", db_addr, "--port", "5000", "--workers", "2"],
        env=net.host_env("db", {**s3_env(endpoint), "MLFLOW_SERVER_ALLOWED_HOSTS": f"{db_addr}:5000"}),
        log_name="mlflow-server.log",
    )  # fmt: skip
    net.wait_port("pipe", "s3", 9000, moto, "the moto server")
    net.wait_port("pipe", "hook", 8787, receiver, "the webhook receiver")

    pipe_env = net.host_env("pipe", {**s3_env(endpoint), "REDIS_URL": redis_url, "UPLOAD_TRACKING_URI": server_url,
                                     "MLFLOW_TRACKING_URI": server_url})  # fmt: skip
    agent = net.start("pipe", [sys.executable, "-m", "tests.hosts_agents", "pipeline"], env=pipe_env,
                      log_name="pipeline.log", stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    pipeline = PipelineHost(agent, net)
    pipeline("bucket")
    net.wait_port("pipe", "db", 5000, server, "mlflow server", timeout_s=180)

    worker_env = {
        **TIMINGS,
        **s3_env(endpoint),
        "REDIS_URL": redis_url,
        "MLFLOW_TRACKING_URI": server_url,
        "TRACKING_DATABASE_URI": database_uri,
        "WEBHOOK_URL": f"http://{hook_addr}:8787/hooks",
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_ALLOW_HTTP": "true",
    }
    generation = {"w1": 0, "w2": 0}

    def worker(role: str) -> Worker:
        generation[role] += 1
        return _start_worker(net, role, worker_env, generation[role])

    workers = {"w1": worker("w1"), "w2": worker("w2")}

    def diagnose() -> str:
        logs = "\n".join(net.logs(role) for role in ("w1", "w2", "db", "pipe"))
        return f"{logs}\nbroker: {pipeline('broker_state')}"

    def events() -> list[dict[str, Any]]:
        if not receiver_out.exists():
            return []
        return [json.loads(line) for line in receiver_out.read_text().splitlines() if line]

    # --- a job from the pipeline host, uploaded through the server into the bucket: registered, webhook sent
    first = pipeline("save_and_enqueue")
    assert pipeline.wait([first], timeout_s=120) == {first: "SUCCESS"}, diagnose()
    wait_until(lambda: len(events()) >= 1, timeout_s=60, what="the first webhook")
    assert len(pipeline("versions", ids=[first])[first]) == 1
    (location,) = pipeline("artifact_locations", ids=[first])
    assert location.startswith(f"s3://{BUCKET}/mlflow/"), location
    s3_uri = pipeline("upload")
    slow_uri = pipeline("upload", padding_mb=SLOW_PADDING_MB)

    def redelivered(fault: str) -> None:
        """One job; the host that takes it is cut off (``link``) or killed (``kill``) mid-job."""
        (job_id,) = pipeline("enqueue", uri=slow_uri, count=1)
        taken = wait_until(lambda: next((w for w in workers.values() if w.received(job_id)), None),
                           timeout_s=60, interval_s=0.05, what=f"a worker to take {job_id}")  # fmt: skip
        if fault == "link":
            _ip("-n", net.switch, "link", "set", net.veth(taken.role), "down")
        else:
            taken.kill()
        other = workers["w2" if taken.role == "w1" else "w1"]
        assert pipeline.wait([job_id], timeout_s=120) == {job_id: "SUCCESS"}, diagnose()
        assert other.received(job_id), f"{job_id} was not redelivered to {other.role}:\n{diagnose()}"
        assert f"[{job_id}] succeeded" not in taken.text(), f"{taken.role} finished {job_id} before the {fault}"
        assert len(pipeline("versions", ids=[job_id])[job_id]) == 1
        # the faulty host comes back: a new worker process on a working link
        taken.kill()
        if fault == "link":
            _ip("-n", net.switch, "link", "set", net.veth(taken.role), "up")
        workers[taken.role] = worker(taken.role)

    redelivered("kill")
    redelivered("link")

    # --- throughput: one worker host, then two, side by side in this run (same model, same stack)
    warm = pipeline("run_batch", uri=s3_uri, count=4, timeout_s=120)
    assert set(warm["states"].values()) == {"SUCCESS"}, diagnose()
    workers["w2"].process.terminate()  # warm shutdown: w1 alone
    workers["w2"].process.wait(timeout=60)
    one = pipeline("run_batch", uri=s3_uri, count=BATCH, timeout_s=180)
    workers["w2"] = worker("w2")
    two = pipeline("run_batch", uri=s3_uri, count=BATCH, timeout_s=180)
    for batch in (one, two):
        assert set(batch["states"].values()) == {"SUCCESS"}, diagnose()
    speedup = one["elapsed_s"] / two["elapsed_s"]
    report = (f"shared-nothing hosts: 1 worker host {BATCH / one['elapsed_s']:.2f} jobs/s, 2 worker hosts "
              f"{BATCH / two['elapsed_s']:.2f} jobs/s: {speedup:.2f}x on {os.cpu_count()} CPUs")  # fmt: skip
    split = {role: sum(w.received(job_id) for job_id in two["ids"]) for role, w in workers.items()}
    report += f" (two hosts took {split})"
    print(report)
    record_property("speedup", round(speedup, 2))

    all_jobs = [first, *warm["ids"], *one["ids"], *two["ids"]]
    versions = pipeline("versions", ids=all_jobs)
    assert all(len(found) == 1 for found in versions.values()), versions
    wait_until(lambda: len(events()) >= len(all_jobs) + 2, timeout_s=60, what="every webhook")
    if (os.cpu_count() or 1) >= 4:
        assert speedup >= 1.7, report
