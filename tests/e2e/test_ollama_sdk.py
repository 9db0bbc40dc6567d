"""The official `openai` SDK through the gateway to an upstream of kind `ollama`: the gateway speaks
Ollama's native `/api/chat` (so it can set `num_ctx`) and the SDK never notices."""

from __future__ import annotations

import json
import uuid

import openai
import pytest
from pydantic import BaseModel

from conftest import CLOUD_MODEL, UPSTREAM_KEY, WEATHER_TOOL, config_head
from mock_openai import TOOL_ARGUMENTS

LOCAL_MODEL = "llama3.1:8b"


@pytest.fixture(scope="module")
def gateway_config_text(free_port, mock_upstream) -> str:
    head = config_head(
        free_port,
        mock_upstream.url,
        mock_upstream.url,
        local_kind="ollama",
        local_model=LOCAL_MODEL,
        local_extra="num_ctx: 8192\nkeep_alive: 5m",
    )
    return head + f"""\
models:
  - {{name: auto, upstream: local}}
  - {{name: gpt-4o, upstream: cloud}}
  - {{name: ghost, upstream: local, model: missing-model}}
default_route:
  upstream: cloud
"""


def marker() -> str:
    return f"o-{uuid.uuid4().hex[:12]}"


def native_request(mock_upstream, m: str):
    [sent] = [r for r in mock_upstream.find(m) if r.path == "/api/chat"]
    return sent.json


def test_create(client: openai.OpenAI, mock_upstream) -> None:
    m = marker()
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": m}], max_tokens=50, temperature=0.5
    )
    answer = raw.parse()
    assert raw.headers["x-switchyard-route"] == "local"
    assert answer.choices[0].message.content == f"echo: {m}"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.model == LOCAL_MODEL
    assert answer.usage.prompt_tokens >= 1 and answer.usage.completion_tokens >= 1
    sent = native_request(mock_upstream, m)
    assert sent["stream"] is False
    assert sent["keep_alive"] == "5m"
    assert sent["options"] == {"num_predict": 50, "temperature": 0.5, "num_ctx": 8192}


def test_stream(client: openai.OpenAI, mock_upstream) -> None:
    m = marker()
    stream = client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": f"tell me {m}"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"echo: tell me {m}"
    assert len([c for c in chunks if c.choices]) > 3, "relayed piece by piece"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0
    assert native_request(mock_upstream, m)["stream"] is True


def test_tool_call_round_trip(client: openai.OpenAI, mock_upstream) -> None:
    m = marker()
    messages = [{"role": "user", "content": f"Weather in Paris? {m}"}]
    first = client.chat.completions.create(model="auto", messages=messages, tools=[WEATHER_TOOL])
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == TOOL_ARGUMENTS
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees"},
    ]
    second = client.chat.completions.create(model="auto", messages=messages, tools=[WEATHER_TOOL])
    assert second.choices[0].message.content == "The tool get_weather returned: 18 degrees"
    sent = [r.json for r in mock_upstream.find(m) if r.path == "/api/chat"][-1]
    assistant = sent["messages"][1]
    assert assistant["tool_calls"][0]["function"]["arguments"] == TOOL_ARGUMENTS
    assert sent["messages"][2]["tool_name"] == "get_weather"


def test_streamed_tool_call(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": f"Weather? {marker()}"}],
        tools=[WEATHER_TOOL],
        stream=True,
    )
    name, args, finish = "", "", None
    for chunk in stream:
        for choice in chunk.choices:
            for d in choice.delta.tool_calls or []:
                name += (d.function.name or "") if d.function else ""
                args += (d.function.arguments or "") if d.function else ""
            finish = choice.finish_reason or finish
    assert name == "get_weather" and json.loads(args) == TOOL_ARGUMENTS
    assert finish == "tool_calls"


class City(BaseModel):
    name: str
    population: int


def test_json_schema(client: openai.OpenAI, mock_upstream) -> None:
    m = marker()
    parsed = client.chat.completions.parse(
        model="auto", messages=[{"role": "user", "content": m}], response_format=City
    )
    city = parsed.choices[0].message.parsed
    assert isinstance(city, City)
    fmt = native_request(mock_upstream, m)["format"]
    assert fmt["type"] == "object" and set(fmt["properties"]) == {"name", "population"}


def test_a_model_ollama_lacks_is_answered_by_the_cloud(client: openai.OpenAI, mock_upstream) -> None:
    # Ollama answers 404 (the model is not pulled): the request falls back to the cloud rather
    # than handing the client a 404. (Without a fallback the client gets the 404 as
    # model_not_found; tests/upstreams.rs covers that.)
    m = marker()
    raw = client.chat.completions.with_raw_response.create(
        model="ghost", messages=[{"role": "user", "content": m}]
    )
    assert raw.headers["x-switchyard-fallback"] == "local->cloud"
    assert raw.headers["x-switchyard-upstream"] == "cloud"
    assert m in raw.parse().choices[0].message.content
    [tried] = [r for r in mock_upstream.find(m) if r.path == "/api/chat"]
    assert tried.json["model"] == "missing-model"
