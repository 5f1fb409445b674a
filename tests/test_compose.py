"""docker-compose.yml, .env.example, the Dockerfile and the stand-ins override, checked without Docker.

The stack itself is built and run for real by ``scripts/stack-test.sh`` (docs/stack.md); these
checks are the ones that need no engine, so the suite catches a broken file before that run does.

The compose file is parsed, interpolated with the values of ``.env.example`` the way
``docker compose`` does it, and every command, entry point and healthcheck of a service is
resolved against the project: ``celery -A worker ...`` imports the app and finds our tasks,
``python -m X`` finds the module and its flags, ``mlflow server`` and ``hokusai-registry``
find their sub-commands and options. Settings names come from ``Settings.model_fields``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml

from hokusai_registry.contract import REGISTER_TASK, WEBHOOK_TASK
from hokusai_registry.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
STAND_INS_FILE = ROOT / "docker-compose.stand-ins.yml"
MAKE_SECRETS = ROOT / "scripts/make-secrets.sh"

REQUIRED_SERVICES = {"redis", "postgres", "mlflow", "worker", "flower", "receiver", "prometheus", "grafana"}
#: Services that run once and exit (need no healthcheck). None so far.
ONE_SHOT_SERVICES: set[str] = set()
#: Executables that third-party images ship, by image repository.
IMAGE_BINARIES = {
    "redis": {"redis-server", "redis-cli", "sh"},
    "postgres": {"pg_isready", "postgres"},
    "prometheus": {"prometheus", "promtool", "wget"},  # busybox-based image
    "grafana": {"grafana", "wget"},  # alpine-based image
}
#: Ports third-party images listen on when their command does not say.
DEFAULT_PORTS = {"redis": 6379, "postgres": 5432}
PLACEHOLDER = "change-me"
SECRET_NAME_RE = re.compile(r"SECRET|PASSWORD|BASIC_AUTH|TOKEN")

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, ${VAR:+alt} and $VAR; $$ escapes.
_INTERPOLATION_RE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


# ---------------------------------------------------------------------------------- helpers
def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def settings_env_names() -> dict[str, str]:
    """Environment variable name -> Settings field name, for every field the Settings object reads."""
    return Settings.env_var_names()


@dataclass(frozen=True)
class EnvEntry:
    value: str
    active: bool  # False: shown commented out (`# NAME=value`), i.e. the built-in default applies
    comment: str  # the prose comment line right above it ('' when there is none)


def parse_env_example(text: str) -> dict[str, EnvEntry]:
    """``NAME=value`` and ``# NAME=value`` lines of .env.example, each with the comment above it."""
    entries: dict[str, EnvEntry] = {}
    previous_prose = ""
    for raw in text.splitlines():
        line = raw.strip()
        match = re.match(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            name = match[2]
            assert name not in entries, f".env.example names {name} twice"
            entries[name] = EnvEntry(match[3], active=match[1] is None, comment=previous_prose)
            previous_prose = ""
        elif line.startswith("#") and not line.lstrip("# ").startswith(("----", "Generate")):
            previous_prose = line.lstrip("# ").strip()
        elif not line.startswith("#"):
            previous_prose = ""
    return entries


def env_example() -> dict[str, EnvEntry]:
    return parse_env_example(ENV_EXAMPLE.read_text(encoding="utf-8"))


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's interpolation of one string (``$$`` becomes ``$``); a missing required variable fails."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["bare"]
        op, arg = match["op"], match["arg"] or ""
        current = env.get(name)
        if op in (":-", "-"):
            return arg if (current is None or (op == ":-" and current == "")) else current
        if op in (":?", "?"):
            if current is None or (op == ":?" and current == ""):
                pytest.fail(f"docker-compose.yml requires {name} ({arg}); .env.example does not set it")
            return current
        if op == ":+":
            return arg if current else ""
        return current or ""

    return _INTERPOLATION_RE.sub(replace, value)


def referenced_variables(node: Any) -> dict[str, str | None]:
    """Every variable the compose file interpolates -> its operator (None for plain ``${VAR}``)."""
    found: dict[str, str | None] = {}
    if isinstance(node, dict):
        for key, value in node.items():
            found.update(referenced_variables(key))
            found.update(referenced_variables(value))
    elif isinstance(node, list):
        for item in node:
            found.update(referenced_variables(item))
    elif isinstance(node, str):
        for match in _INTERPOLATION_RE.finditer(node):
            name = match["braced"] or match["bare"]
            if name:
                found[name] = match["op"]
    return found


def interpolate_tree(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    if isinstance(node, str):
        return interpolate(node, env)
    return node


def example_env() -> dict[str, str]:
    return {name: entry.value for name, entry in env_example().items() if entry.active}


def interpolated_compose() -> dict[str, Any]:
    """The compose file as docker compose would see it after ``cp .env.example .env``."""
    return interpolate_tree(load_compose(), example_env())


def argv_of(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(part) for part in value]


def healthcheck_argv(healthcheck: dict[str, Any]) -> list[str]:
    test = healthcheck.get("test")
    if isinstance(test, str):
        return shlex.split(test)
    kind, *rest = test
    if kind == "CMD-SHELL":
        return shlex.split(" ".join(rest))
    assert kind == "CMD", f"healthcheck test must start with CMD or CMD-SHELL, not {kind!r}"
    return list(rest)


def is_project_image(service: dict[str, Any]) -> bool:
    return "build" in service


def image_repository(image: str) -> str:
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def option_value(argv: list[str], *names: str) -> str | None:
    """The value of ``--name value`` or ``--name=value`` in argv."""
    for index, token in enumerate(argv):
        for name in names:
            if token == name and index + 1 < len(argv):
                return argv[index + 1]
            if token.startswith(name + "="):
                return token.split("=", 1)[1]
    return None


def long_options(argv: list[str]) -> list[str]:
    return [token.split("=", 1)[0] for token in argv if token.startswith("--")]


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]


# ---------------------------------------------------------------------------------- command checks
def run_python(code: str, *args: str, timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *(["-c", code] if code else []), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=os.environ.copy(),
    )


_checked_apps: dict[str, list[str]] = {}


def celery_app_tasks(app_module: str) -> list[str]:
    """Import ``app_module`` in a fresh interpreter the way ``celery -A`` does; return its task names."""
    if app_module not in _checked_apps:
        code = (
            "import importlib, json, sys\n"
            f"module = importlib.import_module({app_module!r})\n"
            "app = getattr(module, 'app', None) or getattr(module, 'celery')\n"
            "app.loader.import_default_modules()\n"
            "print(json.dumps(sorted(app.tasks)))\n"
        )
        result = run_python(code)
        assert result.returncode == 0, f"`celery -A {app_module}`: the app does not import:\n{result.stderr[-3000:]}"
        _checked_apps[app_module] = json.loads(result.stdout.strip().splitlines()[-1])
    return _checked_apps[app_module]


def check_celery(argv: list[str], where: str) -> None:
    from celery.bin.celery import celery as celery_cli

    app_module = option_value(argv, "-A", "--app")
    assert app_module, f"{where}: `celery` without -A/--app: {argv}"
    tasks = celery_app_tasks(app_module)
    for task in (REGISTER_TASK, WEBHOOK_TASK):
        assert task in tasks, f"{where}: app {app_module!r} has no task {task!r} (has {tasks})"
    global_options = {opt for param in celery_cli.params for opt in param.opts}
    rest = argv[1:]
    while rest and rest[0].startswith("-"):
        token = rest.pop(0)
        if token in global_options and "=" not in token and rest:
            rest.pop(0)
    assert rest, f"{where}: `celery` without a sub-command: {argv}"
    subcommand, sub_argv = rest[0], rest[1:]
    assert subcommand in celery_cli.commands, f"{where}: `celery {subcommand}` does not exist"
    if subcommand == "flower":
        from flower.options import options as flower_options

        for option in long_options(sub_argv):
            assert option[2:].replace("-", "_") in flower_options, f"{where}: Flower has no option {option}"
    else:
        command = celery_cli.commands[subcommand]
        known = {opt for param in command.params for opt in param.opts}
        for option in long_options(sub_argv):
            assert option in known, f"{where}: `celery {subcommand}` has no option {option}"


def check_python(argv: list[str], where: str) -> None:
    if argv[1] == "-c":
        compile(argv[2], f"<{where}>", "exec")
        return
    assert argv[1] == "-m", f"{where}: run Python code as `python -m module` or `python -c`, not {argv}"
    module = argv[2]
    path = ROOT.joinpath(*module.split("."))
    assert path.with_suffix(".py").is_file() or (path / "__main__.py").is_file(), (
        f"{where}: `python -m {module}`: no {path.relative_to(ROOT)}.py in the project"
    )
    result = run_python("", "-m", module, "--help", timeout_s=60)
    assert result.returncode == 0, f"{where}: `python -m {module} --help` failed:\n{result.stderr[-2000:]}"
    for option in long_options(argv[3:]):
        assert option in result.stdout, f"{where}: `python -m {module}` has no option {option}"


def check_mlflow(argv: list[str], where: str) -> None:
    from mlflow.cli import cli as mlflow_cli

    assert len(argv) > 1 and argv[1] in mlflow_cli.commands, f"{where}: `mlflow {argv[1:2]}` does not exist"
    command = mlflow_cli.commands[argv[1]]
    known = {opt for param in command.params for opt in param.opts}
    for option in long_options(argv[2:]):
        assert option in known, f"{where}: `mlflow {argv[1]}` has no option {option}"


def resolve_cli_command(words: list[str]) -> tuple[click.Command, list[str]]:
    """The ``hokusai-registry`` command that ``words`` name, and the words left over."""
    from hokusai_app.cli import main

    command: click.Command = main
    while words and isinstance(command, click.Group) and not words[0].startswith("-"):
        sub = command.commands.get(words[0])
        assert sub is not None, f"`hokusai-registry` has no command {words[0]!r} (has {sorted(command.commands)})"
        command, words = sub, words[1:]
    return command, words


def check_hokusai_cli(argv: list[str], where: str) -> None:
    command, rest = resolve_cli_command(argv[1:])
    known = {opt for param in command.params for opt in param.opts}
    for option in long_options(rest):
        assert option in known, f"{where}: `{' '.join(argv)}`: no option {option}"


def check_invocation(argv: list[str], service_name: str, service: dict[str, Any], what: str) -> None:
    where = f"service {service_name!r} {what}"
    assert argv, f"{where} is empty"
    executable = argv[0]
    if not is_project_image(service):
        binaries = IMAGE_BINARIES.get(image_repository(service["image"]), set())
        assert executable in binaries, f"{where}: {executable!r} is not known to ship in {service['image']}"
        return
    if executable == "sh":  # `sh -c 'NAME="$(cat /run/secrets/x)" exec COMMAND ...'`: COMMAND is checked
        assert argv[1] == "-c" and len(argv) == 3, f"{where}: run a shell as `sh -c SCRIPT`, not {argv}"
        words = shlex.split(argv[2])
        while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
            words.pop(0)
        assert words[:1] == ["exec"], f"{where}: the script must end by exec-ing the service: {argv[2]!r}"
        check_invocation(words[1:], service_name, service, what)
        return
    checks = {
        "celery": check_celery,
        "python": check_python,
        "mlflow": check_mlflow,
        "hokusai-registry": check_hokusai_cli,
    }
    assert executable in checks, f"{where}: unknown executable {executable!r}; teach test_compose.py to check it"
    checks[executable](argv, where)


# ---------------------------------------------------------------------------------- compose file
def test_compose_file_has_the_required_services() -> None:
    services = load_compose().get("services") or {}
    missing = REQUIRED_SERVICES - set(services)
    assert not missing, f"docker-compose.yml lacks services {sorted(missing)}"


def test_every_image_is_pinned() -> None:
    for name, service in load_compose()["services"].items():
        image = service.get("image")
        assert image, f"service {name!r} names no image (give built services a tagged image name too)"
        if "@sha256:" in image:
            continue
        repository_part = image.rsplit("/", 1)[-1]
        assert ":" in repository_part, f"service {name!r}: image {image!r} has no tag"
        tag = repository_part.split(":", 1)[1]
        assert tag and tag != "latest" and "$" not in tag, f"service {name!r}: image {image!r} is not pinned"


def test_built_image_is_tagged_with_the_project_version() -> None:
    for name, service in load_compose()["services"].items():
        if is_project_image(service):
            assert service["image"].endswith(f":{project_version()}"), (
                f"service {name!r}: image {service['image']!r} should carry pyproject's version {project_version()}"
            )


def test_every_long_running_service_has_a_healthcheck() -> None:
    for name, service in load_compose()["services"].items():
        if name in ONE_SHOT_SERVICES:
            continue
        check = service.get("healthcheck")
        assert check, f"service {name!r} has no healthcheck"
        assert not check.get("disable"), f"service {name!r} disables its healthcheck"
        assert check.get("test") and check["test"] != ["NONE"], f"service {name!r} has an empty healthcheck"


def test_every_command_and_healthcheck_exists_in_the_project() -> None:
    for name, service in interpolated_compose()["services"].items():
        for key in ("entrypoint", "command"):
            if service.get(key) is not None:
                check_invocation(argv_of(service[key]), name, service, key)
        if service.get("healthcheck"):
            check_invocation(healthcheck_argv(service["healthcheck"]), name, service, "healthcheck")
        if is_project_image(service) and service.get("command") is None and service.get("entrypoint") is None:
            pytest.fail(f"service {name!r} runs our image without a command: say what it runs")


def test_worker_is_scalable() -> None:
    worker = load_compose()["services"]["worker"]
    assert "container_name" not in worker, "worker has a container_name: `--scale worker=N` would clash"
    assert "hostname" not in worker, "worker has a fixed hostname: every replica would be the same Celery node"
    for port in worker.get("ports") or []:
        fixed = (isinstance(port, dict) and port.get("published")) or (isinstance(port, str) and ":" in port)
        assert not fixed, f"worker publishes a fixed host port {port!r}: `--scale worker=N` would clash"
    assert argv_of(worker["command"])[:4] == ["celery", "-A", "worker", "worker"], worker["command"]


#: The stop grace rule of deploy/kubernetes/worker-deployment.yaml: grace >= TASK_TIME_LIMIT_S + 60 s.
STOP_GRACE_MARGIN_S = 60
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)")
_DURATION_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}


def compose_duration_s(value: str | int) -> float:
    """A compose duration (``660s``, ``11m``, ``1m30s``; a bare number is seconds) in seconds."""
    text = str(value).strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    parts = _DURATION_PART_RE.findall(text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a compose duration: {value!r}"
    return sum(float(n) * _DURATION_UNIT_S[u] for n, u in parts)


def service_environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_compose_duration_parser() -> None:
    assert compose_duration_s("2m") == 120
    assert compose_duration_s("1m30s") == 90
    assert compose_duration_s("660s") == compose_duration_s(660) == 660


def test_worker_stop_grace_covers_the_task_time_limit() -> None:
    """SIGTERM starts the warm shutdown; compose SIGKILLs after stop_grace_period (default 10 s), so
    the grace must let a running job reach its hard limit plus the margin, as on Kubernetes."""
    worker = interpolated_compose()["services"]["worker"]
    grace = compose_duration_s(worker.get("stop_grace_period", "10s"))
    given = service_environment(worker).get("TASK_TIME_LIMIT_S") or example_env().get("TASK_TIME_LIMIT_S")
    limit = int(given) if given else Settings.model_fields["task_time_limit_s"].default
    assert grace >= limit + STOP_GRACE_MARGIN_S, (
        f"worker stop_grace_period {grace:g} s < TASK_TIME_LIMIT_S {limit} + {STOP_GRACE_MARGIN_S} s"
    )


def test_worker_waits_for_healthy_redis_postgres_and_mlflow() -> None:
    depends = load_compose()["services"]["worker"].get("depends_on") or {}
    for needed in ("redis", "postgres", "mlflow"):
        assert isinstance(depends, dict) and needed in depends, f"worker does not depend on {needed}"
        assert depends[needed].get("condition") == "service_healthy", f"worker does not wait for a healthy {needed}"


def test_flower_requires_basic_auth_from_a_secret_file() -> None:
    """Flower's login comes from the flower_basic_auth secret, for Flower's process only.

    Not from .env or the service's ``environment``: those end up in every container's settings
    (``docker inspect``), and .env reaches the worker and receiver containers too (env_file).
    """
    raw = load_compose()["services"]["flower"]
    flower = interpolated_compose()["services"]["flower"]
    argv = argv_of(flower["command"])
    assert argv[:2] == ["sh", "-c"], f"flower must read its login from the secret file in its command: {argv}"
    words = shlex.split(argv[2])
    assert "FLOWER_BASIC_AUTH=$(cat /run/secrets/flower_basic_auth)" in words, argv[2]
    served = words[words.index("exec") + 1 :]
    assert option_value(served, "--basic-auth") is None, "flower's password is on its command line"
    assert "FLOWER_BASIC_AUTH" not in (flower.get("environment") or {}), "the login would show in docker inspect"
    assert "FLOWER_BASIC_AUTH" not in example_env(), ".env.example sets the login: every service's env_file has it"
    assert "flower_basic_auth" in flower["secrets"] and "flower_basic_auth" in load_compose()["secrets"]
    assert option_value(served, "--port") == "5555", "flower must listen on 5555"
    assert any(str(port).split(":")[-1] == "5555" for port in raw.get("ports") or []), "flower's 5555 is not published"


def test_worker_serves_metrics_that_prometheus_scrapes() -> None:
    compose = interpolated_compose()
    environment = compose["services"]["worker"].get("environment") or {}
    port = environment.get("METRICS_PORT")
    assert port and environment.get("METRICS_HOST") == "0.0.0.0", "the worker's /metrics is unreachable in compose"
    assert environment.get("PROMETHEUS_MULTIPROC_DIR"), "the prefork pool needs a multiprocess folder"
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text(encoding="utf-8"))
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "hokusai-worker"]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and str(sd["port"]) == str(port)
    prometheus = compose["services"]["prometheus"]
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in prometheus["volumes"]}
    assert mounts.get("/etc/prometheus") == "./deploy/prometheus"
    for rule_file in config["rule_files"]:
        assert (ROOT / "deploy/prometheus" / Path(rule_file).name).is_file(), rule_file
    assert option_value(argv_of(prometheus["entrypoint"]), "--config.file") == "/etc/prometheus/prometheus.yml"


def test_secrets_reach_services_as_files_and_never_as_arguments() -> None:
    compose = interpolated_compose()
    declared = set(compose.get("secrets") or {})
    for name, service in compose["services"].items():
        for secret in service.get("secrets") or []:
            source = secret if isinstance(secret, str) else secret["source"]
            assert source in declared, f"service {name!r} uses undeclared secret {source!r}"
        for key, value in (service.get("environment") or {}).items():
            if key.endswith("__FILE") or key.endswith("_FILE"):
                assert str(value).startswith("/run/secrets/"), f"{name}: {key} should name a secret file"
    grafana = compose["services"]["grafana"]["environment"]
    assert "GF_SECURITY_ADMIN_PASSWORD" not in grafana and grafana["GF_SECURITY_ADMIN_PASSWORD__FILE"]
    for name, service in compose["services"].items():
        argv = argv_of(service.get("command")) + argv_of(service.get("entrypoint"))
        assert not any(re.search(r"(?i)(password|secret)[^/]*=", word) for word in argv), f"{name}: {argv}"
    for variable in (
        "WEBHOOK_SECRET",
        "POSTGRES_PASSWORD",
        "REDIS_PASSWORD",
        "GRAFANA_ADMIN_PASSWORD",
        "FLOWER_BASIC_AUTH",
    ):
        assert variable not in example_env(), f".env.example sets {variable}: it belongs in a secret file"


def test_mlflow_is_a_tracking_server_on_postgres_with_served_artifacts() -> None:
    from hokusai_app.tracking_server import backend_store_uri

    compose = interpolated_compose()
    mlflow = compose["services"]["mlflow"]
    argv = argv_of(mlflow["command"])
    assert argv[:3] == ["python", "-m", "hokusai_app.tracking_server"], argv
    assert option_value(argv, "--backend-store-uri") is None, "the database password would be on a command line"
    environment = mlflow["environment"]
    assert environment["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    assert "postgres_password" in mlflow["secrets"]
    backend = backend_store_uri({k: v for k, v in environment.items() if k != "POSTGRES_PASSWORD_FILE"})
    scheme, host = urlsplit(backend).scheme, urlsplit(backend).hostname
    assert scheme == "postgresql+psycopg2", f"backend store is {scheme!r}, not PostgreSQL"
    assert host in compose["services"], f"the backend store's host {host!r} is no compose service"
    postgres = compose["services"]["postgres"]["environment"]
    assert (
        postgres["POSTGRES_USER"] == environment["POSTGRES_USER"]
        and postgres["POSTGRES_DB"] == environment["POSTGRES_DB"]
    )
    assert postgres["POSTGRES_PASSWORD_FILE"] == environment["POSTGRES_PASSWORD_FILE"]
    destination = option_value(argv, "--artifacts-destination")
    assert destination, "mlflow has no --artifacts-destination"
    mounts = [str(volume).split(":")[1] for volume in mlflow.get("volumes") or []]
    assert destination in mounts, f"--artifacts-destination {destination} is not on a volume ({mounts})"
    assert "--no-serve-artifacts" not in argv


def test_workers_write_served_artifacts_into_the_servers_own_volume() -> None:
    services = interpolated_compose()["services"]
    destination = option_value(argv_of(services["mlflow"]["command"]), "--artifacts-destination")
    server_volume = {str(v).split(":")[1]: str(v).split(":")[0] for v in services["mlflow"]["volumes"]}[destination]
    worker = services["worker"]
    worker_destination = worker["environment"]["SERVED_ARTIFACTS_DESTINATION"]
    worker_volumes = {str(v).split(":")[1]: str(v).split(":")[0] for v in worker["volumes"]}
    assert worker_volumes.get(worker_destination) == server_volume, (
        f"the worker writes {worker_destination}, which is not the server's {server_volume} volume"
    )


def test_workers_write_the_servers_own_database_with_its_password_file() -> None:
    from hokusai_app.tracking_server import backend_store_uri

    services = interpolated_compose()["services"]
    server_env, worker = services["mlflow"]["environment"], services["worker"]
    server_db = urlsplit(backend_store_uri({k: v for k, v in server_env.items() if k != "POSTGRES_PASSWORD_FILE"}))
    worker_db = urlsplit(worker["environment"]["TRACKING_DATABASE_URI"])
    assert worker_db.password is None, "the database password belongs in the secret file, not the URI"
    assert worker_db.scheme.startswith("postgresql") and (worker_db.hostname, worker_db.port or 5432) == (
        server_db.hostname,
        server_db.port,
    )
    assert (worker_db.username, worker_db.path) == (server_db.username, server_db.path), (
        f"worker: {worker_db.username}@{worker_db.path}, server: {server_db.username}@{server_db.path}"
    )
    assert worker["environment"]["TRACKING_DATABASE_PASSWORD_FILE"] == server_env["POSTGRES_PASSWORD_FILE"]
    assert "postgres_password" in worker["secrets"]


def test_redis_wants_a_password_and_is_published_on_loopback() -> None:
    raw = load_compose()["services"]["redis"]
    redis_service = interpolated_compose()["services"]["redis"]
    script = " ".join(argv_of(redis_service["command"]))
    assert "requirepass" in script and "/run/secrets/redis_password" in script
    assert "redis_password" in redis_service["secrets"]
    (published,) = redis_service["ports"]
    address, _, container_port = str(published).rsplit(":", 2)
    assert address == "127.0.0.1" and container_port == "6379", "Redis must be published on loopback by default"
    assert "${REDIS_PUBLISH_ADDRESS:-127.0.0.1}" in str(raw["ports"][0])
    assert "REDISCLI_AUTH" in " ".join(healthcheck_argv(redis_service["healthcheck"])), "the healthcheck must log in"
    for name in ("worker", "flower"):
        service = interpolated_compose()["services"][name]
        assert service["environment"]["REDIS_PASSWORD_FILE"] == "/run/secrets/redis_password", name
        assert "redis_password" in service["secrets"], name


def test_secret_files_stay_out_of_git_and_the_image() -> None:
    sources = {spec["file"] for spec in (load_compose().get("secrets") or {}).values() if "file" in spec}
    assert sources, "no secret files"
    assert all(source.startswith("./secrets/") for source in sources), sources
    assert "secrets/" in (ROOT / ".gitignore").read_text(encoding="utf-8").split()
    assert "secrets" in DOCKERIGNORE.read_text(encoding="utf-8").split()
    script = (ROOT / "scripts/make-secrets.sh").read_text(encoding="utf-8")
    for source in sources:
        assert f"new {Path(source).name} " in script, f"scripts/make-secrets.sh does not make {source}"


def test_mlflow_accepts_the_host_names_clients_use() -> None:
    compose = interpolated_compose()
    mlflow = compose["services"]["mlflow"]
    argv = argv_of(mlflow["command"])
    environment = mlflow.get("environment") or {}
    allowed = option_value(argv, "--allowed-hosts") or environment.get("MLFLOW_SERVER_ALLOWED_HOSTS")
    assert allowed, "mlflow has no allowed-hosts setting: MLflow 3.5+ answers 403 to the workers"
    hosts = allowed.split(",")
    tracking = urlsplit(example_env()["MLFLOW_TRACKING_URI"])
    assert tracking.netloc in hosts, f"workers call {tracking.netloc}, which --allowed-hosts {allowed!r} refuses"
    assert "localhost:*" in hosts, "the published UI (localhost) would be refused"


def test_service_urls_point_at_listening_services() -> None:
    compose = interpolated_compose()
    env = example_env()
    for variable in ("REDIS_URL", "MLFLOW_TRACKING_URI", "WEBHOOK_URL"):
        url = urlsplit(env[variable])
        assert url.hostname in compose["services"], f"{variable}={env[variable]} names no compose service"
        service = compose["services"][url.hostname]
        listening = option_value(argv_of(service.get("command")), "--port")
        expected = int(listening) if listening else DEFAULT_PORTS[image_repository(service["image"])]
        port = url.port or {"redis": 6379, "http": 80, "https": 443}[url.scheme]
        assert port == expected, f"{variable} uses port {port}, but {url.hostname} listens on {expected}"


def test_named_volumes_are_declared() -> None:
    compose = load_compose()
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes") or []:
            source = str(volume).split(":", 1)[0]
            if not source.startswith((".", "/", "~")):
                assert source in declared, f"service {name!r} mounts undeclared volume {source!r}"


# ---------------------------------------------------------------------------------- .env.example
def test_every_settings_field_is_named_in_env_example() -> None:
    entries = env_example()
    missing = sorted(set(settings_env_names()) - set(entries))
    assert not missing, f".env.example does not name {missing}"
    for name in settings_env_names():
        assert entries[name].comment, f".env.example: {name} has no comment line above it"


def test_every_compose_variable_is_named_in_env_example() -> None:
    entries = env_example()
    for name, op in referenced_variables(load_compose()).items():
        assert name in entries, f"docker-compose.yml uses ${{{name}}}, which .env.example does not name"
        if op not in (":-", "-"):
            assert entries[name].active, f"docker-compose.yml needs {name}; .env.example only shows it commented out"


def secret_variables() -> set[str]:
    """Variables compose hands to services as secret files (``secrets: {name: {environment: VAR}}``)."""
    return {spec["environment"] for spec in (load_compose().get("secrets") or {}).values() if "environment" in spec}


def test_every_secret_variable_is_set_in_env_example() -> None:
    entries = env_example()
    for name in secret_variables():
        assert name in entries and entries[name].active, f"compose reads secret {name}; .env.example must set it"


def test_env_example_names_nothing_unknown() -> None:
    known = set(settings_env_names()) | set(referenced_variables(load_compose())) | secret_variables()
    unknown = sorted(set(env_example()) - known)
    assert not unknown, f".env.example names {unknown}: neither a Settings field nor used by docker-compose.yml"


def test_env_example_shows_secrets_only_as_placeholders() -> None:
    for name, entry in env_example().items():
        if SECRET_NAME_RE.search(name) and entry.value and entry.value not in {"true", "false"}:  # not flags
            shown = entry.value
            if shown.startswith("whsec_"):  # the Standard Webhooks form: the placeholder is the decoded key
                shown = base64.b64decode(shown.removeprefix("whsec_")).decode("utf-8", errors="replace")
            assert PLACEHOLDER in shown, f".env.example: {name} must be a {PLACEHOLDER!r} placeholder"


def test_commented_values_are_the_built_in_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    names = settings_env_names()
    for name, entry in env_example().items():
        if entry.active or name not in names:
            continue
        field = names[name]
        default = Settings.model_fields[field].get_default(call_default_factory=True)
        if default in (None, [], ""):
            continue  # no default to show: the line gives an example value
        monkeypatch.setenv(name, entry.value)
        assert getattr(Settings(), field) == default, f".env.example: `# {name}={entry.value}` is not the default"
        monkeypatch.delenv(name)


def test_env_example_values_make_a_working_worker_configuration(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from worker.webhooks.delivery import check_webhook_config

    names = settings_env_names()
    for name, value in example_env().items():
        if name in names:
            monkeypatch.setenv(name, value)
    worker = interpolated_compose()["services"]["worker"]
    for name, path in worker["environment"].items():  # the secret files, as make-secrets.sh writes them
        if name in names:
            monkeypatch.setenv(name, str(path))  # the worker service's own settings
        elif name.endswith("_FILE"):
            assert name.removesuffix("_FILE") in names, f"worker: {name} names no setting"
            secret = tmp_path / Path(path).name
            secret.write_text("whsec_" + "QUJD" * 8 + "\n", encoding="utf-8")
            monkeypatch.setenv(name, str(secret))
    settings = Settings()
    assert urlsplit(settings.redis_url).hostname == urlsplit(example_env()["REDIS_URL"]).hostname
    assert urlsplit(settings.redis_url).password, "the password file reached REDIS_URL"
    assert urlsplit(settings.tracking_database_url or "").password, "the password file reached the database URI"
    check_webhook_config(settings)  # the worker would refuse to start otherwise


# ---------------------------------------------------------------------------------- Dockerfile
def dockerfile_instructions() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_dockerfile_builds_a_non_root_image_without_secrets() -> None:
    instructions = dockerfile_instructions()
    args = dict(
        line.split(None, 1)[1].split("=", 1) for line in instructions if line.upper().startswith("ARG ") and "=" in line
    )
    base = [line.split()[1] for line in instructions if line.upper().startswith("FROM ")]
    base = [re.sub(r"\$\{(\w+)\}", lambda m: args.get(m[1], m[0]), image) for image in base]  # ARG defaults
    assert base and all(re.match(r"^python:3\.11[.\w-]*-slim[\w-]*$", image) for image in base), base
    users = [line.split()[1] for line in instructions if line.upper().startswith("USER ")]
    assert users and users[-1] not in {"root", "0", "0:0"}, "the image must run as a non-root user"
    assert any(re.search(r"pip install .*\.\[server\]", line) for line in instructions), "pip install .[server]"
    for line in instructions:
        if line.upper().startswith(("ENV ", "ARG ")):
            assert not SECRET_NAME_RE.search(line.upper()), f"Dockerfile bakes in a secret: {line}"
    ignored = DOCKERIGNORE.read_text(encoding="utf-8").split()
    assert ".env" in ignored, ".dockerignore must keep .env (secrets) out of the build context"


def test_dockerfile_takes_its_base_as_a_build_argument_that_compose_passes() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0].startswith("ARG BASE_IMAGE="), "the first instruction must be ARG BASE_IMAGE=<default>"
    default = instructions[0].split("=", 1)[1]
    assert instructions[1] == "FROM ${BASE_IMAGE}", instructions[1]
    for name, service in load_compose()["services"].items():
        if is_project_image(service):
            build = service["build"]
            assert isinstance(build, dict) and build["context"] == ".", f"{name}: build {build!r}"
            assert build["args"]["BASE_IMAGE"] == f"${{BASE_IMAGE:-{default}}}", f"{name}: {build['args']}"


# ---------------------------------------------------------------------------------- the image's lock and layers
def test_image_lock_pins_what_the_suite_runs_on() -> None:
    """image-requirements.lock is what scripts/image_lock.py makes from this (the test) environment."""
    result = run_python("", str(ROOT / "scripts/image_lock.py"), "--check", timeout_s=60)
    assert result.returncode == 0, result.stderr


def test_dependencies_install_from_the_lock_before_the_code_is_copied() -> None:
    """A code change rebuilds only the last layers: MLflow and the rest come from the lock, first."""
    instructions = dockerfile_instructions()
    lock_install = [i for i, line in enumerate(instructions) if re.match(r"RUN pip install -r \S+\.lock$", line)]
    assert len(lock_install) == 1, "the dependencies must be installed from the lock in one RUN"
    code_copies = [
        i
        for i, line in enumerate(instructions)
        if line.startswith("COPY ") and any(part in line for part in ("pyproject.toml", "worker", "hokusai_registry"))
    ]
    assert code_copies and lock_install[0] < min(code_copies), "the code is copied before the dependencies install"
    copied_before = [line for line in instructions[: lock_install[0]] if line.startswith("COPY ")]
    assert all(".lock" in line for line in copied_before), f"only the lock may be copied first: {copied_before}"
    project = [line for line in instructions if re.search(r"pip install .*\.\[server\]", line)]
    assert project and "--no-deps" in project[0] and "pip check" in project[0], (
        f"the project itself must install on the locked dependencies only (--no-deps, then pip check): {project}"
    )


# ---------------------------------------------------------------------------------- stand-ins, secrets, ports
def test_stand_ins_replace_only_the_images_of_third_party_services() -> None:
    services = load_compose()["services"]
    override = yaml.safe_load(STAND_INS_FILE.read_text(encoding="utf-8"))["services"]
    third_party = {name for name, service in services.items() if not is_project_image(service)}
    assert set(override) == third_party, f"stand-ins for {sorted(override)}, third-party images: {sorted(third_party)}"
    for name, service in override.items():
        if name == "grafana":  # no Debian package: left out of `up` (docs/stack.md says so)
            assert service == {"profiles": ["grafana"]}, service
            continue
        assert set(service) == {"image", "build"}, f"{name}: a stand-in changes only the image, not {sorted(service)}"
        assert image_repository(service["image"]) == image_repository(services[name]["image"]), service["image"]
        dockerfile = (ROOT / service["build"]["context"] / "Dockerfile").read_text(encoding="utf-8")
        assert "ARG BASE_IMAGE" in dockerfile and "FROM ${BASE_IMAGE}" in dockerfile, f"{name}: not on the local base"
        assert service["build"]["args"]["BASE_IMAGE"].startswith("${BASE_IMAGE"), service["build"]


def dockerfile_uid() -> int:
    (useradd,) = [line for line in dockerfile_instructions() if "useradd" in line]
    return int(option_value(shlex.split(useradd), "--uid") or "-1")


def test_make_secrets_writes_files_only_their_readers_can_read(tmp_path: Path) -> None:
    """Compose bind-mounts file secrets as they are: each is 0400, owned by the uid of its reader."""
    assert os.geteuid() == 0, "scripts/make-secrets.sh runs as root (it hands each file to its reader's uid)"
    (tmp_path / "scripts").mkdir()
    script = tmp_path / "scripts/make-secrets.sh"
    script.write_text(MAKE_SECRETS.read_text(encoding="utf-8"), encoding="utf-8")
    result = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    compose = load_compose()
    folder = tmp_path / "secrets"
    assert folder.stat().st_mode & 0o777 == 0o700
    uids = dict(re.findall(r"^(\w+_UID)=(\d+)", MAKE_SECRETS.read_text(encoding="utf-8"), re.M))
    assert int(uids["HOKUSAI_UID"]) == dockerfile_uid(), "make-secrets.sh and the Dockerfile disagree on the uid"
    grafana_uid = int(uids["GRAFANA_UID"])
    for secret, spec in compose["secrets"].items():
        path = folder / Path(spec["file"]).name
        readers = {
            name
            for name, service in compose["services"].items()
            if secret in [s if isinstance(s, str) else s["source"] for s in service.get("secrets") or []]
        }
        ours = {name for name in readers if is_project_image(compose["services"][name])}
        expected_uid = dockerfile_uid() if ours else grafana_uid  # Redis and PostgreSQL read theirs as root
        info = path.stat()
        assert info.st_mode & 0o777 == 0o400, f"{path.name} is {info.st_mode & 0o777:o}, not 0400"
        assert info.st_uid == expected_uid, f"{path.name} belongs to uid {info.st_uid}; {sorted(readers)} read it"
        assert path.read_text(encoding="utf-8").strip(), path.name
    first = {path.name: path.read_text(encoding="utf-8") for path in folder.iterdir()}
    subprocess.run(["sh", str(script)], check=True, capture_output=True, timeout=60)
    assert first == {path.name: path.read_text(encoding="utf-8") for path in folder.iterdir()}, "a re-run changed one"


def test_published_ports_are_configurable_and_default_to_the_service_port() -> None:
    """Every published port can move (``*_PUBLISH_PORT``), e.g. beside the host's own Redis on 6379."""
    for name, service in load_compose()["services"].items():
        for port in service.get("ports") or []:
            match = re.fullmatch(
                r"(?:\$\{\w+_PUBLISH_ADDRESS:-[\d.]+\}|127\.0\.0\.1):\$\{(\w+)_PUBLISH_PORT:-(\d+)\}:(\d+)", port
            )
            assert match, f"{name}: {port!r} is not ADDRESS:${{{name.upper()}_PUBLISH_PORT:-N}}:N"
            assert match[1] == name.upper() and match[2] == match[3], f"{name}: {port!r}"


def test_stack_scripts_parse() -> None:
    for script in ("scripts/stack.sh", "scripts/stack-test.sh"):
        result = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"{script}: {result.stderr}"
    result = subprocess.run(["sh", "-n", str(MAKE_SECRETS)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_every_published_port_is_on_loopback_by_default() -> None:
    """After ``cp .env.example .env`` nothing listens beyond the host: widening is a documented choice."""
    published = {
        name: [str(port) for port in service.get("ports", [])]
        for name, service in interpolated_compose()["services"].items()
    }
    assert published["flower"], "Flower must be published (operators open it)"
    wide = {name: ports for name, ports in published.items() for port in ports if not port.startswith("127.0.0.1:")}
    assert wide == {}, f"published beyond loopback by default: {wide}"
