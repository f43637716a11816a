"""Tracing: a no-op when unconfigured; when on, one trace covers a post-call webhook from its
HTTP request through the queue to the worker's pipeline stages."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import select

from api.security.signatures import sign
from db import tracing
from db.models import WebhookEvent
from tests.conftest import FIXTURES, Deployment
from worker.runner import make_process_next


def test_disabled_tracing_is_a_shared_no_op(deployment: Deployment) -> None:
    assert not tracing.init_tracing(deployment.settings, "voxmem-test")
    assert not tracing.enabled()
    first = tracing.span("a", attributes={"k": 1})
    assert first is tracing.span("b")  # one shared object: nothing allocated per call
    with first as span:
        assert span is None
    assert tracing.carrier() is None
    assert tracing.extract({"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}) is None


def test_one_trace_from_webhook_arrival_to_pipeline(
    deployment: Deployment, exporter: InMemorySpanExporter
) -> None:
    from api.app import create_app

    body = (FIXTURES / "post_call_transcription.json").read_bytes()
    with TestClient(create_app(deployment.settings)) as client:
        # The app's lifespan keeps the already installed (in-memory) provider.
        assert tracing.enabled()
        ts = int(time.time())
        response = client.post(
            "/webhook/post-call",
            content=body,
            headers={
                "ElevenLabs-Signature": sign(deployment.webhook_secret, body, ts),
                "Content-Type": "application/json",
            },
        )
        assert response.json() == {"status": "accepted"}
        tracing.force_flush()
        request_spans = {s.name: s for s in exporter.get_finished_spans()}
        server = request_spans["POST /webhook/post-call"]
        assert {"intake.verify", "intake.insert"} <= set(request_spans)
        for name in ("intake.verify", "intake.insert"):
            assert request_spans[name].parent is not None
            assert request_spans[name].parent.span_id == server.context.span_id

    with deployment.db.read() as session:
        event = session.scalars(select(WebhookEvent)).one()
    assert event.trace_context is not None
    trace_id = f"{server.context.trace_id:032x}"
    assert event.trace_context["traceparent"].split("-")[1] == trace_id

    exporter.clear()
    process_next = make_process_next(deployment.settings, deployment.db, worker_id="w-trace")
    assert process_next()
    tracing.force_flush()
    worker_spans = exporter.get_finished_spans()
    names = {s.name for s in worker_spans}
    assert {"queue.claim", "worker.job"} <= names
    assert any(n.startswith("stage.") for n in names), names
    # Every worker span is in the webhook request's trace: arrival → queryable is one trace.
    assert {s.context.trace_id for s in worker_spans} == {server.context.trace_id}
    job = next(s for s in worker_spans if s.name == "worker.job")
    assert job.parent is not None and job.parent.is_remote
