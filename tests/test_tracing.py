"""One trace from the pipeline to the marketplace: the caller's OpenTelemetry span rides in the job.

Real producer processes (the OpenTelemetry SDK and, for the chain, Celery's instrumentation, as a
pipeline sets them up), real ``celery -A worker worker`` processes (plain, and under
``opentelemetry-instrument``), real Redis, a real webhook receiver and a real OTLP/HTTP receiver.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from opentelemetry.sdk.trace import TracerProvider

from devtools.builders import baseline_fields
from devtools.receiver import WebhookReceiver
from hokusai_registry.contract import RegistrationJob
from hokusai_registry.errors import InvalidJobError
from hokusai_registry.settings import Settings
from hokusai_registry.validation import validate_job
from producers import enqueue_registration
from producers.enqueue import webhook_task_id
from producers.outbox import read_spooled
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.queue_helpers import client_app, job_fields, save_model_dir, versions_of_job, wait_result
from tests.test_outbox import closed_port
from tests.worker_process import ROOT, WorkerProcess, wait_until
from worker import spans

SECRET = "whsec_" + base64.b64encode(b"hokusai-trace-secret-0123456789a").decode()
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
REMOTE_MODEL = "s3://models/lead-scoring/1"

#: A training pipeline with tracing: the SDK (and with "instrument", Celery's instrumentation and an
#: OTLP exporter) set up as OpenTelemetry documents; its span encloses the enqueue.
PIPELINE = """
import json, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

provider = TracerProvider()
if sys.argv[2] == "instrument":
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.sdk.resources import Resource

    provider = TracerProvider(resource=Resource.create({"service.name": "pipeline"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))
    CeleryInstrumentor().instrument(tracer_provider=provider)
trace.set_tracer_provider(provider)

from producers import enqueue_registration

with trace.get_tracer("training").start_as_current_span("training-run") as span:
    job_id = enqueue_registration(json.loads(open(sys.argv[1]).read()))
context = span.get_span_context()
provider.shutdown()
print(json.dumps({"job_id": job_id, "trace_id": format(context.trace_id, "032x"),
                  "span_id": format(context.span_id, "016x"), "flags": format(context.trace_flags, "02x")}))
"""


def run_pipeline(fields: dict[str, Any], tmp_path: Path, mode: str, **env: str) -> dict[str, str]:
    """Run the pipeline in a process of its own; its job id and its span's ids."""
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(fields))
    script = tmp_path / "pipeline.py"
    script.write_text(PIPELINE)
    done = subprocess.run(
        [sys.executable, str(script), str(job_file), mode],
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def traceparent_parts(value: str) -> tuple[str, str]:
    """(trace id, parent span id) of a W3C traceparent."""
    _, trace_id, span_id, _ = value.split("-")
    return trace_id, span_id


# ------------------------------------------------------------------- the job's field
@pytest.mark.parametrize(
    "value",
    [
        "00-bad",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",  # upper case
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero span id
        TRACEPARENT + "\r\nx-injected: 1",
    ],
)
def test_a_malformed_traceparent_is_refused_naming_the_field(value: str) -> None:
    with pytest.raises(InvalidJobError, match="traceparent"):
        validate_job(baseline_fields(REMOTE_MODEL, traceparent=value), Settings())


def test_trace_context_is_the_field_or_a_well_formed_metadata_value() -> None:
    assert RegistrationJob(**baseline_fields(REMOTE_MODEL, traceparent=TRACEPARENT)).trace_context == TRACEPARENT
    legacy = RegistrationJob(**baseline_fields(REMOTE_MODEL, metadata={"traceparent": TRACEPARENT}))
    assert legacy.trace_context == TRACEPARENT
    bad = RegistrationJob(**baseline_fields(REMOTE_MODEL, metadata={"traceparent": "00-bad\r\nx: y"}))
    assert bad.trace_context is None
    assert RegistrationJob(**baseline_fields(REMOTE_MODEL)).trace_context is None


def _spool(fields: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """Enqueue with Redis away: the job as the outbox keeps it (exactly what would be published)."""
    settings = Settings(redis_url=f"redis://127.0.0.1:{closed_port()}/0", enqueue_retry_s=0,
                        hokusai_outbox_dir=tmp_path / "outbox")  # fmt: skip
    job_id = enqueue_registration(fields, settings=settings)
    return read_spooled(settings, job_id).job


def test_enqueue_under_a_span_puts_its_traceparent_into_the_job(tmp_path: Path) -> None:
    tracer = TracerProvider().get_tracer("pipeline")
    with tracer.start_as_current_span("training-run") as span:
        job = _spool(baseline_fields(REMOTE_MODEL), tmp_path)
    context = span.get_span_context()
    assert job["traceparent"] == f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def test_a_traceparent_the_caller_gives_is_kept_over_the_span(tmp_path: Path) -> None:
    with TracerProvider().get_tracer("pipeline").start_as_current_span("training-run"):
        given = _spool(baseline_fields(REMOTE_MODEL, traceparent=TRACEPARENT), tmp_path)
        legacy = _spool(baseline_fields(REMOTE_MODEL, metadata={"traceparent": TRACEPARENT}), tmp_path)
    assert given["traceparent"] == TRACEPARENT
    assert legacy["traceparent"] is None and legacy["metadata"]["traceparent"] == TRACEPARENT


def test_without_a_span_the_job_has_no_traceparent(tmp_path: Path) -> None:
    assert _spool(baseline_fields(REMOTE_MODEL), tmp_path)["traceparent"] is None


#: Run before the producer: OpenTelemetry cannot be imported (as if it were not installed), and every
#: attempt is recorded with the file that made it (redis-py tries it too, and copes).
BLOCK_OPENTELEMETRY = """
import sys, traceback
attempts = []
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "opentelemetry":
            attempts.append([frame.filename for frame in traceback.extract_stack()[:-1]
                             if "importlib" not in frame.filename][-1])
            raise ImportError(f"blocked by the test: {name}")
        return None
sys.meta_path.insert(0, Blocker())
"""


def test_a_pipeline_without_opentelemetry_needs_none_and_imports_none_of_it(redis_url: str, tmp_path: Path) -> None:
    code = BLOCK_OPENTELEMETRY + (
        "import json\n"
        "from devtools.builders import baseline_fields\n"
        "from producers import enqueue_registration\n"
        f"enqueue_registration(baseline_fields({REMOTE_MODEL!r}))\n"
        "print(json.dumps(attempts))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    attempts = json.loads(done.stdout.strip().splitlines()[-1])
    ours = [f for f in attempts if f.startswith(str(ROOT)) and "site-packages" not in f]
    assert ours == [], "the producer tried to import OpenTelemetry"
    (message,) = client_app(redis_url).backend.client.lrange("hokusai.registrations", 0, -1)
    (job,), _, _ = json.loads(base64.b64decode(json.loads(message)["body"]))
    assert job["traceparent"] is None


# ------------------------------------------------------------------- through real workers
@pytest.mark.slow
def test_the_receiver_gets_the_pipelines_traceparent_and_the_run_is_tagged_with_it(
    worker_env: dict[str, str], tracking_uri: str, staging: Path, sk_model: Any, tmp_path: Path
) -> None:
    with WebhookReceiver(SECRET) as receiver:
        env = {**worker_env, "WEBHOOK_URL": receiver.url, "WEBHOOK_SECRET": SECRET, "WEBHOOK_ALLOW_HTTP": "true"}
        receiver.script(500)  # the retry carries it too
        with WorkerProcess(env, tmp_path) as worker:
            pipeline = run_pipeline(job_fields(save_model_dir(sk_model, staging)), tmp_path, "plain")
            outcome = wait_result(client_app(worker_env["REDIS_URL"]), webhook_task_id(pipeline["job_id"]), 90)
            assert outcome.state == "SUCCESS", worker.log_tail()
    expected = f"00-{pipeline['trace_id']}-{pipeline['span_id']}-{pipeline['flags']}"
    # no SDK in the worker: OpenTelemetry's no-op tracer passes the pipeline's span on unchanged
    assert [r.headers.get("traceparent") for r in receiver.requests] == [expected, expected]
    (version,) = versions_of_job(MlflowClient(tracking_uri), pipeline["job_id"])
    assert MlflowClient(tracking_uri).get_run(version.run_id).data.tags["traceparent"] == expected


def _chain(spans_by_id: dict[str, ReceivedSpan], start: str) -> list[ReceivedSpan]:
    """The spans from ``start`` up through its parents (as far as they were received)."""
    chain: list[ReceivedSpan] = []
    current: str = start
    while current in spans_by_id:
        chain.append(spans_by_id[current])
        current = spans_by_id[current].parent_span_id
    return chain


@pytest.mark.slow
def test_with_celery_instrumentation_the_spans_chain_from_the_pipeline_to_the_delivery(
    worker_env: dict[str, str], staging: Path, sk_model: Any, tmp_path: Path
) -> None:
    otel = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    with OtlpReceiver() as otlp, WebhookReceiver(SECRET) as receiver:
        env = {**worker_env, **otel, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "OTEL_SERVICE_NAME": "worker",
               "WEBHOOK_URL": receiver.url, "WEBHOOK_SECRET": SECRET, "WEBHOOK_ALLOW_HTTP": "true"}  # fmt: skip
        worker = WorkerProcess(env, tmp_path)
        worker.command = [str(Path(sys.executable).with_name("opentelemetry-instrument")), *worker.command]
        with worker:
            pipeline = run_pipeline(job_fields(save_model_dir(sk_model, staging)), tmp_path, "instrument",
                                    OTEL_EXPORTER_OTLP_ENDPOINT=otlp.endpoint)  # fmt: skip
            outcome = wait_result(client_app(worker_env["REDIS_URL"]), webhook_task_id(pipeline["job_id"]), 90)
            assert outcome.state == "SUCCESS", worker.log_tail()
            (request,) = receiver.requests
            trace_id, parent = traceparent_parts(request.headers["traceparent"])
            assert trace_id == pipeline["trace_id"]

            def chained() -> list[ReceivedSpan] | None:
                by_id = {span.span_id: span for span in otlp.received() if span.trace_id == trace_id}
                chain = _chain(by_id, parent)
                return chain if chain and chain[-1].span_id == pipeline["span_id"] else None

            chain = wait_until(chained, timeout_s=30, what="the spans from the delivery up to the pipeline's")
            register_run = next(span for span in chain if span.name == "run/hokusai.register_model")
            register = wait_until(
                lambda: [s for s in otlp.received() if s.name == spans.REGISTER_SPAN and s.trace_id == trace_id],
                timeout_s=30,
                what="the register span",
            )
    # from the pipeline's span, through Celery's publish and run spans of both tasks, to the delivery
    assert [(span.service, span.name) for span in reversed(chain)] == [
        ("pipeline", "training-run"),
        ("pipeline", "apply_async/hokusai.register_model"),
        ("worker", "run/hokusai.register_model"),
        ("worker", "apply_async/hokusai.emit_webhook"),
        ("worker", "run/hokusai.emit_webhook"),
        ("worker", spans.WEBHOOK_SPAN),
    ]
    assert [span.parent_span_id for span in register] == [register_run.span_id], "registering runs in Celery's span"
