"""A real local model behind the gateway, through the official SDK: SmolLM2-135M on llama.cpp's
server answers plain and streamed requests (the answer must come from it: the upstream header
names it and there is no fallback), and JSON-object requests checked by the gateway; a
JSON-schema request, which that server refuses, goes to the cloud mock; then the server is killed
and requests fall back to the cloud mock. The text a 135M model writes is not checked, only its
shape.
"""

from __future__ import annotations

import json
import uuid

import pytest

from conftest import CLOUD_MODEL, UPSTREAM_KEY, config_head


LOCAL_LIMITS = """\
num_ctx: 2048
retry: {attempts: 1}
# The server answers one request at a time: a health check waits behind a generation.
health: {interval: 1s, timeout: 10s, failures: 3, cooldown: 5s}
timeouts: {connect: 1s, first_byte: 60s, idle: 60s, total: 120s}
"""


@pytest.fixture(scope="module")
def gateway_config_text(free_port, mock_upstream, llama_server) -> str:
    head = config_head(
        free_port,
        f"{llama_server.url}/v1",
        mock_upstream.url,
        local_model="smollm2",
        local_extra=LOCAL_LIMITS,
    )
    return head + f"""\
models:
  - {{name: small, upstream: local}}
  - {{name: shaped, upstream: local}}
default_route: {{upstream: cloud}}
routing:
  classify: [shaped]
  upstreams: {{local: local, cloud: cloud, hybrid: cloud}}
  rules:
    - name: structured-output
      when:
        any:
          - {{feature: json_object, eq: 1}}
          - {{feature: json_schema, eq: 1}}
      route: local
      validate: true
cache:
  enabled: false
"""


QUESTION = "Name one colour of the sky."


def test_the_real_model_answers_a_plain_request(client):
    raw = client.with_options(timeout=120).chat.completions.with_raw_response.create(
        model="small", max_tokens=16, messages=[{"role": "user", "content": QUESTION}]
    )
    assert raw.headers["x-switchyard-upstream"] == "local"
    assert "x-switchyard-fallback" not in raw.headers
    answer = raw.parse()
    assert answer.object == "chat.completion"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content.strip(), "the model wrote something"
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage.prompt_tokens > 0 and 0 < answer.usage.completion_tokens <= 16


def test_the_real_model_streams(client):
    with client.with_options(timeout=120).chat.completions.with_streaming_response.create(
        model="small",
        max_tokens=16,
        stream=True,
        messages=[{"role": "user", "content": QUESTION}],
    ) as response:
        assert response.headers["x-switchyard-upstream"] == "local"
        assert "x-switchyard-fallback" not in response.headers
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip(), "the model streamed something"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes and finishes[-1] in ("stop", "length")


JSON_QUESTION = 'Reply with a JSON object with one key, "colour", naming a colour of the sky.'


@pytest.mark.parametrize("stream", [False, True])
def test_a_json_object_from_the_real_model_is_checked_and_served(client, stream):
    # The server's grammar keeps the model to JSON; the gateway parses the whole answer before
    # it goes out (a streaming client gets it replayed), so what arrives is an object.
    raw = client.with_options(timeout=120).chat.completions.with_raw_response.create(
        model="shaped",
        max_tokens=200,
        temperature=0,
        stream=stream,
        response_format={"type": "json_object"},
        messages=[{"role": "user", "content": JSON_QUESTION}],
    )
    assert raw.headers["x-switchyard-upstream"] == "local"
    assert raw.headers["x-switchyard-rule"] == "structured-output"
    assert "x-switchyard-fallback" not in raw.headers
    if stream:
        chunks = list(raw.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    else:
        answer = raw.parse()
        text = answer.choices[0].message.content
        finishes = [answer.choices[0].finish_reason]
    assert isinstance(json.loads(text), dict), text
    assert finishes == ["stop"]


def test_a_json_schema_the_server_refuses_is_answered_by_the_cloud(client, mock_upstream):
    # This server's OpenAI layer knows `json_object` but not `json_schema`, and says so with a
    # 500: the request goes to the cloud instead of failing.
    marker = uuid.uuid4().hex[:10]
    schema = {"type": "object", "properties": {"colour": {"type": "string"}}, "required": ["colour"]}
    raw = client.with_options(timeout=120).chat.completions.with_raw_response.create(
        model="shaped",
        max_tokens=50,
        response_format={"type": "json_schema", "json_schema": {"name": "sky", "schema": schema}},
        messages=[{"role": "user", "content": f"({marker}) {JSON_QUESTION}"}],
    )
    assert raw.headers["x-switchyard-fallback"] == "local->cloud"
    assert raw.headers["x-switchyard-upstream"] == "cloud"
    assert mock_upstream.find(marker), "the cloud mock answered"


def test_with_the_model_server_dead_requests_go_to_the_cloud(client, llama_server, mock_upstream):
    llama_server.kill()
    marker = uuid.uuid4().hex[:10]
    raw = client.chat.completions.with_raw_response.create(
        model="small", messages=[{"role": "user", "content": f"({marker}) {QUESTION}"}]
    )
    assert raw.headers["x-switchyard-fallback"] == "local->cloud"
    assert raw.headers["x-switchyard-upstream"] == "cloud"
    assert marker in raw.parse().choices[0].message.content
    assert mock_upstream.find(marker), "the cloud mock answered"
