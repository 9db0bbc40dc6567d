"""Gateway keys through the official SDK: a missing or wrong key raises AuthenticationError, a model
the key may not use raises PermissionDeniedError, and the right key gets its answer."""

from __future__ import annotations

import hashlib

import openai
import pytest

from conftest import CLOUD_MODEL, LOCAL_MODEL, UPSTREAM_KEY, config_head

KEY = "sy-sdk-team-0123456789abcdef"
ONCE = "sy-sdk-once-0123456789abcdef"


@pytest.fixture(scope="module")
def gateway_config_text(free_port, mock_upstream) -> str:
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    once = hashlib.sha256(ONCE.encode()).hexdigest()
    return config_head(free_port, mock_upstream.url, mock_upstream.url) + f"""\
models:
  - {{name: auto, upstream: local}}
  - {{name: gpt-4o, upstream: cloud}}
default_route: {{upstream: cloud}}
keys:
  - name: sdk-team
    sha256: {digest}
    models: [auto]
  - name: once-a-minute
    sha256: {once}
    requests_per_minute: 1
"""


def sdk(gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gateway.base_url}/v1",
        api_key=key,
        max_retries=0,
        timeout=20.0,
        http_client=openai.DefaultHttpxClient(trust_env=False),
    )


def test_the_right_key_gets_in_and_others_are_told_why(gateway):
    messages = [{"role": "user", "content": "hello"}]
    answer = sdk(gateway, KEY).chat.completions.create(model="auto", messages=messages)
    assert answer.choices[0].message.content == "echo: hello"

    with pytest.raises(openai.AuthenticationError) as wrong:
        sdk(gateway, "sy-not-a-key-at-all").chat.completions.create(model="auto", messages=messages)
    assert wrong.value.code == "invalid_api_key"
    assert "sy-not-a-key-at-all" not in str(wrong.value)

    with pytest.raises(openai.PermissionDeniedError) as denied:
        sdk(gateway, KEY).chat.completions.create(model="gpt-4o", messages=messages)
    assert denied.value.code == "model_not_allowed"


def test_a_key_over_its_limit_gets_the_sdks_rate_limit_error(gateway):
    client = sdk(gateway, ONCE)
    messages = [{"role": "user", "content": "hello"}]
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=messages)
    assert raw.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="auto", messages=messages)
    assert limited.value.code == "rate_limit_exceeded"
    assert int(limited.value.response.headers["retry-after"]) >= 1
