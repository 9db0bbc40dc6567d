//! OpenTelemetry traces of chat requests: one server span per request with child spans for
//! classification, the cache, each upstream attempt and the hybrid stage, named and described as
//! the OpenTelemetry GenAI conventions say (`gen_ai.operation.name`, `gen_ai.request.model`,
//! `gen_ai.usage.input_tokens`, …) plus Switchyard's own `switchyard.*` attributes.
//!
//! A client's W3C `traceparent` is continued (its sampled flag decides), and every upstream
//! attempt sends its own `traceparent`, so the upstream's spans hang under the attempt's. With
//! traces off, a request carries no [`Trace`] at all and nothing here runs.
//!
//! Finished spans go to an [`Exporter`]: a thread of its own that batches them and posts them to
//! the collector over OTLP/HTTP with protobuf bodies. A full queue drops spans (counted) rather
//! than hold a request up.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1 as otlp;
use prost::Message;

use crate::api::ids::random_u64;
use crate::config::TraceConfig;

/// The W3C trace-context header.
pub const TRACEPARENT: &str = "traceparent";

/// Where a request's spans hang: its trace, the span that is their parent, and whether they are
/// recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// The trace id.
    pub trace: [u8; 16],
    /// The parent span's id.
    pub span: [u8; 8],
    /// Whether the trace is recorded.
    pub sampled: bool,
}

impl Context {
    /// Reads a `traceparent` header: version `00`, non-zero ids, lowercase hex. `None` for
    /// anything else, which then starts a new trace, as the W3C rules ask.
    pub fn parse(value: &str) -> Option<Context> {
        let mut parts = value.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != "00" || parts.next().is_some() {
            return None;
        }
        let trace: [u8; 16] = hex(trace)?;
        let span: [u8; 8] = hex(span)?;
        let flags: [u8; 1] = hex(flags)?;
        if trace == [0; 16] || span == [0; 8] {
            return None;
        }
        Some(Context {
            trace,
            span,
            sampled: flags[0] & 1 == 1,
        })
    }

    /// The `traceparent` header naming `span` of this trace as the parent.
    pub fn header(&self, span: [u8; 8]) -> String {
        format!(
            "00-{}-{}-{:02x}",
            to_hex(&self.trace),
            to_hex(&span),
            u8::from(self.sampled)
        )
    }
}

fn hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N
        || !text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh span id (never zero).
pub fn span_id() -> [u8; 8] {
    loop {
        let id = random_u64(0x5350_414e).to_be_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

fn trace_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&random_u64(1).to_be_bytes());
    id[8..].copy_from_slice(&random_u64(2).to_be_bytes());
    if id == [0; 16] {
        id[15] = 1;
    }
    id
}

fn unix_nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Text.
    Str(String),
    /// A whole number.
    Int(i64),
    /// A number.
    Float(f64),
    /// Yes or no.
    Bool(bool),
}

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Str(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Str(v)
    }
}
impl From<u64> for Value {
    fn from(v: u64) -> Value {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Bool(v)
    }
}

/// What kind of work a span is, as OTLP says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The request as the gateway served it.
    Server,
    /// A call the gateway made.
    Client,
    /// Work inside the gateway.
    Internal,
}

/// A finished span.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// Its name.
    pub name: String,
    /// Its id.
    pub id: [u8; 8],
    /// Its parent's id.
    pub parent: [u8; 8],
    /// Its kind.
    pub kind: Kind,
    /// When it started.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// What it says.
    pub attributes: Vec<(&'static str, Value)>,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

/// One request's trace as it is recorded: the server span's id and attributes, and the child
/// spans that ended so far.
#[derive(Debug, Clone)]
pub struct Trace {
    /// The trace and the client's span (the root's parent), if the client sent one.
    pub context: Context,
    /// The server span's id.
    pub root: [u8; 8],
    remote_parent: Option<[u8; 8]>,
    started: SystemTime,
    /// Attributes of the server span.
    pub attributes: Vec<(&'static str, Value)>,
    /// The child spans.
    pub spans: Vec<Span>,
    /// Message text may be recorded.
    pub capture_content: bool,
}

/// A child span being timed.
#[derive(Debug, Clone, Copy)]
pub struct Open {
    id: [u8; 8],
    start: SystemTime,
}

impl Open {
    /// A span that started at `start` with the id `id` (named in a `traceparent` already).
    pub fn at(id: [u8; 8], start: SystemTime) -> Open {
        Open { id, start }
    }

    /// The span's id, for the `traceparent` of the call it times.
    pub fn id(&self) -> [u8; 8] {
        self.id
    }
}

impl Trace {
    /// The trace of a request that arrived with `traceparent` (if any), when it is to be
    /// recorded under `config`; `None` when it is not (and then nothing is recorded at all).
    pub fn start(traceparent: Option<&str>, config: &TraceConfig) -> Option<Trace> {
        let client = traceparent.and_then(Context::parse);
        let context = match client {
            Some(c) => c,
            None => {
                let trace = trace_id();
                // The ratio is read off the trace id, so every replica decides alike.
                let n = u64::from_be_bytes(trace[8..].try_into().unwrap_or([0; 8]));
                let sampled = (n as f64) < config.sample * (u64::MAX as f64);
                Context {
                    trace,
                    span: [0; 8],
                    sampled: sampled || config.sample >= 1.0,
                }
            }
        };
        if !context.sampled {
            return None;
        }
        let root = span_id();
        Some(Trace {
            context: Context {
                span: root,
                ..context
            },
            root,
            remote_parent: client.map(|c| c.span),
            started: SystemTime::now(),
            attributes: Vec::new(),
            spans: Vec::new(),
            capture_content: config.capture_content,
        })
    }

    /// Starts timing a child span.
    pub fn open(&self) -> Open {
        Open {
            id: span_id(),
            start: SystemTime::now(),
        }
    }

    /// Ends a child span of the server span.
    pub fn close(
        &mut self,
        open: Open,
        name: impl Into<String>,
        kind: Kind,
        attributes: Vec<(&'static str, Value)>,
        error: Option<String>,
    ) {
        self.spans.push(Span {
            name: name.into(),
            id: open.id,
            parent: self.root,
            kind,
            start: open.start,
            end: SystemTime::now(),
            attributes,
            error,
        });
    }

    /// Sets an attribute of the server span.
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        self.attributes.push((key, value.into()));
    }

    /// Ends the server span, named `name`, failed when `error` says so; gives the trace's
    /// context and every span, the server span first.
    pub fn finish(mut self, name: String, error: Option<String>) -> (Context, Vec<Span>) {
        let root = Span {
            name,
            id: self.root,
            parent: self.remote_parent.unwrap_or([0; 8]),
            kind: Kind::Server,
            start: self.started,
            end: SystemTime::now(),
            attributes: std::mem::take(&mut self.attributes),
            error,
        };
        self.spans.insert(0, root);
        (self.context, self.spans)
    }
}

/// A batch of spans of one trace, on its way to the exporter.
struct Batch {
    trace: [u8; 16],
    spans: Vec<Span>,
}

/// Sends finished traces to the collector from a thread of its own.
#[derive(Clone)]
pub struct Exporter {
    queue: SyncSender<Batch>,
    dropped: Arc<AtomicU64>,
}

/// Traces waiting for the exporter, at most.
const QUEUE: usize = 4096;
/// Spans in one export, at most.
const BATCH: usize = 512;
/// The longest a span waits for its batch to fill.
const LINGER: Duration = Duration::from_secs(1);

impl Exporter {
    /// Starts the exporter thread for `config`.
    pub fn start(config: &TraceConfig) -> Result<Exporter, String> {
        let (queue, rx) = sync_channel(QUEUE);
        let target = Target::parse(&config.endpoint, config.timeout)?;
        let service = config.service_name.clone();
        std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || export_loop(rx, &target, &service))
            .map_err(|e| format!("cannot start the trace exporter: {e}"))?;
        Ok(Exporter {
            queue,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Hands a finished trace over; drops it (counted) when the queue is full.
    pub fn send(&self, context: Context, spans: Vec<Span>) {
        let batch = Batch {
            trace: context.trace,
            spans,
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.queue.try_send(batch)
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Traces dropped because the exporter could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Gathers batches and posts them, one export at a time.
fn export_loop(rx: Receiver<Batch>, target: &Target, service: &str) {
    let mut pending: Vec<(Vec<u8>, Span)> = Vec::new();
    let mut oldest: Option<Instant> = None;
    loop {
        let wait = oldest.map_or(LINGER, |t| LINGER.saturating_sub(t.elapsed()));
        match rx.recv_timeout(wait) {
            Ok(batch) => {
                oldest.get_or_insert_with(Instant::now);
                let trace = batch.trace.to_vec();
                pending.extend(batch.spans.into_iter().map(|s| (trace.clone(), s)));
                if pending.len() < BATCH {
                    continue;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                if !pending.is_empty() {
                    post(target, &encode(service, std::mem::take(&mut pending)));
                }
                return;
            }
        }
        if !pending.is_empty() {
            post(target, &encode(service, std::mem::take(&mut pending)));
        }
        oldest = None;
    }
}

/// The OTLP request for `spans` (each with its trace id).
fn encode(service: &str, spans: Vec<(Vec<u8>, Span)>) -> Vec<u8> {
    let text = |key: &str, value: &str| KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    };
    let resource = Resource {
        attributes: vec![
            text("service.name", service),
            text("service.version", crate::VERSION),
            text("telemetry.sdk.name", "switchyard"),
        ],
        ..Default::default()
    };
    let spans = spans
        .into_iter()
        .map(|(trace, s)| otlp::Span {
            trace_id: trace,
            span_id: s.id.to_vec(),
            parent_span_id: if s.parent == [0; 8] {
                Vec::new()
            } else {
                s.parent.to_vec()
            },
            name: s.name,
            kind: match s.kind {
                Kind::Server => otlp::span::SpanKind::Server,
                Kind::Client => otlp::span::SpanKind::Client,
                Kind::Internal => otlp::span::SpanKind::Internal,
            } as i32,
            start_time_unix_nano: unix_nanos(s.start),
            end_time_unix_nano: unix_nanos(s.end),
            attributes: s
                .attributes
                .into_iter()
                .map(|(key, value)| KeyValue {
                    key: key.to_owned(),
                    value: Some(AnyValue {
                        value: Some(match value {
                            Value::Str(v) => any_value::Value::StringValue(v),
                            Value::Int(v) => any_value::Value::IntValue(v),
                            Value::Float(v) => any_value::Value::DoubleValue(v),
                            Value::Bool(v) => any_value::Value::BoolValue(v),
                        }),
                    }),
                    ..Default::default()
                })
                .collect(),
            status: Some(match s.error {
                Some(message) => otlp::Status {
                    message,
                    code: otlp::status::StatusCode::Error as i32,
                },
                None => otlp::Status::default(),
            }),
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![otlp::ResourceSpans {
            resource: Some(resource),
            scope_spans: vec![otlp::ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "switchyard".into(),
                    version: crate::VERSION.into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

/// The collector: where to connect and what to ask for.
struct Target {
    host: String,
    port: u16,
    path: String,
    timeout: Duration,
}

impl Target {
    fn parse(url: &str, timeout: Duration) -> Result<Target, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("`{url}` is not an http:// URL"))?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        // `[v6]:port`, `host:port`, or either without a port.
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, rest) = v6
                    .split_once(']')
                    .ok_or_else(|| format!("`{url}`: unclosed ["))?;
                (host, rest.strip_prefix(':'))
            }
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        let port = match port {
            Some(p) => p.parse().map_err(|_| format!("`{url}`: bad port"))?,
            None => 80,
        };
        let host = host.to_owned();
        Ok(Target {
            host,
            port,
            path: if path.is_empty() {
                "/".into()
            } else {
                path.into()
            },
            timeout,
        })
    }
}

/// Posts one export; a failure is logged and the spans are dropped (the collector is not worth
/// more than that to a gateway serving requests).
fn post(target: &Target, body: &[u8]) {
    if let Err(e) = try_post(target, body) {
        tracing::warn!(
            "trace export to {}:{}{} failed: {e}",
            target.host,
            target.port,
            target.path
        );
    }
}

fn try_post(target: &Target, body: &[u8]) -> std::io::Result<()> {
    let addr = (target.host.as_str(), target.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, target.timeout)?;
    stream.set_read_timeout(Some(target.timeout))?;
    stream.set_write_timeout(Some(target.timeout))?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        target.path,
        target.host,
        target.port,
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut answer = [0u8; 64];
    let n = stream.read(&mut answer)?;
    let status = std::str::from_utf8(&answer[..n])
        .ok()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("");
    if status.starts_with('2') {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "the collector answered `{status}`"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_reads_and_writes_the_w3c_form() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = Context::parse(header).expect("valid");
        assert!(c.sampled);
        assert_eq!(c.header(c.span), header);
        let unsampled = Context::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        assert_eq!(unsampled.map(|c| c.sampled), Some(false));
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bé-01",
        ] {
            assert_eq!(Context::parse(bad), None, "{bad}");
        }
    }

    fn config(sample: f64) -> TraceConfig {
        TraceConfig {
            endpoint: "http://127.0.0.1:4318/v1/traces".into(),
            service_name: "switchyard".into(),
            sample,
            capture_content: false,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_clients_trace_is_continued_and_its_flag_decides() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut t = Trace::start(Some(header), &config(0.0)).expect("the client sampled it");
        let open = t.open();
        t.close(open, "cache", Kind::Internal, vec![], None);
        let (context, spans) = t.finish("chat gpt-4o".into(), None);
        assert_eq!(to_hex(&context.trace), "4bf92f3577b34da6a3ce929d0e0e4736");
        let client: [u8; 8] = hex("00f067aa0ba902b7").unwrap();
        assert_eq!(
            spans[0].parent, client,
            "the server span hangs under the client's"
        );
        assert_eq!(spans[1].parent, spans[0].id);
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(Trace::start(Some(unsampled), &config(1.0)).is_none());
        assert!(Trace::start(None, &config(0.0)).is_none());
        assert!(Trace::start(None, &config(1.0)).is_some());
    }

    #[test]
    fn collector_urls_are_read() {
        let t = Target::parse("http://collector:4318/v1/traces", Duration::ZERO).unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("collector", 4318, "/v1/traces")
        );
        let t = Target::parse("http://[::1]:4318/v1/traces", Duration::ZERO).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 4318));
        assert!(Target::parse("https://collector/v1/traces", Duration::ZERO).is_err());
    }
}
