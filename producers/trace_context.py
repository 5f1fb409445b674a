"""The caller's OpenTelemetry span as the job's W3C ``traceparent``, at no cost without OpenTelemetry.

OpenTelemetry is optional (``pip install "hokusai-registry[otel]"``, which is ``opentelemetry-api``).
A caller with a span has imported ``opentelemetry`` already, so this looks only when the module is
loaded: a pipeline without tracing imports nothing and pays one dictionary look-up.
"""

from __future__ import annotations

import sys

from hokusai_registry.contract import TRACEPARENT_RE

#: The module a caller with an OpenTelemetry span has loaded.
_OTEL_TRACE_MODULE = "opentelemetry.trace"


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the caller's current OpenTelemetry span; None without one.

    None too when ``opentelemetry`` was never imported in this process (nothing is imported here
    then), or the current span is not valid (no span, or OpenTelemetry's no-op tracer with no parent).
    """
    if _OTEL_TRACE_MODULE not in sys.modules:
        return None
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    value = carrier.get("traceparent")
    return value if value is not None and TRACEPARENT_RE.fullmatch(value) else None
