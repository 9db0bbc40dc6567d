"""The response cache as a user of the official `openai` SDK sees it: a stored answer replays in
the form the SDK asks for (JSON or stream), tool calls included, with no upstream call.

Each test puts a unique marker in its request, so the mock's recorded requests tell how many
times the upstream was asked.
"""

from __future__ import annotations

import json
import uuid

import openai
import pytest

from conftest import WEATHER_TOOL, gateway_config
from mock_openai import TOOL_ARGUMENTS

@pytest.fixture(scope="module")
def gateway_config_text(free_port, mock_upstream) -> str:
    return gateway_config(free_port, mock_upstream.url) + "cache:\n  ttl: 5m\n"


def marker() -> str:
    return f"c-{uuid.uuid4().hex[:12]}"


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_a_repeated_request_is_answered_from_the_cache(client: openai.OpenAI, mock_upstream) -> None:
    m = marker()
    first = client.chat.completions.with_raw_response.create(
        model="auto", messages=ask(m), temperature=0
    )
    second = client.chat.completions.with_raw_response.create(
        model="auto", messages=ask(m), temperature=0
    )
    assert first.headers["x-switchyard-cache"] == "miss"
    assert second.headers["x-switchyard-cache"] == "hit"
    a, b = first.parse(), second.parse()
    assert b.id == a.id and b.choices[0].message.content == f"echo: {m}"
    assert b.usage is not None and b.usage.total_tokens == a.usage.total_tokens
    assert len(mock_upstream.find(m)) == 1


def test_a_json_answer_replays_as_a_stream(client: openai.OpenAI, mock_upstream) -> None:
    m = marker()
    client.chat.completions.create(model="auto", messages=ask(m), temperature=0)
    stream = client.chat.completions.create(
        model="auto",
        messages=ask(m),
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"echo: {m}"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert len(mock_upstream.find(m)) == 1


def test_a_streamed_answer_replays_as_json(client: openai.OpenAI, mock_upstream) -> None:
    m = marker()
    chunks = list(
        client.chat.completions.create(model="auto", messages=ask(m), temperature=0, stream=True)
    )
    # The gateway asked the upstream for usage; the SDK, which did not, sees no usage chunk.
    assert all(c.choices for c in chunks)
    assert json.loads(mock_upstream.find_one(m).body)["stream_options"] == {"include_usage": True}
    again = client.chat.completions.create(model="auto", messages=ask(m), temperature=0)
    assert again.choices[0].message.content == f"echo: {m}"
    assert again.usage is not None and again.usage.completion_tokens > 0
    assert len(mock_upstream.find(m)) == 1


def test_tool_calls_replay_in_both_forms(client: openai.OpenAI, mock_upstream) -> None:
    m = marker()
    first = client.chat.completions.create(
        model="auto", messages=ask(f"weather in Paris? {m}"), tools=[WEATHER_TOOL], temperature=0
    )
    call = first.choices[0].message.tool_calls[0]
    stream = client.chat.completions.create(
        model="auto",
        messages=ask(f"weather in Paris? {m}"),
        tools=[WEATHER_TOOL],
        temperature=0,
        stream=True,
    )
    ids, names, args, finish = set(), "", "", None
    for chunk in stream:
        for choice in chunk.choices:
            for d in choice.delta.tool_calls or []:
                if d.id:
                    ids.add(d.id)
                if d.function:
                    names += d.function.name or ""
                    args += d.function.arguments or ""
            finish = choice.finish_reason or finish
    assert ids == {call.id} and names == "get_weather"
    assert json.loads(args) == TOOL_ARGUMENTS
    assert finish == "tool_calls"
    assert len(mock_upstream.find(m)) == 1


def test_warm_requests_and_no_store_go_upstream(client: openai.OpenAI, mock_upstream) -> None:
    m = marker()
    for _ in range(2):
        r = client.chat.completions.with_raw_response.create(
            model="auto", messages=ask(m), temperature=0.8
        )
        assert r.headers["x-switchyard-cache"] == "bypass"
    r = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=ask(m),
        temperature=0,
        extra_headers={"Cache-Control": "no-store"},
    )
    assert r.headers["x-switchyard-cache"] == "bypass"
    assert len(mock_upstream.find(m)) == 3
