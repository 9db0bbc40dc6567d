"""The Grafana dashboard in deploy/grafana against a real Prometheus: it scrapes a gateway every
second while mixed traffic goes through (local and cloud answers, a cache hit, a bad request, a
local failure that falls back, a hybrid request), and every query of every panel must return
data. A panel whose query matches nothing is a defect, found here rather than on a screen.

Prometheus comes from the Debian package (`.ci/run` installs it); without it the test is skipped,
unless SWITCHYARD_REQUIRE_PROMETHEUS is set (as in CI), where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from typing import Iterator

import openai
import pytest

from conftest import CLOUD_MODEL, REPO_ROOT, UPSTREAM_KEY, config_head, find_free_port, wait_for_port
from mock_openai import MockOpenAI

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "switchyard.json"
# What Grafana puts in for its own variables, at the scale of this test's few seconds.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "5m"}


@pytest.fixture(scope="module")
def local_upstream() -> Iterator[MockOpenAI]:
    with MockOpenAI() as mock:
        yield mock


@pytest.fixture(scope="module")
def gateway_config_text(free_port, mock_upstream, local_upstream) -> str:
    head = config_head(
        free_port,
        local_upstream.url,
        mock_upstream.url,
        local_kind="ollama",
        local_model="llama3.1:8b",
        local_extra="num_ctx: 8192\nretry: {attempts: 1}\nhealth: {interval: 200ms}",
        cloud_extra="retry: {attempts: 1}",
    )
    return head + f"""\
models:
  - {{name: auto, upstream: local}}
  - {{name: gpt-4o, upstream: cloud}}
default_route: {{upstream: cloud}}
routing:
  classify: [auto]
  upstreams: {{local: local, cloud: cloud, hybrid: cloud}}
  rules:
    - name: long-context
      when: {{feature: last_user_tokens, gt: 1500}}
      route: hybrid
pricing:
  baseline: gpt-4o
  models:
    gpt-4o: {{input: 2.50, output: 10.00}}
    llama3.1:8b: {{input: 0, output: 0}}
cache:
  ttl: 10m
hybrid:
  method: abstractive
  budget: 10s
"""


@pytest.fixture(scope="module")
def prometheus(gateway, tmp_path_factory) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        message = "no Prometheus: `apt-get install prometheus`"
        if os.environ.get("SWITCHYARD_REQUIRE_PROMETHEUS"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    work = tmp_path_factory.mktemp("prometheus")
    config = work / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: switchyard\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{gateway.port}']}}]\n"
    )
    port = find_free_port()
    log = work / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={work / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=out, stderr=out, cwd=work,
        )
    wait_for_port(port, proc, log, "Prometheus", 60.0)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


def query(prometheus: str, expr: str) -> list:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def scraped_requests(prometheus: str) -> float:
    result = query(prometheus, "sum(switchyard_requests_total)")
    return float(result[0]["value"][1]) if result else 0.0


def wait_for_scrape_of(prometheus: str, at_least: float, timeout: float = 30.0) -> None:
    """Waits until Prometheus has scraped at least `at_least` answered requests."""
    deadline = time.monotonic() + timeout
    while scraped_requests(prometheus) < at_least:
        assert time.monotonic() < deadline, "Prometheus never scraped the traffic"
        time.sleep(0.25)


def traffic(client: openai.OpenAI, round_: int) -> int:
    """Sends one round of mixed traffic; returns how many requests the gateway answered."""
    ask = lambda model, text, **kw: client.chat.completions.create(  # noqa: E731
        model=model, messages=[{"role": "user", "content": text}], **kw
    )
    sent = 0
    for i in range(3):
        ask("auto", f"round {round_}: a short local question {i}")
        sent += 1
    for i in range(2):
        ask("gpt-4o", f"round {round_}: a cloud question {i}")
        sent += 1
    # The same deterministic question twice: the second is a cache hit.
    for _ in range(2):
        ask("auto", "what is two and two?", temperature=0)
        sent += 1
    # A bad request, and a local failure that falls back to the cloud (which fails too).
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="auto", messages=[])
    sent += 1
    with pytest.raises(openai.InternalServerError):
        ask("auto", f"round {round_}: please fail with 500")
    sent += 1
    # A long document: the hybrid stage summarizes it on the local model for the cloud.
    document = " ".join(f"Section {i} of manual {round_}: pool {i} keeps {i * 3} open." for i in range(400))
    ask("auto", f"<context>\n{document}\n</context>\nHow many does pool 7 keep?")
    sent += 1
    return sent


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            found.append((f"{panel['title']} [{target['refId']}]", expr))
    return found


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "switchyard" and dashboard["title"] == "Switchyard"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys(), panel["title"]
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for subject in ["route", "error", "local share", "cost", "saved", "cache", "first token",
                    "duration", "health", "fallback", "hybrid"]:
        assert subject in titles, f"no panel about {subject}"


def test_every_panel_query_returns_data(client, prometheus, gateway) -> None:
    answered = traffic(client, 1)
    wait_for_scrape_of(prometheus, answered)
    # A second round after the first scrape, so that rates and quantiles have two samples to
    # work from.
    answered += traffic(client, 2)
    wait_for_scrape_of(prometheus, answered)
    empty = []
    for name, expr in panel_queries():
        result = query(prometheus, expr)
        values = [float(r["value"][1]) for r in result]
        if not values or all(v != v for v in values):  # nothing, or only NaN
            empty.append(f"{name}: {expr}")
    assert empty == [], "panels with no data:\n" + "\n".join(empty)
