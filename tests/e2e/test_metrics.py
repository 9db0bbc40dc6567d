"""`/metrics` read with the Prometheus project's own text-format parser, and `/stats`, after
traffic from the official `openai` SDK: the counters move by exactly what was sent."""

from __future__ import annotations

import http.client
import json
import uuid

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import gateway_config

PRICES = """\
pricing:
  baseline: gpt-4o
  models:
    gpt-4o: {input: 2.50, output: 10.00}
    llama-local: {input: 0, output: 0}
cache: {}
"""


@pytest.fixture(scope="module")
def gateway_config_text(free_port, mock_upstream) -> str:
    return gateway_config(free_port, mock_upstream.url) + PRICES


def get(gateway, path: str) -> tuple[str, str]:
    """The content type and text of a GET answered with 200."""
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read().decode()
        assert r.status == 200, body
        return r.getheader("content-type", ""), body
    finally:
        conn.close()


def scrape(gateway) -> dict[tuple[str, frozenset], float]:
    """Every sample of `/metrics`, by name and labels; parsing fails on invalid text."""
    content_type, text = get(gateway, "/metrics")
    assert content_type.startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_counters_move_by_what_was_sent(client: openai.OpenAI, gateway, mock_upstream) -> None:
    before = scrape(gateway)
    m = f"m-{uuid.uuid4().hex[:12]}"
    local = [
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": f"{m} {i}"}])
        for i in range(3)
    ]
    cloud = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": m}]
    )
    # Twice the same deterministic request: one miss, one hit.
    for _ in range(2):
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": f"{m} again"}], temperature=0
        )
    after = scrape(gateway)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    req = "switchyard_requests_total"
    assert moved(req, route="local", upstream="local", status="200", tenant="anonymous", cache="bypass") == 3
    assert moved(req, route="cloud", upstream="cloud", status="200", tenant="anonymous", cache="bypass") == 1
    assert moved(req, route="cloud", upstream="cloud", status="200", tenant="anonymous", cache="miss") == 1
    assert moved(req, route="cloud", upstream="cloud", status="200", tenant="anonymous", cache="hit") == 1

    tokens = "switchyard_tokens_total"
    local_prompt = sum(c.usage.prompt_tokens for c in local)
    local_in = moved(tokens, upstream="local", model="llama-local", direction="prompt", source="reported", tenant="anonymous")
    assert local_in == local_prompt
    cloud_prompt = cloud.usage.prompt_tokens
    cloud_completion = cloud.usage.completion_tokens
    cloud_in = moved(tokens, upstream="cloud", model="gpt-4o", direction="prompt", source="reported", tenant="anonymous")
    miss_prompt = cloud_in - cloud_prompt
    assert miss_prompt > 0, "the miss was counted once, the hit not at all"

    spent = moved("switchyard_cost_usd_total", upstream="cloud", model="gpt-4o", tenant="anonymous")
    cloud_tokens_in = cloud_prompt + miss_prompt
    cloud_tokens_out = moved(
        tokens,
        upstream="cloud",
        model="gpt-4o",
        direction="completion",
        source="reported",
        tenant="anonymous",
    )
    assert cloud_tokens_out >= cloud_completion
    assert spent == pytest.approx((cloud_tokens_in * 2.50 + cloud_tokens_out * 10.00) / 1e6, rel=1e-9)
    # Local answers cost nothing and save the whole baseline price.
    local_out = sum(c.usage.completion_tokens for c in local)
    labels = {"upstream": "local", "model": "llama-local", "tenant": "anonymous"}
    saved = moved("switchyard_baseline_cost_usd_total", **labels) - moved("switchyard_cost_usd_total", **labels)
    assert saved == pytest.approx((local_prompt * 2.50 + local_out * 10.00) / 1e6, rel=1e-9)

    hist = "switchyard_request_duration_seconds_count"
    assert moved(hist, route="local", upstream="local") == 3


def test_stats_summarize_the_traffic(client: openai.OpenAI, gateway) -> None:
    client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "stats"}])
    stats = json.loads(get(gateway, "/stats")[1])
    assert stats["requests"]["total"] >= 1
    shares = [r["share"] for r in stats["requests"]["by_route"].values()]
    assert sum(shares) == pytest.approx(1.0)
    assert stats["cost_usd"]["saved"] >= 0
    assert stats["latency_ms"]["average"] > 0
