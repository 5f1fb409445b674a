"""The ``hokusai-registry webhooks reconcile`` command: events MLflow shows undelivered, sent again.

``hokusai_app.cli`` adds it to the ``webhooks`` group; the work is ``worker.webhooks.reconcile``.
Heavy modules are imported inside the command.
"""

from __future__ import annotations

from datetime import datetime

import click

from hokusai_app.cli_base import SINCE_HELP, echo_json, exit_with, load_settings, note, since_option
from hokusai_app.exit_codes import ExitCode


@click.command("reconcile")
@click.option("--since", callback=since_option, help=f"Only versions registered at/after this time. {SINCE_HELP}")
@click.option("--dry-run", is_flag=True, help="List what would be sent (and tagged); send and change nothing.")
@click.option("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or the embedded store).")
@click.option("--endpoint", "endpoint_name", help="The endpoint to reconcile (default: the first configured).")
def reconcile(since: datetime | None, dry_run: bool, tracking_uri: str | None, endpoint_name: str | None) -> None:
    """Send again the events of registered versions that were never delivered, or that Redis lost.

    Scans MLflow for the versions this product registered; one without the delivered tag whose
    event the event store does not hold is rebuilt from MLflow (same event id, same body) and
    handed to the workers. Delivered events are not sent again. Prints a JSON report; exits 1 when
    some version could not be rebuilt (listed under "unrecoverable").
    """
    from hokusai_registry.webhook_policy import DEFAULT_ENDPOINT
    from producers.broker import publisher_app
    from worker.registration.registry import HokusaiModelRegistry
    from worker.webhooks import fanout
    from worker.webhooks.event import EVENT_TYPE
    from worker.webhooks.reconcile import reconcile as reconcile_events
    from worker.webhooks.store import EventStore

    settings = load_settings()
    endpoints = fanout.target_endpoints(settings, EVENT_TYPE)
    endpoint = endpoint_name or (endpoints[0] if endpoints else DEFAULT_ENDPOINT)
    if endpoint not in endpoints:
        raise click.UsageError(f"no configured endpoint named {endpoint!r} takes {EVENT_TYPE} events: {endpoints}")
    registry = HokusaiModelRegistry(tracking_uri, settings=settings)
    report = reconcile_events(
        registry.store,
        EventStore.for_settings(settings),
        app=None if dry_run else publisher_app(settings.redis_url),
        since=since,
        dry_run=dry_run,
        endpoint=endpoint,
    )
    echo_json(report.as_dict())
    sent = report.of("would_send" if dry_run else "sent")
    unrecoverable = report.of("unrecoverable")
    note(
        f"{'dry run: ' if dry_run else ''}{report.scanned} version(s) scanned, {report.delivered} tagged delivered; "
        f"{len(sent)} event(s) {'would be ' if dry_run else ''}sent, {len(report.of('pending', 'dead_lettered'))} "
        f"still in the event store, {len(unrecoverable)} unrecoverable"
    )
    for item in unrecoverable:
        note(f"unrecoverable {item.model_name}/{item.version}: {item.reason}")
    if unrecoverable:
        exit_with(ExitCode.NOT_OK)
