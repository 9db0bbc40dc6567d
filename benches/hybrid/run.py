#!/usr/bin/env python3
"""Measures the hybrid stage on the set that build.py makes.

Each request goes through a real switchyard process whose every `auto` request is routed
hybrid, to a mock cloud on 127.0.0.1 that records what it receives. For each method the script
reports the share of requests actually shortened, prompt tokens before and after (the gateway's
estimates, from its x-switchyard-tokens-* headers), the stage's own time (p50/p95, from the
access log), and fact retention: the share of requests whose answer-bearing fact is still in
what the cloud received.

    python3 benches/hybrid/build.py
    cargo build --release
    python3 benches/hybrid/run.py --method extractive
    python3 benches/hybrid/run.py --method abstractive --local-url http://127.0.0.1:8091 \\
        --local-model smollm2 --num-ctx 2048 --budget 120s --summary-tokens 128

`--routing` also reports how the default configuration (conf/switchyard.yaml) routes the set.
Standard library only.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ANSWER = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": "gpt-4o",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}).encode()


class Cloud(http.server.ThreadingHTTPServer):
    """A cloud model that records every chat request body and answers `ok`."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), CloudHandler)
        self.received: list[dict] = []
        self.lock = threading.Lock()


class CloudHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 (the standard library's spelling)
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.received.append(json.loads(body))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(ANSWER)))
        self.end_headers()
        self.wfile.write(ANSWER)

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(args, port: int, cloud_port: int, log: Path) -> str:
    """A configuration that sends every `auto` request down the hybrid route."""
    local_url = args.local_url or "http://127.0.0.1:9"
    num_ctx = f"\n    num_ctx: {args.num_ctx}" if args.num_ctx else ""
    return f"""
server:
  listen: "127.0.0.1:{port}"
upstreams:
  local:
    kind: openai
    route: local
    url: "{local_url}"
    model: {args.local_model}{num_ctx}
    retry: {{attempts: 1}}
    health: {{active: false}}
    timeouts: {{connect: 2s, first_byte: 300s, idle: 300s, total: 600s}}
  cloud:
    kind: openai
    route: cloud
    url: "http://127.0.0.1:{cloud_port}"
    model: gpt-4o
    api_key: sk-bench
    health: {{active: false}}
models:
  - {{name: auto, upstream: local}}
default_route: {{upstream: cloud}}
routing:
  classify: [auto]
  upstreams: {{local: local, cloud: cloud, hybrid: cloud}}
  rules:
    - {{name: everything-hybrid, route: hybrid}}
hybrid:
  method: {args.method}
  budget: {args.budget}
  summary_tokens: {args.summary_tokens}
  keep_ratio: {args.keep_ratio}
access_log:
  path: "{log}"
"""


def start(binary: Path, conf: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([str(binary), "--config", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("switchyard did not start")


def post(port: int, body: dict, timeout: float) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body),
                 headers={"content-type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    headers = {k.lower(): v for k, v in resp.getheaders()}
    conn.close()
    return resp.status, headers


def text_of(messages: list[dict]) -> str:
    """All the text a cloud model would read."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out.extend(p.get("text", "") for p in content if isinstance(p, dict))
        for call in m.get("tool_calls") or []:
            out.append(call.get("function", {}).get("arguments", ""))
    return "\n".join(out)


def squash(text: str) -> str:
    return " ".join(text.split())


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def measure(args, rows: list[dict], label: str) -> dict:
    binary = Path(args.binary)
    cloud = Cloud()
    threading.Thread(target=cloud.serve_forever, daemon=True).start()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "access.log"
        conf = Path(tmp) / "switchyard.yaml"
        conf.write_text(config(args, port, cloud.server_address[1], log))
        proc = start(binary, conf, port)
        results = []
        try:
            for row in rows:
                before_count = len(cloud.received)
                status, headers = post(port, row["request"], timeout=900)
                got = cloud.received[before_count:]
                received = text_of(got[-1]["messages"]) if got else ""
                if args.dump and squash(row["fact"]) not in squash(received):
                    Path(args.dump).mkdir(parents=True, exist_ok=True)
                    (Path(args.dump) / f"{row['id']}.txt").write_text(
                        f"QUESTION: {row['question']}\nFACT: {row['fact']}\n\n{received}")
                results.append({
                    "id": row["id"],
                    "status": status,
                    "done": headers.get("x-switchyard-hybrid", ""),
                    "before": int(headers.get("x-switchyard-tokens-before", "0")),
                    "after": int(headers.get("x-switchyard-tokens-after", "0")),
                    "kept": squash(row["fact"]) in squash(received),
                })
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        stage_ms = []
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("hybrid_ms") is not None and entry.get("path") == "/v1/chat/completions":
                stage_ms.append(entry["hybrid_ms"])
    cloud.shutdown()
    shortened = [r for r in results if not r["done"].startswith("skipped")]
    before = sum(r["before"] for r in results)
    after = sum(r["after"] for r in results)
    outcomes: dict[str, int] = {}
    for r in results:
        outcomes[r["done"]] = outcomes.get(r["done"], 0) + 1
    return {
        "set": label,
        "requests": len(results),
        "errors": sum(1 for r in results if r["status"] != 200),
        "shortened": len(shortened),
        "outcomes": outcomes,
        "tokens_before": before,
        "tokens_after": after,
        "reduction": 1 - after / before if before else 0.0,
        "retention": sum(1 for r in results if r["kept"]) / len(results) if results else 0.0,
        "retention_shortened": (sum(1 for r in shortened if r["kept"]) / len(shortened)
                                if shortened else float("nan")),
        "stage_p50_ms": percentile(stage_ms, 0.5),
        "stage_p95_ms": percentile(stage_ms, 0.95),
    }


def routing(args, rows: list[dict]) -> dict[str, int]:
    """How the default configuration routes each request (a dry run, nothing is sent)."""
    counts: dict[str, int] = {}
    env = dict(os.environ, OPENAI_API_KEY="sk-dry-run")
    for row in rows:
        out = subprocess.run([args.binary, "route", "--config", str(ROOT / "conf/switchyard.yaml")],
                             input=json.dumps(row["request"]).encode(), capture_output=True,
                             env=env, check=True)
        decision = json.loads(out.stdout)
        key = f"{decision['route']} ({decision['rule']})"
        counts[key] = counts.get(key, 0) + 1
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="extractive", choices=["extractive", "abstractive", "both"])
    p.add_argument("--data", default=str(ROOT / "benches/hybrid/out"))
    p.add_argument("--binary", default=str(ROOT / "target/release/switchyard"))
    p.add_argument("--local-url", help="an OpenAI-compatible local model server (abstractive, both)")
    p.add_argument("--local-model", default="smollm2")
    p.add_argument("--num-ctx", type=int, help="the local model's context, in tokens")
    p.add_argument("--budget", default="3s")
    p.add_argument("--summary-tokens", type=int, default=256)
    p.add_argument("--keep-ratio", type=float, default=0.25)
    p.add_argument("--limit", type=int, help="only the first N requests of each set")
    p.add_argument("--routing", action="store_true", help="also dry-run the default routing")
    p.add_argument("--json", help="write the results here too")
    p.add_argument("--dump", help="write what the cloud received for each lost fact into this folder")
    args = p.parse_args()

    data = Path(args.data)
    sets = {}
    for name in ("rag", "conversations"):
        path = data / f"{name}.jsonl"
        if not path.exists():
            sys.exit(f"{path} is missing: run benches/hybrid/build.py first")
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        sets[name] = rows[: args.limit] if args.limit else rows

    report = [measure(args, rows, name) for name, rows in sets.items()]
    print(f"method {args.method}, budget {args.budget}, keep_ratio {args.keep_ratio}, "
          f"summary_tokens {args.summary_tokens}")
    print("| set | requests | shortened | prompt tokens before → after | fewer | fact kept (all / shortened) | stage p50 / p95 ms | outcomes |")
    print("|---|---:|---:|---|---:|---|---|---|")
    for r in report:
        print(f"| {r['set']} | {r['requests']} | {r['shortened']} | {r['tokens_before']} → {r['tokens_after']} "
              f"| {r['reduction']:.0%} | {r['retention']:.0%} / {r['retention_shortened']:.0%} "
              f"| {r['stage_p50_ms']:.2f} / {r['stage_p95_ms']:.2f} | {r['outcomes']} |")
    if args.routing:
        for name, rows in sets.items():
            print(f"default routing of {name}: {routing(args, rows)}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
