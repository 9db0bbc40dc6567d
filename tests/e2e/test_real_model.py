"""The hybrid stage with a real local model: llama.cpp's server running SmolLM2-135M writes a real
summary, and the cloud (the mock) receives it in place of the document. The text a 135M model
writes is not checked, only its shape.

`tests/small_model.sh` installs the server and the model; tests/run.sh then points
SWITCHYARD_LLAMA_PYTHON and SWITCHYARD_SMALL_MODEL at them. Without them the test is skipped,
unless SWITCHYARD_REQUIRE_SMALL_MODEL is set (as in CI), where it fails.
"""

from __future__ import annotations

import json
import uuid

import pytest

from conftest import CLOUD_MODEL, UPSTREAM_KEY, config_head

# A 135M model on two CPU threads: one try, and time to write a summary.
SMOLLM2_LIMITS = """\
num_ctx: 2048
retry: {attempts: 1}
timeouts: {connect: 2s, first_byte: 120s, idle: 120s, total: 300s}
"""


@pytest.fixture(scope="module")
def gateway_config_text(free_port, mock_upstream, llama_server) -> str:
    head = config_head(
        free_port,
        llama_server.url,
        mock_upstream.url,
        local_model="smollm2",
        local_extra=SMOLLM2_LIMITS,
    )
    return head + f"""\
models:
  - {{name: auto, upstream: local}}
default_route: {{upstream: cloud}}
routing:
  classify: [auto]
  upstreams: {{local: local, cloud: cloud, hybrid: cloud}}
  rules:
    - {{name: all-hybrid, route: hybrid}}
hybrid:
  method: abstractive
  budget: 240s
  summary_tokens: 48
"""


DOCUMENT = "\n\n".join(
    f"The harbour office of Port {name} opens at {hour} in the morning and closes at {hour + 9}. "
    f"Ferries to the island of {name}ia leave every {minutes} minutes from pier {pier}. "
    f"A day ticket costs {price} euros; children under twelve travel free."
    for name, hour, minutes, pier, price in [
        ("Alder", 6, 20, 3, 12), ("Birch", 7, 30, 5, 9), ("Cedar", 5, 15, 1, 14),
        ("Dogwood", 8, 45, 2, 7), ("Elm", 6, 25, 4, 11), ("Fir", 7, 35, 6, 8),
        ("Gum", 5, 40, 7, 13), ("Hazel", 8, 50, 8, 6), ("Ivy", 6, 10, 9, 15),
        ("Juniper", 7, 55, 10, 10), ("Kauri", 5, 60, 11, 16), ("Larch", 8, 5, 12, 5),
    ]
) * 3


def test_a_real_local_model_writes_the_summary_the_cloud_reads(client, mock_upstream):
    marker = uuid.uuid4().hex[:10]
    question = f"({marker}) When does the first ferry to Cedaria leave, and from which pier?"
    raw = client.with_options(timeout=300).chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": f"Context:\n{DOCUMENT}\n\nQuestion: {question}"}],
    )
    assert raw.headers["x-switchyard-route"] == "hybrid"
    assert raw.headers["x-switchyard-hybrid"] == "summarized", raw.headers.get("x-switchyard-hybrid")
    before = int(raw.headers["x-switchyard-tokens-before"])
    after = int(raw.headers["x-switchyard-tokens-after"])
    assert after < before * 0.8, (before, after)
    raw.parse()

    sent = [r for r in mock_upstream.requests if marker in json.dumps(r.json)
            and r.header("authorization") == f"Bearer {UPSTREAM_KEY}"]
    assert len(sent) == 1
    content = sent[0].json["messages"][0]["content"]
    assert content.startswith("Context:\n") and content.endswith(f"Question: {question}"), content
    summary = content[len("Context:\n"): -len(f"Question: {question}")].strip()
    assert summary and summary != DOCUMENT.strip(), "the model wrote a summary"
    assert len(summary) < len(DOCUMENT) / 2
