"""The running compose stack, driven from the host the way users reach it; one printed line per check.

    python scripts/stack_check.py        # run by scripts/stack-test.sh, which brings the stack up first

It talks to the stack only through the ports docker-compose.yml publishes on 127.0.0.1 (found with
``docker compose port``) and through the ``docker`` command line (kill, pause, restart, exec, logs,
inspect). ``COMPOSE_FILE`` and ``COMPOSE_PROJECT_NAME`` (set by the script) name the stack. The
pipeline step runs ``examples/train_pipeline.py`` in a process of its own that imports only the
producer side. Exit status 1 when any check failed. docs/stack.md lists the checks.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's packages (devtools is not installed)

SECRETS = ROOT / "secrets"
PROMETHEUS_DIR = ROOT / "deploy/prometheus"
GRAFANA_DIR = ROOT / "deploy/grafana"
#: The uid the project image runs as (the Dockerfile's hokusai user; scripts/make-secrets.sh hands it its files).
HOKUSAI_UID = 10001
WORKER_METRICS_PORT = 9808
SCALED_WORKERS = 3
PROJECT = os.environ.get("COMPOSE_PROJECT_NAME", "hokusai")
#: Services the stand-ins override leaves out, and why (docs/stack.md).
NOT_STARTED = {"grafana": "no Debian package, so no stand-in: its provisioning and queries are checked instead"}


class CheckFailed(AssertionError):
    """A check's assertion; its message is the one line printed."""


def require(condition: object, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.5) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail at the deadline naming ``what``."""
    deadline = time.monotonic() + timeout_s
    last_error = ""
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (httpx.HTTPError, subprocess.SubprocessError, OSError, ValueError, KeyError) as exc:
            last_error = f" (last error: {type(exc).__name__}: {str(exc)[:200]})"
        if time.monotonic() >= deadline:
            raise CheckFailed(f"{what}: not within {timeout_s:g}s{last_error}")
        time.sleep(interval_s)


# ---------------------------------------------------------------------------------- docker
def run(argv: list[str], timeout_s: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
    if check and result.returncode != 0:
        raise CheckFailed(f"`{' '.join(argv)}` exited {result.returncode}: {result.stderr.strip()[-400:]}")
    return result


def compose(*args: str, timeout_s: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(["docker", "compose", *args], timeout_s=timeout_s, check=check)


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    service: str
    state: str
    health: str


def containers(service: str | None = None, all_states: bool = False) -> list[Container]:
    out = compose("ps", "--format", "json", *(["--all"] if all_states else [])).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    if len(rows) == 1 and isinstance(rows[0], list):  # older compose: one JSON array
        rows = rows[0]
    found = [Container(r["ID"], r["Name"], r["Service"], r["State"], r.get("Health", "")) for r in rows]
    return sorted((c for c in found if service is None or c.service == service), key=lambda c: c.name)


def inspect(container: str) -> dict[str, Any]:
    return json.loads(run(["docker", "inspect", container]).stdout)[0]


def container_logs(container: str) -> str:
    result = run(["docker", "logs", container], timeout_s=60)
    return result.stdout + result.stderr


def service_logs(service: str) -> str:
    return compose("logs", "--no-color", "--no-log-prefix", service, timeout_s=60).stdout


def published(service: str, port: int) -> str:
    """``127.0.0.1:PORT`` where ``service``'s container ``port`` is published on the host."""
    address = compose("port", service, str(port)).stdout.strip()
    host, _, host_port = address.rpartition(":")
    return f"{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{host_port}"


def wait_healthy(service: str, count: int | None = None, timeout_s: float = 180) -> list[Container]:
    def healthy() -> list[Container] | None:
        found = [c for c in containers(service) if c.state == "running"]
        if count is not None and len(found) != count:
            return None
        return found if found and all(c.health == "healthy" for c in found) else None

    return list(wait_until(healthy, timeout_s, f"{service} healthy", interval_s=1.0))


# ---------------------------------------------------------------------------------- the stack, from the host
@dataclass
class Stack:
    redis_url: str
    tracking_uri: str
    flower_url: str
    prometheus_url: str
    flower_auth: tuple[str, str]
    uploaded_artifact: str = ""
    first_job: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def discover(cls) -> Stack:
        user, _, password = (SECRETS / "flower_basic_auth").read_text(encoding="utf-8").strip().partition(":")
        stack = cls(
            redis_url=f"redis://{published('redis', 6379)}/0",
            tracking_uri=f"http://{published('mlflow', 5000)}",
            flower_url=f"http://{published('flower', 5555)}",
            prometheus_url=f"http://{published('prometheus', 9090)}",
            flower_auth=(user, password),
        )
        for address in (stack.redis_url, stack.tracking_uri, stack.prometheus_url):
            require(urlsplit(address).hostname == "127.0.0.1", f"{address} is not published on loopback")
        # This process and the pipeline it starts read these like any producer (docs/configuration.md).
        os.environ.update(
            REDIS_URL=stack.redis_url,
            REDIS_PASSWORD_FILE=str(SECRETS / "redis_password"),
            UPLOAD_TRACKING_URI=stack.tracking_uri,
        )
        return stack

    # ---- producer side
    def enqueue(self, count: int, purpose: str) -> list[str]:
        """``count`` jobs for the model the pipeline uploaded, through the published Redis port."""
        from devtools.builders import baseline_fields
        from producers import enqueue_registration

        fields = baseline_fields(self.uploaded_artifact, tags={"stack_check": purpose})
        return [enqueue_registration(fields) for _ in range(count)]

    def wait_jobs(self, job_ids: Iterable[str], timeout_s: float) -> dict[str, dict[str, Any]]:
        from producers import job_status

        pending = set(job_ids)
        done: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout_s
        while pending:
            for job_id in sorted(pending):
                status = job_status(job_id)
                if status["state"] in ("SUCCESS", "FAILURE", "REVOKED"):
                    done[job_id] = status
                    pending.discard(job_id)
            if pending and time.monotonic() >= deadline:
                raise CheckFailed(f"{len(pending)} of {len(done) + len(pending)} jobs unfinished after {timeout_s:g}s")
            if pending:
                time.sleep(0.5)
        failed = {j: s["error"] for j, s in done.items() if s["state"] != "SUCCESS"}
        require(not failed, f"jobs failed: {failed}")
        return done

    def redis(self) -> Any:
        from hokusai_registry.redis_client import connect
        from hokusai_registry.settings import Settings

        return connect(Settings().redis_url)

    # ---- MLflow, Flower, Prometheus, the receiver
    def versions_tagged(self, tag: str, value: str) -> list[Any]:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return list(client.search_model_versions(f"tags.{tag} = '{value}'"))

    def flower(self, path: str, auth: bool = True) -> httpx.Response:
        return httpx.get(self.flower_url + path, auth=self.flower_auth if auth else None, timeout=20)

    def prometheus(self, path: str, **params: str) -> Any:
        response = httpx.get(self.prometheus_url + path, params=params, timeout=20)
        response.raise_for_status()
        body = response.json()
        require(body.get("status") == "success", f"prometheus {path} {params}: {body}")
        return body["data"]


def accepted_deliveries(event_id: str) -> list[str]:
    """The receiver's log lines for ``event_id`` that it accepted as new, both signatures verified."""
    pattern = re.compile(rf"received {re.escape(event_id)} \(signatures True/True, duplicate False\): answering 2\d\d")
    return [line for line in service_logs("receiver").splitlines() if pattern.search(line)]


def event_id_of(status: dict[str, Any]) -> str:
    """The webhook event id of a finished job, as `hokusai-registry jobs status` shows it."""
    from hokusai_app.status import full_status
    from hokusai_registry.settings import Settings

    def stored() -> str | None:
        return full_status(status["job_id"], Settings())["webhook"].get("event_id")

    return str(wait_until(stored, 30, f"the webhook event of job {status['job_id']}"))


def ran_on(job_ids: Iterable[str]) -> dict[str, str]:
    """job id -> the worker container whose log says it ran the registration."""
    logs = {c.name: container_logs(c.id) for c in containers("worker", all_states=True)}
    where: dict[str, str] = {}
    for job_id in job_ids:
        for name, text in logs.items():
            if f"hokusai.register_model[{job_id}] succeeded" in text:
                where[job_id] = name
    return where


# ---------------------------------------------------------------------------------- checks
CHECKS: list[tuple[str, Callable[[Stack], str]]] = []


def check(name: str) -> Callable[[Callable[[Stack], str]], Callable[[Stack], str]]:
    def register(fn: Callable[[Stack], str]) -> Callable[[Stack], str]:
        CHECKS.append((name, fn))
        return fn

    return register


@check("every service is healthy, workers included")
def _healthy(stack: Stack) -> str:
    config = yaml.safe_load(compose("config").stdout)
    expected = set(config["services"])
    running = containers()
    states = {c.name: f"{c.state}/{c.health or 'no healthcheck'}" for c in running}
    require(expected == {c.service for c in running}, f"services {sorted(expected)}, containers {states}")
    unhealthy = {name: state for name, state in states.items() if state != "running/healthy"}
    require(not unhealthy, f"not healthy: {unhealthy}")
    left_out = ", ".join(f"{name} ({why})" for name, why in NOT_STARTED.items())
    return f"{len(running)} containers healthy; not started here: {left_out}"


@check("a host pipeline uploads a model and enqueues it; the receiver verifies both signatures")
def _pipeline(stack: Stack) -> str:
    # A process of its own, like a training pipeline: the example pipeline, importing only the producer side.
    code = (
        "import runpy, sys\n"
        "runpy.run_path('examples/train_pipeline.py', run_name='__main__')\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('worker', 'hokusai_app'))\n"
        "assert not loaded, f'the pipeline imported {loaded}'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180, env=os.environ.copy()
    )
    require(result.returncode == 0, f"the pipeline failed: {result.stderr.strip()[-600:]}")
    job_id = json.loads(result.stdout.strip().splitlines()[-1])["job_id"]
    status = stack.wait_jobs([job_id], timeout_s=120)[job_id]
    stack.first_job = status
    stack.uploaded_artifact = status["result"]["job"]["artifact_uri"]
    require(stack.uploaded_artifact.startswith("mlflow-artifacts:/"), f"not uploaded: {stack.uploaded_artifact}")
    event_id = event_id_of(status)
    wait_until(lambda: accepted_deliveries(event_id), 60, f"the receiver accepting event {event_id}")
    return f"job {job_id}: {status['result']['model_id']}, event {event_id} verified (hokusai + standard-webhooks)"


@check("the version is found by its model_uuid through the tracking server")
def _by_uuid(stack: Stack) -> str:
    result = stack.first_job["result"]
    versions = stack.versions_tagged("model_uuid", result["model_uuid"])
    require(len(versions) == 1, f"{len(versions)} versions tagged model_uuid={result['model_uuid']}")
    (version,) = versions
    require((version.name, str(version.version)) == (result["model_name"], str(result["version"])), str(version))
    return f"{result['model_uuid']} -> {version.name} version {version.version}"


@check(f"--scale worker={SCALED_WORKERS}: jobs run on every worker")
def _scale(stack: Stack) -> str:
    compose("up", "-d", "--wait", "--wait-timeout", "240", "--no-recreate", "--scale", f"worker={SCALED_WORKERS}")
    workers = wait_healthy("worker", count=SCALED_WORKERS)
    job_ids = stack.enqueue(6 * SCALED_WORKERS, "stack_scale")
    stack.wait_jobs(job_ids, timeout_s=240)
    where = ran_on(job_ids)
    require(len(where) == len(job_ids), f"{len(job_ids) - len(where)} jobs found in no worker's log")
    per_worker = {w.name: sum(1 for name in where.values() if name == w.name) for w in workers}
    require(all(per_worker.values()), f"a worker ran nothing: {per_worker}")
    return f"{len(job_ids)} jobs: {per_worker}"


@check("Flower (basic auth) lists every worker and shows the task")
def _flower(stack: Stack) -> str:
    require(stack.flower("/api/workers", auth=False).status_code == 401, "Flower answers without credentials")
    hostnames = {f"celery@{inspect(c.id)['Config']['Hostname']}" for c in containers("worker")}

    def listed() -> set[str] | None:
        response = stack.flower("/api/workers?refresh=1")
        response.raise_for_status()
        return set(response.json()) if hostnames <= set(response.json()) else None

    wait_until(listed, 60, f"Flower listing {sorted(hostnames)}", interval_s=2)
    job_id = stack.first_job["job_id"]
    info = stack.flower(f"/api/task/info/{job_id}")
    require(info.status_code == 200, f"Flower has no task {job_id}: {info.status_code}")
    task = info.json()
    require(task.get("state") == "SUCCESS" and task.get("name") == "hokusai.register_model", str(task)[:300])
    return f"{len(hostnames)} workers listed; task {job_id} {task['state']}"


@check("Prometheus scrapes every worker (up) and Flower, and loads the shipped alert rules")
def _prometheus(stack: Stack) -> str:
    addresses = {
        f"{inspect(c.id)['NetworkSettings']['Networks'].popitem()[1]['IPAddress']}:{WORKER_METRICS_PORT}"
        for c in containers("worker")
    }

    def all_up() -> dict[str, str] | None:
        targets = stack.prometheus("/api/v1/targets")["activeTargets"]
        health = {t["labels"]["instance"]: t["health"] for t in targets if t["labels"]["job"] == "hokusai-worker"}
        flower = [t["health"] for t in targets if t["labels"]["job"] == "flower"]
        ok = set(health) == addresses and set(health.values()) == {"up"} and flower == ["up"]
        return health if ok else None

    health = wait_until(all_up, 120, f"worker targets {sorted(addresses)} all up", interval_s=3)
    shipped = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text(encoding="utf-8"))
    wanted = {rule["alert"] for group in shipped["groups"] for rule in group["rules"]}
    groups = stack.prometheus("/api/v1/rules")["groups"]
    loaded = {rule["name"]: rule.get("health") for group in groups for rule in group["rules"]}
    require(set(loaded) == wanted, f"rules loaded {sorted(loaded)}, shipped {sorted(wanted)}")
    bad = {name: h for name, h in loaded.items() if h not in ("ok", "unknown")}
    require(not bad, f"rules failing to evaluate: {bad}")
    return f"{len(health)} worker targets up, flower up; {len(loaded)} alert rules loaded"


@check("Grafana (not started: no Debian package): provisioning matches the stack")
def _grafana_provisioning(stack: Stack) -> str:
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    grafana = raw["services"]["grafana"]
    prometheus_port = int(str(raw["services"]["prometheus"]["ports"][0]).rsplit(":", 1)[1])  # the container's
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in grafana["volumes"]}
    datasources = yaml.safe_load((GRAFANA_DIR / "provisioning/datasources/prometheus.yml").read_text("utf-8"))
    (source,) = datasources["datasources"]
    url = urlsplit(source["url"])
    require(url.hostname == "prometheus" and url.port == prometheus_port, f"datasource url {source['url']}")
    require(mounts.get("/etc/grafana/provisioning") == "./deploy/grafana/provisioning", f"mounts {mounts}")
    providers = yaml.safe_load((GRAFANA_DIR / "provisioning/dashboards/hokusai.yml").read_text("utf-8"))
    (provider,) = providers["providers"]
    dashboards_at = provider["options"]["path"]
    require(mounts.get(dashboards_at) == "./deploy/grafana/dashboards", f"{dashboards_at} is not mounted: {mounts}")
    dashboard = json.loads((GRAFANA_DIR / "dashboards/hokusai-registry.json").read_text("utf-8"))
    uids = {
        (target.get("datasource") or panel.get("datasource") or {}).get("uid")
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    }
    require(uids == {source["uid"]}, f"panels use datasources {uids}, provisioned: {source['uid']}")
    return f"datasource {source['url']} (uid {source['uid']}) and dashboards ({dashboards_at}) line up with compose"


@check("every Grafana dashboard query evaluates on the metrics the stack serves")
def _grafana_queries(stack: Stack) -> str:
    dashboard = json.loads((GRAFANA_DIR / "dashboards/hokusai-registry.json").read_text("utf-8"))
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    served = set(stack.prometheus("/api/v1/label/__name__/values"))
    with_data = 0
    for expr in exprs:
        names = set(re.findall(r"\b(hokusai_[a-z_]+|up)\b", expr))
        missing = names - served
        require(not missing, f"{expr!r}: metrics not served: {sorted(missing)}")
        result = stack.prometheus("/api/v1/query", query=expr)["result"]
        with_data += bool(result)
    return f"{len(exprs)} queries evaluate, {with_data} with data now"


@check("docker kill of a worker mid-registration: one version, the webhook once")
def _kill_mid_registration(stack: Stack) -> str:
    from worker.registration.attempts import marker_key

    client = stack.redis()
    (redis_container,) = containers("redis")
    (job_id,) = stack.enqueue(1, "stack_kill")
    wait_until(lambda: client.exists(marker_key(job_id)), 60, f"job {job_id} starting", interval_s=0.002)
    # Freeze Redis the moment the attempt began: the registration goes on against PostgreSQL and the
    # artifact volume, then blocks on Redis before the job is acknowledged or its webhook sent.
    run(["docker", "pause", redis_container.id])
    try:
        victim = wait_until(
            lambda: next(
                (
                    c
                    for c in containers("worker")
                    if f"hokusai.register_model[{job_id}] received" in container_logs(c.id)
                ),
                None,
            ),
            20,
            f"the worker running {job_id}",
        )
        try:
            wait_until(lambda: stack.versions_tagged("job_id", job_id), 15, "the version written")
            phase = "after its version was written"
        except CheckFailed:
            phase = "before its version was written"
        run(["docker", "kill", victim.id])
    finally:
        run(["docker", "unpause", redis_container.id])
    status = stack.wait_jobs([job_id], timeout_s=180)[job_id]  # redelivered after VISIBILITY_TIMEOUT_S
    versions = stack.versions_tagged("job_id", job_id)
    require(len(versions) == 1, f"{len(versions)} versions for job {job_id}")
    event_id = event_id_of(status)
    deliveries = wait_until(lambda: accepted_deliveries(event_id), 60, f"the webhook of {job_id}")
    require(len(deliveries) == 1, f"event {event_id} accepted {len(deliveries)} times")
    run(["docker", "start", victim.id])
    wait_healthy("worker", count=SCALED_WORKERS)
    return f"killed {victim.name} {phase}; redelivered: version {versions[0].version} once, webhook once"


@check("restart of Redis with jobs queued: nothing lost (AOF)")
def _redis_restart(stack: Stack) -> str:
    from hokusai_registry.contract import REGISTRATION_QUEUE

    compose("stop", "worker", timeout_s=180)
    job_ids = stack.enqueue(10, "stack_redis_restart")
    queued = stack.redis().llen(REGISTRATION_QUEUE)
    require(queued == len(job_ids), f"{queued} messages queued, {len(job_ids)} enqueued")
    compose("restart", "redis")
    wait_healthy("redis")
    after = wait_until(lambda: stack.redis().llen(REGISTRATION_QUEUE), 30, "the queue back after the restart")
    require(after == len(job_ids), f"{after} of {len(job_ids)} messages survived the restart")
    compose("start", "worker", timeout_s=180)
    stack.wait_jobs(job_ids, timeout_s=240)
    wait_healthy("worker", count=SCALED_WORKERS)
    return f"{after} of {len(job_ids)} queued jobs survived the restart and completed"


@check("restart of the tracking server under load: every job completes")
def _mlflow_restart(stack: Stack) -> str:
    job_ids = stack.enqueue(24, "stack_mlflow_restart")
    compose("restart", "mlflow", timeout_s=180)
    done = stack.wait_jobs(job_ids, timeout_s=300)
    duplicates = {j: n for j in job_ids if (n := len(stack.versions_tagged("job_id", j))) != 1}
    require(not duplicates, f"versions per job: {duplicates}")
    wait_healthy("mlflow")
    before = sum(1 for s in done.values() if s["state"] == "SUCCESS")
    return f"{before} of {len(job_ids)} jobs completed, one version each"


@check("receiver stopped: webhooks dead-lettered; started again: `webhooks replay --all` in a worker delivers them")
def _dead_letters(stack: Stack) -> str:
    compose("stop", "receiver")
    job_ids = stack.enqueue(3, "stack_dead_letters")
    done = stack.wait_jobs(job_ids, timeout_s=180)
    event_ids = {event_id_of(status) for status in done.values()}

    def dead_lettered() -> set[str] | None:
        out = compose("exec", "-T", "worker", "hokusai-registry", "webhooks", "failed").stdout
        found = {str(item.get("event_id")) for item in json.loads(out)}
        return found if event_ids <= found else None

    wait_until(dead_lettered, 120, f"events {sorted(event_ids)} dead-lettered", interval_s=2)
    compose("start", "receiver")
    wait_healthy("receiver")
    replay = compose("exec", "-T", "worker", "hokusai-registry", "webhooks", "replay", "--all", check=False)
    require(replay.returncode == 0, f"webhooks replay --all exited {replay.returncode}: {replay.stderr[-400:]}")
    for event_id in event_ids:
        require(len(accepted_deliveries(event_id)) == 1, f"event {event_id} not delivered once after the replay")
    left = json.loads(compose("exec", "-T", "worker", "hokusai-registry", "webhooks", "failed").stdout)
    require(not left, f"dead letters left after the replay: {left}")
    return f"{len(event_ids)} events dead-lettered, replayed, each verified and accepted once"


def secret_values() -> dict[str, str]:
    values: dict[str, str] = {}
    for path in sorted(SECRETS.iterdir()):
        value = path.read_text(encoding="utf-8").strip()
        values[path.name] = value
        if ":" in value and path.name == "flower_basic_auth":
            values[f"{path.name} (password)"] = value.split(":", 1)[1]
    require(values and all(len(v) >= 16 for v in values.values()), "secret files missing or too short to search for")
    return values


def leaks(text: str, secrets: dict[str, str]) -> list[str]:
    return sorted(name for name, value in secrets.items() if value in text)


def project_containers() -> list[tuple[str, str, str]]:
    """(id, name, state) of every container of the project, one-off ones included."""
    out = run(
        ["docker", "ps", "-a", "--filter", f"label=com.docker.compose.project={PROJECT}", "--format", "json"]
    ).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    return sorted((row["ID"], row["Names"], row["State"]) for row in rows)


def secret_leaks(secrets: dict[str, str]) -> tuple[list[str], int]:
    """Where a secret appears: each container's docker inspect, log and process command lines."""
    found: list[str] = []
    everything = project_containers()
    for container_id, name, state in everything:
        details = inspect(container_id)  # all of it: Config.Env, Config.Cmd, Path, Args, labels, mounts
        found += [f"{name} inspect: {secret}" for secret in leaks(json.dumps(details), secrets)]
        found += [f"{name} log: {secret}" for secret in leaks(container_logs(container_id), secrets)]
        if state == "running":  # what ps shows inside: every process's command line
            listing = run(
                [
                    "docker",
                    "exec",
                    container_id,
                    "sh",
                    "-c",
                    'for f in /proc/[0-9]*/cmdline; do tr "\\0" " " < "$f"; echo; done',
                ]
            ).stdout
            require(listing.strip(), f"{name}: no process listing")
            found += [f"{name} ps: {secret}" for secret in leaks(listing, secrets)]
    return found, len(everything)


@check("no secret in any container's docker inspect (Env, Cmd, Args), process list or log")
def _no_secret_leaks(stack: Stack) -> str:
    secrets = secret_values()
    found, count = secret_leaks(secrets)
    require(not found, f"secrets leaked: {found}")
    return f"{count} containers: inspect, processes and logs hold none of {len(secrets)} secrets"


@check("the leak check catches a leak: a container given the webhook secret as a variable is reported")
def _leak_canary(stack: Stack) -> str:
    secrets = secret_values()
    (worker, *_) = containers("worker")
    image = inspect(worker.id)["Config"]["Image"]
    name = f"{PROJECT}-leak-canary"
    with tempfile.NamedTemporaryFile("w", suffix=".env") as env_file:  # never on a command line
        env_file.write(f"CANARY={secrets['webhook_secret']}\n")
        env_file.flush()
        run(["docker", "run", "-d", "--name", name, "--env-file", env_file.name,
             "--label", f"com.docker.compose.project={PROJECT}", image, "sleep", "120"])  # fmt: skip
    try:
        found, _ = secret_leaks(secrets)
    finally:
        run(["docker", "rm", "-f", name])
    caught = [where for where in found if where.startswith(f"{name} inspect:")]
    require(caught, f"a container holding the webhook secret in its Env went unreported: {found}")
    require(len(caught) == len(found), f"leaks beyond the canary: {found}")
    return f"reported: {', '.join(caught)}"


@check("secret files are readable only by the service that needs them")
def _secret_files(stack: Stack) -> str:
    problems = []
    for path in sorted(SECRETS.iterdir()):
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            problems.append(f"host {path.relative_to(ROOT)} is {mode:o}")
    checked = 0
    declared = yaml.safe_load(compose("config").stdout)["services"]
    for container in containers():
        wanted = {s if isinstance(s, str) else s["source"] for s in declared[container.service].get("secrets") or []}
        listing = run(
            ["docker", "exec", container.id, "sh", "-c", "cd /run/secrets 2>/dev/null && stat -c '%a %u %n' * || true"]
        ).stdout.split("\n")
        files = {parts[2]: (parts[0], int(parts[1])) for parts in (line.split() for line in listing) if len(parts) == 3}
        if set(files) != wanted:
            problems.append(f"{container.name} has secrets {sorted(files)}, needs {sorted(wanted)}")
        uid = int(run(["docker", "exec", container.id, "id", "-u"]).stdout.strip())
        for name, (mode_text, owner) in files.items():
            checked += 1
            if int(mode_text, 8) & 0o077:
                problems.append(f"{container.name}: {name} is {mode_text}, readable beyond its owner")
            if uid != 0 and owner != uid:  # services that start as root read their secret as root
                problems.append(f"{container.name}: {name} belongs to uid {owner}, the service runs as {uid}")
    require(not problems, "; ".join(problems))
    return f"{checked} mounted secret files: owner-only (0400), owned by the service's uid; host files 0400"


@check("a broken worker healthcheck is caught: `up --wait` fails and the worker reads unhealthy")
def _broken_healthcheck_canary(stack: Stack) -> str:
    # The worker's own healthcheck, asking a node that does not exist: what a wrong command looks like.
    test = yaml.safe_load(compose("config").stdout)["services"]["worker"]["healthcheck"]["test"]
    broken = [re.sub(r"-d celery@\$\$?HOSTNAME", "-d celery@no-such-node", part) for part in test]
    require(broken != test, f"the worker's healthcheck no longer pings its own node: {test}")
    override = {"services": {"worker": {"healthcheck": {
        "test": broken, "interval": "2s", "timeout": "15s", "retries": 1, "start_period": "0s"}}}}  # fmt: skip
    files = os.environ["COMPOSE_FILE"].split(os.pathsep)
    with tempfile.NamedTemporaryFile("w", suffix=".yml", dir=ROOT / ".hokusai") as extra:
        yaml.safe_dump(override, extra)
        extra.flush()
        argv = [arg for f in (*files, extra.name) for arg in ("-f", f)]
        began = time.monotonic()
        up = compose(*argv, "up", "-d", "--wait", "--wait-timeout", "120", "--no-deps", "--scale", "worker=1",
                     "worker", timeout_s=240, check=False)  # fmt: skip
        took = time.monotonic() - began
    require(up.returncode != 0, f"up --wait passed with a broken worker healthcheck: {up.stdout[-300:]}")
    states = {c.name: c.health for c in containers("worker", all_states=True)}
    require("unhealthy" in states.values(), f"worker health after the broken check: {states}")
    return f"up --wait exited {up.returncode} after {took:.0f}s; worker health {states}"


def main() -> int:
    failures = 0
    started = time.monotonic()
    try:
        stack = Stack.discover()
    except (CheckFailed, subprocess.SubprocessError, OSError) as exc:
        print(f"FAIL  the stack's published ports: {exc}", flush=True)
        return 1
    for name, fn in CHECKS:
        began = time.monotonic()
        try:
            detail = fn(stack)
            print(f"PASS  {name} ({time.monotonic() - began:.1f}s): {detail}", flush=True)
        except Exception as exc:
            failures += 1
            reason = str(exc) if isinstance(exc, CheckFailed) else traceback.format_exc(limit=3).strip()
            print(f"FAIL  {name} ({time.monotonic() - began:.1f}s): {reason}", flush=True)
    # The closing "N passed, N failed" line is scripts/stack-test.sh's, over its checks and these.
    took = time.monotonic() - started
    print(f"stack_check.py: {len(CHECKS)} checks, {failures} failed, {took:.0f}s", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
