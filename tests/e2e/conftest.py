"""Fixtures for the end-to-end tests: the mock upstream, the gateway process, an OpenAI client.

Run from the repository root with `python -m pytest tests/e2e` in an environment that has `pytest`
and the official `openai` SDK (v1 or later).

The gateway binary is ``$SWITCHYARD_BIN`` (a relative path is taken from the repository root) or
``target/debug/switchyard``. A missing binary fails the tests that need it, with a message saying
how to build it: nothing is skipped.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import openai
import pytest

# Let the test modules `import mock_openai` / `from conftest import ...` whatever pytest's import mode.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mock_openai import MockOpenAI  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BINARY = "target/debug/switchyard"

CLIENT_KEY = "sk-client-key"
UPSTREAM_KEY = "sk-upstream-secret"
LOCAL_MODEL = "llama-local"
CLOUD_MODEL = "gpt-4o"

# A function tool as the SDK's users declare one.
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0  # SIGTERM drains for at most drain_timeout (2s), then the gateway exits


def gateway_config(port: int, upstream_url: str) -> str:
    """The YAML config the gateway under test runs with: both upstreams are the mock."""
    return f"""\
server:
  listen: "127.0.0.1:{port}"
  drain_timeout: 2s
limits:
  max_body_bytes: 8MiB
upstreams:
  local:
    kind: openai
    route: local
    url: "{upstream_url}"
    model: "{LOCAL_MODEL}"
  cloud:
    kind: openai
    route: cloud
    url: "{upstream_url}"
    model: "{CLOUD_MODEL}"
    api_key: "{UPSTREAM_KEY}"
    require_api_key: true
    fallback: local
models:
  - name: auto
    upstream: local
  - name: gpt-4o
    upstream: cloud
    model: gpt-4o
default_route:
  upstream: cloud
passthrough:
  upstream: cloud
"""


def config_head(
    port: int,
    local_url: str,
    cloud_url: str,
    *,
    local_kind: str = "openai",
    local_model: str = LOCAL_MODEL,
    local_extra: str = "",
    cloud_extra: str = "",
) -> str:
    """The start most test configurations share: the listen address and two upstreams, `local`
    and `cloud` (which holds the upstream key); `*_extra` are YAML lines added to each upstream's
    block, indented four spaces. A module appends its models, routing and the rest."""
    def block(extra: str) -> str:
        return "".join(f"    {line}\n" for line in extra.strip("\n").splitlines() if extra.strip())
    return (
        f"server:\n  listen: \"127.0.0.1:{port}\"\n  drain_timeout: 2s\n"
        f"upstreams:\n  local:\n    kind: {local_kind}\n    route: local\n"
        f"    url: \"{local_url}\"\n    model: \"{local_model}\"\n{block(local_extra)}"
        f"  cloud:\n    kind: openai\n    route: cloud\n    url: \"{cloud_url}\"\n"
        f"    model: \"{CLOUD_MODEL}\"\n    api_key: \"{UPSTREAM_KEY}\"\n{block(cloud_extra)}"
    )


def gateway_binary() -> Path:
    configured = os.environ.get("SWITCHYARD_BIN", DEFAULT_BINARY)
    path = Path(configured)
    if not path.is_absolute():
        path = REPO_ROOT / path
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"switchyard binary not found or not executable: {path}\n"
            "Build it with `cargo build` at the repository root, or point SWITCHYARD_BIN at one.",
            pytrace=False,
        )
    return path


def find_free_port() -> int:
    # The port is free when this returns; the gateway binds it a moment later. Another process
    # taking it in between makes the gateway exit early, which the start-up check reports.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    """A running switchyard process."""

    def __init__(self, binary: Path, config_path: Path, port: int, stderr_path: Path) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.config_path = config_path
        self.stderr_path = stderr_path
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        # stderr goes to a file, not a pipe: nobody reads a pipe while the tests run, and a full
        # pipe would block the gateway.
        self._stderr_file = open(stderr_path, "wb")
        self.process = subprocess.Popen(
            [str(binary), "--config", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._stderr_file,
            stderr=self._stderr_file,
            env=env,
            cwd=REPO_ROOT,
        )

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_until_listening(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                pytest.fail(
                    f"switchyard exited with code {code} before listening on port {self.port}.\n"
                    f"--- config ---\n{self.config_path.read_text()}\n--- output ---\n{self.stderr()}",
                    pytrace=False,
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        pytest.fail(
            f"switchyard did not listen on port {self.port} within {timeout:.0f}s.\n"
            f"--- output ---\n{self.stderr()}",
            pytrace=False,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._stderr_file.close()


@pytest.fixture(scope="module")
def mock_upstream() -> Iterator[MockOpenAI]:
    with MockOpenAI() as mock:
        yield mock


@pytest.fixture(scope="module")
def free_port() -> int:
    """The port this module's gateway listens on."""
    return find_free_port()


@pytest.fixture(scope="module")
def gateway_config_text(free_port: int, mock_upstream: MockOpenAI) -> str:
    """The gateway's config; a test module may override this fixture to run another one."""
    return gateway_config(free_port, mock_upstream.url)


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, free_port: int, gateway_config_text: str
) -> Iterator[Gateway]:
    binary = gateway_binary()
    workdir = tmp_path_factory.mktemp("switchyard")
    config_path = workdir / "switchyard.yaml"
    config_path.write_text(gateway_config_text)
    gw = Gateway(binary, config_path, free_port, workdir / "switchyard.log")
    try:
        gw.wait_until_listening()
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(
        base_url=f"{gateway.base_url}/v1",
        api_key=CLIENT_KEY,
        max_retries=0,
        timeout=20.0,
        # Ignore proxy settings of the environment: the gateway is on loopback.
        http_client=openai.DefaultHttpxClient(trust_env=False),
    )
    yield c
    c.close()


LLAMA_START_TIMEOUT = 120.0


class LlamaServer:
    """llama.cpp's server running the small model, on a port of its own."""

    def __init__(self, process: subprocess.Popen, url: str) -> None:
        self.process = process
        self.url = url

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, what: str, timeout: float) -> None:
    """Waits until a helper process listens on `port`; fails with the end of its log if it exits
    or takes longer than `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"{what} did not start:\n{log.read_text()[-2000:]}", pytrace=False)
            time.sleep(0.2)


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """A real local model: SmolLM2-135M on llama.cpp's OpenAI-compatible server, one per test
    module. `tests/small_model.sh` installs them; tests/run.sh then points
    SWITCHYARD_LLAMA_PYTHON and SWITCHYARD_SMALL_MODEL at them. Without them the test is skipped,
    unless SWITCHYARD_REQUIRE_SMALL_MODEL is set (as in CI), where it fails."""
    python = os.environ.get("SWITCHYARD_LLAMA_PYTHON")
    model = os.environ.get("SWITCHYARD_SMALL_MODEL")
    if not (python and model and Path(model).is_file()):
        message = "no small model: run `bash tests/small_model.sh` first"
        if os.environ.get("SWITCHYARD_REQUIRE_SMALL_MODEL"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    port = find_free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [python, "-m", "llama_cpp.server", "--model", model, "--host", "127.0.0.1",
             "--port", str(port), "--n_ctx", "2048", "--n_threads", "2",
             "--interrupt_requests", "false"],
            stdout=out, stderr=out,
        )
    wait_for_port(port, proc, log, "llama.cpp's server", LLAMA_START_TIMEOUT)
    server = LlamaServer(proc, f"http://127.0.0.1:{port}")
    yield server
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Attach the end of the gateway's log to a failed test's report."""
    outcome = yield
    report = outcome.get_result()
    gw = getattr(item, "funcargs", {}).get("gateway")
    if report.failed and isinstance(gw, Gateway):
        tail = "\n".join(gw.stderr().splitlines()[-60:])
        report.sections.append(("switchyard log (last 60 lines)", tail))
