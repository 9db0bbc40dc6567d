//! The `limits:` section: how much of the gateway one client, one request or one answer may hold
//! (time, bytes, connections), so that slow, huge or numerous clients cannot starve the others.

use std::time::Duration;

use super::raw::RawLimits;
use super::{parse_duration, parse_size, Checker};

/// Bounds on what clients hold; every one has a default that suits a gateway for one team.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest chat request body accepted (413 past it).
    pub max_body_bytes: u64,
    /// The completion tokens a key is charged at admission for a request without `max_tokens`.
    pub default_max_tokens: u64,
    /// The longest a request's header may take, from its first byte (or from the connection's
    /// opening) to its blank line; past it the client gets a 408 and the connection closes.
    pub header_timeout: Duration,
    /// How long a keep-alive connection may sit idle between requests before it is closed.
    pub idle_timeout: Duration,
    /// The longest a request body may take to arrive whole (408 past it).
    pub body_timeout: Duration,
    /// Largest request header, request line included (431 past it).
    pub max_header_bytes: usize,
    /// Most header fields in one request (431 past it).
    pub max_headers: usize,
    /// Most client connections open at once; past it a new one gets a 503 and is closed.
    pub max_connections: usize,
    /// Most requests served at once; past it a request gets a 503 with `Retry-After`.
    pub max_in_flight: usize,
    /// Most bytes of request bodies being read at once, all clients together; past it a request
    /// gets a 503 with `Retry-After` instead of pinning more memory.
    pub max_buffered_bytes: u64,
    /// Largest answer the gateway holds whole to translate it (a local model server's
    /// non-streamed answer); past it the client gets a 502.
    pub max_answer_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 8 << 20,
            default_max_tokens: 1000,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            max_header_bytes: 32 << 10,
            max_headers: 100,
            max_connections: auto_max_connections(),
            max_in_flight: 2048,
            max_buffered_bytes: 256 << 20,
            max_answer_bytes: 64 << 20,
        }
    }
}

/// The connection cap when none is set: half the file descriptors the process may open (each
/// client connection may need one to an upstream too), less some for listeners, logs and Redis.
fn auto_max_connections() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given and reads nothing else.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    if !ok || limit.rlim_cur == libc::RLIM_INFINITY {
        return 10_000;
    }
    let files = usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX);
    (files.saturating_sub(64) / 2).clamp(16, 100_000)
}

fn positive_duration(t: &str) -> Result<Duration, String> {
    match parse_duration(t)? {
        d if d.is_zero() => Err("must be more than 0".into()),
        d => Ok(d),
    }
}

fn positive_size(t: &str) -> Result<u64, String> {
    match parse_size(t)? {
        0 => Err("must be more than 0".into()),
        n => Ok(n),
    }
}

fn positive_count(t: &str) -> Result<usize, String> {
    match t.parse::<usize>() {
        Ok(0) => Err("must be more than 0".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{t}` is not a whole number")),
    }
}

impl Checker<'_> {
    /// `limits:`.
    pub(super) fn limits(&mut self, raw: &RawLimits) -> Limits {
        let d = Limits::default();
        let max_header_bytes = self.parsed(
            "limits.max_header_bytes",
            raw.max_header_bytes.as_ref(),
            d.max_header_bytes,
            |t| match positive_size(t)? {
                n if n < 1024 => Err("must be at least 1KiB".into()),
                n => usize::try_from(n).map_err(|_| "out of range".into()),
            },
        );
        let max_connections = self.parsed(
            "limits.max_connections",
            raw.max_connections.as_ref(),
            d.max_connections,
            |t| match t.trim() {
                "auto" => Ok(d.max_connections),
                t => positive_count(t),
            },
        );
        Limits {
            max_body_bytes: self.parsed(
                "limits.max_body_bytes",
                raw.max_body_bytes.as_ref(),
                d.max_body_bytes,
                positive_size,
            ),
            default_max_tokens: self.parsed(
                "limits.default_max_tokens",
                raw.default_max_tokens.as_ref(),
                d.default_max_tokens,
                |t| {
                    t.parse::<u64>()
                        .map_err(|_| format!("`{t}` is not a whole number"))
                },
            ),
            header_timeout: self.parsed(
                "limits.header_timeout",
                raw.header_timeout.as_ref(),
                d.header_timeout,
                positive_duration,
            ),
            idle_timeout: self.parsed(
                "limits.idle_timeout",
                raw.idle_timeout.as_ref(),
                d.idle_timeout,
                positive_duration,
            ),
            body_timeout: self.parsed(
                "limits.body_timeout",
                raw.body_timeout.as_ref(),
                d.body_timeout,
                positive_duration,
            ),
            max_header_bytes,
            max_headers: self.parsed(
                "limits.max_headers",
                raw.max_headers.as_ref(),
                d.max_headers,
                |t| match positive_count(t)? {
                    // pingora's parser stops at 256 fields whatever this says.
                    n if n > 256 => Err("must be at most 256".into()),
                    n => Ok(n),
                },
            ),
            max_connections,
            max_in_flight: self.parsed(
                "limits.max_in_flight",
                raw.max_in_flight.as_ref(),
                d.max_in_flight,
                positive_count,
            ),
            max_buffered_bytes: self.parsed(
                "limits.max_buffered_bytes",
                raw.max_buffered_bytes.as_ref(),
                d.max_buffered_bytes,
                positive_size,
            ),
            max_answer_bytes: self.parsed(
                "limits.max_answer_bytes",
                raw.max_answer_bytes.as_ref(),
                d.max_answer_bytes,
                positive_size,
            ),
        }
    }
}
