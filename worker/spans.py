"""The worker's OpenTelemetry spans: each task continues the job's trace, and the webhook carries it on.

The job's ``traceparent`` (``RegistrationJob.trace_context``: the pipeline's span, put there by
``enqueue_registration``) is the parent of ``hokusai.register`` and ``hokusai.webhook``. When a Celery
span of the same trace is current (``opentelemetry-instrumentation-celery`` under
``opentelemetry-instrument``), that span is the parent instead, so the spans chain from the pipeline
through Celery's publish and run spans to the delivery. A job without a ``traceparent`` gets no span
of ours.

``opentelemetry-api`` comes with MLflow, so the worker always has it. With no SDK configured its
tracer records nothing and passes the parent's context through: the receiver then gets the
pipeline's own ``traceparent``. With an SDK (``opentelemetry-instrument celery -A worker worker``)
the spans are exported and the receiver gets the ``hokusai.webhook`` span's.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from hokusai_registry.contract import TRACEPARENT_RE

if TYPE_CHECKING:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

#: The instrumentation scope of the worker's spans.
TRACER_NAME = "hokusai-registry"
REGISTER_SPAN = "hokusai.register"
WEBHOOK_SPAN = "hokusai.webhook"
#: The spans' attributes.
JOB_ID_ATTRIBUTE = "hokusai.job_id"
EVENT_ID_ATTRIBUTE = "hokusai.event_id"


def _propagator() -> TraceContextTextMapPropagator:
    # imported here: the CLI's replay imports delivery, and needs OpenTelemetry only for a traced job
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator()


@contextmanager
def continued(name: str, traceparent: str | None, attributes: Mapping[str, str]) -> Iterator[None]:
    """Run the block in span ``name``, a child of the job's trace; nothing when ``traceparent`` is None."""
    if traceparent is None:
        yield
        return
    from opentelemetry import trace

    parent = _propagator().extract({"traceparent": traceparent})
    job_trace_id = trace.get_current_span(parent).get_span_context().trace_id
    current = trace.get_current_span().get_span_context()
    # Celery's own span of this trace (instrumentation) is current: chain under it; else under the job's
    context = None if current.is_valid and current.trace_id == job_trace_id else parent
    tracer = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(name, context=context, attributes=dict(attributes)):
        yield


def outgoing_traceparent(stored: str | None) -> str | None:
    """The ``traceparent`` header for a delivery of a job whose trace is ``stored``.

    Inside :func:`continued`'s span of that trace: the current span's (the job's own value when no SDK
    records spans). Anywhere else (a replay from the CLI): ``stored`` as is.
    """
    if stored is None:
        return None
    carrier: dict[str, str] = {}
    _propagator().inject(carrier)
    current = carrier.get("traceparent")
    if current is None or not TRACEPARENT_RE.fullmatch(current) or current.split("-")[1] != stored.split("-")[1]:
        return stored
    return current
