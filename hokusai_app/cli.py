"""The ``hokusai-registry`` command line.

Machine-readable output (JSON, job ids) goes to stdout; messages for humans go to stderr.
Every command exits with a code of ``hokusai_app.exit_codes.ExitCode`` (the one table, shown in
docs/cli.md and by ``--help``); errors from the product's error tree are mapped to it by
``exit_code_for`` and shown as ``Error: <message>``, without a traceback.
Heavy modules (mlflow, the worker, celery) are imported inside the commands that need them.
"""

from __future__ import annotations

import json
import sys
import traceback
from datetime import datetime
from typing import IO, Any, NoReturn

import click
from pydantic import ValidationError

from hokusai_app.exit_codes import ExitCode, exit_code_for, help_table
from hokusai_registry.contract import MODEL_TYPES, job_json_schema
from hokusai_registry.errors import ConfigurationError, HokusaiError, InvalidInputError, NotFoundError
from hokusai_registry.settings import Settings, describe_invalid, get_settings


class _ProductError(click.ClickException):
    """``Error: <message>`` on stderr and the exit code of the table."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.exit_code = int(code)  # type: ignore[misc]  # click reads it from the instance


class _Group(click.Group):
    """A group that shows errors as ``Error: <message>`` and exits with their code (``exit_code_for``).

    Product and MLflow errors carry no traceback; anything else is a bug: traceback, then ``INTERNAL``.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # click's own: usage errors exit 2, and the codes commands chose
        except Exception as exc:
            code = exit_code_for(exc)
            if code is ExitCode.INTERNAL:
                traceback.print_exc(file=sys.stderr)
                message = f"unexpected {type(exc).__name__}: {exc} (a bug: please report it with the traceback)"
            elif isinstance(exc, HokusaiError):
                message = str(exc)
            else:  # e.g. an MLflow store that refuses a request
                message = f"MLflow: {exc}"
            raise _ProductError(message, code) from exc


def _exit(code: ExitCode) -> NoReturn:
    sys.exit(int(code))


def _settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:  # never echo the input: it may hold a password
        raise ConfigurationError(describe_invalid(exc)) from None


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def _note(message: str) -> None:
    click.echo(message, err=True)


_EPILOG = "\b\nExit codes (the same for every command; docs/cli.md):\n" + help_table()


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]}, epilog=_EPILOG)
@click.version_option(package_name="hokusai-registry", prog_name="hokusai-registry")
def main() -> None:
    """Queue-backed MLflow model registration for the Hokusai marketplace."""


@main.command()
def schema() -> None:
    """Print the JSON Schema of a registration job."""
    _echo_json(job_json_schema())


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

    settings = _settings()
    job_id = enqueue_registration(_job_fields(file, flags), settings=settings)
    if not wait:
        click.echo(job_id)
        return
    _note(f"enqueued job {job_id}; waiting up to {timeout_s:g}s")
    status = wait_for_job(job_id, timeout_s, settings)
    _echo_json(status)
    if status["state"] != "SUCCESS":
        _exit(ExitCode.NOT_OK)


# ------------------------------------------------------------------ jobs
@main.group(cls=_Group)
def jobs() -> None:
    """Inspect enqueued and failed jobs."""


@jobs.command("status")
@click.argument("job_id")
def jobs_status(job_id: str) -> None:
    """Print the state and result/error of JOB_ID as JSON (exit 0 whatever the state, but UNKNOWN).

    State UNKNOWN (exit 1): no producer enqueued JOB_ID while results are kept. The webhook's
    delivery is read from the webhook event store: delivered (also by a replay) shows SUCCESS,
    dead-lettered shows FAILURE with the event id and the replay command.
    """
    from hokusai_app.status import full_status

    status = full_status(job_id, _settings())
    _echo_json(status)
    if status["state"] == "UNKNOWN":
        _note(f"job {status['job_id']} is unknown: never enqueued, or older than RESULT_EXPIRES_S")
        _exit(ExitCode.NOT_OK)


def _parse_since(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    from hokusai_registry.records import parse_since

    if value is None:
        return None
    try:
        return parse_since(value)
    except InvalidInputError as exc:
        raise click.BadParameter(str(exc)) from exc


_SINCE_HELP = "ISO-8601 time with a zone, or naive = UTC (e.g. 2026-11-27T09:23:14)."


def _redis() -> Any:
    from hokusai_registry.redis_client import connect

    return connect(_settings().redis_url)


@jobs.command("failed")
@click.option("--since", callback=_parse_since, help=f"Only failures at/after this time. {_SINCE_HELP}")
def jobs_failed(since: datetime | None) -> None:
    """List jobs that failed for good (the failed-jobs store), oldest first, as JSON."""
    from hokusai_registry import failed_jobs

    records = failed_jobs.list_failures(_redis(), since)
    _echo_json([record.model_dump(mode="json") for record in records])
    _note(f"{len(records)} failed job(s)")


@jobs.command("show-failed")
@click.argument("job_id")
def jobs_show_failed(job_id: str) -> None:
    """Show the failure record of JOB_ID (with the job to replay) as JSON."""
    from hokusai_registry import failed_jobs

    record = failed_jobs.get_failure(_redis(), job_id)
    if record is None:
        raise NotFoundError(f"no failed job {job_id!r} (see 'hokusai-registry jobs failed')")
    _echo_json(record.model_dump(mode="json"))


@jobs.command("retry")
@click.argument("job_id")
def jobs_retry(job_id: str) -> None:
    """Publish a failed job again with the same job id; its failure record is removed once published."""
    from hokusai_app.retry import retry_failed_job

    task_id = retry_failed_job(job_id, _settings())
    click.echo(task_id)
    _note(f"republished {task_id}; follow it with 'hokusai-registry jobs status {task_id}'")


@jobs.command("quarantined")
@click.option("--since", callback=_parse_since, help=f"Only messages received at/after this time. {_SINCE_HELP}")
def jobs_quarantined(since: datetime | None) -> None:
    """List quarantined messages (queue items no task could run), oldest first, as JSON."""
    from hokusai_registry import quarantine

    records = quarantine.store(_redis()).list(since)
    _echo_json([record.as_dict() for record in records])
    _note(f"{len(records)} quarantined message(s)")


@jobs.command("show-quarantined")
@click.argument("quarantine_id")
def jobs_show_quarantined(quarantine_id: str) -> None:
    """Show one quarantined message with its raw bytes (capped) as JSON."""
    from hokusai_registry import quarantine

    record = quarantine.store(_redis()).get(quarantine_id)
    if record is None:
        raise NotFoundError(f"no quarantined message {quarantine_id!r} (see 'hokusai-registry jobs quarantined')")
    _echo_json(record.as_dict(include_raw=True))


@jobs.command("remove-quarantined")
@click.argument("quarantine_id")
def jobs_remove_quarantined(quarantine_id: str) -> None:
    """Discard one quarantined message for good."""
    from hokusai_registry import quarantine

    if not quarantine.store(_redis()).remove(quarantine_id):
        raise NotFoundError(f"no quarantined message {quarantine_id!r}")
    _note(f"removed {quarantine_id}")


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

    registry = HokusaiModelRegistry(tracking_uri, settings=_settings())
    total = registry.count_versions()
    with click.progressbar(length=total, label="scanning model versions", file=sys.stderr) as bar:
        report = registry.backfill_model_uuids(dry_run=dry_run, on_progress=lambda _version: bar.update(1))
    _echo_json(report)
    verb = "would tag" if dry_run else "tagged"
    _note(
        f"{'dry run: ' if dry_run else ''}{verb} {len(report['tagged'])} of {report['scanned']} version(s); "
        f"{report['already_tagged']} already tagged, {len(report['unresolved'])} unresolved; "
        f"{len(report['completed'])} given lookup tags, {len(report['promoted'])} moved to the production alias, "
        f"{len(report['incomplete'])} incomplete"
    )
    for item in report["unresolved"]:
        _note(f"unresolved {item['model_name']}/{item['version']}: {item['reason']}")
    for item in report["incomplete"]:
        _note(f"incomplete {item['model_name']}/{item['version']}: {'; '.join(item['reasons'])}")


# ------------------------------------------------------------------ webhooks
def _event_store() -> Any:
    from worker.webhooks.store import EventStore

    return EventStore.for_settings(_settings())


@main.group(cls=_Group)
def webhooks() -> None:
    """Inspect and replay webhook events that could not be delivered (dead letters)."""


@webhooks.command("new-secret")
def webhooks_new_secret() -> None:
    """Print a fresh whsec_<base64> secret for WEBHOOK_SECRET (share it with the receiver)."""
    from hokusai_registry.webhook_policy import new_secret

    click.echo(new_secret())


@webhooks.command("failed")
@click.option("--since", callback=_parse_since, help=f"Only those dead-lettered at/after this time. {_SINCE_HELP}")
def webhooks_failed(since: datetime | None) -> None:
    """List dead-lettered webhook events, oldest first, as JSON (without bodies)."""
    records = _event_store().list_dead_letters(since)
    _echo_json([record.as_dict() for record in records])
    _note(f"{len(records)} undelivered webhook event(s)")


@webhooks.command("show")
@click.argument("event_id")
def webhooks_show(event_id: str) -> None:
    """Show one stored webhook event with its body and its delivery history.

    The history lists each attempt (UTC time, HTTP status or error, duration), the last
    MAX_ATTEMPT_HISTORY of them (older ones are counted in "attempts" but not kept).
    """
    from worker.webhooks.store import MAX_ATTEMPT_HISTORY

    record = _event_store().get(event_id)
    if record is None:
        raise NotFoundError(f"no stored webhook event {event_id!r} (delivered ones expire)")
    _echo_json(record.as_dict(include_body=True, include_history=True))
    if record.attempts > len(record.history):
        _note(
            f"{record.attempts} attempt(s); the history keeps the last {MAX_ATTEMPT_HISTORY}: "
            f"{record.attempts - len(record.history)} older one(s) not listed"
        )


@webhooks.command("replay")
@click.argument("event_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter (with --since: only recent ones).")
@click.option("--since", callback=_parse_since, help=f"With --all: only those dead-lettered at/after it. {_SINCE_HELP}")
def webhooks_replay(event_ids: tuple[str, ...], replay_all: bool, since: datetime | None) -> None:
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

    settings = _settings()
    check_webhook_config(settings)  # the same rules as the worker's start-up check
    report = replay_dead_letters(_event_store(), settings=settings, event_ids=event_ids or None, since=since)
    _echo_json({"delivered": report.delivered, "already_delivered": report.already_delivered, "failed": report.failed})
    already = f", {len(report.already_delivered)} already delivered before" if report.already_delivered else ""
    _note(f"{len(report.delivered)} delivered{already}, {len(report.failed)} still undelivered")
    if report.failed:
        _exit(ExitCode.NOT_OK)


# ------------------------------------------------------------------ operating
@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def doctor(as_json: bool) -> None:
    """Check Redis, the MLflow store, the webhook settings and the workers; say how to fix what is wrong.

    Exits 1 when any check fails (warnings do not).
    """
    from hokusai_app.doctor import run_checks

    checks = run_checks(_settings())
    if as_json:
        _echo_json([check.as_dict() for check in checks])
    else:
        colours = {"ok": "green", "warn": "yellow", "fail": "red"}
        for check in checks:
            mark = click.style(f"{check.status:>4}", fg=colours[check.status], bold=True)
            click.echo(f"{mark}  {check.name}: {check.detail}")
            if check.fix:
                click.echo(f"      fix: {check.fix}")
    if any(check.status == "fail" for check in checks):
        _exit(ExitCode.NOT_OK)


@main.command()
def demo() -> None:
    """Run the whole pipeline once on embedded defaults and print what it produced.

    Trains a small model with examples/train_pipeline.py, enqueues it as a pipeline would,
    lets a real worker register it in a local MLflow store, and prints the ModelInfo, the
    ModelVersion and the signed webhook a local receiver verified. Stops what it started.
    """
    _use_checkout()
    from hokusai_app.demo import print_report, run_demo

    print_report(run_demo(_settings()))


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


if __name__ == "__main__":  # pragma: no cover
    main()
