//! Each client connection, before and around pingora's HTTP code: the connection cap, the
//! deadlines for a request's header and for an idle keep-alive connection, the header's size and
//! field count, and OpenAI-shaped answers in place of the empty-bodied errors pingora writes
//! for bytes it cannot parse.
//!
//! [`Front`] takes each accepted connection, counts it against `limits.max_connections` and
//! wraps its stream in a [`Guarded`] stream, which watches the bytes of every request header as
//! they are read. The gateway's hooks tell the stream where each request stands
//! ([`admitted`], [`finished`]): between two requests it enforces `idle_timeout`, while a
//! header arrives `header_timeout`, `max_header_bytes` and `max_headers`; while a request is
//! served it stands aside.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::proxy::{HttpProxy, Session};
use pingora::server::ShutdownWatch;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::Gateway;
use crate::api::ApiError;
use crate::config::Limits;

/// How long a refusal may take to write before the connection is dropped without it.
const REPLY_TIMEOUT: Duration = Duration::from_secs(1);

/// An HTTP/2 connection's preface: such a connection is left to the HTTP/2 code.
const H2_PREFACE_FULL: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The pingora application the listener runs: the gateway's HTTP proxy behind the connection
/// cap and the [`Guarded`] stream.
pub struct Front {
    proxy: Arc<HttpProxy<Gateway>>,
    limits: Box<dyn Fn() -> Limits + Send + Sync>,
    open: Arc<AtomicUsize>,
    metrics: ConnMetrics,
}

impl Front {
    /// Wraps `proxy`; `limits` reads the limits in force (they change with a reload).
    pub fn new(
        proxy: HttpProxy<Gateway>,
        limits: Box<dyn Fn() -> Limits + Send + Sync>,
        metrics: ConnMetrics,
    ) -> Front {
        Front {
            proxy: Arc::new(proxy),
            limits,
            open: Arc::new(AtomicUsize::new(0)),
            metrics,
        }
    }
}

#[async_trait]
impl ServerApp for Front {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let limits = (self.limits)();
        let Some(_open) = Open::take(&self.open, limits.max_connections, &self.metrics.open) else {
            self.metrics.refused("connections");
            let error = ApiError::overloaded("too many connections");
            let reply = raw_reply(&error, true);
            let _ = tokio::time::timeout(REPLY_TIMEOUT, stream.write_all(&reply)).await;
            Shutdown::shutdown(&mut *stream).await;
            return None;
        };
        let guarded = Guarded::new(stream, limits, self.metrics.clone());
        ServerApp::process_new(&self.proxy, Box::new(guarded), shutdown).await
    }

    async fn cleanup(&self) {
        self.proxy.cleanup().await;
    }
}

/// One open client connection, counted until dropped.
struct Open<'a> {
    count: &'a AtomicUsize,
    gauge: &'a IntGauge,
}

impl<'a> Open<'a> {
    fn take(count: &'a AtomicUsize, max: usize, gauge: &'a IntGauge) -> Option<Open<'a>> {
        let now = count.fetch_add(1, Ordering::AcqRel) + 1;
        gauge.inc();
        let open = Open { count, gauge };
        (now <= max).then_some(open)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

/// The connection metrics: open connections, and what the limits refused or cut.
#[derive(Clone)]
pub struct ConnMetrics {
    open: IntGauge,
    refused: IntCounterVec,
}

impl ConnMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &Registry) -> Result<ConnMetrics, prometheus::Error> {
        let m = ConnMetrics {
            open: IntGauge::new(
                "switchyard_connections_open",
                "Client connections open now",
            )?,
            refused: IntCounterVec::new(
                Opts::new(
                    "switchyard_limit_hits_total",
                    "Connections and requests refused or closed by a limit (connections, in_flight, buffered_bytes, header_timeout, header_size, header_fields, body_timeout, body_size, malformed)",
                ),
                &["limit"],
            )?,
        };
        registry.register(Box::new(m.open.clone()))?;
        registry.register(Box::new(m.refused.clone()))?;
        Ok(m)
    }

    /// A connection or request was refused or cut by `limit`.
    pub fn refused(&self, limit: &str) {
        self.refused.with_label_values(&[limit]).inc();
    }

    /// A request was refused with `error` while its body was read.
    pub fn refused_request(&self, error: &ApiError) {
        let limit = match error.code {
            Some("request_timeout") => "body_timeout",
            Some("server_overloaded") => "buffered_bytes",
            Some("malformed_request") => "malformed",
            Some("request_too_large") => "body_size",
            _ => return,
        };
        self.refused(limit);
    }
}

/// Tells the connection of `session` that its request's header was read and the gateway
/// serves it: the stream stops watching until [`finished`].
pub fn admitted(session: &mut Session) {
    if let Some(g) = guarded(session) {
        g.signal.store(ADMITTED, Ordering::Release);
    }
}

/// Tells the connection of `session` that its request was answered: the next bytes are the
/// next request's, watched again, and the connection may idle for `idle_timeout`.
pub fn finished(session: &mut Session) {
    if session.as_downstream().is_http2() {
        return;
    }
    if let Some(g) = guarded(session) {
        g.signal.store(FINISHED, Ordering::Release);
    }
}

fn guarded(session: &Session) -> Option<&Guarded> {
    let stream = session.as_downstream().stream()?;
    (**stream).as_any().downcast_ref::<Guarded>()
}

const NONE: u8 = 0;
const ADMITTED: u8 = 1;
const FINISHED: u8 = 2;

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request's header: `seen` says whether any of its bytes came yet.
    Header { seen: bool },
    /// A request is being served; nothing is watched.
    Serving,
    /// An HTTP/2 connection: its own code keeps its limits.
    Off,
}

/// A client's stream, watched while it owes a request header.
pub struct Guarded {
    inner: Stream,
    limits: Limits,
    phase: Phase,
    /// The gateway's word on the request ([`ADMITTED`], [`FINISHED`]), read at the next poll.
    signal: AtomicU8,
    /// Whether the gateway took the request in hand; until it does, whatever pingora writes is
    /// an error of its own, replaced by an OpenAI-shaped one.
    taken: bool,
    scan: HeaderScan,
    deadline: Pin<Box<Sleep>>,
    /// An answer of the stream's own, written before the connection closes.
    reply: Option<Bytes>,
    /// Bytes read while peeking, not yet handed to the reader.
    stash: BytesMut,
    metrics: ConnMetrics,
}

impl fmt::Debug for Guarded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .finish()
    }
}

impl Guarded {
    fn new(inner: Stream, limits: Limits, metrics: ConnMetrics) -> Guarded {
        let deadline = Box::pin(tokio::time::sleep(limits.header_timeout));
        Guarded {
            inner,
            limits,
            phase: Phase::Header { seen: false },
            signal: AtomicU8::new(NONE),
            taken: false,
            scan: HeaderScan::new(limits.max_header_bytes, limits.max_headers),
            deadline,
            reply: None,
            stash: BytesMut::new(),
            metrics,
        }
    }

    /// Applies what the gateway said since the last poll.
    fn heed(&mut self) {
        // Every read and write passes here: a plain load when there is nothing to hear.
        if self.signal.load(Ordering::Acquire) == NONE {
            return;
        }
        match self.signal.swap(NONE, Ordering::AcqRel) {
            ADMITTED => {
                self.taken = true;
                if self.phase != Phase::Off {
                    self.phase = Phase::Serving;
                }
            }
            FINISHED if self.phase != Phase::Off => {
                self.taken = false;
                self.phase = Phase::Header { seen: false };
                self.scan = HeaderScan::new(self.limits.max_header_bytes, self.limits.max_headers);
                let at = Instant::now() + self.limits.idle_timeout;
                self.deadline.as_mut().reset(at);
            }
            _ => {}
        }
    }

    /// Ends the connection with `error` (written when pingora shuts the stream down).
    fn refuse(&mut self, error: &ApiError, limit: &str) -> io::Error {
        self.metrics.refused(limit);
        self.reply = Some(raw_reply(error, false));
        self.phase = Phase::Serving;
        io::Error::new(io::ErrorKind::InvalidData, error.message.clone())
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.heed();
        let before = buf.filled().len();
        if !this.stash.is_empty() {
            // Bytes read while peeking come first.
            let n = this.stash.len().min(buf.remaining());
            buf.put_slice(&this.stash.split_to(n));
        } else {
            let Phase::Header { .. } = this.phase else {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            };
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return this.poll_deadline(cx),
            }
        }
        let Phase::Header { seen } = this.phase else {
            return Poll::Ready(Ok(()));
        };
        let new = &buf.filled()[before..];
        if new.is_empty() {
            return Poll::Ready(Ok(()));
        }
        if !seen {
            this.phase = Phase::Header { seen: true };
            let at = Instant::now() + this.limits.header_timeout;
            this.deadline.as_mut().reset(at);
        }
        let scan = this.scan.feed(new);
        match scan {
            Scan::More => Poll::Ready(Ok(())),
            Scan::End => {
                this.phase = Phase::Serving;
                Poll::Ready(Ok(()))
            }
            Scan::TooLarge | Scan::TooMany => {
                let (detail, limit) = if scan == Scan::TooLarge {
                    let n = this.limits.max_header_bytes;
                    (
                        format!("the header is larger than {n} bytes (limits.max_header_bytes)"),
                        "header_size",
                    )
                } else {
                    let n = this.limits.max_headers;
                    (
                        format!("more than {n} header fields (limits.max_headers)"),
                        "header_fields",
                    )
                };
                let e = ApiError::header_too_large(&detail);
                Poll::Ready(Err(this.refuse(&e, limit)))
            }
        }
    }
}

impl Guarded {
    /// Nothing to read: pending until the header deadline, then the end (nothing of a request
    /// came) or a 408 (part of a header came).
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if std::future::Future::poll(self.deadline.as_mut(), cx).is_pending() {
            return Poll::Pending;
        }
        match self.phase {
            Phase::Header { seen: true } => {
                let e = ApiError::request_timeout("header", self.limits.header_timeout);
                Poll::Ready(Err(self.refuse(&e, "header_timeout")))
            }
            _ => {
                // Close quietly, as after a client's own close.
                self.phase = Phase::Serving;
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl Guarded {
    /// Writes what is left of the stream's own answer; ready when it is all written.
    fn poll_reply(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(reply) = self.reply.as_mut() {
            if reply.is_empty() {
                self.reply = None;
                break;
            }
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, reply))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            bytes::Buf::advance(reply, n);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.heed();
        if !this.taken && this.phase != Phase::Off {
            // pingora answers on its own only to requests it would not hand over: a header it
            // cannot parse, a method it does not proxy. Say it the OpenAI way.
            if this.reply.is_none() {
                if let Some(status) = status_of(buf) {
                    let e = pingora_refusal(status);
                    this.metrics.refused("malformed");
                    this.reply = Some(raw_reply(&e, false));
                }
            }
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.heed();
        if !this.taken && this.phase != Phase::Off {
            let first = bufs.iter().find(|b| !b.is_empty());
            return match first {
                Some(b) => Pin::new(this).poll_write(cx, b),
                None => Poll::Ready(Ok(0)),
            };
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.poll_reply(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.poll_reply(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        if self.reply.is_some() {
            let reply = std::future::poll_fn(|cx| self.poll_reply(cx));
            let _ = tokio::time::timeout(REPLY_TIMEOUT, reply).await;
        }
        Shutdown::shutdown(&mut *self.inner).await;
    }
}

impl UniqueID for Guarded {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Guarded {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Guarded {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Guarded {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Guarded {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Guarded {
    /// pingora peeks at a new connection for the HTTP/2 preface. The bytes are read into the
    /// stash (and served from it afterwards), only as far as they could still be the preface,
    /// and no longer than the header deadline; an HTTP/2 connection is left alone from then on.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        let want = buf.len().min(H2_PREFACE_FULL.len());
        let at = self.deadline.deadline();
        while self.stash.len() < want && H2_PREFACE_FULL.starts_with(&self.stash) {
            let mut piece = [0u8; 64];
            let read = tokio::io::AsyncReadExt::read(&mut self.inner, &mut piece[..want]);
            match tokio::time::timeout_at(at, read).await {
                Ok(Ok(0)) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(Ok(n)) => self.stash.extend_from_slice(&piece[..n]),
                Ok(Err(e)) => return Err(e),
                Err(_) if self.stash.is_empty() => return Err(io::ErrorKind::TimedOut.into()),
                // Part of something came: let the HTTP/1 reader find out what, and refuse it.
                Err(_) => break,
            }
        }
        let n = self.stash.len().min(buf.len());
        buf[..n].copy_from_slice(&self.stash[..n]);
        if self.stash.starts_with(H2_PREFACE_FULL) {
            self.phase = Phase::Off;
            self.taken = true;
        }
        Ok(true)
    }
}

/// The status of an HTTP/1 response head at the start of `buf`.
fn status_of(buf: &[u8]) -> Option<u16> {
    let rest = buf.strip_prefix(b"HTTP/1.")?.get(2..5)?;
    std::str::from_utf8(rest).ok()?.parse().ok()
}

/// What pingora meant by the error status it wrote, said the OpenAI way.
fn pingora_refusal(status: u16) -> ApiError {
    match status {
        400 => ApiError::malformed_http(
            "the header could not be parsed (bad syntax, conflicting or invalid Content-Length or Transfer-Encoding, or more than 256 fields)",
        ),
        405 => ApiError {
            status: 405,
            message: "This gateway does not proxy the CONNECT method".to_owned(),
            kind: "invalid_request_error",
            param: None,
            code: Some("method_not_allowed"),
        },
        status => ApiError {
            status,
            message: format!("The request was refused ({status})"),
            kind: "invalid_request_error",
            param: None,
            code: None,
        },
    }
}

/// A whole HTTP/1.1 response carrying `error`, for a connection about to close.
fn raw_reply(error: &ApiError, retry: bool) -> Bytes {
    let body = error.to_json();
    let reason = http::StatusCode::from_u16(error.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let retry = if retry { "Retry-After: 1\r\n" } else { "" };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{retry}\r\n",
        error.status,
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    Bytes::from(out)
}

/// How far a request header has come, as its bytes are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// Not ended yet, within the limits.
    More,
    /// The blank line that ends the header was read.
    End,
    /// More bytes than allowed before the end.
    TooLarge,
    /// More fields than allowed.
    TooMany,
}

/// Finds the end of a request header in the bytes read, counting its size and its lines.
#[derive(Debug, Clone)]
struct HeaderScan {
    max_bytes: usize,
    max_fields: usize,
    bytes: usize,
    lines: usize,
    /// Whether the last line end read has had nothing but CRs after it yet.
    at_line_start: bool,
    /// Whether anything but line ends came yet (empty lines before a request are skipped).
    started: bool,
}

impl HeaderScan {
    fn new(max_bytes: usize, max_fields: usize) -> HeaderScan {
        HeaderScan {
            max_bytes,
            max_fields,
            bytes: 0,
            lines: 0,
            at_line_start: false,
            started: false,
        }
    }

    /// Reads the next bytes of the head: a line at a time (found with `memchr`), not a byte at a
    /// time. A line of nothing but CRs after a line end is the blank line that ends the head.
    fn feed(&mut self, chunk: &[u8]) -> Scan {
        let mut rest = chunk;
        if !self.started {
            // Empty lines before a request are skipped (counted all the same).
            let skip = rest
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            rest = &rest[skip..];
            if let Some(over) = self.count(skip) {
                return over;
            }
            if rest.is_empty() {
                return Scan::More;
            }
            self.started = true;
        }
        loop {
            let Some(nl) = memchr::memchr(b'\n', rest) else {
                // The line goes on in the next read.
                if rest.iter().any(|&b| b != b'\r') {
                    self.at_line_start = false;
                }
                return self.count(rest.len()).unwrap_or(Scan::More);
            };
            if let Some(over) = self.count(nl + 1) {
                return over;
            }
            let line = &rest[..nl];
            if self.at_line_start && line.iter().all(|&b| b == b'\r') {
                return Scan::End;
            }
            self.lines += 1;
            // The request line is not a field.
            if self.lines > self.max_fields + 1 {
                return Scan::TooMany;
            }
            self.at_line_start = true;
            rest = &rest[nl + 1..];
        }
    }

    /// Counts `n` more bytes of the head: `TooLarge` past the limit.
    fn count(&mut self, n: usize) -> Option<Scan> {
        self.bytes += n;
        (self.bytes > self.max_bytes).then_some(Scan::TooLarge)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_in(pieces: &[&[u8]], max_bytes: usize, max_fields: usize) -> Scan {
        let mut scan = HeaderScan::new(max_bytes, max_fields);
        for piece in pieces {
            match scan.feed(piece) {
                Scan::More => {}
                other => return other,
            }
        }
        Scan::More
    }

    #[test]
    fn a_header_ends_at_its_blank_line_however_it_is_cut() {
        let head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";
        for cut in 0..head.len() {
            let (a, b) = head.split_at(cut);
            assert_eq!(scan_in(&[a, b], 1024, 10), Scan::End, "cut at {cut}");
        }
        assert_eq!(
            scan_in(&[b"GET / HTTP/1.1\nHost: x\n\n"], 1024, 10),
            Scan::End
        );
        assert_eq!(
            scan_in(&[b"GET / HTTP/1.1\r\nHost: x\r\n"], 1024, 10),
            Scan::More
        );
        // Empty lines before the request line are not its end.
        assert_eq!(
            scan_in(&[b"\r\n\r\nGET / HTTP/1.1\r\n"], 1024, 10),
            Scan::More
        );
    }

    /// The scanner's rules, a byte at a time: what the line-at-a-time scanner must agree with.
    fn byte_by_byte(head: &[u8], max_bytes: usize, max_fields: usize) -> Scan {
        let (mut bytes, mut lines, mut started, mut at_line_start) = (0, 0, false, false);
        for &b in head {
            bytes += 1;
            if bytes > max_bytes {
                return Scan::TooLarge;
            }
            if !started && (b == b'\r' || b == b'\n') {
                continue;
            }
            started = true;
            match b {
                b'\n' if at_line_start => return Scan::End,
                b'\n' => {
                    lines += 1;
                    if lines > max_fields + 1 {
                        return Scan::TooMany;
                    }
                    at_line_start = true;
                }
                b'\r' => {}
                _ => at_line_start = false,
            }
        }
        Scan::More
    }

    #[test]
    fn lines_at_a_time_agree_with_bytes_at_a_time() {
        let heads: [&[u8]; 6] = [
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nA: b\r\n\r\n{}",
            b"\r\n\nGET / HTTP/1.1\nHost: x\n\r\r\nbody",
            b"GET / HTTP/1.1\r\nA: \r\r\nB: c\r\n\r",
            b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\n\r\n",
            b"\r\r\r\n",
            b"GET /\rx HTTP/1.1\r\n\r\n",
        ];
        for head in heads {
            for (max_bytes, max_fields) in [(1024, 10), (20, 10), (1024, 2), (40, 1)] {
                let expected = byte_by_byte(head, max_bytes, max_fields);
                for cut in 0..=head.len() {
                    for cut2 in cut..=head.len() {
                        let pieces = [&head[..cut], &head[cut..cut2], &head[cut2..]];
                        assert_eq!(
                            scan_in(&pieces, max_bytes, max_fields),
                            expected,
                            "{:?} cut at {cut}, {cut2}, limits {max_bytes}/{max_fields}",
                            String::from_utf8_lossy(head)
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_header_over_its_limits_is_refused() {
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..11 {
            many.extend_from_slice(format!("x-{i}: y\r\n").as_bytes());
        }
        assert_eq!(scan_in(&[&many], 4096, 10), Scan::TooMany);
        assert_eq!(scan_in(&[&many[..many.len() - 8]], 4096, 10), Scan::More);
        let big = vec![b'a'; 2000];
        assert_eq!(scan_in(&[b"GET /", &big], 1024, 10), Scan::TooLarge);
    }

    #[test]
    fn pingora_refusals_become_openai_errors() {
        assert_eq!(status_of(b"HTTP/1.1 400 Bad Request\r\n"), Some(400));
        assert_eq!(status_of(b"HTTP/1.0 405 Method"), Some(405));
        assert_eq!(status_of(b"{\"id\":"), None);
        let reply = raw_reply(&pingora_refusal(400), false);
        let text = std::str::from_utf8(&reply).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "malformed_request");
    }
}
