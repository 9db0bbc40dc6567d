"""Self-test of the mock upstream: the SDK talks to it directly, without the gateway.

If these fail, the gateway tests' failures say nothing about the gateway.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Iterator

import openai
import pytest

from mock_openai import ERRORS, TOOL_ARGUMENTS, MockOpenAI, embedding_for


@pytest.fixture(scope="module")
def mock() -> Iterator[MockOpenAI]:
    with MockOpenAI() as m:
        yield m


@pytest.fixture(scope="module")
def direct(mock: MockOpenAI) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(
        base_url=f"{mock.url}/v1",
        api_key="sk-direct",
        max_retries=0,
        timeout=10.0,
        http_client=openai.DefaultHttpxClient(trust_env=False),
    )
    yield c
    c.close()


def test_echo_and_recording(direct, mock):
    completion = direct.chat.completions.create(
        model="some-model", messages=[{"role": "user", "content": "hello mock-echo"}]
    )
    assert completion.model == "some-model"
    assert completion.choices[0].message.content == "echo: hello mock-echo"
    assert completion.choices[0].finish_reason == "stop"
    u = completion.usage
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    sent = mock.find_one("mock-echo")
    assert sent.header_values("authorization") == ["Bearer sk-direct"]
    assert sent.json["model"] == "some-model"


def test_content_parts_are_read(direct):
    completion = direct.chat.completions.create(
        model="m", messages=[{"role": "user", "content": [{"type": "text", "text": "parts"}]}]
    )
    assert completion.choices[0].message.content == "echo: parts"


def test_stream_with_usage(direct):
    chunks = list(
        direct.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "one two three"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "echo: one two three"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0


def test_tools_and_tool_result(direct):
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    first = direct.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "weather?"}], tools=[tool]
    )
    [call] = first.choices[0].message.tool_calls
    assert json.loads(call.function.arguments) == TOOL_ARGUMENTS
    assert first.choices[0].finish_reason == "tool_calls"

    second = direct.chat.completions.create(
        model="m",
        tools=[tool],
        messages=[
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny-result"},
        ],
    )
    assert "sunny-result" in second.choices[0].message.content

    args = ""
    for chunk in direct.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "weather?"}], tools=[tool], stream=True
    ):
        for d in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            args += (d.function.arguments or "") if d.function else ""
    assert json.loads(args) == TOOL_ARGUMENTS


def test_json_schema_content(direct):
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "string"},
            "b": {"type": "array", "items": {"$ref": "#/$defs/item"}},
            "c": {"anyOf": [{"type": "null"}, {"type": "integer"}]},
        },
        "$defs": {"item": {"type": "object", "properties": {"x": {"type": "boolean"}}}},
    }
    completion = direct.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "json"}],
        response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
    )
    data = json.loads(completion.choices[0].message.content)
    assert isinstance(data["a"], str) and data["b"] == [{"x": True}] and isinstance(data["c"], int)


@pytest.mark.parametrize(
    "status, error_class",
    [(429, openai.RateLimitError), (400, openai.BadRequestError), (500, openai.InternalServerError)],
)
def test_errors(direct, status, error_class):
    with pytest.raises(error_class) as info:
        direct.chat.completions.create(
            model="m", messages=[{"role": "user", "content": f"please fail with {status}"}]
        )
    assert info.value.body["message"] == ERRORS[status][3]


@pytest.mark.parametrize("encoding_format", [None, "float"])
def test_embeddings(direct, encoding_format):
    kwargs = {"encoding_format": encoding_format} if encoding_format else {}
    result = direct.embeddings.create(model="e", input="hi", **kwargs)
    assert result.data[0].embedding == embedding_for("hi")
    assert result.model == "e"


def _read_chunks(sock_file) -> list[bytes]:
    """The data of each HTTP/1.1 chunk of a chunked body."""
    chunks = []
    while True:
        size = int(sock_file.readline().strip(), 16)
        data = sock_file.read(size)
        sock_file.readline()
        if size == 0:
            return chunks
        chunks.append(data)


def test_each_sse_event_is_one_http_chunk_and_keep_alive_works(mock):
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "a b"}], "stream": True})
    request = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()
    with socket.create_connection(("127.0.0.1", mock.port), timeout=5) as sock:
        f = sock.makefile("rb")
        for _ in range(2):  # the same connection twice
            sock.sendall(request)
            assert f.readline().startswith(b"HTTP/1.1 200")
            headers = {}
            while (line := f.readline()) not in (b"\r\n", b""):
                k, v = line.decode().split(":", 1)
                headers[k.strip().lower()] = v.strip()
            assert headers["transfer-encoding"] == "chunked"
            assert headers["content-type"].startswith("text/event-stream")
            chunks = _read_chunks(f)
            for c in chunks:  # exactly one `data: ...\n\n` event per chunk
                assert c.startswith(b"data: ") and c.endswith(b"\n\n") and c.count(b"\n\n") == 1
            assert chunks[-1] == b"data: [DONE]\n\n"
            events = [json.loads(c[6:]) for c in chunks[:-1]]
            assert all(e["object"] == "chat.completion.chunk" for e in events)


def test_chunked_request_body_is_accepted(mock):
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "chunked-req"}]}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", mock.port, timeout=5)
    conn.request(
        "POST", "/v1/chat/completions", body=iter([body[:10], body[10:]]),
        headers={"Content-Type": "application/json"}, encode_chunked=True,
    )
    response = conn.getresponse()
    assert response.status == 200
    assert json.loads(response.read())["choices"][0]["message"]["content"] == "echo: chunked-req"
    conn.close()
