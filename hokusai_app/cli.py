"""The ``hokusai-registry`` command line.

Machine-readable output (JSON, job ids) goes to stdout; messages for humans go to stderr.
Every command exits with a code of ``hokusai_app.exit_codes.ExitCode`` (the one table, shown in
docs/cli.md and by ``--help``); errors from the product's error tree are mapped to it by
``exit_code_for`` and shown as ``Error: <message>``, without a traceback.
Heavy modules (mlflow, the worker, celery) are imported inside the commands that need them.
This module holds the top-level commands and the ``webhooks`` group; the ``jobs`` group is
``hokusai_app.cli_jobs``; what every group shares (error display, settings, output) is
``hokusai_app.cli_base``.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import IO, Any

import click

from hokusai_app.cli_backlog import backlog
from hokusai_app.cli_base import SINCE_HELP, Group, echo_json, exit_with, load_settings, note, since_option
from hokusai_app.cli_jobs import jobs
from hokusai_app.cli_outbox import outbox
from hokusai_app.cli_reconcile import reconcile as webhooks_reconcile
from hokusai_app.exit_codes import ExitCode, help_table
from hokusai_registry.contract import MODEL_TYPES, job_json_schema
from hokusai_registry.errors import ConfigurationError, NotFoundError

_EPILOG = "\b\nExit codes (the same for every command; docs/cli.md):\n" + help_table()


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]}, epilog=_EPILOG)
@click.version_option(package_name="hokusai-registry", prog_name="hokusai-registry")
def main() -> None:
    """Queue-backed MLflow model registration for the Hokusai marketplace."""


main.add_command(jobs)
main.add_command(outbox)
main.add_command(backlog)


@main.command()
def schema() -> None:
    """Print the JSON Schema of a registration job."""
    echo_json(job_json_schema())


# ------------------------------------------------------------------ enqueue
def _parse_json(option: str, text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=f"'{option}'") from exc


def _parse_pairs(option: str, values: tuple[str, ...], *, numbers: bool = False) -> dict[str, Any] | None:
    if not values:
        return None
    pairs: dict[str, Any] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=f"'{option}'")
        if numbers:
            try:
                pairs[key] = float(value)
            except ValueError as exc:
                raise click.BadParameter(f"{key}: {value!r} is not a number", param_hint=f"'{option}'") from exc
        else:
            pairs[key] = value
    return pairs


def _read_job_file(handle: IO[str]) -> dict[str, Any]:
    try:
        fields = json.load(handle)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="'--file'") from exc
    if not isinstance(fields, dict):
        raise click.BadParameter("must hold a JSON object (the job's fields)", param_hint="'--file'")
    return fields


def _job_fields(file: IO[str] | None, flags: dict[str, Any]) -> dict[str, Any]:
    """The file's fields (if any), overridden by every flag that was given."""
    fields = _read_job_file(file) if file is not None else {}
    git = {k: flags.pop(f"git_{k}") for k in ("repo", "commit", "branch")}
    if any(v is not None for v in git.values()):
        fields["git"] = {**(fields.get("git") or {}), **{k: v for k, v in git.items() if v is not None}}
    parsed = {
        **flags,
        "metadata": _parse_json("--metadata", flags["metadata"]),
        "signature": _parse_json("--signature", flags["signature"]),
        "input_example": _parse_json("--input-example", flags["input_example"]),
        "benchmark": _parse_json("--benchmark", flags["benchmark"]),
        "tags": _parse_pairs("--tag", flags["tags"]),
        "delta_metrics": _parse_pairs("--delta-metric", flags["delta_metrics"], numbers=True),
        "pip_requirements": list(flags["pip_requirements"]) or None,
    }
    fields.update({key: value for key, value in parsed.items() if value is not None})
    return fields


@main.command()
@click.option("--file", "file", type=click.File("r", encoding="utf-8"), help="Job JSON file ('-' for stdin).")
@click.option("--job-id", help="Idempotency key (UUID); generated when absent.")
@click.option("--kind", type=click.Choice(["baseline", "improved"]))
@click.option("--model-type", type=click.Choice(MODEL_TYPES))
@click.option("--artifact-uri", help="The MLflow model folder or URI.")
@click.option("--metadata", help="JSON object.")
@click.option("--signature", help="JSON: ModelSignature.to_dict().")
@click.option("--input-example", help="JSON list of records.")
@click.option("--pip-requirement", "pip_requirements", multiple=True, help="Repeatable.")
@click.option("--git-repo")
@click.option("--git-commit")
@click.option("--git-branch")
@click.option("--baseline-id", help="Improved jobs: 'name/version' of the baseline.")
@click.option("--delta-metric", "delta_metrics", multiple=True, metavar="NAME=NUMBER", help="Repeatable.")
@click.option("--contributor", help="Improved jobs: 0x wallet address.")
@click.option("--token-id", help="Marketplace token symbol.")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="Repeatable.")
@click.option("--eval-spec")
@click.option("--scorer-ref")
@click.option("--primary-metric")
@click.option("--benchmark-spec-id")
@click.option("--benchmark", help="JSON: {metric_name, baseline_value, current_value, higher_is_better}.")
@click.option("--wait", is_flag=True, help="Block until the registration finished; print its status JSON.")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0),
    default=600.0,
    show_default=True,
    help="Seconds to wait with --wait.",
)
def enqueue(file: IO[str] | None, wait: bool, timeout_s: float, **flags: Any) -> None:
    """Enqueue a registration job from flags and/or --file (flags override the file).

    Prints the job id, or with --wait the final status JSON (exit 1 if the job failed, 3 at --timeout).
    """
    from producers.enqueue import enqueue_registration, wait_for_job

    settings = load_settings()
    job_id = enqueue_registration(_job_fields(file, flags), settings=settings)
    if not wait:
        click.echo(job_id)
        return
    note(f"enqueued job {job_id}; waiting up to {timeout_s:g}s")
    status = wait_for_job(job_id, timeout_s, settings)
    echo_json(status)
    if status["state"] != "SUCCESS":
        exit_with(ExitCode.NOT_OK)


# ------------------------------------------------------------------ maintenance
@main.command("backfill-uuids")
@click.option("--dry-run", is_flag=True, help="Report what would be tagged; change nothing.")
@click.option("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or the embedded store).")
def backfill_uuids(dry_run: bool, tracking_uri: str | None) -> None:
    """Bring versions registered before the upgrade up to date (safe to run twice).

    Tags each version with its model_uuid, and with is_baseline, model_type, baseline_model_id
    and a lower-case contributor derived from the old tags, run params and names; a version in
    the retired Production stage gets the production alias. Prints a JSON report; what could not
    be migrated is listed under "unresolved" and "incomplete" with the reason.
    """
    from worker.registration.registry import HokusaiModelRegistry

    registry = HokusaiModelRegistry(tracking_uri, settings=load_settings())
    total = registry.count_versions()
    with click.progressbar(length=total, label="scanning model versions", file=sys.stderr) as bar:
        report = registry.backfill_model_uuids(dry_run=dry_run, on_progress=lambda _version: bar.update(1))
    echo_json(report)
    verb = "would tag" if dry_run else "tagged"
    note(
        f"{'dry run: ' if dry_run else ''}{verb} {len(report['tagged'])} of {report['scanned']} version(s); "
        f"{report['already_tagged']} already tagged, {len(report['unresolved'])} unresolved; "
        f"{len(report['completed'])} given lookup tags, {len(report['promoted'])} moved to the production alias, "
        f"{len(report['incomplete'])} incomplete"
    )
    for item in report["unresolved"]:
        note(f"unresolved {item['model_name']}/{item['version']}: {item['reason']}")
    for item in report["incomplete"]:
        note(f"incomplete {item['model_name']}/{item['version']}: {'; '.join(item['reasons'])}")


# ------------------------------------------------------------------ webhooks
def _event_store() -> Any:
    from worker.webhooks.store import EventStore

    return EventStore.for_settings(load_settings())


@main.group(cls=Group)
def webhooks() -> None:
    """Inspect and replay webhook events that could not be delivered (dead letters)."""


@webhooks.command("new-secret")
def webhooks_new_secret() -> None:
    """Print a fresh whsec_<base64> secret for WEBHOOK_SECRET (share it with the receiver)."""
    from hokusai_registry.webhook_policy import new_secret

    click.echo(new_secret())


@webhooks.command("rotate-secret")
@click.option("--endpoint", "endpoint_name", default="default", show_default=True, help="The endpoint to rotate.")
@click.option("--keep-old-for", "keep_old_s", type=float, default=24 * 3600.0, show_default=True,
              help="Seconds the old secret(s) keep signing beside the new one.")  # fmt: skip
def webhooks_rotate_secret(endpoint_name: str, keep_old_s: float) -> None:
    """Give an endpoint a new primary secret; the old one keeps signing until its expiry.

    With WEBHOOK_ENDPOINTS_FILE the file is rewritten (workers read it on every attempt); with the
    WEBHOOK_SECRET shorthand, the two lines to set are printed. Prints the new secret: give it to the receiver.
    """
    from datetime import UTC, timedelta

    from hokusai_registry.webhook_policy import new_secret, webhook_secret
    from worker.webhooks.endpoints import rotate_secret

    settings = load_settings()
    if settings.webhook_endpoints_file is not None:
        click.echo(rotate_secret(settings.webhook_endpoints_file, endpoint_name, keep_old_s=keep_old_s))
        note(f"endpoint {endpoint_name}: new primary secret written; the old one(s) sign for {keep_old_s:g} s more")
        return
    old = webhook_secret(settings)
    if old is None:
        raise click.UsageError("no WEBHOOK_SECRET to rotate: set one (hokusai-registry webhooks new-secret)")
    expiry = (datetime.now(UTC) + timedelta(seconds=keep_old_s)).isoformat()
    click.echo(f"WEBHOOK_SECRET={new_secret()}")
    click.echo(f"WEBHOOK_PREVIOUS_SECRETS={old}@{expiry}")
    note("set both lines in the workers' environment (or their *_FILE files) and restart them")


@webhooks.group("endpoints", cls=Group)
def webhooks_endpoints() -> None:
    """The configured webhook endpoints and their run-time state (disabled, failing)."""


def _endpoint_view(name: str) -> dict[str, Any]:
    from hokusai_registry.webhook_policy import endpoint_named
    from worker.webhooks.endpoints import EndpointStates

    endpoint = endpoint_named(load_settings(), name)
    if endpoint is None:
        raise NotFoundError(f"no webhook endpoint {name!r} is configured")
    store = _event_store()
    state = EndpointStates.of(store).get(name)
    return {**endpoint.describe(), **state.as_dict(), "held": len(store.held(name)),
            "enabled": endpoint.enabled and state.disabled_at is None}  # fmt: skip


@webhooks_endpoints.command("list")
def webhooks_endpoints_list() -> None:
    """Every configured endpoint with its state, as JSON (never its secrets)."""
    from hokusai_registry.webhook_policy import configured_endpoints

    echo_json([_endpoint_view(endpoint.name) for endpoint in configured_endpoints(load_settings())])


@webhooks_endpoints.command("show")
@click.argument("name")
def webhooks_endpoints_show(name: str) -> None:
    """One endpoint with its state and how many deliveries it holds."""
    echo_json(_endpoint_view(name))


@webhooks_endpoints.command("disable")
@click.argument("name")
@click.option("--reason", default="disabled by an operator", show_default=True)
def webhooks_endpoints_disable(name: str, reason: str) -> None:
    """Disable an endpoint: its deliveries are held (kept) until it is enabled."""
    from worker.webhooks.endpoints import EndpointStates

    _endpoint_view(name)  # it must exist
    EndpointStates.of(_event_store()).disable(name, reason)
    note(f"endpoint {name} disabled; its events are kept")


@webhooks_endpoints.command("enable")
@click.argument("name")
def webhooks_endpoints_enable(name: str) -> None:
    """Enable an endpoint again; its held deliveries are sent, oldest first."""
    from worker.webhooks.endpoints import enable

    _endpoint_view(name)
    released = enable(_event_store(), name)
    echo_json({"endpoint": name, "released": released})
    note(f"endpoint {name} enabled; {released} held deliveries released, oldest first")


@webhooks.command("failed")
@click.option("--since", callback=since_option, help=f"Only those dead-lettered at/after this time. {SINCE_HELP}")
@click.option("--endpoint", "endpoint_name", default=None, help="Only this endpoint's dead letters.")
def webhooks_failed(since: datetime | None, endpoint_name: str | None) -> None:
    """List dead-lettered webhook events, oldest first, as JSON (without bodies)."""
    records = _event_store().list_dead_letters(since, endpoint=endpoint_name)
    echo_json([record.as_dict() for record in records])
    note(f"{len(records)} undelivered webhook event(s)")


@webhooks.command("show")
@click.argument("event_id")
def webhooks_show(event_id: str) -> None:
    """Show one stored webhook event with its body and its delivery history.

    The history lists each attempt (UTC time, HTTP status or error, duration), the last
    MAX_ATTEMPT_HISTORY of them (older ones are counted in "attempts" but not kept).
    """
    from worker.webhooks.delivery_records import MAX_ATTEMPT_HISTORY

    record = _event_store().get(event_id)
    if record is None:
        raise NotFoundError(f"no stored webhook event {event_id!r} (delivered ones expire)")
    echo_json(record.as_dict(include_body=True, include_history=True))
    if record.attempts > len(record.history):
        note(
            f"{record.attempts} attempt(s); the history keeps the last {MAX_ATTEMPT_HISTORY}: "
            f"{record.attempts - len(record.history)} older one(s) not listed"
        )


@webhooks.command("replay")
@click.argument("event_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter (with --since: only recent ones).")
@click.option("--since", callback=since_option, help=f"With --all: only those dead-lettered at/after it. {SINCE_HELP}")
@click.option("--endpoint", "endpoint_name", default=None, help="Only this endpoint's dead letters.")
def webhooks_replay(
    event_ids: tuple[str, ...], replay_all: bool, since: datetime | None, endpoint_name: str | None
) -> None:
    """Send dead letters again (same body, same idempotency key); delivered ones are removed.

    Exits 1 when any event still could not be delivered (it stays a dead letter).
    """
    from worker.webhooks.replay import replay_dead_letters

    if not event_ids and not replay_all:
        raise click.UsageError("name the EVENT_IDS to replay, or pass --all (see 'hokusai-registry webhooks failed')")
    if event_ids and replay_all:
        raise click.UsageError("name EVENT_IDS or pass --all, not both")
    if since is not None and not replay_all:
        raise click.UsageError("--since goes with --all")
    from hokusai_registry.webhook_policy import check_webhook_config

    settings = load_settings()
    check_webhook_config(settings)  # the same rules as the worker's start-up check
    report = replay_dead_letters(
        _event_store(), settings=settings, event_ids=event_ids or None, since=since, endpoint=endpoint_name
    )
    echo_json({"delivered": report.delivered, "already_delivered": report.already_delivered, "failed": report.failed})
    already = f", {len(report.already_delivered)} already delivered before" if report.already_delivered else ""
    note(f"{len(report.delivered)} delivered{already}, {len(report.failed)} still undelivered")
    if report.failed:
        exit_with(ExitCode.NOT_OK)


# ------------------------------------------------------------------ operating
@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def doctor(as_json: bool) -> None:
    """Check Redis, the MLflow store, the webhook settings and the workers; say how to fix what is wrong.

    Exits 1 when any check fails (warnings do not).
    """
    from hokusai_app.doctor import run_checks

    checks = run_checks(load_settings())
    if as_json:
        echo_json([check.as_dict() for check in checks])
    else:
        colours = {"ok": "green", "warn": "yellow", "fail": "red"}
        for check in checks:
            mark = click.style(f"{check.status:>4}", fg=colours[check.status], bold=True)
            click.echo(f"{mark}  {check.name}: {check.detail}")
            if check.fix:
                click.echo(f"      fix: {check.fix}")
    if any(check.status == "fail" for check in checks):
        exit_with(ExitCode.NOT_OK)


@main.command()
def demo() -> None:
    """Run the whole pipeline once on embedded defaults and print what it produced.

    Trains a small model with examples/train_pipeline.py, enqueues it as a pipeline would,
    lets a real worker register it in a local MLflow store, and prints the ModelInfo, the
    ModelVersion and the signed webhook a local receiver verified. Stops what it started.
    """
    _use_checkout()
    from hokusai_app.demo import print_report, run_demo

    print_report(run_demo(load_settings()))


def _use_checkout() -> None:
    """Make the checkout's development tooling importable (the demo needs devtools/ and examples/).

    They are not in the installed package: the demo runs from a clone of the repository.
    """
    import importlib.util
    from pathlib import Path

    candidates = [Path.cwd(), *Path.cwd().parents, Path(__file__).resolve().parents[1]]
    for root in candidates:
        if (root / "devtools" / "devstack.py").is_file() and (root / "examples" / "train_pipeline.py").is_file():
            if importlib.util.find_spec("devtools") is None:
                sys.path.insert(0, str(root))
            return
    raise ConfigurationError(
        "hokusai-registry demo runs from a checkout of the repository (it uses devtools/ and examples/, which "
        "the installed package does not ship): clone it and run ./scripts/demo.sh from there"
    )


webhooks.add_command(webhooks_reconcile)

if __name__ == "__main__":  # pragma: no cover
    main()
