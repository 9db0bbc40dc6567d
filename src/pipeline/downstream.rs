//! Where an answer goes: a client's connection, or a buffer for the gateway's own use.
//!
//! The pipeline pushes an answer into a [`Downstream`] piece by piece — its head, the pieces of
//! its body as they arrive, its end — and does not know who reads it. The proxy implements it
//! on a pingora session; [`Collect`] keeps the whole answer in memory, for callers inside the
//! gateway and for tests.

use std::future::Future;

use bytes::{Bytes, BytesMut};
use http::response::Parts;
use http::{HeaderMap, StatusCode};

/// The head of an answer: status and headers.
pub type Head = Parts;

/// The answer could not be delivered (the client went away); nothing more can be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone;

/// Receives one answer, in order: [`head`](Downstream::head), any number of
/// [`body`](Downstream::body) pieces, then [`finish`](Downstream::finish).
pub trait Downstream: Send {
    /// Sends the status and headers.
    fn head(&mut self, head: Head) -> impl Future<Output = Result<(), Gone>> + Send;

    /// Sends a piece of the body.
    fn body(&mut self, piece: Bytes) -> impl Future<Output = Result<(), Gone>> + Send;

    /// Ends the answer, with a last piece when there is one.
    fn finish(&mut self, last: Option<Bytes>) -> impl Future<Output = Result<(), Gone>> + Send;

    /// The answer ends as sent, but its connection must not carry another request (an error
    /// event ended a stream; a request body was left unread).
    fn close_after(&mut self);

    /// Sends a whole answer at once.
    fn respond(
        &mut self,
        head: Head,
        body: Bytes,
    ) -> impl Future<Output = Result<(), Gone>> + Send {
        async move {
            self.head(head).await?;
            self.finish(Some(body)).await
        }
    }
}

/// An answer kept in memory.
#[derive(Debug)]
pub struct Collect {
    /// The status, once the head came.
    pub status: Option<StatusCode>,
    /// The headers, once the head came.
    pub headers: HeaderMap,
    /// The body so far.
    pub body: BytesMut,
    /// The answer ended.
    pub ended: bool,
    /// The connection would not have been reused.
    pub closed: bool,
    /// Stop accepting the body after this many bytes (the reader went away).
    limit: usize,
}

impl Collect {
    /// A collector that takes up to `limit` bytes of body.
    pub fn new(limit: usize) -> Collect {
        Collect {
            status: None,
            headers: HeaderMap::new(),
            body: BytesMut::new(),
            ended: false,
            closed: false,
            limit,
        }
    }

    /// The status as a number (0 before the head).
    pub fn status(&self) -> u16 {
        self.status.map_or(0, |s| s.as_u16())
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn take(&mut self, piece: &[u8]) -> Result<(), Gone> {
        if self.ended || self.body.len() + piece.len() > self.limit {
            return Err(Gone);
        }
        self.body.extend_from_slice(piece);
        Ok(())
    }
}

impl Downstream for Collect {
    async fn head(&mut self, head: Head) -> Result<(), Gone> {
        self.status = Some(head.status);
        self.headers = head.headers;
        Ok(())
    }

    async fn body(&mut self, piece: Bytes) -> Result<(), Gone> {
        self.take(&piece)
    }

    async fn finish(&mut self, last: Option<Bytes>) -> Result<(), Gone> {
        if let Some(last) = last {
            self.take(&last)?;
        }
        self.ended = true;
        Ok(())
    }

    fn close_after(&mut self) {
        self.closed = true;
    }
}
