"""The ``hokusai-registry outbox`` commands: the jobs this host spooled while Redis was unreachable.

``flush`` publishes them (each once by its job id), ``list`` and ``show`` read the folder without
Redis. ``hokusai_app.cli`` adds this group to the command; the producer is imported inside the commands.
"""

from __future__ import annotations

import click

from hokusai_app.cli_base import Group, echo_json, exit_with, load_settings, note
from hokusai_app.exit_codes import ExitCode


@click.group(cls=Group)
def outbox() -> None:
    """Jobs spooled to the outbox folder (HOKUSAI_OUTBOX_DIR) while Redis was unreachable."""


@outbox.command("flush")
def outbox_flush() -> None:
    """Publish every spooled job, oldest first, and remove it from the outbox once published.

    Prints a JSON report. Exit 0 when nothing is left but jobs another flusher holds right now; 4 when
    Redis is unreachable (the rest stays spooled); 1 when a file is no job (see `outbox list`).
    """
    from producers.outbox import flush_outbox

    settings = load_settings()
    report = flush_outbox(settings)
    echo_json(report.as_dict())
    note(f"published {len(report.published)} job(s); {report.remaining} left in {settings.outbox_dir}")
    if report.error is not None:
        raise report.error
    if report.invalid:
        note(f"{len(report.invalid)} file(s) in the outbox are no job; move them away once read")
        exit_with(ExitCode.NOT_OK)


@outbox.command("list")
def outbox_list() -> None:
    """List the spooled jobs, oldest first, as JSON (files that are no job are listed with their error)."""
    from producers.outbox import list_spooled

    settings = load_settings()
    jobs, invalid = list_spooled(settings)
    echo_json([job.as_dict(include_job=False) for job in jobs] + invalid)
    note(
        f"{len(jobs)} spooled job(s) in {settings.outbox_dir}"
        + (f", {len(invalid)} invalid file(s)" if invalid else "")
    )


@outbox.command("show")
@click.argument("job_id")
def outbox_show(job_id: str) -> None:
    """Show one spooled job with the job exactly as it will be published, as JSON."""
    from producers.outbox import read_spooled

    echo_json(read_spooled(load_settings(), job_id).as_dict())
