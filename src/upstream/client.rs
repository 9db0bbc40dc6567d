//! The gateway's own HTTP exchange with an upstream, on pingora's pooled client connections.
//!
//! pingora's proxy loop cannot forward a request body that was read before the upstream was
//! chosen once it exceeds its 64 KiB retry buffer, and chat bodies carrying documents are often
//! larger. So for chat requests the gateway sends the body itself: one `Connector` shared by all
//! requests (connections are pooled and reused), explicit timeouts on every step, and a body
//! reader that hands over everything already received in one piece.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::v1::client::HttpSession as HttpSessionV1;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};
use tokio::io::AsyncWriteExt;

use super::call::{Exchange, ExchangeError, Transport};
use super::{Backend, Upstream, POOL_IDLE};
use crate::config::Timeouts;

/// The real transport: pingora's client, with one pool of connections shared by all requests
/// (and by every pipeline a reload makes).
#[derive(Clone)]
pub struct Pooled {
    connector: Arc<Connector>,
}

impl Default for Pooled {
    fn default() -> Self {
        Pooled::new()
    }
}

impl Pooled {
    /// A transport with an empty connection pool.
    pub fn new() -> Pooled {
        Pooled {
            connector: Arc::new(Connector::new(None)),
        }
    }
}

impl Pooled {
    /// Sends `head` and `body` to `backend` of `upstream` within `timeouts`, and waits for the
    /// answer's head.
    pub async fn exchange(
        &self,
        upstream: &Upstream,
        backend: &Backend,
        head: http::request::Parts,
        body: Bytes,
        timeouts: Timeouts,
    ) -> Result<PooledExchange, ExchangeError> {
        let peer = upstream
            .peer(backend)
            .await
            .map_err(|e| ExchangeError::Unreachable(e.message))?;
        PooledExchange::start(&self.connector, peer, timeouts, head, body).await
    }
}

impl Transport for Pooled {
    type Exchange = PooledExchange;

    async fn send(
        &self,
        upstream: &Upstream,
        backend: &Backend,
        head: http::request::Parts,
        body: Bytes,
    ) -> Result<PooledExchange, ExchangeError> {
        let timeouts = upstream.config.timeouts;
        self.exchange(upstream, backend, head, body, timeouts).await
    }
}

/// How many times a request is sent again when a pooled connection turns out to be closed.
const STALE_RETRIES: usize = 2;

fn classify(e: &Error, started: bool) -> ExchangeError {
    match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout => {
            ExchangeError::Timeout("connect")
        }
        ErrorType::ReadTimedout => ExchangeError::Timeout("idle"),
        ErrorType::WriteTimedout => ExchangeError::Timeout("sending the request"),
        other if started => ExchangeError::Broken(describe(other)),
        other => ExchangeError::Unreachable(describe(other)),
    }
}

fn describe(etype: &ErrorType) -> String {
    match etype {
        ErrorType::ConnectRefused => "connection refused".into(),
        ErrorType::ConnectNoRoute => "no route to host".into(),
        ErrorType::ConnectionClosed => "connection closed".into(),
        ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert => "TLS handshake failed".into(),
        other => other.as_str().to_lowercase().replace('_', " "),
    }
}

/// An exchange on a pooled connection whose response header has arrived.
pub struct PooledExchange {
    connector: Arc<Connector>,
    session: HttpSession,
    peer: HttpPeer,
    idle: Duration,
    deadline: Instant,
    /// An error met while gathering buffered chunks, reported on the next read.
    pending: Option<ExchangeError>,
    ended: bool,
}

impl PooledExchange {
    /// Sends `head` and `body` to `peer` and waits for the response header.
    ///
    /// A pooled connection that the upstream had already closed is replaced by a new one and the
    /// request sent again: nothing reached the upstream's application in that case.
    async fn start(
        connector: &Arc<Connector>,
        peer: HttpPeer,
        timeouts: Timeouts,
        head: http::request::Parts,
        body: Bytes,
    ) -> Result<PooledExchange, ExchangeError> {
        let started = Instant::now();
        let deadline = started + timeouts.total;
        let first_byte_by = (started + timeouts.first_byte).min(deadline);
        let mut attempt = 0;
        loop {
            let (session, reused) = connector
                .get_http_session(&peer)
                .await
                .map_err(|e| classify(&e, false))?;
            let sent = send(session, &peer, &head, &body, timeouts.idle, first_byte_by).await;
            match sent {
                Ok(session) => {
                    return Ok(PooledExchange {
                        connector: Arc::clone(connector),
                        session,
                        peer,
                        idle: timeouts.idle,
                        deadline,
                        pending: None,
                        ended: false,
                    })
                }
                Err(SendError::Io(e)) if reused && attempt < STALE_RETRIES => {
                    tracing::debug!("pooled connection to {peer} was stale ({e}); retrying");
                    attempt += 1;
                }
                Err(SendError::Io(e)) => return Err(classify(&e, false)),
                Err(SendError::FirstByteTimeout) => {
                    return Err(ExchangeError::Timeout(if first_byte_by == deadline {
                        "total"
                    } else {
                        "first byte"
                    }))
                }
            }
        }
    }

    async fn read_one(&mut self) -> Result<Option<Bytes>, ExchangeError> {
        let now = Instant::now();
        if now >= self.deadline {
            return Err(ExchangeError::Timeout("total"));
        }
        let left = self.deadline - now;
        let (limit, which) = if left < self.idle {
            (left, "total")
        } else {
            (self.idle, "idle")
        };
        match tokio::time::timeout(limit, self.session.read_response_body()).await {
            Ok(Ok(chunk)) => Ok(chunk),
            Ok(Err(e)) => Err(classify(&e, true)),
            Err(_) => Err(ExchangeError::Timeout(which)),
        }
    }
}

impl Exchange for PooledExchange {
    fn head(&self) -> &http::response::Parts {
        // `start` returns only after the header was read.
        self.session
            .response_header()
            .expect("response header is read in start")
    }

    async fn next(&mut self) -> Result<Option<Bytes>, ExchangeError> {
        if let Some(e) = self.pending.take() {
            return Err(e);
        }
        if self.ended {
            return Ok(None);
        }
        let first = self.read_one().await?;
        let Some(first) = first else {
            self.ended = true;
            return Ok(None);
        };
        // pingora returns one chunk per read: take whatever else is already buffered so that a
        // burst of small SSE events goes downstream in one write.
        let mut more: Option<BytesMut> = None;
        loop {
            match self.session.read_response_body().now_or_never() {
                Some(Ok(Some(chunk))) => more
                    .get_or_insert_with(|| BytesMut::from(&first[..]))
                    .extend_from_slice(&chunk),
                Some(Ok(None)) => {
                    self.ended = true;
                    break;
                }
                Some(Err(e)) => {
                    self.pending = Some(classify(&e, true));
                    break;
                }
                None => break,
            }
        }
        Ok(Some(more.map_or(first, BytesMut::freeze)))
    }

    async fn finish(mut self) {
        if self.ended && self.pending.is_none() && self.session.response_done() {
            self.connector
                .release_http_session(self.session, &self.peer, Some(POOL_IDLE))
                .await;
        } else {
            self.session.shutdown().await;
        }
    }
}

enum SendError {
    Io(Box<Error>),
    FirstByteTimeout,
}

/// Sends the request on `session` and waits for the answer's head; gives back the session to
/// read the answer's body from.
///
/// On HTTP/1.1 the head and the body leave in one write: pingora's client flushes the head on
/// its own, which costs a packet (and the upstream a wake-up) per request. The connection is
/// taken out of pingora's session for the write and put into a new session to read the answer,
/// which is what pingora does itself with a pooled connection.
async fn send(
    session: HttpSession,
    peer: &HttpPeer,
    head: &http::request::Parts,
    body: &Bytes,
    write_timeout: Duration,
    first_byte_by: Instant,
) -> Result<HttpSession, SendError> {
    let exchange = async {
        let mut session = match session {
            HttpSession::H1(h1) => {
                let mut stream = h1.into_inner();
                let wire = h1_wire(head, body);
                let write = async {
                    stream.write_all(&wire).await?;
                    stream.flush().await
                };
                match tokio::time::timeout(write_timeout, write).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        return Err(Error::because(
                            ErrorType::WriteError,
                            "while writing the request",
                            e,
                        ))
                    }
                    Err(_) => {
                        return Err(Error::explain(
                            ErrorType::WriteTimedout,
                            "while writing the request",
                        ))
                    }
                }
                HttpSession::H1(HttpSessionV1::new_with_options(stream, peer))
            }
            mut other => {
                other.set_write_timeout(Some(write_timeout));
                let header = RequestHeader::from(head.clone());
                other.write_request_header(Box::new(header)).await?;
                if !body.is_empty() {
                    other.write_request_body(body.clone(), true).await?;
                }
                other.finish_request_body().await?;
                other
            }
        };
        // The connector leaves the read timeout unset; reads are timed by the caller.
        session.set_read_timeout(None);
        // Informational answers (100 Continue) come before the real header.
        loop {
            session.read_response_header().await?;
            match session.response_header() {
                Some(h) if h.status.is_informational() => continue,
                _ => return Ok(session),
            }
        }
    };
    let left = first_byte_by.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, exchange).await {
        Ok(result) => result.map_err(SendError::Io),
        Err(_) => Err(SendError::FirstByteTimeout),
    }
}

/// An HTTP/1.1 request on the wire: the request line, the headers, the body.
fn h1_wire(head: &http::request::Parts, body: &[u8]) -> Vec<u8> {
    let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
    let headers: usize = head
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    let mut wire = Vec::with_capacity(path.len() + headers + body.len() + 32);
    wire.extend_from_slice(head.method.as_str().as_bytes());
    wire.push(b' ');
    wire.extend_from_slice(path.as_bytes());
    wire.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &head.headers {
        wire.extend_from_slice(name.as_str().as_bytes());
        wire.extend_from_slice(b": ");
        wire.extend_from_slice(value.as_bytes());
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"\r\n");
    wire.extend_from_slice(body);
    wire
}
