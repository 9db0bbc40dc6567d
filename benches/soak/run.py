"""The soak run: mixed load through a real gateway for a fixed time while faults are injected.

Starts two mock upstreams (``mock.py``: a local one speaking Ollama's native API, a cloud one
speaking OpenAI's) and the gateway with keys, a rate-limited key, routing rules, the cache and
the hybrid stage; then for ``--duration`` seconds ``--concurrency`` clients send chat requests:
streamed and not, short (local), explicit cloud, long-context (hybrid), repeated (cache hits),
under several keys. Every prompt carries a nonce, and the answer must echo it.

Faults: the mocks answer some requests with 500 or 429, hang on some, and die in the middle of
some; every ``--kill-every`` seconds the local mock is stopped for ``--kill-for`` seconds
(refused connections); every ``--reload-every`` seconds the gateway gets SIGHUP.

Checks, printed at the end (exit status 1 when one fails):

* every request answered: a 200 whose text holds its nonce, or an OpenAI-shaped JSON error
  (a stream may end with an error event when its upstream died mid-stream);
* no answer holds another request's nonce;
* no panic in the gateway's log, and the upstream key in no answer and no log line;
* RSS idle before the load, at its peak, and after it; open file descriptors before, a quarter
  into the load, at the peak and after (no more after than a quarter in: no growth).

    bash benches/soak.sh                     # 10 minutes
    DURATION=60 bash benches/soak.sh         # a short run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
UPSTREAM_KEY = "sk-soak-upstream-key-0f1e2d3c4b5a"
KEYS = {"team-a": "sy-soak-team-a-0123456789", "team-b": "sy-soak-team-b-0123456789"}
LIMITED = ("limited", "sy-soak-limited-0123456789")
FAULTS = "500=0.03,429=0.03,hang=0.003,die=0.02"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def config(port: int, local: int, cloud: int) -> str:
    keys = "".join(f"  - name: {n}\n    sha256: {sha256(k)}\n" for n, k in KEYS.items())
    keys += f"  - name: {LIMITED[0]}\n    sha256: {sha256(LIMITED[1])}\n    requests_per_minute: 60\n"
    timeouts = "    timeouts: {connect: 1s, first_byte: 3s, idle: 3s, total: 20s}\n"
    health = "    health: {interval: 1s, timeout: 500ms, failures: 3, cooldown: 2s}\n"
    return f"""
server:
  listen: "127.0.0.1:{port}"
upstreams:
  local:
    kind: ollama
    route: local
    url: "http://127.0.0.1:{local}"
    model: llama3.1:8b
    num_ctx: 8192
{timeouts}{health}  cloud:
    kind: openai
    route: cloud
    url: "http://127.0.0.1:{cloud}"
    model: gpt-4o
    api_key: "{UPSTREAM_KEY}"
{timeouts}{health}models:
  - {{name: auto, upstream: local}}
  - {{name: gpt-4o, upstream: cloud}}
default_route: {{upstream: cloud}}
routing:
  classify: [auto]
  upstreams: {{local: local, cloud: cloud, hybrid: cloud}}
  rules:
    - name: long-context
      when:
        any:
          - {{feature: context_tokens, gt: 1500}}
          - {{feature: last_user_tokens, gt: 1500}}
      route: hybrid
    - {{name: rest-local, route: local}}
hybrid:
  budget: 5s
keys:
{keys}"""


DOCUMENT = " ".join(f"Line {i}: the pool {i} holds {i * 3} connections and drains in {i % 7} seconds." for i in range(220))


class Tally:
    def __init__(self) -> None:
        self.sent = 0
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.stream_errors = 0
        self.unanswered: list[str] = []
        self.mixed: list[str] = []
        self.leaks = 0
        self.kinds: dict[str, int] = {}
        self.resent = 0

    def error(self, status: int, code: str | None) -> None:
        k = f"{status} {code}"
        self.errors[k] = self.errors.get(k, 0) + 1


def check_error_body(text: str) -> str | None:
    try:
        e = json.loads(text)["error"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(e, dict) or not e.get("message") or "type" not in e or "param" not in e or "code" not in e:
        return None
    return e.get("code") or e.get("type")


def nonces_in(text: str) -> set[str]:
    out = set()
    i = text.find("nonce-")
    while i >= 0:
        out.add(text[i : i + 18])
        i = text.find("nonce-", i + 1)
    return out


class Conn:
    """One keep-alive HTTP/1.1 client connection, opened again whenever the gateway closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict, headers: dict[str, str], tally: "Tally") -> tuple[int, str]:
        reused = self.writer is not None
        try:
            return await self.send(path, body, headers)
        except asyncio.IncompleteReadError as e:
            if not reused or e.partial:
                raise
        # The gateway closed this kept-alive connection before reading the request (it closes
        # after a stream that ended with an error): send it again on a new one, as HTTP
        # clients do when a reused connection turns out closed.
        tally.resent += 1
        return await self.send(path, body, headers)

    async def send(self, path: str, body: dict, headers: dict[str, str]) -> tuple[int, str]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        data = json.dumps(body).encode()
        head = f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        try:
            self.writer.write(head.encode() + data)
            await self.writer.drain()
            return await asyncio.wait_for(self.read(), 60)
        except BaseException:
            self.close()
            raise

    async def read(self) -> tuple[int, str]:
        r = self.reader
        assert r is not None
        lines = (await r.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        h = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                h[k.strip().lower()] = v.strip().lower()
        if "content-length" in h:
            body = await r.readexactly(int(h["content-length"]))
        elif "chunked" in h.get("transfer-encoding", ""):
            body = b""
            while True:
                size = int((await r.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                if size == 0:
                    await r.readuntil(b"\r\n")
                    break
                body += await r.readexactly(size)
                await r.readexactly(2)
        else:
            body = await r.read()
            h["connection"] = "close"
        if h.get("connection") == "close":
            self.close()
        return status, body.decode("utf-8", "replace")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def one(conn: Conn, tally: Tally, rng: random.Random, cached: list[str]) -> None:
    kind = rng.choices(["local", "cloud", "hybrid", "cached", "limited"], [40, 25, 10, 20, 5])[0]
    stream = rng.random() < 0.5
    nonce = f"nonce-{rng.getrandbits(48):012x}"
    key = rng.choice(list(KEYS.values()))
    model = "auto"
    text = f"Say hello. {nonce}"
    if kind == "cloud":
        model = "gpt-4o"
    elif kind == "hybrid":
        text = f"<context>{DOCUMENT}</context>\nQuestion: how many connections does pool 7 hold? {nonce}"
    elif kind == "cached":
        text = rng.choice(cached)
        nonce = text.split()[-1]
    elif kind == "limited":
        key = LIMITED[1]
    tally.kinds[kind] = tally.kinds.get(kind, 0) + 1
    body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": text}]}
    headers = {"authorization": f"Bearer {key}"}
    tally.sent += 1
    try:
        status, raw = await conn.post("/v1/chat/completions", body, headers, tally)
    except Exception as e:  # a reset, a timeout: not answered
        tally.unanswered.append(f"{kind} stream={stream}: {type(e).__name__} {e}")
        return
    if UPSTREAM_KEY in raw:
        tally.leaks += 1
    if status != 200:
        code = check_error_body(raw)
        if code is None:
            tally.unanswered.append(f"{kind}: {status} not OpenAI-shaped: {raw[:200]}")
        else:
            tally.error(status, code)
        return
    if stream:
        content, ended, broke = "", False, False
        for event in raw.split("\n\n"):
            data = event.removeprefix("data: ").strip()
            if not data:
                continue
            if data == "[DONE]":
                ended = True
                continue
            try:
                v = json.loads(data)
            except ValueError:
                tally.unanswered.append(f"{kind}: not an SSE event: {data[:120]}")
                return
            if "error" in v:
                if check_error_body(data) is None:
                    tally.unanswered.append(f"{kind}: an error event not OpenAI-shaped: {data[:120]}")
                    return
                tally.stream_errors += 1
                ended = broke = True
                continue
            for c in v.get("choices", []):
                content += (c.get("delta") or {}).get("content") or ""
        if not ended:
            tally.unanswered.append(f"{kind}: a stream without [DONE] or an error event")
            return
        if broke:
            # The upstream died mid-stream: what came before the error event is a prefix of
            # the answer, which may end inside the nonce but must not hold another one.
            if any(not nonce.startswith(f) for f in nonces_in(content)):
                tally.mixed.append(f"{kind}: asked {nonce}, got {content[:120]!r} before an error")
            return
    else:
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            tally.unanswered.append(f"{kind}: a 200 that is not a completion: {raw[:200]}")
            return
    tally_content(tally, kind, nonce, content)


def tally_content(tally: Tally, kind: str, nonce: str, content: str) -> None:
    """A whole answer must hold its own nonce and no other."""
    found = nonces_in(content)
    if found != {nonce}:
        tally.mixed.append(f"{kind}: asked {nonce}, got {sorted(found)} in {content[:120]!r}")
    else:
        tally.ok += 1


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def start_mock(port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE / "mock.py"), "--port", str(port), "--faults", FAULTS])


def wait_port(port: int, limit: float = 20) -> None:
    until = time.time() + limit
    while time.time() < until:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--duration", type=float, default=600)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--kill-every", type=float, default=90)
    ap.add_argument("--kill-for", type=float, default=10)
    ap.add_argument("--reload-every", type=float, default=45)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="soak-"))
    port, local_port, cloud_port = free_port(), free_port(), free_port()
    (work / "gw.yaml").write_text(config(port, local_port, cloud_port))
    local, cloud = start_mock(local_port), start_mock(cloud_port)
    wait_port(local_port)
    wait_port(cloud_port)
    log = open(work / "gateway.log", "w")
    gw = subprocess.Popen([args.bin, "--config", str(work / "gw.yaml")], stderr=log, stdout=log,
                          env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info")})
    wait_port(port)
    time.sleep(2)
    idle_rss, idle_fds = rss_kib(gw.pid), fds(gw.pid)

    tally = Tally()
    cached = [f"Repeat after me: item {i} nonce-{i:012x}" for i in range(20)]
    peak = {"rss": idle_rss, "fds": idle_fds}
    stop_at = time.time() + args.duration
    faults = {"kills": 0, "reloads": 0}

    warm = {"fds": 0}

    async def sampler() -> None:
        quarter = time.time() + args.duration / 4
        while time.time() < stop_at:
            peak["rss"] = max(peak["rss"], rss_kib(gw.pid))
            peak["fds"] = max(peak["fds"], fds(gw.pid))
            if not warm["fds"] and time.time() >= quarter:
                warm["fds"] = fds(gw.pid)
            await asyncio.sleep(2)

    async def chaos() -> None:
        nonlocal local
        next_kill = time.time() + args.kill_every
        next_reload = time.time() + args.reload_every
        while time.time() < stop_at:
            now = time.time()
            if now >= next_kill:
                local.send_signal(signal.SIGKILL)
                local.wait()
                faults["kills"] += 1
                await asyncio.sleep(args.kill_for)
                local = start_mock(local_port)
                next_kill = time.time() + args.kill_every
            if now >= next_reload:
                gw.send_signal(signal.SIGHUP)
                faults["reloads"] += 1
                next_reload = now + args.reload_every
            await asyncio.sleep(0.5)

    async def worker(i: int) -> None:
        r = random.Random(i)
        conn = Conn(port)
        while time.time() < stop_at:
            await one(conn, tally, r, cached)
        conn.close()

    started = time.time()
    await asyncio.gather(sampler(), chaos(), *(worker(i) for i in range(args.concurrency)))
    elapsed = time.time() - started
    await asyncio.sleep(10)
    after_rss, after_fds = rss_kib(gw.pid), fds(gw.pid)

    gw.send_signal(signal.SIGTERM)
    try:
        gw.wait(30)
    except subprocess.TimeoutExpired:
        gw.kill()
    for m in (local, cloud):
        m.kill()
    log.close()
    text = (work / "gateway.log").read_text(errors="replace")
    panics = text.count("panicked")
    key_in_log = UPSTREAM_KEY in text

    print(f"## Soak: {elapsed:.0f} s, {args.concurrency} clients, faults {FAULTS}, "
          f"{faults['kills']} local kills of {args.kill_for:.0f} s, {faults['reloads']} reloads")
    print()
    print("| measure | value |")
    print("|---|---|")
    print(f"| requests sent | {tally.sent} ({tally.sent / elapsed:.1f}/s) |")
    print(f"| by kind | {', '.join(f'{k} {v}' for k, v in sorted(tally.kinds.items()))} |")
    print(f"| 200 with the request's own nonce | {tally.ok} |")
    print(f"| clean OpenAI errors | {sum(tally.errors.values())}: {', '.join(f'{k} ×{v}' for k, v in sorted(tally.errors.items()))} |")
    print(f"| streams ended by an error event | {tally.stream_errors} |")
    print(f"| not answered (reset, timeout, malformed) | {len(tally.unanswered)} |")
    print(f"| sent again: a kept-alive connection closed before the request was read | {tally.resent} |")
    print(f"| answers mixed between clients | {len(tally.mixed)} |")
    print(f"| upstream key in an answer / in the log | {tally.leaks} / {int(key_in_log)} |")
    print(f"| panics in the log | {panics} |")
    print(f"| RSS idle / peak / after (MiB) | {idle_rss / 1024:.1f} / {peak['rss'] / 1024:.1f} / {after_rss / 1024:.1f} |")
    print(f"| open fds idle / a quarter in / peak / after | {idle_fds} / {warm['fds']} / {peak['fds']} / {after_fds} |")
    for line in tally.unanswered[:10] + tally.mixed[:10]:
        print("   ", line)
    # Idle connections to the upstreams stay pooled after the load; what must not happen is
    # growth: after the load, no more descriptors than a quarter into it (clients included).
    failed = tally.unanswered or tally.mixed or tally.leaks or key_in_log or panics or after_fds > warm["fds"]
    print(f"\nlog: {work / 'gateway.log'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
