"""The official `openai` SDK through the gateway's hybrid stage and its checked structured output.

The local upstream (kind `ollama`) and the cloud upstream are both the mock; the mock summarizes
when the gateway asks it to, so the tests can see what the cloud was sent instead of the
document.
"""

from __future__ import annotations

import json
import uuid

import pytest
from pydantic import BaseModel

from conftest import CLOUD_MODEL, UPSTREAM_KEY, config_head

LOCAL_MODEL = "llama3.1:8b"


@pytest.fixture(scope="module")
def gateway_config_text(free_port, mock_upstream) -> str:
    head = config_head(
        free_port,
        mock_upstream.url,
        mock_upstream.url,
        local_kind="ollama",
        local_model=LOCAL_MODEL,
        local_extra="num_ctx: 8192",
    )
    return head + f"""\
models:
  - {{name: auto, upstream: local}}
default_route: {{upstream: cloud}}
routing:
  classify: [auto]
  upstreams: {{local: local, cloud: cloud, hybrid: cloud}}
  rules:
    - name: long-context
      when:
        any:
          - {{feature: system_tokens, gt: 1500}}
          - {{feature: context_tokens, gt: 1500}}
          - {{feature: last_user_tokens, gt: 1500}}
      route: hybrid
    - name: structured-output
      when: {{feature: json_schema, eq: 1}}
      route: local
      validate: true
hybrid:
  method: abstractive
  budget: 10s
"""


def document(marker: str) -> str:
    return " ".join(
        f"Paragraph {i} of the {marker} manual: pool {i} keeps {i * 3} connections open." for i in range(300)
    )


def rag_messages(marker: str) -> list[dict]:
    return [
        {"role": "system", "content": "Answer from the manual."},
        {"role": "user", "content": f"<context>\n{document(marker)}\n</context>\nHow many connections does pool 7 keep?"},
    ]


def cloud_requests(mock, marker: str) -> list:
    """Requests the mock received as the cloud (the ones carrying the gateway's upstream key)."""
    return [
        r for r in mock.requests
        if r.path == "/v1/chat/completions" and r.header("authorization") == f"Bearer {UPSTREAM_KEY}"
        and marker in json.dumps(r.json)
    ]


def test_the_cloud_reads_a_summary_instead_of_the_document(client, mock_upstream):
    marker = uuid.uuid4().hex[:10]
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=rag_messages(marker))
    completion = raw.parse()
    assert raw.headers["x-switchyard-route"] == "hybrid"
    assert raw.headers["x-switchyard-hybrid"] == "summarized"
    before = int(raw.headers["x-switchyard-tokens-before"])
    after = int(raw.headers["x-switchyard-tokens-after"])
    assert before > 4000 and after < before / 20
    assert completion.choices[0].message.content.startswith("echo: <context>\nSUMMARY: Paragraph 0 of the")

    sent = cloud_requests(mock_upstream, marker)
    assert len(sent) == 1
    user = sent[0].json["messages"][1]["content"]
    assert user == f"<context>\nSUMMARY: Paragraph 0 of the {marker}\n</context>\nHow many connections does pool 7 keep?"
    summarizer_calls = [r for r in mock_upstream.requests if r.path == "/api/chat" and marker in json.dumps(r.json)]
    assert len(summarizer_calls) == 1
    assert summarizer_calls[0].header("authorization") is None


def test_a_streaming_client_gets_the_cloud_stream_of_a_shortened_request(client, mock_upstream):
    marker = uuid.uuid4().hex[:10]
    stream = client.chat.completions.create(model="auto", messages=rag_messages(marker), stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.startswith("echo: <context>\nSUMMARY: Paragraph 0")
    assert cloud_requests(mock_upstream, marker)[0].json["stream"] is True


class Person(BaseModel):
    name: str
    age: int


def test_structured_output_is_answered_locally_when_it_holds(client, mock_upstream):
    marker = uuid.uuid4().hex[:10]
    raw = client.beta.chat.completions.with_raw_response.parse(
        model="auto",
        messages=[{"role": "user", "content": f"Extract the person ({marker}): Ann is 41."}],
        response_format=Person,
    )
    parsed = raw.parse().choices[0].message.parsed
    assert isinstance(parsed, Person)
    assert raw.headers["x-switchyard-route"] == "local"
    assert "x-switchyard-fallback" not in raw.headers
    asked = [r for r in mock_upstream.requests if r.path == "/api/chat" and marker in json.dumps(r.json)]
    assert asked and isinstance(asked[0].json["format"], dict), "the schema reached Ollama as format"
