//! Name resolution for upstream hosts that never blocks a worker thread.
//!
//! pingora's `HttpPeer::new("host:port", …)` resolves synchronously (and panics when it fails), so
//! peers are built from addresses resolved here: through tokio's resolver, cached for a while,
//! and refreshed in the background while the cached answer keeps serving.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

/// How long a resolved answer is used before a background refresh.
const FRESH_FOR: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Answer {
    at: Instant,
    addrs: Vec<SocketAddr>,
}

/// Resolves and caches one `host:port`.
#[derive(Debug)]
pub struct Resolver {
    host: String,
    port: u16,
    literal: Option<SocketAddr>,
    cache: ArcSwapOption<Answer>,
    refreshing: AtomicBool,
}

impl Resolver {
    /// A resolver for `host` (a name or an IP literal) and `port`.
    pub fn new(host: &str, port: u16) -> Resolver {
        Resolver {
            literal: host
                .parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, port)),
            host: host.to_owned(),
            port,
            cache: ArcSwapOption::empty(),
            refreshing: AtomicBool::new(false),
        }
    }

    /// The host's preferred address: the first IPv4 one, else the first.
    ///
    /// One address, not a rotation: a name such as `localhost` often maps to `::1` and
    /// `127.0.0.1` while the server listens on only one of them. Spreading load over several
    /// servers is the job of an upstream's backend list, not of DNS.
    pub async fn resolve(self: &Arc<Self>, timeout: Duration) -> Result<SocketAddr, String> {
        if let Some(addr) = self.literal {
            return Ok(addr);
        }
        let cached = self.cache.load_full();
        let answer = match cached {
            Some(answer) => {
                if answer.at.elapsed() > FRESH_FOR && !self.refreshing.swap(true, Ordering::AcqRel)
                {
                    let this = Arc::clone(self);
                    tokio::spawn(async move {
                        let _ = this.lookup(timeout).await;
                        this.refreshing.store(false, Ordering::Release);
                    });
                }
                answer
            }
            None => self.lookup(timeout).await?,
        };
        Ok(answer.addrs[0])
    }

    async fn lookup(&self, timeout: Duration) -> Result<Arc<Answer>, String> {
        let query = tokio::net::lookup_host((self.host.as_str(), self.port));
        let mut addrs: Vec<SocketAddr> = match tokio::time::timeout(timeout, query).await {
            Ok(Ok(addrs)) => addrs.collect(),
            Ok(Err(e)) => return Err(format!("cannot resolve {}: {e}", self.host)),
            Err(_) => return Err(format!("resolving {} timed out", self.host)),
        };
        // Stable sort: IPv4 first, the resolver's order kept within each family.
        addrs.sort_by_key(|a| a.is_ipv6());
        if addrs.is_empty() {
            return Err(format!("{} has no address", self.host));
        }
        let answer = Arc::new(Answer {
            at: Instant::now(),
            addrs,
        });
        self.cache.store(Some(Arc::clone(&answer)));
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literals_and_names_resolve() {
        let r = Arc::new(Resolver::new("127.0.0.1", 9));
        assert_eq!(
            r.resolve(Duration::from_secs(1)).await.unwrap(),
            "127.0.0.1:9".parse().unwrap()
        );
        let r = Arc::new(Resolver::new("localhost", 9));
        let addr = r.resolve(Duration::from_secs(5)).await.unwrap();
        assert!(addr.ip().is_loopback());
        let r = Arc::new(Resolver::new("no-such-host.invalid", 9));
        assert!(r.resolve(Duration::from_secs(5)).await.is_err());
    }
}
