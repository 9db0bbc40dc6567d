//! Request ids: the client's `x-request-id` when it is sane, else a new unique one.

use std::sync::atomic::{AtomicU64, Ordering};

use pingora::http::RequestHeader;

/// Makes request ids unique within the process and unpredictable across processes.
pub struct Generator {
    seed: u64,
    counter: AtomicU64,
}

impl Generator {
    /// A generator with a random per-process seed.
    pub fn new() -> Generator {
        Generator {
            seed: crate::api::ids::random_u64(crate::api::ids::unix_now()),
            counter: AtomicU64::new(0),
        }
    }

    /// The id for a request: its own `x-request-id` if it is 1–128 visible ASCII characters.
    pub fn for_request(&self, req: &RequestHeader) -> String {
        if let Some(id) = req
            .headers
            .get(crate::vocab::header::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
        {
            if (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic()) {
                return id.to_owned();
            }
        }
        self.next()
    }

    /// A new id: `req_` and 24 hex digits.
    pub fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("req_{:016x}{:08x}", mix(self.seed ^ n), n as u32)
    }
}

/// splitmix64's finalizer: spreads a counter over all 64 bits.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_client_ids_are_kept_when_sane() {
        let g = Generator::new();
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| g.next()).collect();
        assert_eq!(ids.len(), 10_000);
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-request-id", "trace-abc-123").unwrap();
        assert_eq!(g.for_request(&req), "trace-abc-123");
        req.insert_header("x-request-id", "has space").unwrap();
        assert!(g.for_request(&req).starts_with("req_"));
    }
}
