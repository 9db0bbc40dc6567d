"""A mock OpenAI-compatible upstream for the end-to-end tests, which also speaks Ollama's native API.

It serves the OpenAI wire formats (chat completions, streamed chat completion chunks, embeddings,
model list, errors) on 127.0.0.1 from a background thread, and records every request it receives so
that tests can check what the gateway sent upstream. On the same port it serves Ollama's native
``POST /api/chat`` (one JSON object, or NDJSON lines when streaming, which is Ollama's default;
tool-call arguments as objects; ``format`` as ``"json"`` or a JSON schema; ``{"error": "…"}``
errors) and ``GET /api/version``.

What it answers is chosen from the request, so that a test drives it through the gateway with an
ordinary SDK call:

* last user message contains ``please fail with 429`` / ``400`` / ``500``: that HTTP status with an
  OpenAI error body (also for ``stream: true``, like the real API, which fails before streaming);
* last message is a ``tool`` message: a text answer quoting the tool result;
* ``tools`` present and the last message is a user message: a call of the first tool with the
  arguments ``{"city": "Paris"}``;
* ``response_format.type == "json_schema"``: content is a JSON document valid for the schema;
* a first (system) message asking to shorten a document or summarize a conversation, as the
  gateway's hybrid stage asks: content ``SUMMARY: <the first five words of the text>``;
* otherwise: content ``echo: <last user message>``.

``please stream slowly`` in the last user message spaces streamed events by ``SLOW_STREAM_DELAY``
seconds, so a test can tell a relayed stream from a buffered one.

The ``model`` of every answer is the model the mock received, so tests see the gateway's rewrite.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable, Iterator, Optional

TOOL_ARGUMENTS = {"city": "Paris"}
SLOW_STREAM_DELAY = 0.3
EMBEDDING_DIMENSIONS = 8
# Listed by the mock's own GET /v1/models, so a test can tell the gateway's list from a relayed one.
MOCK_MODEL_ID = "mock-upstream-only-model"

# Status -> (type, param, code, message) of the errors the mock produces on request.
ERRORS: dict[int, tuple[str, Optional[str], Optional[str], str]] = {
    429: (
        "rate_limit_error",
        None,
        "rate_limit_exceeded",
        "Mock upstream: rate limit reached for requests. Please try again in 20ms.",
    ),
    400: (
        "invalid_request_error",
        "messages",
        "invalid_value",
        "Mock upstream: the request was rejected as invalid.",
    ),
    500: (
        "server_error",
        None,
        None,
        "Mock upstream: the server had an error while processing your request.",
    ),
}
_FAIL_RE = re.compile(r"please fail with (\d{3})")


@dataclass
class RecordedRequest:
    """One request as the mock received it."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    json: Any = None
    # What the mock answered: status and body (for a stream, the SSE text without the chunk framing).
    response_status: Optional[int] = None
    response_body: bytes = b""

    def header_values(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.headers if key.lower() == name]

    def header(self, name: str) -> Optional[str]:
        values = self.header_values(name)
        return values[0] if values else None


@dataclass
class _Recorder:
    requests: list[RecordedRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class MockOpenAI:
    """The mock server. Use as a context manager or call ``start()`` / ``stop()``."""

    def __init__(self) -> None:
        self._recorder = _Recorder()
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "MockOpenAI":
        handler = type("BoundHandler", (_Handler,), {"recorder": self._recorder})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="mock-openai", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "MockOpenAI":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "mock not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """The server root, as an upstream `url` in the gateway's config."""
        return f"http://127.0.0.1:{self.port}"

    # -- what it received --------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._recorder.lock:
            return list(self._recorder.requests)

    def find(self, marker: str) -> list[RecordedRequest]:
        """The requests whose raw body contains ``marker`` (tests put a unique one in each)."""
        needle = marker.encode()
        return [r for r in self.requests if needle in r.body]

    def find_one(self, marker: str) -> RecordedRequest:
        found = self.find(marker)
        assert len(found) == 1, f"expected one upstream request containing {marker!r}, got {len(found)}"
        return found[0]

    def clear(self) -> None:
        with self._recorder.lock:
            self._recorder.requests.clear()


# -- the HTTP side -------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response has Content-Length or is chunked
    server_version = "mock-openai/1.0"
    # A keep-alive connection left idle this long is closed, so no handler thread waits forever.
    # Long enough that the gateway never has a pooled connection closed under it during a test.
    timeout = 300
    recorder: _Recorder  # set on the bound subclass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # keep the test output clean; the recorded requests say what happened

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        body = self._read_body()
        parsed: Any = None
        if body:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
        request = RecordedRequest(
            method=self.command,
            path=self.path,
            headers=list(self.headers.items()),
            body=body,
            json=parsed,
        )
        with self.recorder.lock:
            self.recorder.requests.append(request)
        self._recorded = request

        path = self.path.split("?", 1)[0]
        if self.command == "POST" and path == "/v1/chat/completions":
            if not isinstance(parsed, dict):
                self._send_error(
                    400, "invalid_request_error", None, None,
                    "We could not parse the JSON body of your request.",
                )
            else:
                self._chat(parsed)
        elif self.command == "POST" and path == "/api/chat" and isinstance(parsed, dict):
            self._ollama_chat(parsed)
        elif self.command == "GET" and path == "/api/version":
            self._send_json(200, {"version": "0.5.7"})
        elif self.command == "POST" and path == "/v1/embeddings" and isinstance(parsed, dict):
            self._embeddings(parsed)
        elif self.command == "GET" and path == "/v1/models":
            self._send_json(
                200,
                {
                    "object": "list",
                    "data": [
                        {"id": MOCK_MODEL_ID, "object": "model", "created": 1700000000, "owned_by": "mock"}
                    ],
                },
            )
        else:
            self._send_error(
                404, "invalid_request_error", None, None, f"Invalid URL ({self.command} {path})"
            )

    def _read_body(self) -> bytes:
        # The gateway may forward a rewritten body chunked rather than with a Content-Length.
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts = []
            while True:
                size_line = self.rfile.readline()
                size = int(size_line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    # trailers, up to the empty line
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after the chunk data
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    # -- responses ---------------------------------------------------------------------------

    def _send_json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self._recorded.response_status, self._recorded.response_body = status, data
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("openai-processing-ms", "1")
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _send_error(
        self, status: int, type_: str, param: Optional[str], code: Optional[str], message: str
    ) -> None:
        error = {"message": message, "type": type_, "param": param, "code": code}
        self._send_json(status, {"error": error})

    def _send_sse(self, events: Iterable[str], delay: float) -> None:
        self._recorded.response_status = 200
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("openai-processing-ms", "1")
        self.end_headers()
        self.wfile.flush()
        for i, event in enumerate(events):
            if i and delay:
                time.sleep(delay)
            # One SSE event per HTTP chunk, flushed at once.
            data = f"data: {event}\n\n".encode()
            self._recorded.response_body += data
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    # -- /v1/chat/completions ----------------------------------------------------------------

    def _chat(self, req: dict) -> None:
        messages = req.get("messages") or []
        last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
        user_text = _last_user_text(messages)

        fail = _FAIL_RE.search(user_text)
        if fail and int(fail.group(1)) in ERRORS:
            type_, param, code, message = ERRORS[int(fail.group(1))]
            self._send_error(int(fail.group(1)), type_, param, code, message)
            return

        content: Optional[str] = None
        tool_calls: Optional[list[dict]] = None
        if last.get("role") == "tool":
            content = (
                f"The tool call {last.get('tool_call_id')} returned: {_text_of(last.get('content'))}"
            )
        elif req.get("tools") and last.get("role") == "user":
            tool_calls = [
                {
                    "id": "call_" + uuid.uuid4().hex[:24],
                    "type": "function",
                    "function": {
                        "name": _first_tool_name(req["tools"]),
                        "arguments": json.dumps(TOOL_ARGUMENTS),
                    },
                }
            ]
        elif (req.get("response_format") or {}).get("type") == "json_schema":
            schema = req["response_format"].get("json_schema", {}).get("schema", {})
            content = json.dumps(example_for_schema(schema))
        elif _summary_request(messages):
            content = _summary(user_text)
        else:
            content = f"echo: {user_text}"

        model = req.get("model")
        completion_id = "chatcmpl-" + uuid.uuid4().hex[:29]
        created = int(time.time())
        prompt_tokens = max(
            1, sum(_count_tokens(_text_of(m.get("content"))) for m in messages if isinstance(m, dict))
        )
        completion_text = content if content is not None else tool_calls[0]["function"]["arguments"]
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": _count_tokens(completion_text),
            "total_tokens": prompt_tokens + _count_tokens(completion_text),
        }
        finish_reason = "tool_calls" if tool_calls else "stop"

        if req.get("stream"):
            include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
            delay = SLOW_STREAM_DELAY if "please stream slowly" in user_text else 0.0
            chunks = _stream_chunks(
                completion_id, created, model, content, tool_calls, finish_reason, usage, include_usage
            )
            self._send_sse([json.dumps(c) for c in chunks] + ["[DONE]"], delay)
            return

        message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
        if tool_calls:
            message["tool_calls"] = tool_calls
        self._send_json(
            200,
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
                ],
                "usage": usage,
                "system_fingerprint": "fp_mock",
            },
        )

    # -- /api/chat (Ollama) ------------------------------------------------------------------

    def _ollama_chat(self, req: dict) -> None:
        messages = req.get("messages") or []
        last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
        user_text = _last_user_text(messages)
        model = req.get("model")
        if str(model).startswith("missing"):
            self._send_json(404, {"error": f'model "{model}" not found, try pulling it first'})
            return
        fail = _FAIL_RE.search(user_text)
        if fail:
            self._send_json(int(fail.group(1)), {"error": "mock Ollama: failing as asked"})
            return

        content = ""
        tool_calls: Optional[list[dict]] = None
        fmt = req.get("format")
        if last.get("role") == "tool":
            content = f"The tool {last.get('tool_name')} returned: {last.get('content')}"
        elif req.get("tools") and last.get("role") == "user":
            name = _first_tool_name(req["tools"])
            tool_calls = [{"function": {"name": name, "arguments": dict(TOOL_ARGUMENTS)}}]
        elif isinstance(fmt, dict):
            content = json.dumps(example_for_schema(fmt))
        elif fmt == "json":
            content = json.dumps({"echo": user_text})
        elif _summary_request(messages):
            content = _summary(user_text)
        else:
            content = f"echo: {user_text}"

        created_at = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
        prompt_tokens = max(1, sum(_count_tokens(str(m.get("content", ""))) for m in messages))
        completion_tokens = max(1, _count_tokens(content or json.dumps(TOOL_ARGUMENTS)))
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if tool_calls:
            message["tool_calls"] = tool_calls
        done = {
            "model": model,
            "created_at": created_at,
            "message": {"role": "assistant", "content": ""},
            "done_reason": "stop",
            "done": True,
            "total_duration": 5000000,
            "load_duration": 100000,
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": 1000000,
            "eval_count": completion_tokens,
            "eval_duration": 3000000,
        }
        if req.get("stream") is False:
            self._send_json(200, {**done, "message": message})
            return
        lines = []
        if tool_calls:
            lines.append({"model": model, "created_at": created_at, "message": message, "done": False})
        else:
            for piece in _pieces(content, 7):
                lines.append(
                    {
                        "model": model,
                        "created_at": created_at,
                        "message": {"role": "assistant", "content": piece},
                        "done": False,
                    }
                )
        lines.append(done)
        self._recorded.response_status = 200
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for line in lines:
            data = (json.dumps(line) + "\n").encode()
            self._recorded.response_body += data
            # Each line in two HTTP chunks: the gateway must wait for a line's end.
            for part in (data[: len(data) // 2], data[len(data) // 2 :]):
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    # -- /v1/embeddings ----------------------------------------------------------------------

    def _embeddings(self, req: dict) -> None:
        inputs = req.get("input")
        if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
            inputs = [inputs]
        inputs = inputs or []
        as_base64 = req.get("encoding_format") == "base64"
        data = []
        for index, item in enumerate(inputs):
            vector = embedding_for(item if isinstance(item, str) else json.dumps(item))
            if as_base64:
                # What the real API does: little-endian float32 values, base64-encoded.
                encoded: Any = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            else:
                encoded = vector
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(_count_tokens(i if isinstance(i, str) else json.dumps(i)) for i in inputs)
        self._send_json(
            200,
            {
                "object": "list",
                "data": data,
                "model": req.get("model"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )


# -- content helpers -----------------------------------------------------------------------------


def embedding_for(text: str) -> list[float]:
    """A deterministic vector for ``text``; its values are exact in float32."""
    digest = hashlib.sha256(text.encode()).digest()
    return [(b - 128) / 128 for b in digest[:EMBEDDING_DIMENSIONS]]


def _summary_request(messages: list) -> bool:
    """Whether the first message asks to shorten a document or summarize a conversation."""
    first = messages[0] if messages and isinstance(messages[0], dict) else {}
    text = _text_of(first.get("content")) if first.get("role") == "system" else ""
    return text.startswith(("You shorten documents", "You summarize the earlier part"))


def _summary(text: str) -> str:
    return "SUMMARY: " + " ".join(text.split()[:5])


def _text_of(content: Any) -> str:
    """The text of a message ``content``: a string, or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _last_user_text(messages: list) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def _first_tool_name(tools: list) -> str:
    for tool in tools:
        if isinstance(tool, dict) and tool.get("type") == "function":
            return tool.get("function", {}).get("name", "get_weather")
    return "get_weather"


def _count_tokens(text: str) -> int:
    return len(text.split())


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _stream_chunks(
    completion_id: str,
    created: int,
    model: Any,
    content: Optional[str],
    tool_calls: Optional[list[dict]],
    finish_reason: str,
    usage: dict,
    include_usage: bool,
) -> Iterator[dict]:
    """The `chat.completion.chunk` objects of one streamed answer, as the real API sends them."""

    def chunk(delta: dict, finish: Optional[str] = None) -> dict:
        c: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            c["usage"] = None  # every chunk but the last carries `usage: null`
        return c

    if tool_calls:
        call = tool_calls[0]
        # First delta: role, and the call's index/id/type/name with empty arguments.
        yield chunk(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "index": 0,
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""},
                    }
                ],
                "refusal": None,
            }
        )
        for fragment in _pieces(call["function"]["arguments"], 5):
            yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]})
    else:
        yield chunk({"role": "assistant", "content": "", "refusal": None})
        # Word by word, each piece keeping its trailing space.
        for piece in re.findall(r"\S+\s*|\s+", content or ""):
            yield chunk({"content": piece})
    yield chunk({}, finish_reason)
    if include_usage:
        last = chunk({})
        last["choices"] = []
        last["usage"] = usage
        yield last


def example_for_schema(schema: Any, root: Any = None) -> Any:
    """A value valid for a (strict-mode subset of) JSON Schema."""
    root = schema if root is None else root
    if not isinstance(schema, dict):
        return None
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        return example_for_schema(target, root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            options = [o for o in schema[key] if o.get("type") != "null"] or schema[key]
            return example_for_schema(options[0], root)
    type_ = schema.get("type")
    if isinstance(type_, list):
        type_ = next((t for t in type_ if t != "null"), "null")
    if type_ == "object" or "properties" in schema:
        return {k: example_for_schema(v, root) for k, v in schema.get("properties", {}).items()}
    if type_ == "array":
        count = max(1, schema.get("minItems", 1))
        return [example_for_schema(schema.get("items", {}), root) for _ in range(count)]
    if type_ == "string":
        return "example"
    if type_ == "integer":
        return int(schema.get("minimum", 42))
    if type_ == "number":
        return float(schema.get("minimum", 21.5))
    if type_ == "boolean":
        return True
    return None
