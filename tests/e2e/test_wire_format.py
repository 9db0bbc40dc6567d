"""The gateway's bytes on the wire, seen with plain HTTP rather than through the SDK.

The SDK re-serialises what it sends and parses what it gets, so it cannot tell whether the gateway
kept the other fields of a body byte for byte, relayed the upstream's answer unchanged, or passed
on the stream's closing `data: [DONE]`.
"""

from __future__ import annotations

import http.client
import json
import uuid
from typing import Optional

import pytest

from conftest import CLIENT_KEY, CLOUD_MODEL, LOCAL_MODEL, UPSTREAM_KEY


def marker() -> str:
    return f"m-{uuid.uuid4().hex[:12]}"


def post(
    port: int, path: str, body: bytes, headers: Optional[dict] = None
) -> tuple[http.client.HTTPResponse, bytes]:
    """POST as a client with its own key would; returns the response and its whole body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {CLIENT_KEY}", **(headers or {})}
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        return response, response.read()
    finally:
        conn.close()


# Other fields' values written the way a client may write them, which a parse-and-reserialise
# round trip would change: a \u escape, a surrogate pair, trailing zeros, an exponent, an integer
# beyond 64 bits, pretty-printing inside a value.
ODD_VALUES = {
    "temperature": "0.70",
    "top_p": "1e0",
    "x_vendor": (
        '{"nested": [1, 2.50, "\\ud83d\\ude00"], "big": 123456789012345678901234567890, "flag": null}'
    ),
}


def compact_body(model: str, m: str) -> bytes:
    messages = f'[{{"role":"user","content":"caf\\u00e9 {m}"}}]'
    fields = "".join(f',"{k}":{v}' for k, v in ODD_VALUES.items())
    return f'{{"model":"{model}","messages":{messages}{fields}}}'.encode()


def pretty_body(model: str, m: str) -> bytes:
    # Model in the middle, with spaces and newlines around the tokens.
    messages = f'[{{"role": "user", "content": "caf\\u00e9 {m}"}}]'
    fields = ",\n  ".join(f'"{k}": {v}' for k, v in ODD_VALUES.items())
    return f'{{\n  "messages": {messages},\n  "model" : "{model}",\n  {fields}\n}}'.encode()


@pytest.mark.parametrize("make_body", [compact_body, pretty_body], ids=["compact", "pretty"])
@pytest.mark.parametrize(
    "model, upstream_model", [("auto", LOCAL_MODEL), ("gpt-4o", CLOUD_MODEL)], ids=["local", "cloud"]
)
def test_other_fields_are_forwarded_byte_for_byte(
    gateway, mock_upstream, make_body, model, upstream_model
):
    m = marker()
    body = make_body(model, m)
    response, _ = post(gateway.port, "/v1/chat/completions", body)
    assert response.status == 200

    sent = mock_upstream.find_one(m)
    assert sent.json["model"] == upstream_model
    assert set(sent.json) == set(json.loads(body))
    messages_text = body[body.index(b"[") : body.index(b"]") + 1]
    for raw in [messages_text, *(v.encode() for v in ODD_VALUES.values())]:
        assert raw in sent.body, f"{raw!r} was not forwarded as written; upstream got {sent.body!r}"
    expected_auth = [f"Bearer {UPSTREAM_KEY}"] if upstream_model == CLOUD_MODEL else []
    assert sent.header_values("authorization") == expected_auth


def test_json_answer_is_relayed_unchanged(gateway, mock_upstream):
    m = marker()
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": m}]}).encode()
    response, data = post(gateway.port, "/v1/chat/completions", body)

    upstream = mock_upstream.find_one(m)
    assert response.status == upstream.response_status == 200
    assert response.getheader("content-type", "").startswith("application/json")
    assert data == upstream.response_body
    assert response.getheader("x-switchyard-route") == "cloud"


def test_error_answer_is_relayed_unchanged(gateway, mock_upstream):
    m = marker()
    messages = [{"role": "user", "content": f"please fail with 429 {m}"}]
    body = json.dumps({"model": "auto", "messages": messages}).encode()
    response, data = post(gateway.port, "/v1/chat/completions", body)

    upstream = mock_upstream.find(m)[-1]
    assert response.status == upstream.response_status == 429
    assert data == upstream.response_body


@pytest.mark.parametrize("model, route", [("auto", "local"), ("gpt-4o", "cloud")])
def test_stream_is_relayed_unchanged(gateway, mock_upstream, model, route):
    m = marker()
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": f"stream {m}"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    response, data = post(gateway.port, "/v1/chat/completions", body, {"Accept": "text/event-stream"})

    assert response.status == 200
    assert response.getheader("content-type", "").startswith("text/event-stream")
    assert response.getheader("x-switchyard-route") == route
    assert response.getheader("x-switchyard-upstream") == route
    assert response.getheader("x-request-id")
    assert data.endswith(b"data: [DONE]\n\n")
    assert data == mock_upstream.find_one(m).response_body


def test_upstream_key_replaces_client_key_on_raw_requests(gateway, mock_upstream):
    m = marker()
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": m}]}).encode()
    post(gateway.port, "/v1/chat/completions", body)
    assert mock_upstream.find_one(m).header_values("authorization") == [f"Bearer {UPSTREAM_KEY}"]
