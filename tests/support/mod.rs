//! Shared test support: mock upstreams, a gateway process per test, and a raw HTTP/1.1 client
//! that can watch a response arrive piece by piece.

#![allow(dead_code)]

pub mod http1;
pub mod mock;

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[allow(unused_imports)]
pub use mock::{
    completion, counting, ollama, refused_addr, stream_events, Mock, Recorded, Reply, MOCK_USAGE,
};

/// The key clients present to the gateway in tests; it must never reach an upstream.
pub const CLIENT_KEY: &str = "sk-client-gateway-key-123";
/// The cloud upstream's key; it must never reach a client or the local upstream.
pub const CLOUD_KEY: &str = "sk-upstream-cloud-secret-456";

/// A free loopback port (released right away; the gateway binds it next). No port is handed out
/// twice in one test process: tests run side by side, and a port released by one could otherwise
/// reach another before the first test's server has bound it (pingora retries a taken port, so
/// the second server would start late and the test would talk to the wrong one meanwhile).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub fn scratch_file(name: &str, contents: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "switchyard-test-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, contents).expect("write scratch file");
    path
}

/// The lines of a file the gateway is appending to, as far as they are written: a line still
/// being written (no newline yet) is left for the next look.
pub fn complete_lines(path: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let done = text.rfind('\n').map_or(0, |end| end + 1);
    text[..done].lines().map(str::to_owned).collect()
}

/// The standard two-upstream configuration used by most tests, with `extra` appended to
/// each upstream block (timeouts, say).
pub fn two_upstreams(local: &str, cloud: &str, timeouts: &str) -> String {
    format!(
        r#"
server:
  listen: "127.0.0.1:{{PORT}}"
  drain_timeout: 5s
limits:
  max_body_bytes: 2MiB
upstreams:
  local:
    kind: openai
    route: local
    url: "{local}"
    model: llama-local
{timeouts}
  cloud:
    kind: openai
    route: cloud
    url: "{cloud}"
    model: gpt-4o
    api_key: "{CLOUD_KEY}"
    require_api_key: true
    fallback: local
{timeouts}
models:
  - name: auto
    upstream: local
  - name: gpt-4o
    upstream: cloud
    model: gpt-4o-2024-08-06
default_route:
  upstream: cloud
passthrough:
  upstream: cloud
"#
    )
}

/// A running gateway process; killed when dropped.
pub struct Gateway {
    pub port: u16,
    /// The configuration file it runs (rewrite it, then [`Gateway::hangup`], to reload).
    pub config: PathBuf,
    child: Child,
    log: PathBuf,
}

impl Gateway {
    /// Starts the gateway with `yaml`, where `{PORT}` stands for the port it listens on.
    pub fn start(yaml: &str) -> Gateway {
        Gateway::start_with_env(yaml, &[])
    }

    /// Like [`Gateway::start`], with extra environment variables.
    pub fn start_with_env(yaml: &str, env: &[(&str, &str)]) -> Gateway {
        let port = free_port();
        let config = scratch_file("config.yaml", &yaml.replace("{PORT}", &port.to_string()));
        let log = scratch_file("gateway.log", "");
        let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start switchyard");
        let mut gw = Gateway {
            port,
            config,
            child,
            log,
        };
        gw.wait_ready();
        gw
    }

    fn wait_ready(&mut self) {
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("gateway exited at start ({status}):\n{}", self.log());
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("gateway did not start listening:\n{}", self.log());
    }

    /// Everything the gateway logged so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// The gateway's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Sends SIGHUP: reload the configuration.
    pub fn hangup(&self) {
        let ok = Command::new("kill")
            .arg("-HUP")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -HUP failed");
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let ok = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -TERM failed");
    }

    /// Waits up to `limit` for the process to exit; its exit code, if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response as the client received it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the body ended as its framing said (full content-length, or the last chunk).
    pub complete: bool,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        http1::header_in(&self.headers, name)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts an OpenAI-shaped error with this status and returns its `error` object.
    pub fn assert_error(&self, status: u16) -> serde_json::Value {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert!(
            self.header("x-request-id").is_some(),
            "errors carry the request id"
        );
        assert!(
            self.header("content-type")
                .is_some_and(|v| v.contains("application/json")),
            "{:?}",
            self.headers
        );
        let v = self.json();
        let e = v["error"].clone();
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(e["type"].is_string(), "{v}");
        assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
        e
    }
}

/// A response being read: the head is in, the body comes with [`Streaming::next_event`].
pub struct Streaming {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    conn: TcpStream,
    body: http1::Body,
    eof: bool,
}

/// Sends a request on a new connection and reads the response head.
pub async fn open(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Streaming {
    let mut conn = TcpStream::connect(addr).await.expect("connect to gateway");
    conn.set_nodelay(true).expect("nodelay");
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\n");
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("connection"))
    {
        head.push_str("connection: close\r\n");
    }
    let mut has_length = false;
    for (k, v) in headers {
        has_length |=
            k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding");
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_length && (method == "POST" || !body.is_empty()) {
        head.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    // The gateway may answer (413) before reading the whole body and close: that is fine.
    let _ = conn.write_all(&out).await;
    read_head(conn).await
}

async fn read_head(mut conn: TcpStream) -> Streaming {
    let mut raw = Vec::new();
    let (len, head) = loop {
        if let Some((len, head)) = http1::response_head(&raw) {
            if head.status < 200 {
                // Skip informational answers.
                raw.drain(..len);
                continue;
            }
            break (len, head);
        }
        let mut buf = [0u8; 16384];
        let n = conn.read(&mut buf).await.expect("read response head");
        assert!(
            n > 0,
            "connection closed before a response head: {:?}",
            String::from_utf8_lossy(&raw)
        );
        raw.extend_from_slice(&buf[..n]);
    };
    let mut body = http1::Body::new(http1::Framing::of(&head, true));
    body.feed(&raw[len..]);
    Streaming {
        status: head.status,
        headers: head.headers,
        conn,
        body,
        eof: false,
    }
}

impl Streaming {
    pub fn header(&self, name: &str) -> Option<&str> {
        http1::header_in(&self.headers, name)
    }

    /// All of the body has arrived.
    pub fn complete(&self) -> bool {
        self.body.complete
    }

    async fn read_more(&mut self) -> bool {
        if self.eof {
            return false;
        }
        let mut buf = [0u8; 65536];
        match self.conn.read(&mut buf).await {
            Ok(0) | Err(_) => {
                self.eof = true;
                self.body.eof();
                false
            }
            Ok(n) => {
                self.body.feed(&buf[..n]);
                true
            }
        }
    }

    /// The next SSE event's data (without `data: `), or `None` when the body ends.
    pub async fn next_event(&mut self) -> Option<String> {
        loop {
            if let Some(i) = http1::find(&self.body.decoded, b"\n\n") {
                let event: Vec<u8> = self.body.decoded.drain(..i + 2).collect();
                let text = String::from_utf8_lossy(&event).into_owned();
                return Some(text.trim_end().trim_start_matches("data: ").to_owned());
            }
            if self.body.complete || !self.read_more().await {
                return None;
            }
        }
    }

    /// Whether the server closes the connection once the body has ended (waits up to 2 s).
    pub async fn closed_after_body(&mut self) -> bool {
        let mut buf = [0u8; 1024];
        matches!(
            tokio::time::timeout(Duration::from_secs(2), self.conn.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    /// Reads the rest of the body.
    pub async fn finish(mut self) -> Response {
        while !self.body.complete && self.read_more().await {}
        Response {
            status: self.status,
            headers: self.headers,
            body: self.body.decoded,
            complete: self.body.complete,
        }
    }
}

/// Sends a request and reads the whole response.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    // On the heap: the read buffers make this future large, and a test that awaits it many
    // times would otherwise hold a copy per await on its thread's stack (debug builds do not
    // overlap them).
    Box::pin(async move { open(addr, method, path, headers, body).await.finish().await }).await
}

/// A gateway whose local upstream refuses connections and whose cloud upstream is at `cloud`.
pub fn cloud_only(cloud: &str, timeouts: &str) -> Gateway {
    Gateway::start(&two_upstreams(&refused_addr().to_string(), cloud, timeouts))
}

/// Opens a streamed chat request for `model` with one user message.
pub async fn open_stream(addr: SocketAddr, model: &str, text: &str) -> Streaming {
    let body = serde_json::json!({"model": model, "stream": true, "messages": [{"role": "user", "content": text}]});
    open(
        addr,
        "POST",
        "/v1/chat/completions",
        &[],
        body.to_string().as_bytes(),
    )
    .await
}

/// Posts a chat request with the client key, as an SDK would.
pub async fn chat(addr: SocketAddr, body: &serde_json::Value) -> Response {
    chat_as(addr, CLIENT_KEY, body).await
}

/// Posts a chat request with `key`, as an SDK would.
pub async fn chat_as(addr: SocketAddr, key: &str, body: &serde_json::Value) -> Response {
    post_as(addr, "/v1/chat/completions", key, body).await
}

/// Gets `path` with `key`.
pub async fn get_as(addr: SocketAddr, path: &str, key: &str) -> Response {
    let auth = format!("Bearer {key}");
    request(addr, "GET", path, &[("authorization", &auth)], b"").await
}

/// Posts JSON to `path` with `key`.
pub async fn post_as(
    addr: SocketAddr,
    path: &str,
    key: &str,
    body: &serde_json::Value,
) -> Response {
    let auth = format!("Bearer {key}");
    request(
        addr,
        "POST",
        path,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
    .await
}

/// The SHA-256 of a gateway key, as `keys[].sha256` holds it.
pub fn sha256(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The value of one sample line of Prometheus text (`name{labels} value`), if present.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The value of a sample, 0 when the series is absent (a counter that never moved).
pub fn value(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or(0.0)
}

/// The gateway's `/metrics` text.
pub async fn metrics(gw: &Gateway) -> String {
    request(gw.addr(), "GET", "/metrics", &[], b"").await.text()
}

/// A cloud mock that answers every chat request with its last message, as `gpt-4o`.
pub async fn echo_cloud() -> Mock {
    Mock::start(|req: &Recorded| Reply::json(completion("gpt-4o", &req.last_message()))).await
}
