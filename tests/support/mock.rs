//! A mock OpenAI-compatible upstream over real TCP: it reads requests with [`super::http1`] and
//! writes its answers by hand, so that tests control every byte and every pause: split SSE
//! events, slow drips, hangs, deaths mid-answer.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::http1::{self, header_in, Body, Framing};

/// A request as the mock received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// The request line's protocol, e.g. `HTTP/1.1`.
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    /// The first value of a header (names compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_in(&self.headers, name)
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }

    /// The text of the last message.
    pub fn last_message(&self) -> String {
        let v = self.json();
        v["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_owned()
    }
}

/// What the mock answers.
pub enum Reply {
    /// A complete answer with `content-length`.
    Full {
        status: u16,
        content_type: &'static str,
        body: String,
    },
    /// An SSE stream, chunked; each event its own write, `pause` between events; with `split`
    /// every event is cut in two writes with a pause between the halves.
    Sse {
        events: Vec<String>,
        pause: Duration,
        split: bool,
    },
    /// Sends `first`, waits for `gate`, then sends `rest`.
    Gated {
        first: Vec<String>,
        gate: Arc<Notify>,
        rest: Vec<String>,
    },
    /// Reads the request and never answers.
    Hang,
    /// Sends these SSE events, then closes the connection without ending the body.
    DieMidStream(Vec<String>),
    /// Announces `content-length` of `full` bytes, sends the first half, then closes.
    DieMidBody(String),
    /// Ollama's NDJSON stream, chunked: one line per write, each cut in two writes (with a
    /// pause between the halves) when `split`.
    Ndjson { lines: Vec<String>, split: bool },
    /// A 429 with `Retry-After: retry_after` and an OpenAI error body.
    RateLimited { retry_after: String },
    /// Any status, these extra headers, and a body with `content-length`.
    Custom {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
}

impl Reply {
    /// A 200 JSON answer.
    pub fn json(body: serde_json::Value) -> Reply {
        Reply::Full {
            status: 200,
            content_type: "application/json",
            body: body.to_string(),
        }
    }

    /// An OpenAI error with the given status.
    pub fn error(status: u16, kind: &str, message: &str) -> Reply {
        Reply::Full {
            status,
            content_type: "application/json",
            body: serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
                .to_string(),
        }
    }
}

/// Decides the reply to a request.
pub type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

/// A running mock upstream.
pub struct Mock {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    /// The accept loop and every connection task, aborted by [`Mock::stop`].
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Mock {
    /// Starts a mock on an ephemeral loopback port.
    pub async fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Mock {
        Mock::listen(Arc::new(handler), None).await
    }

    /// Starts a mock that speaks HTTPS with a new self-signed certificate for `localhost`;
    /// returns it and the certificate in PEM, for the client to trust.
    pub async fn start_tls(
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> (Mock, String) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("self-signed certificate");
        let key = rustls_pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der())
            .expect("private key");
        let config = tokio_rustls::rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .expect("TLS server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        (
            Mock::listen(Arc::new(handler), Some(acceptor)).await,
            cert.cert.pem(),
        )
    }

    /// Starts a mock on `addr` (a port a stopped mock used: the server comes back).
    pub async fn start_on(
        addr: SocketAddr,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Mock {
        Mock::listen_on(addr, Arc::new(handler), None).await
    }

    async fn listen(handler: Handler, tls: Option<tokio_rustls::TlsAcceptor>) -> Mock {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Mock::listen_on(any, handler, tls).await
    }

    async fn listen_on(
        addr: SocketAddr,
        handler: Handler,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Mock {
        let listener = TcpListener::bind(addr).await.expect("bind mock");
        let addr = listener.local_addr().expect("mock address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&requests);
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let spawned = Arc::clone(&tasks);
        let accept = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let _ = conn.set_nodelay(true);
                let (handler, recorded) = (Arc::clone(&handler), Arc::clone(&recorded));
                let task = match tls.clone() {
                    None => tokio::spawn(serve(conn, handler, recorded)),
                    Some(acceptor) => tokio::spawn(async move {
                        if let Ok(conn) = acceptor.accept(conn).await {
                            serve(conn, handler, recorded).await;
                        }
                    }),
                };
                spawned.lock().expect("lock").push(task);
            }
        });
        tasks.lock().expect("lock").push(accept);
        Mock {
            addr,
            requests,
            tasks,
        }
    }

    /// Stops the mock as a crashed server stops: the port refuses, open connections close.
    pub fn stop(&self) {
        for task in self.tasks.lock().expect("lock").drain(..) {
            task.abort();
        }
    }

    /// The mock's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("lock").clone()
    }
}

/// An address where nothing listens (connections are refused).
pub fn refused_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], super::free_port()))
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut conn: S,
    handler: Handler,
    recorded: Arc<Mutex<Vec<Recorded>>>,
) {
    let mut buf = Vec::new();
    while let Some(req) = read_request(&mut conn, &mut buf).await {
        // The gateway's health checks are answered here and not recorded, so that tests count
        // only the requests clients caused.
        if let Some(reply) = health_reply(&req) {
            match answer(&mut conn, reply).await {
                Ok(true) => continue,
                Ok(false) | Err(_) => return,
            }
        }
        recorded.lock().expect("lock").push(req.clone());
        match answer(&mut conn, handler(&req)).await {
            Ok(true) => continue,
            Ok(false) | Err(_) => return,
        }
    }
}

/// The answer to a health check (`GET /v1/models`, `GET /api/version`, `GET /health`, and
/// Ollama's model list, `GET /api/tags`, which holds no model).
fn health_reply(req: &Recorded) -> Option<Reply> {
    let body = match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/v1/models") => serde_json::json!({"object": "list", "data": []}),
        ("GET", "/api/version") => serde_json::json!({"version": "0.5.7"}),
        ("GET", "/api/tags") => serde_json::json!({"models": []}),
        ("GET", "/health") => serde_json::json!({"status": "ok"}),
        _ => return None,
    };
    Some(Reply::json(body))
}

/// Writes one reply; `Ok(true)` when the connection stays open for the next request.
async fn answer<S: AsyncWrite + Unpin>(conn: &mut S, reply: Reply) -> std::io::Result<bool> {
    match reply {
        Reply::Full {
            status,
            content_type,
            body,
        } => {
            let head = format!(
                "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nx-request-id: req_mock\r\nopenai-organization: mock-org\r\nset-cookie: session=mock\r\n\r\n",
                reason(status),
                body.len()
            );
            conn.write_all(head.as_bytes()).await?;
            conn.write_all(body.as_bytes()).await?;
        }
        Reply::Custom {
            status,
            headers,
            body,
        } => {
            let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
            conn.write_all(head.as_bytes()).await?;
            conn.write_all(body.as_bytes()).await?;
        }
        Reply::Sse {
            events,
            pause,
            split,
        } => {
            write_sse_head(conn).await?;
            for event in events {
                let bytes = format!("data: {event}\n\n");
                if split {
                    let (a, b) = bytes.split_at(bytes.len() / 2);
                    write_chunk(conn, a.as_bytes()).await?;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    write_chunk(conn, b.as_bytes()).await?;
                } else {
                    write_chunk(conn, bytes.as_bytes()).await?;
                }
                tokio::time::sleep(pause).await;
            }
            conn.write_all(b"0\r\n\r\n").await?;
        }
        Reply::Gated { first, gate, rest } => {
            write_sse_head(conn).await?;
            write_events(conn, &first).await?;
            gate.notified().await;
            write_events(conn, &rest).await?;
            conn.write_all(b"0\r\n\r\n").await?;
        }
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return Ok(false);
        }
        Reply::DieMidStream(events) => {
            write_sse_head(conn).await?;
            write_events(conn, &events).await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
            return Ok(false);
        }
        Reply::Ndjson { lines, split } => {
            conn.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n",
            )
            .await?;
            for line in lines {
                let bytes = format!("{line}\n");
                if split {
                    let (a, b) = bytes.split_at(bytes.len() / 2);
                    write_chunk(conn, a.as_bytes()).await?;
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    write_chunk(conn, b.as_bytes()).await?;
                } else {
                    write_chunk(conn, bytes.as_bytes()).await?;
                }
            }
            conn.write_all(b"0\r\n\r\n").await?;
        }
        Reply::RateLimited { retry_after } => {
            let body = serde_json::json!({"error": {"message": "Rate limit reached", "type": "rate_limit_error", "param": null, "code": "rate_limit_exceeded"}}).to_string();
            let head = format!(
                "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: {retry_after}\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            conn.write_all(head.as_bytes()).await?;
            conn.write_all(body.as_bytes()).await?;
        }
        Reply::DieMidBody(full) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                full.len()
            );
            conn.write_all(head.as_bytes()).await?;
            conn.write_all(&full.as_bytes()[..full.len() / 2]).await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
            return Ok(false);
        }
    }
    Ok(true)
}

async fn write_events<S: AsyncWrite + Unpin>(
    conn: &mut S,
    events: &[String],
) -> std::io::Result<()> {
    for event in events {
        write_chunk(conn, format!("data: {event}\n\n").as_bytes()).await?;
    }
    Ok(())
}

async fn write_sse_head<S: AsyncWrite + Unpin>(conn: &mut S) -> std::io::Result<()> {
    conn.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n",
    )
    .await
}

async fn write_chunk<S: AsyncWrite + Unpin>(conn: &mut S, data: &[u8]) -> std::io::Result<()> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    conn.write_all(&out).await
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        _ => "Status",
    }
}

/// Reads one request (content-length or chunked body) from a keep-alive connection; `buf`
/// keeps what arrived after it.
async fn read_request<S: AsyncRead + Unpin>(conn: &mut S, buf: &mut Vec<u8>) -> Option<Recorded> {
    let head = loop {
        if let Some((len, head)) = http1::request_head(buf) {
            buf.drain(..len);
            break head;
        }
        read_into(conn, buf).await?;
    };
    let mut body = Body::new(Framing::of(&head, false));
    body.feed(&std::mem::take(buf));
    while !body.complete {
        read_into(conn, buf).await?;
        body.feed(&std::mem::take(buf));
    }
    *buf = body.leftover();
    Some(Recorded {
        method: head.method,
        path: head.path,
        version: head.version,
        headers: head.headers,
        body: body.decoded,
    })
}

/// Reads what the connection has into `buf`; `None` at its end.
async fn read_into<S: AsyncRead + Unpin>(conn: &mut S, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 65536];
    let n = conn.read(&mut chunk).await.ok()?;
    if n == 0 {
        return None;
    }
    buf.extend_from_slice(&chunk[..n]);
    Some(())
}

/// A `chat.completion` answer in OpenAI's exact shape.
pub fn completion(model: &str, content: &str) -> serde_json::Value {
    serde_json::json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}
    })
}

/// The SSE events of a streamed answer in OpenAI's exact shape, `[DONE]` included.
pub fn stream_events(model: &str, pieces: &[&str]) -> Vec<String> {
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        serde_json::json!({
            "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
        })
        .to_string()
    };
    let mut events = vec![chunk(
        serde_json::json!({"role": "assistant", "content": ""}),
        serde_json::Value::Null,
    )];
    for p in pieces {
        events.push(chunk(
            serde_json::json!({"content": p}),
            serde_json::Value::Null,
        ));
    }
    events.push(chunk(serde_json::json!({}), serde_json::json!("stop")));
    events.push("[DONE]".to_owned());
    events
}

/// The usage every [`counting`] answer reports.
pub const MOCK_USAGE: (u64, u64) = (10, 3);

/// A handler that answers like OpenAI and numbers its answers (`answer N to: …`), so a test can
/// tell a replayed answer from a fresh one. Streams carry the usage chunk only when the request
/// asks for it with `stream_options.include_usage`, as OpenAI does. `pause` goes between events.
pub fn counting(pause: Duration) -> impl Fn(&Recorded) -> Reply + Send + Sync + 'static {
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    move |req: &Recorded| {
        let n = served.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let body = req.json();
        let model = body["model"].as_str().unwrap_or_default().to_owned();
        let text = format!("answer {n} to: {}", req.last_message());
        let (prompt, completion_tokens) = MOCK_USAGE;
        let usage = serde_json::json!({"prompt_tokens": prompt, "completion_tokens": completion_tokens, "total_tokens": prompt + completion_tokens});
        if body["stream"] != serde_json::json!(true) {
            let mut answer = completion(&model, &text);
            answer["usage"] = usage;
            return Reply::json(answer);
        }
        let (first, second) = text.split_at(text.len() / 2);
        let mut events = stream_events(&model, &[first, second]);
        if body["stream_options"]["include_usage"] == serde_json::json!(true) {
            let chunk = serde_json::json!({
                "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000,
                "model": model, "choices": [], "usage": usage
            });
            events.insert(events.len() - 1, chunk.to_string());
        }
        Reply::Sse {
            events,
            pause,
            split: true,
        }
    }
}

/// Ollama's native chat API, as Ollama 0.5 speaks it: `POST /api/chat` answered with one JSON
/// object, or NDJSON lines (each cut across two writes) when the request streams (the default).
/// The answer echoes the last message; with tools, the model calls the first tool.
pub fn ollama(req: &Recorded) -> Reply {
    if req.path != "/api/chat" {
        return Reply::Full {
            status: 404,
            content_type: "text/plain",
            body: "404 page not found".into(),
        };
    }
    let body = req.json();
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    if model.starts_with("missing") {
        return Reply::Full {
            status: 404,
            content_type: "application/json",
            body: serde_json::json!({"error": format!("model \"{model}\" not found, try pulling it first")}).to_string(),
        };
    }
    let text = format!("echo: {}", req.last_message());
    let created = "2024-12-01T10:00:00.000000Z";
    let tool = body["tools"][0]["function"]["name"]
        .as_str()
        .map(str::to_owned);
    let message = match &tool {
        Some(name) => serde_json::json!({"role": "assistant", "content": "",
            "tool_calls": [{"function": {"name": name, "arguments": {"city": "Paris"}}}]}),
        None => serde_json::json!({"role": "assistant", "content": text}),
    };
    let done = |message: serde_json::Value| {
        serde_json::json!({"model": model, "created_at": created, "message": message,
            "done_reason": "stop", "done": true, "total_duration": 1000, "load_duration": 10,
            "prompt_eval_count": 26, "prompt_eval_duration": 100, "eval_count": 7, "eval_duration": 500})
    };
    if body["stream"] == serde_json::json!(false) {
        return Reply::json(done(message));
    }
    let mut lines = Vec::new();
    match tool {
        Some(_) => lines.push(serde_json::json!({"model": model, "created_at": created, "message": message, "done": false}).to_string()),
        None => {
            let (a, b) = text.split_at(text.len() / 2);
            for piece in [a, b] {
                lines.push(serde_json::json!({"model": model, "created_at": created,
                    "message": {"role": "assistant", "content": piece}, "done": false}).to_string());
            }
        }
    }
    lines.push(done(serde_json::json!({"role": "assistant", "content": ""})).to_string());
    Reply::Ndjson { lines, split: true }
}
