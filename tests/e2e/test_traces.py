"""OpenTelemetry traces, received by a small OTLP/HTTP collector in this file: one server span per
request with child spans for classification, the cache look-up, each upstream attempt and the
hybrid stage, GenAI-convention attributes, a client's `traceparent` continued and every upstream
attempt given its own. No span holds message text unless `capture_content` is on.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import openai
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from conftest import CLIENT_KEY, Gateway, config_head, find_free_port, gateway_binary
from mock_openai import MockOpenAI

SECRET = "a secret about zebras"


class Collector:
    """An OTLP/HTTP receiver: decodes every export posted to /v1/traces and keeps its spans."""

    def __init__(self) -> None:
        self.spans: list = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - stdlib name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with collector.lock:
                    for resource in request.resource_spans:
                        service = {a.key: a.value.string_value for a in resource.resource.attributes}
                        for scope in resource.scope_spans:
                            for span in scope.spans:
                                collector.spans.append((service, span))
                ok = self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf"
                self.send_response(200 if ok else 400)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def trace(self, trace_id: str, at_least: int, timeout: float = 10.0) -> list:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                found = [s for _, s in self.spans if s.trace_id.hex() == trace_id]
            if len(found) >= at_least or time.monotonic() > deadline:
                return found
            time.sleep(0.1)


def attributes(span) -> dict:
    out = {}
    for a in span.attributes:
        v = a.value
        out[a.key] = getattr(v, v.WhichOneof("value"))
    return out


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.server.shutdown()


def start_gateway(tmp_path, local_url: str, cloud_url: str, collector_url: str, capture: bool) -> Gateway:
    port = find_free_port()
    # Two tries of the local model, and health checks too slow to get in their way.
    local = "retry: {attempts: 2, backoff: 1ms}\nhealth: {interval: 1h, failures: 100}"
    yaml = config_head(port, local_url, cloud_url, local_extra=local) + f"""\
models:
  - {{name: auto, upstream: local}}
default_route: {{upstream: cloud}}
routing:
  classify: [auto]
  upstreams: {{local: local, cloud: cloud, hybrid: cloud}}
  rules:
    - name: long-context
      when: {{feature: last_user_tokens, gt: 1500}}
      route: hybrid
hybrid:
  method: abstractive
  budget: 10s
cache:
  ttl: 1m
telemetry:
  traces:
    endpoint: {collector_url}
    service_name: switchyard-under-test
    capture_content: {str(capture).lower()}
"""
    path = tmp_path / f"switchyard-{port}.yaml"
    path.write_text(yaml)
    gw = Gateway(gateway_binary(), path, port, tmp_path / f"switchyard-{port}.log")
    gw.wait_until_listening()
    return gw


def client_for(gw: Gateway, traceparent: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gw.base_url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=20.0,
        default_headers={"traceparent": traceparent},
        http_client=openai.DefaultHttpxClient(trust_env=False),
    )


def new_traceparent() -> tuple[str, str, str]:
    trace_id, parent = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    return f"00-{trace_id}-{parent}-01", trace_id, parent


def test_a_request_is_one_trace_with_its_steps_under_it(tmp_path, collector) -> None:
    # The local model's port refuses connections: two tries, then the cloud answers.
    dead = f"http://127.0.0.1:{find_free_port()}"
    with MockOpenAI() as cloud:
        gw = start_gateway(tmp_path, dead, cloud.url, collector.url, capture=False)
        try:
            header, trace_id, parent = new_traceparent()
            client = client_for(gw, header)
            answer = client.chat.completions.create(
                model="auto", temperature=0, messages=[{"role": "user", "content": f"{SECRET}, briefly"}]
            )
            assert answer.choices[0].message.content
            spans = collector.trace(trace_id, at_least=6)
        finally:
            gw.stop()

    by_name: dict[str, list] = {}
    for s in spans:
        by_name.setdefault(s.name, []).append(s)
    root = by_name["chat auto"][0]
    assert root.kind == root.SPAN_KIND_SERVER
    assert root.parent_span_id.hex() == parent, "the client's trace is continued"
    a = attributes(root)
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "auto"
    assert a["gen_ai.response.model"] == "gpt-4o"
    assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
    assert a["switchyard.route"] == "cloud" and a["switchyard.upstream"] == "cloud"
    assert a["switchyard.fallback"] == "local->cloud"
    assert a["switchyard.rule"] == "scorer" and "switchyard.score" in a
    assert a["switchyard.cache"] == "miss" and a["switchyard.retries"] == 1
    assert a["http.response.status_code"] == 200
    # Classification, the cache, and three attempts (two local, one cloud) under the root.
    assert [s.name for s in by_name["classify"]] == ["classify"]
    assert [s.name for s in by_name["cache lookup"]] == ["cache lookup"]
    attempts = by_name["chat llama-local"] + by_name["chat gpt-4o"]
    assert len(attempts) == 3
    for s in spans:
        if s is not root:
            assert s.parent_span_id == root.span_id, s.name
            assert s.start_time_unix_nano >= root.start_time_unix_nano
            assert s.end_time_unix_nano <= root.end_time_unix_nano
    for s in attempts:
        assert s.kind == s.SPAN_KIND_CLIENT
    failed = by_name["chat llama-local"]
    assert all(s.status.code == s.status.STATUS_CODE_ERROR for s in failed)
    assert all(attributes(s)["error.type"] == "unreachable" for s in failed)
    served = by_name["chat gpt-4o"][0]
    assert attributes(served)["http.response.status_code"] == 200
    # The attempt told its upstream where it hangs in the trace.
    sent = [r.header("traceparent") for r in cloud.requests if r.path == "/v1/chat/completions"]
    assert sent == [f"00-{trace_id}-{served.span_id.hex()}-01"]
    # Nothing anyone said is in the spans, and the resource names the service.
    everything = json.dumps([{k: str(v) for k, v in attributes(s).items()} for s in spans])
    assert SECRET not in everything and "zebras" not in everything
    services = {svc["service.name"] for svc, s in collector.spans if s.trace_id.hex() == trace_id}
    assert services == {"switchyard-under-test"}


def test_the_hybrid_stage_has_its_span_and_content_is_captured_when_asked(tmp_path, collector) -> None:
    with MockOpenAI() as mock:
        gw = start_gateway(tmp_path, mock.url, mock.url, collector.url, capture=True)
        try:
            header, trace_id, _ = new_traceparent()
            document = " ".join(f"Paragraph {i}: pool {i} keeps {i * 3} connections." for i in range(400))
            client_for(gw, header).chat.completions.create(
                model="auto", messages=[{"role": "user", "content": f"<context>\n{document}\n</context>\n{SECRET}?"}]
            )
            spans = collector.trace(trace_id, at_least=5)
        finally:
            gw.stop()
    names = [s.name for s in spans]
    hybrid = [s for s in spans if s.name == "hybrid"]
    assert len(hybrid) == 1, names
    h = attributes(hybrid[0])
    assert h["switchyard.hybrid.tokens_before"] > h["switchyard.hybrid.tokens_after"] > 0
    root = next(s for s in spans if s.name == "chat auto")
    a = attributes(root)
    assert a["switchyard.route"] == "hybrid"
    assert SECRET in a["gen_ai.input.messages"], "captured on request"
    assert json.loads(a["gen_ai.output.messages"])[0]["role"] == "assistant"


def test_an_unsampled_client_trace_is_not_recorded_but_still_propagated(tmp_path, collector) -> None:
    with MockOpenAI() as mock:
        gw = start_gateway(tmp_path, mock.url, mock.url, collector.url, capture=False)
        try:
            trace_id, parent = uuid.uuid4().hex, uuid.uuid4().hex[:16]
            client = client_for(gw, f"00-{trace_id}-{parent}-00")
            client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hello"}])
            time.sleep(1.5)
        finally:
            gw.stop()
    assert collector.trace(trace_id, at_least=1, timeout=0.5) == []
    chats = [r for r in mock.requests if r.path == "/v1/chat/completions"]
    assert [r.header("traceparent") for r in chats] == [f"00-{trace_id}-{parent}-00"]
