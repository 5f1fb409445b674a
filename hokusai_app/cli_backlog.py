"""The ``hokusai-registry backlog`` command: the true backlog (waiting, held, scheduled) as JSON.

The figures are the workers' ``hokusai_backlog_jobs`` and ``hokusai_backlog_oldest_age_seconds``
(``worker.backlog``, one computation for both), per queue and summed. ``hokusai_app.cli`` adds the
command; Redis's client and the worker's modules are imported inside it, off the CLI's start-up.
"""

from __future__ import annotations

import click

from hokusai_app.cli_base import echo_json, load_settings, note


@click.command("backlog")
def backlog() -> None:
    """Print the backlog as JSON: jobs waiting in the queues, held by workers (running, prefetched or
    waiting for a countdown), and scheduled (the durable webhook schedule), the oldest's age, per queue.

    Exit 0 whatever the backlog; 4 when Redis is unreachable.
    """
    from hokusai_registry.redis_client import connect
    from worker.backlog import read_backlog

    settings = load_settings()
    report = read_backlog(connect(settings.redis_url))
    echo_json(report.as_dict())
    note(
        f"{report.total} job(s): {report.count('waiting')} waiting, {report.count('held')} held, "
        f"{report.count('scheduled')} scheduled; the oldest {report.oldest_age_s:.0f} s"
    )
