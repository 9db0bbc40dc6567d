//! A transport that answers from a script instead of a socket, for unit tests and benchmarks of
//! the pipeline: each backend (by its label) has a queue of replies, each request takes the next
//! one, and every request sent is recorded for the test to read.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

use super::call::{Exchange, ExchangeError, Transport};
use super::{Backend, Upstream};

/// What a backend does with one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Answers with a status, headers and a body in pieces, then (optionally) breaks.
    Answer {
        /// The status.
        status: u16,
        /// The headers.
        headers: Vec<(&'static str, String)>,
        /// The body, piece by piece as `next` hands them out.
        pieces: Vec<Bytes>,
        /// The connection breaks after the pieces instead of ending cleanly.
        breaks: bool,
    },
    /// Fails before any answer.
    Fail(ExchangeError),
}

impl Reply {
    /// A 200 JSON answer.
    pub fn json(body: &str) -> Reply {
        Reply::Answer {
            status: 200,
            headers: vec![("content-type", "application/json".into())],
            pieces: vec![Bytes::copy_from_slice(body.as_bytes())],
            breaks: false,
        }
    }

    /// A 200 answer of `content_type`, in the given pieces.
    pub fn pieces(content_type: &str, pieces: &[&str]) -> Reply {
        Reply::Answer {
            status: 200,
            headers: vec![("content-type", content_type.into())],
            pieces: pieces
                .iter()
                .map(|p| Bytes::copy_from_slice(p.as_bytes()))
                .collect(),
            breaks: false,
        }
    }

    /// An error answer with a JSON body and extra headers.
    pub fn status(status: u16, body: &str, headers: &[(&'static str, &str)]) -> Reply {
        let mut all = vec![("content-type", "application/json".to_owned())];
        all.extend(headers.iter().map(|(k, v)| (*k, (*v).to_owned())));
        Reply::Answer {
            status,
            headers: all,
            pieces: vec![Bytes::copy_from_slice(body.as_bytes())],
            breaks: false,
        }
    }

    /// The same answer, breaking after its pieces.
    pub fn then_break(self) -> Reply {
        match self {
            Reply::Answer {
                status,
                headers,
                pieces,
                ..
            } => Reply::Answer {
                status,
                headers,
                pieces,
                breaks: true,
            },
            fail => fail,
        }
    }
}

/// A request the transport was given.
#[derive(Debug)]
pub struct Sent {
    /// The backend's label.
    pub backend: String,
    /// The request's head.
    pub head: http::request::Parts,
    /// Its body.
    pub body: Bytes,
}

impl Sent {
    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

/// Answers requests from per-backend scripts.
#[derive(Default)]
pub struct Scripted {
    scripts: Mutex<HashMap<String, VecDeque<Reply>>>,
    /// Replies given when a backend's script has run out.
    always: Mutex<HashMap<String, Reply>>,
    sent: Mutex<Vec<Sent>>,
}

impl Scripted {
    /// A transport with no scripts: every request fails as unreachable.
    pub fn new() -> Scripted {
        Scripted::default()
    }

    /// Queues `replies` for the backend labelled `backend`.
    pub fn script(&self, backend: &str, replies: impl IntoIterator<Item = Reply>) -> &Scripted {
        let mut scripts = self.scripts.lock().unwrap_or_else(|e| e.into_inner());
        scripts
            .entry(backend.to_owned())
            .or_default()
            .extend(replies);
        self
    }

    /// Gives `reply` to every request to `backend` once its script has run out.
    pub fn always(&self, backend: &str, reply: Reply) -> &Scripted {
        let mut always = self.always.lock().unwrap_or_else(|e| e.into_inner());
        always.insert(backend.to_owned(), reply);
        self
    }

    /// The requests sent so far, in order (taken out of the record).
    pub fn take_sent(&self) -> Vec<Sent> {
        std::mem::take(&mut *self.sent.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn next_reply(&self, backend: &str) -> Reply {
        let queued = self
            .scripts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(backend)
            .and_then(VecDeque::pop_front);
        queued
            .or_else(|| {
                let always = self.always.lock().unwrap_or_else(|e| e.into_inner());
                always.get(backend).cloned()
            })
            .unwrap_or_else(|| Reply::Fail(ExchangeError::Unreachable("no script".into())))
    }
}

/// An answer being read from a script.
pub struct ScriptedExchange {
    head: http::response::Parts,
    pieces: VecDeque<Bytes>,
    breaks: bool,
}

impl Transport for Scripted {
    type Exchange = ScriptedExchange;

    async fn send(
        &self,
        _upstream: &Upstream,
        backend: &Backend,
        head: http::request::Parts,
        body: Bytes,
    ) -> Result<ScriptedExchange, ExchangeError> {
        self.sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Sent {
                backend: backend.label.clone(),
                head,
                body,
            });
        match self.next_reply(&backend.label) {
            Reply::Fail(e) => Err(e),
            Reply::Answer {
                status,
                headers,
                pieces,
                breaks,
            } => {
                let mut head = http::Response::new(()).into_parts().0;
                head.status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                for (name, value) in headers {
                    if let Ok(value) = HeaderValue::from_str(&value) {
                        head.headers.append(HeaderName::from_static(name), value);
                    }
                }
                Ok(ScriptedExchange {
                    head,
                    pieces: pieces.into(),
                    breaks,
                })
            }
        }
    }
}

impl Exchange for ScriptedExchange {
    fn head(&self) -> &http::response::Parts {
        &self.head
    }

    async fn next(&mut self) -> Result<Option<Bytes>, ExchangeError> {
        match self.pieces.pop_front() {
            Some(piece) => Ok(Some(piece)),
            None if self.breaks => Err(ExchangeError::Broken("connection reset".into())),
            None => Ok(None),
        }
    }

    async fn finish(self) {}
}
