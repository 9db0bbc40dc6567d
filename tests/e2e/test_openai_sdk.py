"""The gateway as a user of the official `openai` SDK sees it.

Every test puts a unique marker in its request, so it finds its own upstream request(s) among those
the module's mock recorded, whatever ran before it.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from conftest import CLIENT_KEY, CLOUD_MODEL, LOCAL_MODEL, UPSTREAM_KEY, WEATHER_TOOL
from mock_openai import ERRORS, MOCK_MODEL_ID, SLOW_STREAM_DELAY, TOOL_ARGUMENTS, embedding_for

def marker() -> str:
    return f"m-{uuid.uuid4().hex[:12]}"


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def chat_helpers(client: openai.OpenAI) -> Any:
    """Where `parse` and `stream` live: `client.chat.completions`, or `client.beta.chat.completions`
    in the 1.x releases before they left beta."""
    completions = client.chat.completions
    return completions if hasattr(completions, "parse") else client.beta.chat.completions


def assert_routed(headers: Any, route: str, upstream: str) -> None:
    assert headers.get("x-switchyard-route") == route
    assert headers.get("x-switchyard-upstream") == upstream
    assert headers.get("x-request-id"), "the gateway gives every response an x-request-id"


def assert_usage_consistent(usage: Any) -> None:
    assert usage is not None
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.completion_tokens > 0


# -- plain chat completions ----------------------------------------------------------------------


def test_auto_goes_to_local_upstream_with_model_rewritten(client, mock_upstream):
    m = marker()
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=user(f"hello {m}"))

    assert raw.status_code == 200
    assert_routed(raw.headers, route="local", upstream="local")
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.model == LOCAL_MODEL
    [choice] = completion.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == f"echo: hello {m}"
    assert choice.finish_reason == "stop"
    assert_usage_consistent(completion.usage)

    sent = mock_upstream.find_one(m)
    assert (sent.method, sent.path) == ("POST", "/v1/chat/completions")
    assert sent.json["model"] == LOCAL_MODEL
    assert sent.json["messages"] == user(f"hello {m}")
    assert sent.header_values("authorization") == [], "an upstream without api_key gets no Authorization"


def test_every_response_gets_its_own_request_id(client):
    ids = {
        client.chat.completions.with_raw_response.create(
            model="auto", messages=user(f"id {marker()}")
        ).headers.get("x-request-id")
        for _ in range(3)
    }
    assert None not in ids
    assert len(ids) == 3


def test_other_request_fields_reach_the_upstream_unchanged(client, mock_upstream):
    m = marker()
    extra = {"x_vendor_option": {"nested": [1, 2.5, "three"], "flag": None}}
    client.chat.completions.create(
        model="auto",
        messages=[{"role": "system", "content": "Be brief."}, *user(f"fields {m}")],
        temperature=0.3,
        top_p=0.9,
        max_tokens=50,
        seed=7,
        stop=["\n\n"],
        user="end-user-42",
        extra_body=extra,
    )
    sent = mock_upstream.find_one(m).json
    assert sent == {
        "model": LOCAL_MODEL,
        "messages": [{"role": "system", "content": "Be brief."}, *user(f"fields {m}")],
        "temperature": 0.3,
        "top_p": 0.9,
        "max_tokens": 50,
        "seed": 7,
        "stop": ["\n\n"],
        "user": "end-user-42",
        **extra,
    }


def test_gpt4o_goes_to_cloud_with_the_upstream_key(client, mock_upstream):
    m = marker()
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=user(f"cloud {m}"))

    assert_routed(raw.headers, route="cloud", upstream="cloud")
    completion = raw.parse()
    assert completion.model == CLOUD_MODEL
    assert completion.choices[0].message.content == f"echo: cloud {m}"

    sent = mock_upstream.find_one(m)
    assert sent.json["model"] == CLOUD_MODEL
    assert sent.header_values("authorization") == [f"Bearer {UPSTREAM_KEY}"]


def test_unknown_model_goes_to_default_route_unchanged(client, mock_upstream):
    m = marker()
    raw = client.chat.completions.with_raw_response.create(
        model="some-future-model", messages=user(f"unknown {m}")
    )

    assert_routed(raw.headers, route="cloud", upstream="cloud")
    assert raw.parse().model == "some-future-model"
    sent = mock_upstream.find_one(m)
    assert sent.json["model"] == "some-future-model"
    assert sent.header_values("authorization") == [f"Bearer {UPSTREAM_KEY}"]


# -- streaming ------------------------------------------------------------------------------------


def test_stream_relays_chunks(client, mock_upstream):
    m = marker()
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=user(f"stream me {m}"), stream=True
    )
    assert_routed(raw.headers, route="local", upstream="local")
    assert raw.headers.get("content-type", "").startswith("text/event-stream")

    chunks = list(raw.parse())
    assert len(chunks) >= 3, "role, content pieces and finish come as separate chunks"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert all(c.model == LOCAL_MODEL for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == f"echo: stream me {m}"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks), "no usage chunk unless include_usage is asked for"

    assert mock_upstream.find_one(m).json["stream"] is True


def test_stream_with_usage_ends_with_usage_chunk(client, mock_upstream):
    m = marker()
    stream = client.chat.completions.create(
        model="gpt-4o",
        messages=user(f"count {m}"),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    *body, last = chunks
    assert last.choices == []
    assert_usage_consistent(last.usage)
    assert all(c.usage is None for c in body)
    assert "".join(c.choices[0].delta.content or "" for c in body) == f"echo: count {m}"
    assert body[-1].choices[0].finish_reason == "stop"
    assert mock_upstream.find_one(m).json["stream_options"] == {"include_usage": True}


def test_stream_helper_accumulates_final_completion(client):
    m = marker()
    with chat_helpers(client).stream(model="auto", messages=user(f"helper {m}")) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == f"echo: helper {m}"
    assert final.choices[0].finish_reason == "stop"


def test_stream_arrives_as_produced_not_buffered(client):
    # The mock spaces these events by SLOW_STREAM_DELAY; a gateway that buffered the stream
    # would hand them all over at once.
    stream = client.chat.completions.create(
        model="auto", messages=user(f"please stream slowly {marker()}"), stream=True
    )
    arrivals = [time.monotonic() for _ in stream]
    assert len(arrivals) >= 5
    spread = arrivals[-1] - arrivals[0]
    assert spread >= 3 * SLOW_STREAM_DELAY, f"all {len(arrivals)} chunks arrived within {spread:.3f}s"


# -- tool calls -----------------------------------------------------------------------------------


def test_tool_call_round_trip(client, mock_upstream):
    m = marker()
    messages: list[dict[str, Any]] = user(f"What is the weather in Paris? {m}")
    first = client.chat.completions.create(model="gpt-4o", messages=messages, tools=[WEATHER_TOOL])

    [choice] = first.choices
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.type == "function"
    assert call.id
    assert call.function.name == "get_weather"
    assert isinstance(call.function.arguments, str), "arguments are a JSON string, as in the API"
    assert json.loads(call.function.arguments) == TOOL_ARGUMENTS
    assert mock_upstream.find_one(m).json["tools"] == [WEATHER_TOOL]

    result_marker = marker()
    tool_result = json.dumps({"temperature_c": 18, "sky": f"clear {result_marker}"})
    messages += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": tool_result},
    ]
    second = client.chat.completions.create(model="gpt-4o", messages=messages, tools=[WEATHER_TOOL])

    assert second.choices[0].finish_reason == "stop"
    assert tool_result in second.choices[0].message.content
    sent = mock_upstream.find_one(result_marker).json
    assert sent["messages"] == messages, "the conversation reaches the upstream as the client sent it"


def test_streamed_tool_call_reassembles(client, mock_upstream):
    m = marker()
    stream = client.chat.completions.create(
        model="auto", messages=user(f"Weather in Paris? {m}"), tools=[WEATHER_TOOL], stream=True
    )

    calls: dict[int, dict[str, str]] = {}
    argument_deltas = 0
    finish_reason = None
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id or ""
                if delta.function:
                    call["name"] += delta.function.name or ""
                    if delta.function.arguments:
                        call["arguments"] += delta.function.arguments
                        argument_deltas += 1
            finish_reason = choice.finish_reason or finish_reason

    assert finish_reason == "tool_calls"
    assert list(calls) == [0]
    assert calls[0]["id"]
    assert calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == TOOL_ARGUMENTS
    assert argument_deltas > 1, "the arguments arrive in fragments, as the upstream sent them"
    assert mock_upstream.find_one(m).json["tools"] == [WEATHER_TOOL]


# -- structured output ----------------------------------------------------------------------------

REPORT_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "temperature_c": {"type": "number"},
        "sunny": {"type": "boolean"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["city", "temperature_c", "sunny", "unit", "tags"],
    "additionalProperties": False,
}


def assert_matches_schema(value: Any, schema: dict) -> None:
    """Checks the JSON Schema subset that REPORT_SCHEMA uses."""
    if "enum" in schema:
        assert value in schema["enum"]
    kind = schema.get("type")
    if kind == "object":
        assert isinstance(value, dict)
        assert set(schema.get("required", [])) <= set(value)
        if schema.get("additionalProperties") is False:
            assert set(value) <= set(schema["properties"])
        for key, sub in schema["properties"].items():
            if key in value:
                assert_matches_schema(value[key], sub)
    elif kind == "array":
        assert isinstance(value, list)
        for item in value:
            assert_matches_schema(item, schema["items"])
    elif kind == "string":
        assert isinstance(value, str)
    elif kind == "number":
        assert isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind == "boolean":
        assert isinstance(value, bool)


def test_json_schema_response_format(client, mock_upstream):
    m = marker()
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "weather_report", "schema": REPORT_SCHEMA, "strict": True},
    }
    completion = client.chat.completions.create(
        model="gpt-4o", messages=user(f"Report on Paris {m}"), response_format=response_format
    )

    data = json.loads(completion.choices[0].message.content)
    assert_matches_schema(data, REPORT_SCHEMA)
    assert mock_upstream.find_one(m).json["response_format"] == response_format


class WeatherReport(BaseModel):
    city: str
    temperature_c: float
    sunny: bool


def test_parse_with_pydantic_model(client, mock_upstream):
    m = marker()
    completion = chat_helpers(client).parse(
        model="auto", messages=user(f"Report on Paris {m}"), response_format=WeatherReport
    )
    assert isinstance(completion.choices[0].message.parsed, WeatherReport)
    sent = mock_upstream.find_one(m).json["response_format"]
    assert sent["type"] == "json_schema"
    assert sent["json_schema"]["strict"] is True


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status, error_class",
    [(429, openai.RateLimitError), (400, openai.BadRequestError), (500, openai.InternalServerError)],
)
@pytest.mark.parametrize("model", ["auto", "gpt-4o"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_upstream_error_is_relayed(client, mock_upstream, status, error_class, model, stream):
    m = marker()
    with pytest.raises(error_class) as info:
        client.chat.completions.create(
            model=model, messages=user(f"please fail with {status} {m}"), stream=stream
        )

    err = info.value
    error_type, param, code, message = ERRORS[status]
    assert err.status_code == status
    assert err.response.json() == {
        "error": {"message": message, "type": error_type, "param": param, "code": code}
    }
    assert err.body["message"] == message
    assert err.type == error_type
    assert message in str(err)
    assert mock_upstream.find(m), "the request reached the upstream"


def test_empty_messages_is_refused_by_the_gateway(client, mock_upstream):
    m = marker()
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="auto", messages=[], user=m)

    err = info.value
    assert err.status_code == 400
    body = err.response.json()
    assert list(body) == ["error"]
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "messages"
    assert error["code"] is None or isinstance(error["code"], str)
    assert err.response.headers.get("content-type", "").startswith("application/json")
    assert mock_upstream.find(m) == [], "the gateway answered without asking the upstream"


# -- endpoints other than chat --------------------------------------------------------------------


def test_models_list_is_served_by_the_gateway(client, mock_upstream):
    models = client.models.list()
    ids = [model.id for model in models.data]

    assert {"auto", "gpt-4o"} <= set(ids)
    assert len(ids) == len(set(ids))
    assert all(model.object == "model" for model in models.data)
    assert MOCK_MODEL_ID not in ids
    # Only the gateway's own health checks ask the upstream for its models.
    asked = [r for r in mock_upstream.requests if r.path.startswith("/v1/models")]
    assert all((r.header("user-agent") or "").startswith("switchyard-health-check/") for r in asked)


@pytest.mark.parametrize("encoding_format", [None, "float"], ids=["sdk-default", "float"])
def test_embeddings_pass_through_with_upstream_key(client, mock_upstream, encoding_format):
    m = marker()
    text = f"hi {m}"
    kwargs = {"encoding_format": encoding_format} if encoding_format else {}
    result = client.embeddings.create(model="text-embedding-3-small", input=text, **kwargs)

    assert result.object == "list"
    [item] = result.data
    assert item.object == "embedding"
    assert item.index == 0
    assert item.embedding == embedding_for(text)
    assert result.model == "text-embedding-3-small"
    assert result.usage.total_tokens >= result.usage.prompt_tokens > 0

    sent = mock_upstream.find_one(m)
    assert (sent.method, sent.path) == ("POST", "/v1/embeddings")
    assert sent.json["model"] == "text-embedding-3-small"
    assert sent.json["input"] == text
    assert sent.header_values("authorization") == [f"Bearer {UPSTREAM_KEY}"]


# -- last: nothing the client sent as a credential reached an upstream ----------------------------


def test_client_key_never_reaches_the_upstream(client, mock_upstream):
    # One request of each kind, so this also holds when run alone; the check covers everything
    # the module's mock recorded.
    client.chat.completions.create(model="auto", messages=user("key check"))
    client.chat.completions.create(model="gpt-4o", messages=user("key check"))
    list(client.chat.completions.create(model="gpt-4o", messages=user("key check"), stream=True))
    client.embeddings.create(model="text-embedding-3-small", input="key check")

    recorded = mock_upstream.requests
    assert len(recorded) >= 4
    for request in recorded:
        raw = b"\n".join(f"{k}: {v}".encode() for k, v in request.headers) + request.body
        assert CLIENT_KEY.encode() not in raw, f"client key leaked upstream in {request.path}"
        assert set(request.header_values("authorization")) <= {f"Bearer {UPSTREAM_KEY}"}
