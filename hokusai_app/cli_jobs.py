"""The ``hokusai-registry jobs`` commands: a job's status, failed jobs (and their retry), quarantined messages.

``hokusai_app.cli`` adds this group to the command; heavy modules are imported inside the commands.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click

from hokusai_app.cli_base import SINCE_HELP, Group, echo_json, exit_with, load_settings, note, since_option
from hokusai_app.exit_codes import ExitCode
from hokusai_registry.errors import NotFoundError


@click.group(cls=Group)
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

    status = full_status(job_id, load_settings())
    echo_json(status)
    if status["state"] == "UNKNOWN":
        note(f"job {status['job_id']} is unknown: never enqueued, or older than RESULT_EXPIRES_S")
        exit_with(ExitCode.NOT_OK)


def _redis() -> Any:
    from hokusai_registry.redis_client import connect

    return connect(load_settings().redis_url)


@jobs.command("failed")
@click.option("--since", callback=since_option, help=f"Only failures at/after this time. {SINCE_HELP}")
def jobs_failed(since: datetime | None) -> None:
    """List jobs that failed for good (the failed-jobs store), oldest first, as JSON."""
    from hokusai_registry import failed_jobs

    records = failed_jobs.list_failures(_redis(), since)
    echo_json([record.model_dump(mode="json") for record in records])
    note(f"{len(records)} failed job(s)")


@jobs.command("show-failed")
@click.argument("job_id")
def jobs_show_failed(job_id: str) -> None:
    """Show the failure record of JOB_ID (with the job to replay) as JSON."""
    from hokusai_registry import failed_jobs

    record = failed_jobs.get_failure(_redis(), job_id)
    if record is None:
        raise NotFoundError(f"no failed job {job_id!r} (see 'hokusai-registry jobs failed')")
    echo_json(record.model_dump(mode="json"))


@jobs.command("retry")
@click.argument("job_id")
def jobs_retry(job_id: str) -> None:
    """Publish a failed job again with the same job id; its failure record is removed once published."""
    from hokusai_app.retry import retry_failed_job

    task_id = retry_failed_job(job_id, load_settings())
    click.echo(task_id)
    note(f"republished {task_id}; follow it with 'hokusai-registry jobs status {task_id}'")


@jobs.command("quarantined")
@click.option("--since", callback=since_option, help=f"Only messages received at/after this time. {SINCE_HELP}")
def jobs_quarantined(since: datetime | None) -> None:
    """List quarantined messages (queue items no task could run), oldest first, as JSON."""
    from hokusai_registry import quarantine

    records = quarantine.store(_redis()).list(since)
    echo_json([record.as_dict() for record in records])
    note(f"{len(records)} quarantined message(s)")


@jobs.command("show-quarantined")
@click.argument("quarantine_id")
def jobs_show_quarantined(quarantine_id: str) -> None:
    """Show one quarantined message with its raw bytes (capped) as JSON."""
    from hokusai_registry import quarantine

    record = quarantine.store(_redis()).get(quarantine_id)
    if record is None:
        raise NotFoundError(f"no quarantined message {quarantine_id!r} (see 'hokusai-registry jobs quarantined')")
    echo_json(record.as_dict(include_raw=True))


@jobs.command("remove-quarantined")
@click.argument("quarantine_id")
def jobs_remove_quarantined(quarantine_id: str) -> None:
    """Discard one quarantined message for good."""
    from hokusai_registry import quarantine

    if not quarantine.store(_redis()).remove(quarantine_id):
        raise NotFoundError(f"no quarantined message {quarantine_id!r}")
    note(f"removed {quarantine_id}")
