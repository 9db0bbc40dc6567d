"""A fast mock upstream for the soak run, with faults.

It speaks OpenAI's chat completions (JSON and SSE) and Ollama's native ``/api/chat`` (JSON and
NDJSON), keeps connections alive, and answers every chat request with ``echo: <last user
message>`` (a summary request from the gateway's hybrid stage gets a short ``SUMMARY:``), so the
client can check that its own nonce came back. Nothing is recorded: it runs for as long as the
soak does without growing.

Faults, each drawn per request with its probability (``--faults 500=0.03,429=0.03,...``):

* ``500``: an OpenAI (or Ollama) error with status 500;
* ``429``: a rate-limit error with ``Retry-After: 0``;
* ``hang``: reads the request and never answers (the gateway's timeouts must act);
* ``die``: starts the answer (half a JSON body, or a few stream events) and closes the connection.

Refused connections come from the soak driver stopping and restarting this process.

    python3 benches/soak/mock.py --port 18001 --faults 500=0.03,429=0.03,hang=0.005,die=0.02
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time


def parse_faults(text: str) -> dict[str, float]:
    faults: dict[str, float] = {}
    for part in filter(None, text.split(",")):
        name, _, p = part.partition("=")
        faults[name.strip()] = float(p)
    return faults


def last_user_text(messages: list) -> str:
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            c = m.get("content")
            if isinstance(c, str):
                return c
            if isinstance(c, list):
                return " ".join(p.get("text", "") for p in c if isinstance(p, dict))
    return ""


def reply_text(messages: list) -> str:
    first = messages[0] if messages and isinstance(messages[0], dict) else {}
    system = first.get("content") if first.get("role") == "system" else ""
    if isinstance(system, str) and ("summar" in system.lower() or "shorten" in system.lower()):
        words = last_user_text(messages).split()[:6]
        return "SUMMARY: " + " ".join(words)
    return "echo: " + last_user_text(messages)


def pieces(text: str, n: int = 4) -> list[str]:
    size = max(1, len(text) // n + 1)
    return [text[i : i + size] for i in range(0, len(text), size)]


class Mock:
    def __init__(self, faults: dict[str, float]) -> None:
        self.faults = faults

    def draw(self) -> str | None:
        r = random.random()
        acc = 0.0
        for name, p in self.faults.items():
            acc += p
            if r < acc:
                return name
        return None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = b""
                if "content-length" in headers:
                    body = await reader.readexactly(int(headers["content-length"]))
                elif "chunked" in headers.get("transfer-encoding", ""):
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                        if size == 0:
                            await reader.readuntil(b"\r\n")
                            break
                        body += await reader.readexactly(size)
                        await reader.readexactly(2)
                keep = await self.answer(writer, method, path.split("?")[0], body)
                await writer.drain()
                if not keep or headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, asyncio.LimitOverrunError):
            pass
        finally:
            try:
                writer.close()
            except Exception:
                pass

    async def answer(self, w: asyncio.StreamWriter, method: str, path: str, body: bytes) -> bool:
        if method == "GET":
            if path == "/api/version":
                return send_json(w, 200, {"version": "0.5.7"})
            return send_json(w, 200, {"object": "list", "data": []})
        if path not in ("/v1/chat/completions", "/api/chat"):
            return send_json(w, 404, {"error": {"message": "no such path", "type": "invalid_request_error", "param": None, "code": None}})
        req = json.loads(body)
        ollama = path == "/api/chat"
        stream = req.get("stream", ollama)
        fault = self.draw()
        if fault == "500":
            msg = "mock upstream failure"
            payload = {"error": msg} if ollama else {"error": {"message": msg, "type": "server_error", "param": None, "code": None}}
            return send_json(w, 500, payload)
        if fault == "429":
            payload = {"error": {"message": "slow down", "type": "rate_limit_error", "param": None, "code": "rate_limit_exceeded"}}
            return send_json(w, 429, payload, extra="Retry-After: 0\r\n")
        if fault == "hang":
            await asyncio.sleep(3600)
            return False
        text = reply_text(req.get("messages") or [])
        model = req.get("model", "mock")
        die = fault == "die"
        if ollama and not stream:
            return send_json(w, 200, ollama_whole(model, text), die=die)
        if not stream:
            return send_json(w, 200, openai_whole(model, text), die=die)
        if ollama:
            w.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n")
            lines = [ollama_piece(model, p, False) for p in pieces(text)] + [ollama_piece(model, "", True)]
            return await send_chunks(w, [json.dumps(l) + "\n" for l in lines], die)
        w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        events = [openai_chunk(model, {"role": "assistant", "content": ""}, None)]
        events += [openai_chunk(model, {"content": p}, None) for p in pieces(text)]
        events += [openai_chunk(model, {}, "stop")]
        if req.get("stream_options", {}).get("include_usage"):
            events.append({"id": "chatcmpl-soak", "object": "chat.completion.chunk", "created": int(time.time()), "model": model, "choices": [], "usage": usage(text)})
        return await send_chunks(w, ["data: " + json.dumps(e) + "\n\n" for e in events] + ["data: [DONE]\n\n"], die)


def usage(text: str) -> dict:
    n = max(1, len(text) // 4)
    return {"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n}


def openai_whole(model: str, text: str) -> dict:
    return {
        "id": "chatcmpl-soak", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": usage(text),
    }


def openai_chunk(model: str, delta: dict, finish: str | None) -> dict:
    return {"id": "chatcmpl-soak", "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def ollama_whole(model: str, text: str) -> dict:
    return {"model": model, "created_at": "2026-01-01T00:00:00Z", "message": {"role": "assistant", "content": text},
            "done": True, "done_reason": "stop", "prompt_eval_count": 10, "eval_count": max(1, len(text) // 4)}


def ollama_piece(model: str, text: str, done: bool) -> dict:
    line = {"model": model, "created_at": "2026-01-01T00:00:00Z", "message": {"role": "assistant", "content": text}, "done": done}
    if done:
        line.update({"done_reason": "stop", "prompt_eval_count": 10, "eval_count": 5})
    return line


def send_json(w: asyncio.StreamWriter, status: int, payload: dict, extra: str = "", die: bool = False) -> bool:
    body = json.dumps(payload).encode()
    reason = {200: "OK", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error"}[status]
    w.write(f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n{extra}\r\n".encode())
    if die:
        w.write(body[: len(body) // 2])
        return False
    w.write(body)
    return True


async def send_chunks(w: asyncio.StreamWriter, parts: list[str], die: bool) -> bool:
    for i, part in enumerate(parts):
        if die and i == len(parts) // 2:
            await w.drain()
            return False
        data = part.encode()
        w.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        await w.drain()
        await asyncio.sleep(0.002)
    w.write(b"0\r\n\r\n")
    return True


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--faults", default="")
    args = ap.parse_args()
    mock = Mock(parse_faults(args.faults))
    server = await asyncio.start_server(mock.handle, "127.0.0.1", args.port, reuse_address=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
