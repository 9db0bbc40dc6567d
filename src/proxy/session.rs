//! A client's pingora session as the pipeline sees it: the request body read whole, and a
//! [`Downstream`] that writes the answer to the connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorType};

use crate::api::ApiError;
use crate::pipeline::{Downstream, Gone, Head};

/// Writes an answer to a client's session, remembering the error that stopped it.
pub(super) struct SessionDownstream<'s> {
    session: &'s mut Session,
    error: Option<Box<Error>>,
}

impl<'s> SessionDownstream<'s> {
    pub(super) fn new(session: &'s mut Session) -> SessionDownstream<'s> {
        SessionDownstream {
            session,
            error: None,
        }
    }

    /// The outcome for pingora: the error that stopped the answer, if one did.
    pub(super) fn into_result(self, served: Result<(), Gone>) -> pingora::Result<()> {
        match (served, self.error) {
            (Ok(()), _) => Ok(()),
            (Err(Gone), Some(e)) => Err(e),
            (Err(Gone), None) => Error::e_explain(ErrorType::WriteError, "the answer was cut"),
        }
    }

    fn keep(&mut self, result: pingora::Result<()>) -> Result<(), Gone> {
        result.map_err(|e| {
            self.error = Some(e);
            Gone
        })
    }
}

impl Downstream for SessionDownstream<'_> {
    async fn head(&mut self, mut head: Head) -> Result<(), Gone> {
        if self.session.req_header().version == http::Version::HTTP_10
            && !head.headers.contains_key(http::header::CONTENT_LENGTH)
        {
            // HTTP/1.0 has no chunked encoding: a body of unknown length ends when the
            // connection closes.
            head.headers.remove(http::header::TRANSFER_ENCODING);
            head.headers.insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            self.session.set_keepalive(None);
        }
        let header = Box::new(ResponseHeader::from(head));
        let result = self.session.write_response_header(header, false).await;
        self.keep(result)
    }

    async fn body(&mut self, piece: Bytes) -> Result<(), Gone> {
        let result = self.session.write_response_body(Some(piece), false).await;
        self.keep(result)
    }

    async fn finish(&mut self, last: Option<Bytes>) -> Result<(), Gone> {
        let result = self.session.write_response_body(last, true).await;
        self.keep(result)
    }

    fn close_after(&mut self) {
        self.session.set_keepalive(None);
    }
}

/// Why a request's `Content-Length` is ambiguous, if it is: not one plain number. Two readers
/// of such a request may disagree on where its body ends (request smuggling), so it is refused
/// rather than guessed at. (pingora itself lets `Transfer-Encoding` win over a
/// `Content-Length` beside it, drops the length, and closes the connection after the answer.)
pub(super) fn ambiguous_framing(headers: &http::HeaderMap) -> Option<ApiError> {
    let mut lengths = headers.get_all(http::header::CONTENT_LENGTH).iter();
    let first = lengths.next()?;
    if lengths.next().is_some() {
        return Some(ApiError::malformed_http("more than one Content-Length"));
    }
    let plain = !first.is_empty() && first.as_bytes().iter().all(u8::is_ascii_digit);
    if !plain {
        return Some(ApiError::malformed_http(
            "Content-Length must be one decimal number",
        ));
    }
    None
}

/// Whether the client waits for `100 Continue` before sending its body.
pub(super) fn expects_continue(session: &Session) -> bool {
    session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
}

/// What one request body may take: bytes, time, and a share of what all bodies hold at once.
pub(super) struct BodyLimits {
    /// Largest body accepted (413 past it).
    pub max: u64,
    /// The longest the body may take to arrive (408 past it).
    pub timeout: Duration,
    /// Bytes held by the bodies of all requests now, this one's included once read.
    pub held: Arc<AtomicU64>,
    /// The most all bodies may hold (503 past it).
    pub max_held: u64,
}

/// A body's bytes counted in [`BodyLimits::held`] until the request that holds them ends.
pub(super) struct Held {
    held: Arc<AtomicU64>,
    bytes: u64,
}

impl Held {
    fn take(&mut self, n: u64, max: u64) -> bool {
        self.bytes += n;
        self.held.fetch_add(n, Ordering::AcqRel) + n <= max
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Reads the whole request body within `limits`. An `ApiError` says why it was refused; the
/// rest of a refused body is not read, so the connection must not be reused.
pub(super) async fn read_body(
    session: &mut Session,
    limits: &BodyLimits,
) -> pingora::Result<Result<(Bytes, Held), ApiError>> {
    let mut held = Held {
        held: Arc::clone(&limits.held),
        bytes: 0,
    };
    let read = read_within(session, limits, &mut held);
    match tokio::time::timeout(limits.timeout, read).await {
        Ok(Ok(Ok(body))) => Ok(Ok((body, held))),
        Ok(Ok(Err(refused))) => Ok(Err(refused)),
        Ok(Err(e)) => match malformed(&e) {
            Some(refused) => Ok(Err(refused)),
            None => Err(e),
        },
        Err(_) => Ok(Err(ApiError::request_timeout("body", limits.timeout))),
    }
}

/// A body the client framed wrongly (a bad chunk, a broken trailer), said the OpenAI way;
/// `None` for a connection that failed.
pub(super) fn malformed(e: &Error) -> Option<ApiError> {
    // pingora's body reader names these errors without exporting them.
    let name = e.etype().as_str();
    matches!(
        name,
        "InvalidChunk" | "InvalidTrailerEnd" | "InvalidHTTPHeader"
    )
    .then(|| ApiError::malformed_http(&format!("the body's framing is broken ({name})")))
}

async fn read_within(
    session: &mut Session,
    limits: &BodyLimits,
    held: &mut Held,
) -> pingora::Result<Result<Bytes, ApiError>> {
    let limit = limits.max;
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Ok(Err(ApiError::body_too_large(limit)));
    }
    if declared.is_some_and(|n| !held.take(n, limits.max_held)) {
        return Ok(Err(ApiError::overloaded("request bodies being read")));
    }
    if expects_continue(session) {
        session.write_continue_response().await?;
    }
    let capacity = declared.unwrap_or(0).min(limit) as usize;
    let mut body = BytesMut::with_capacity(capacity);
    let mut first: Option<Bytes> = None;
    let mut got: u64 = 0;
    while let Some(chunk) = session.read_request_body().await? {
        got += chunk.len() as u64;
        if got > limit {
            return Ok(Err(ApiError::body_too_large(limit)));
        }
        // A body without a declared length is counted as it comes.
        if got > declared.unwrap_or(0) && !held.take(chunk.len() as u64, limits.max_held) {
            return Ok(Err(ApiError::overloaded("request bodies being read")));
        }
        // A body that arrives in one chunk is kept as it is, without a copy.
        match first.take() {
            None if body.is_empty() => first = Some(chunk),
            Some(f) => {
                body.extend_from_slice(&f);
                body.extend_from_slice(&chunk);
            }
            None => body.extend_from_slice(&chunk),
        }
    }
    Ok(Ok(first.unwrap_or_else(|| body.freeze())))
}
