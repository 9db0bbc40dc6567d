//! A client's pingora session as the pipeline sees it: the request body read whole, and a
//! [`Downstream`] that writes the answer to the connection.

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

    fn cut(&mut self, why: &str) -> Gone {
        self.session.set_keepalive(None);
        self.error = Some(Error::explain(ErrorType::ReadError, why.to_owned()));
        Gone
    }

    fn close_after(&mut self) {
        self.session.set_keepalive(None);
    }
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

/// Reads the whole request body, refusing it past `limit` bytes.
pub(super) async fn read_body(
    session: &mut Session,
    limit: u64,
) -> pingora::Result<Result<Bytes, ApiError>> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Ok(Err(ApiError::body_too_large(limit)));
    }
    if expects_continue(session) {
        session.write_continue_response().await?;
    }
    let capacity = declared.unwrap_or(0).min(limit) as usize;
    let mut body = BytesMut::with_capacity(capacity);
    let mut first: Option<Bytes> = None;
    while let Some(chunk) = session.read_request_body().await? {
        if (body.len() + chunk.len()) as u64 > limit
            || first
                .as_ref()
                .is_some_and(|f| (f.len() + chunk.len()) as u64 > limit)
        {
            return Ok(Err(ApiError::body_too_large(limit)));
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
