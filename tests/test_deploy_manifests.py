"""deploy/kubernetes and deploy/ecs, validated offline, and held to docker-compose.yml.

- **Kubernetes.** The kustomize base is rendered here: its ``resources``, loaded in order. The
  kustomization may use no other field, since this renderer implements no transformer (the test fails
  if one is added); where ``kubectl`` is on PATH, ``kubectl kustomize`` must render the same objects.
  Every object is validated against the Kubernetes OpenAPI schemas that ``kubernetes-validate`` ships,
  strict (an unknown field fails), for :data:`KUBERNETES_VERSION`. The KEDA ScaledObject has no schema
  there; it is validated against ``tests/data/keda-scaledobject.schema.json``, written from KEDA's
  documented fields.
- **ECS.** The task definitions are ``RegisterTaskDefinition`` requests and the autoscaling files
  ``RegisterScalableTarget`` / ``PutScalingPolicy`` requests, validated by botocore's own
  ``ParamValidator`` against the service models botocore ships.
- **Consistency.** The same command, variables, secret files, health check, metrics port and image as
  the compose services; a stop grace of at least the task time limit plus a margin; the same scaling
  bounds and target on both engines. Negative cases prove each validator rejects a broken object.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import botocore.session
import jsonschema
import kubernetes_validate
import pytest
import yaml
from botocore.exceptions import ParamValidationError
from botocore.validate import ParamValidator
from pydantic import ValidationError

from hokusai_registry.settings import Settings, describe_invalid
from tests.test_compose import interpolated_compose, project_version
from tests.test_monitoring import exported, metric_names
from worker.backlog import STATES

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES_DIR = ROOT / "deploy/kubernetes"
ECS_DIR = ROOT / "deploy/ecs"
KEDA_SCHEMA = ROOT / "tests/data/keda-scaledobject.schema.json"

#: The Kubernetes version whose schemas the objects must satisfy (kubernetes-validate ships 1.25 and up).
KUBERNETES_VERSION = "1.32"
#: kustomization.yaml fields this test's renderer implements.
KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources"}
#: Least time between a running task's hard limit and the kill: acknowledging, the pool's exit.
SHUTDOWN_MARGIN_S = 20
#: ECS caps a container's stopTimeout at 120 s (Fargate and EC2 alike).
ECS_MAX_STOP_TIMEOUT_S = 120
#: Where the compose file and the manifests mount secret files.
SECRETS_DIR = "/run/secrets"
#: Variables the manifests may set that the product does not read (compose's own: the worker command's).
NON_PRODUCT_VARIABLES = {"WORKER_CONCURRENCY"}
SECRET_NAME_RE = re.compile(r"SECRET|PASSWORD|BASIC_AUTH|TOKEN")

ECS_TASK_DEFINITIONS = {"worker": "worker-task-definition.json", "flower": "flower-task-definition.json"}
ECS_REQUESTS = {
    ("ecs", "RegisterTaskDefinition"): list(ECS_TASK_DEFINITIONS.values()),
    ("application-autoscaling", "RegisterScalableTarget"): ["worker-scalable-target.json"],
    ("application-autoscaling", "PutScalingPolicy"): ["worker-scaling-policy.json"],
}


# ---------------------------------------------------------------------------------- rendering
def kustomization() -> dict[str, Any]:
    return yaml.safe_load((KUBERNETES_DIR / "kustomization.yaml").read_text(encoding="utf-8"))


def render_base() -> list[dict[str, Any]]:
    """The base as ``kustomize build`` renders it: every object of every listed resource, in order."""
    objects: list[dict[str, Any]] = []
    for resource in kustomization()["resources"]:
        path = KUBERNETES_DIR / resource
        objects.extend(doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc)
    return objects


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [obj for obj in objects if obj["kind"] == kind and obj["metadata"]["name"] == name]
    assert len(matches) == 1, f"the base must hold one {kind} {name}, it holds {len(matches)}"
    return matches[0]


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def ecs_request(name: str) -> dict[str, Any]:
    return json.loads((ECS_DIR / name).read_text(encoding="utf-8"))


def ecs_container(task_definition: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in task_definition["containerDefinitions"] if c["name"] == name)


def compose_service(name: str) -> dict[str, Any]:
    return interpolated_compose()["services"][name]


def kubernetes_expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' expansion of a container command: ``$(VAR)`` from env, ``$$`` to ``$``, the rest kept."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
        lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]),
        value,
    )


def kubernetes_env(deployment: dict[str, Any], container_name: str, objects: list[dict[str, Any]]) -> dict[str, str]:
    """A container's environment: its ConfigMaps (envFrom), then its own env entries."""
    spec = container(deployment, container_name)
    env: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        env.update(find(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    env.update({item["name"]: item["value"] for item in spec.get("env", [])})
    return env


def ecs_env(task_definition: dict[str, Any], container_name: str) -> dict[str, str]:
    return {item["name"]: item["value"] for item in ecs_container(task_definition, container_name)["environment"]}


def compose_command(service: str) -> list[str]:
    command = compose_service(service)["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def compose_healthcheck_shell(service: str) -> str:
    kind, *rest = compose_service(service)["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    return " ".join(rest)


def time_limit(env: dict[str, str]) -> int:
    """The TASK_TIME_LIMIT_S a process with ``env`` runs with (its value, else the Settings default)."""
    default = Settings.model_fields["task_time_limit_s"].default
    return int(env.get("TASK_TIME_LIMIT_S", default))


# ---------------------------------------------------------------------------------- checks (negative cases reuse them)
def validate_kubernetes(obj: dict[str, Any]) -> None:
    """Strict validation against the pinned version's OpenAPI schemas; raises kubernetes_validate's errors."""
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def validate_scaled_object(obj: dict[str, Any]) -> None:
    schema = json.loads(KEDA_SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(schema).validate(obj)


def validate_aws(service: str, operation: str, params: dict[str, Any]) -> None:
    """botocore's own validation of a request against the shipped service model; raises ParamValidationError."""
    model = botocore.session.get_session().get_service_model(service).operation_model(operation)
    report = ParamValidator().validate(params, model.input_shape)
    if report.has_errors():
        raise ParamValidationError(report=report.generate_report())


def kubernetes_grace_problems(deployment: dict[str, Any], objects: list[dict[str, Any]]) -> list[str]:
    grace = deployment["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
    limit = time_limit(kubernetes_env(deployment, "worker", objects))
    default = time_limit({})
    problems = []
    if grace < limit + SHUTDOWN_MARGIN_S:
        problems.append(f"terminationGracePeriodSeconds {grace} < TASK_TIME_LIMIT_S {limit} + {SHUTDOWN_MARGIN_S}")
    if grace < default:
        problems.append(f"terminationGracePeriodSeconds {grace} < the TASK_TIME_LIMIT_S default {default}")
    return problems


def ecs_stop_problems(task_definition: dict[str, Any]) -> list[str]:
    worker = ecs_container(task_definition, "worker")
    stop = worker.get("stopTimeout", 30)
    limit = time_limit(ecs_env(task_definition, "worker"))
    problems = []
    if stop > ECS_MAX_STOP_TIMEOUT_S:
        problems.append(f"stopTimeout {stop} > ECS's maximum {ECS_MAX_STOP_TIMEOUT_S}")
    if stop < limit + SHUTDOWN_MARGIN_S:
        problems.append(f"stopTimeout {stop} < TASK_TIME_LIMIT_S {limit} + {SHUTDOWN_MARGIN_S}")
    return problems


def kubernetes_secret_files(deployment: dict[str, Any], container_name: str) -> set[str]:
    """The secret files a container sees under /run/secrets (Secret volume items)."""
    pod = deployment["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    files: set[str] = set()
    for mount in container(deployment, container_name).get("volumeMounts", []):
        secret = volumes[mount["name"]].get("secret")
        if secret is None:
            continue
        assert mount["mountPath"] == SECRETS_DIR and mount.get("readOnly"), mount
        assert "items" in secret, "list the Secret's keys a pod gets (only its compose service's secrets)"
        files.update(item["path"] for item in secret["items"])
    return files


def ecs_secret_files(task_definition: dict[str, Any]) -> set[str]:
    """The files the task's init container writes from Secrets Manager (it writes each secret it gets)."""
    init = ecs_container(task_definition, "secrets")
    names = {secret["name"] for secret in init["secrets"]}
    script = init["command"][-1]
    written = set(re.search(r"for name in ([^;]+);", script)[1].split())  # type: ignore[index]
    assert names == written, f"the init container gets {names} but writes {written}"
    return names


def file_variable_problems(env: dict[str, str], files: set[str]) -> list[str]:
    """Each *_FILE names one of the mounted secret files; no secret is a plain value."""
    problems = []
    for name, value in env.items():
        if name.endswith("_FILE"):
            if Path(value).parent.as_posix() != SECRETS_DIR or Path(value).name not in files:
                problems.append(f"{name}={value} is not a mounted secret file")
        elif SECRET_NAME_RE.search(name):
            problems.append(f"{name} is set as a value; secrets come from files (*_FILE)")
    return problems


# ---------------------------------------------------------------------------------- Kubernetes: rendering and schemas
def test_the_base_lists_every_manifest_and_uses_no_field_this_renderer_lacks() -> None:
    config = kustomization()
    assert set(config) <= KUSTOMIZATION_FIELDS, (
        f"kustomization.yaml uses {sorted(set(config) - KUSTOMIZATION_FIELDS)}: implement them in render_base"
    )
    listed = set(config["resources"])
    on_disk = {path.name for path in KUBERNETES_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk, f"not listed: {sorted(on_disk - listed)}; missing: {sorted(listed - on_disk)}"


def test_the_base_holds_the_workers_flower_and_their_scaling_and_no_secret_value() -> None:
    objects = render_base()
    kinds = sorted(f"{obj['kind']}/{obj['metadata']['name']}" for obj in objects)
    assert kinds == [
        "ConfigMap/hokusai-config",
        "Deployment/hokusai-flower",
        "Deployment/hokusai-worker",
        "PodDisruptionBudget/hokusai-worker",
        "ScaledObject/hokusai-worker",
        "Service/hokusai-flower",
        "ServiceAccount/hokusai-worker",
    ]
    for name, value in find(objects, "ConfigMap", "hokusai-config")["data"].items():
        assert not SECRET_NAME_RE.search(name), f"the ConfigMap holds {name}: secrets go in the Secret"
        assert urlsplit(value).password is None, f"{name} carries a password in its URL"


def test_kubectl_kustomize_renders_what_this_renderer_renders() -> None:
    if shutil.which("kubectl") is None:  # on these machines (google-cloud-sdk's); CI never skips it
        if os.environ.get("CI") == "true":
            pytest.fail("kubectl is not on PATH: this machine's kind has it (google-cloud-sdk)")
        pytest.skip("kubectl is not on PATH: render_base alone renders")
    result = subprocess.run(
        ["kubectl", "kustomize", str(KUBERNETES_DIR)], capture_output=True, text=True, timeout=60, check=True
    )
    theirs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    def key(obj: dict[str, Any]) -> tuple[str, str]:
        return obj["kind"], obj["metadata"]["name"]

    assert sorted(theirs, key=key) == sorted(render_base(), key=key)


@pytest.mark.parametrize(
    "obj",
    [obj for obj in render_base() if obj["kind"] != "ScaledObject"],
    ids=lambda obj: f"{obj['kind']}/{obj['metadata']['name']}",
)
def test_every_kubernetes_object_validates_against_the_openapi_schemas(obj: dict[str, Any]) -> None:
    validate_kubernetes(obj)


def test_the_scaled_object_validates_against_kedas_documented_fields() -> None:
    validate_scaled_object(find(render_base(), "ScaledObject", "hokusai-worker"))


def test_the_validators_reject_broken_kubernetes_objects() -> None:
    objects = render_base()
    worker = find(objects, "Deployment", "hokusai-worker")

    misspelt = copy.deepcopy(worker)
    pod = misspelt["spec"]["template"]["spec"]
    pod["terminationGracePeriod"] = pod.pop("terminationGracePeriodSeconds")
    with pytest.raises(kubernetes_validate.ValidationError, match="terminationGracePeriod"):
        validate_kubernetes(misspelt)

    wrong_type = copy.deepcopy(worker)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "metrics"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_kubernetes(wrong_type)

    pdb = copy.deepcopy(find(objects, "PodDisruptionBudget", "hokusai-worker"))
    del pdb["spec"]["selector"]["matchLabels"]
    pdb["spec"]["selector"]["matchLabel"] = {"app.kubernetes.io/name": "hokusai-worker"}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_kubernetes(pdb)

    scaled = find(objects, "ScaledObject", "hokusai-worker")
    for breakage in (
        lambda spec: spec.update(minReplicas=spec.pop("minReplicaCount")),
        lambda spec: spec["triggers"][0]["metadata"].update(threshold=800),
        lambda spec: spec["triggers"][0]["metadata"].pop("query"),
        lambda spec: spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"].update(window=1),
    ):
        broken = copy.deepcopy(scaled)
        breakage(broken["spec"])
        with pytest.raises(jsonschema.ValidationError):
            validate_scaled_object(broken)


# ---------------------------------------------------------------------------------- ECS: botocore's models
@pytest.mark.parametrize(
    ("service", "operation", "name"),
    [(service, operation, name) for (service, operation), names in ECS_REQUESTS.items() for name in names],
)
def test_every_ecs_file_is_a_valid_aws_request(service: str, operation: str, name: str) -> None:
    validate_aws(service, operation, ecs_request(name))


def test_every_ecs_file_is_validated() -> None:
    validated = {name for names in ECS_REQUESTS.values() for name in names}
    assert {path.name for path in ECS_DIR.glob("*.json")} == validated


def test_the_validator_rejects_broken_ecs_requests() -> None:
    worker = ecs_request(ECS_TASK_DEFINITIONS["worker"])
    for breakage in (
        lambda task: ecs_container(task, "worker").update(stopTimeOut=ecs_container(task, "worker").pop("stopTimeout")),
        lambda task: ecs_container(task, "worker").update(stopTimeout="120"),
        lambda task: ecs_container(task, "secrets")["secrets"][0].pop("valueFrom"),
    ):
        broken = copy.deepcopy(worker)
        breakage(broken)
        with pytest.raises(ParamValidationError):
            validate_aws("ecs", "RegisterTaskDefinition", broken)
    policy = ecs_request("worker-scaling-policy.json")
    policy["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] = "800"
    with pytest.raises(ParamValidationError):
        validate_aws("application-autoscaling", "PutScalingPolicy", policy)


# ---------------------------------------------------------------------------------- held to docker-compose.yml
def test_the_worker_runs_the_compose_command_image_and_health_check() -> None:
    objects = render_base()
    deployment = find(objects, "Deployment", "hokusai-worker")
    spec = container(deployment, "worker")
    env = kubernetes_env(deployment, "worker", objects)
    assert [kubernetes_expand(part, env) for part in spec["command"]] == compose_command("worker")
    assert spec["image"] == compose_service("worker")["image"] == f"hokusai-registry:{project_version()}"
    for probe in ("livenessProbe", "readinessProbe"):
        assert spec[probe]["exec"]["command"] == ["sh", "-c", compose_healthcheck_shell("worker")], probe

    task = ecs_request(ECS_TASK_DEFINITIONS["worker"])
    worker = ecs_container(task, "worker")
    assert worker["command"] == compose_command("worker")
    assert worker["healthCheck"]["command"] == ["CMD-SHELL", compose_healthcheck_shell("worker")]
    for definition in task["containerDefinitions"]:
        assert definition["image"].endswith(f"/hokusai-registry:{project_version()}"), definition["name"]


def test_flower_runs_the_compose_command_with_its_login_from_a_file() -> None:
    objects = render_base()
    deployment = find(objects, "Deployment", "hokusai-flower")
    env = kubernetes_env(deployment, "flower", objects)
    command = [kubernetes_expand(part, env) for part in container(deployment, "flower")["command"]]
    assert command == compose_command("flower")
    assert ecs_container(ecs_request(ECS_TASK_DEFINITIONS["flower"]), "flower")["command"] == compose_command("flower")
    assert 'FLOWER_BASIC_AUTH="$(cat /run/secrets/flower_basic_auth)"' in command[-1]
    assert "FLOWER_BASIC_AUTH" not in env
    assert "FLOWER_BASIC_AUTH" not in ecs_env(ecs_request(ECS_TASK_DEFINITIONS["flower"]), "flower")


@pytest.mark.parametrize("service", ["worker", "flower"])
def test_the_same_variables_and_secret_files_as_compose(service: str) -> None:
    compose = compose_service(service)
    compose_env = set(compose.get("environment", {}))
    compose_secrets = set(compose["secrets"])
    product_names = set(Settings.env_var_names())
    allowed = product_names | {f"{name}_FILE" for name in product_names} | NON_PRODUCT_VARIABLES

    objects = render_base()
    deployment = find(objects, "Deployment", f"hokusai-{service}")
    k8s_env = kubernetes_env(deployment, service, objects)
    k8s_files = kubernetes_secret_files(deployment, service)
    task = ecs_request(ECS_TASK_DEFINITIONS[service])
    aws_env = ecs_env(task, service)
    aws_files = ecs_secret_files(task)

    for engine, env, files in (("kubernetes", k8s_env, k8s_files), ("ecs", aws_env, aws_files)):
        assert compose_env <= set(env), f"{engine} {service} lacks {sorted(compose_env - set(env))}"
        assert set(env) <= allowed, f"{engine} {service} sets variables nothing reads: {sorted(set(env) - allowed)}"
        assert files == compose_secrets, (
            f"{engine} {service}: secret files {sorted(files)}, compose {sorted(compose_secrets)}"
        )
        assert file_variable_problems(env, files) == [], engine
        for name in compose_env:
            if name.endswith("_FILE"):
                assert env[name] == compose["environment"][name], f"{engine} {service}: {name}"
    # No secret in an ECS container's configuration except the init container's Secrets Manager references.
    assert "secrets" not in ecs_container(task, service)


def test_a_missing_secret_file_or_a_secret_value_is_caught() -> None:
    assert file_variable_problems({"WEBHOOK_SECRET_FILE": "/run/secrets/webhook_secret"}, {"redis_password"})
    assert file_variable_problems({"WEBHOOK_SECRET": "whsec_x"}, {"webhook_secret"})


def test_every_manifests_settings_are_valid_settings() -> None:
    objects = render_base()
    environments = {
        f"kubernetes {name}": kubernetes_env(find(objects, "Deployment", f"hokusai-{name}"), name, objects)
        for name in ECS_TASK_DEFINITIONS
    } | {f"ecs {name}": ecs_env(ecs_request(file), name) for name, file in ECS_TASK_DEFINITIONS.items()}
    names = Settings.env_var_names()
    for where, env in environments.items():
        values = {names[key]: value for key, value in env.items() if key in names}
        try:
            Settings(**values)
        except ValidationError as exc:
            pytest.fail(f"{where}: {describe_invalid(exc)}")
    # Workers and Flower share the broker's visibility timeout (docs/scaling.md).
    for engine in ("kubernetes", "ecs"):
        timeouts = {environments[f"{engine} {name}"].get("VISIBILITY_TIMEOUT_S") for name in ECS_TASK_DEFINITIONS}
        assert len(timeouts) == 1, f"{engine}: workers and Flower use different VISIBILITY_TIMEOUT_S {timeouts}"


def test_the_metrics_port_is_the_compose_one_and_named_for_scraping() -> None:
    port = int(compose_service("worker")["environment"]["METRICS_PORT"])
    objects = render_base()
    deployment = find(objects, "Deployment", "hokusai-worker")
    ports = {p["name"]: p["containerPort"] for p in container(deployment, "worker")["ports"]}
    assert ports == {"metrics": port}
    assert int(kubernetes_env(deployment, "worker", objects)["METRICS_PORT"]) == port
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    worker = ecs_container(ecs_request(ECS_TASK_DEFINITIONS["worker"]), "worker")
    assert worker["portMappings"] == [{"name": "metrics", "containerPort": port, "protocol": "tcp"}]
    assert worker["dockerLabels"]["PROMETHEUS_EXPORTER_PORT"] == str(port)


# ---------------------------------------------------------------------------------- shutdown and scaling
def test_the_grace_period_covers_a_running_job() -> None:
    objects = render_base()
    assert kubernetes_grace_problems(find(objects, "Deployment", "hokusai-worker"), objects) == []
    assert ecs_stop_problems(ecs_request(ECS_TASK_DEFINITIONS["worker"])) == []


def test_a_grace_period_below_the_time_limit_is_caught() -> None:
    objects = render_base()
    short = copy.deepcopy(find(objects, "Deployment", "hokusai-worker"))
    short["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 120  # compose's stop_grace_period
    assert kubernetes_grace_problems(short, objects)
    task = ecs_request(ECS_TASK_DEFINITIONS["worker"])
    for env in ecs_container(task, "worker")["environment"]:
        if env["name"] == "TASK_TIME_LIMIT_S":
            env["value"] = "600"  # the default: more than ECS can wait
    assert ecs_stop_problems(task)


def test_scaling_keeps_a_worker_through_a_drain_and_is_the_same_on_both_engines() -> None:
    objects = render_base()
    worker = find(objects, "Deployment", "hokusai-worker")
    scaled = find(objects, "ScaledObject", "hokusai-worker")["spec"]
    pdb = find(objects, "PodDisruptionBudget", "hokusai-worker")["spec"]
    labels = worker["spec"]["template"]["metadata"]["labels"]

    assert scaled["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "hokusai-worker"}
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["maxUnavailable"] < scaled["minReplicaCount"] <= scaled["maxReplicaCount"]
    assert worker["spec"]["replicas"] == scaled["minReplicaCount"]
    trigger = scaled["triggers"][0]
    assert trigger["type"] == "prometheus" and "hokusai_backlog_jobs" in trigger["metadata"]["query"]

    target = ecs_request("worker-scalable-target.json")
    policy = ecs_request("worker-scaling-policy.json")
    assert (target["MinCapacity"], target["MaxCapacity"]) == (scaled["minReplicaCount"], scaled["maxReplicaCount"])
    assert policy["ResourceId"] == target["ResourceId"]
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["TargetValue"] == float(trigger["metadata"]["threshold"])
    metrics = tracking["CustomizedMetricSpecification"]["Metrics"]
    states = {
        dim["Value"]
        for metric in metrics
        if "MetricStat" in metric and metric["MetricStat"]["Metric"]["MetricName"] == "hokusai_backlog_jobs"
        for dim in metric["MetricStat"]["Metric"]["Dimensions"]
        if dim["Name"] == "state"
    }
    assert states == {"waiting", "held", "scheduled"}
    assert [metric["Id"] for metric in metrics if metric["ReturnData"]] == ["backlog_per_task"]


def test_flowers_service_reaches_its_pods() -> None:
    objects = render_base()
    flower = find(objects, "Deployment", "hokusai-flower")
    service = find(objects, "Service", "hokusai-flower")["spec"]
    assert service["selector"].items() <= flower["spec"]["template"]["metadata"]["labels"].items()
    port_names = {p["name"] for p in container(flower, "flower")["ports"]}
    assert {p["targetPort"] for p in service["ports"]} <= port_names


def test_the_autoscalers_read_only_metrics_and_states_the_workers_export() -> None:
    scaled = find(render_base(), "ScaledObject", "hokusai-worker")["spec"]
    queries = [trigger["metadata"]["query"] for trigger in scaled["triggers"] if trigger["type"] == "prometheus"]
    assert queries
    for query in queries:
        names = metric_names(query)
        assert names and all(exported(name) for name in names), f"KEDA queries a metric no worker exports: {query}"
        assert set(re.findall(r'state\s*=~?\s*"([^"]*)"', query)) <= set(STATES), query
    metrics = ecs_request("worker-scaling-policy.json")["TargetTrackingScalingPolicyConfiguration"][
        "CustomizedMetricSpecification"
    ]["Metrics"]
    ours = [m["MetricStat"]["Metric"] for m in metrics if m.get("MetricStat", {}).get("Metric", {}).get("Namespace")
            == "Hokusai/Registry"]  # fmt: skip
    assert ours
    for metric in ours:
        assert exported(metric["MetricName"]), f"the ECS policy reads a metric no worker exports: {metric}"
    assert sorted(d["Value"] for m in ours for d in m["Dimensions"] if d["Name"] == "state") == sorted(STATES)
