//! Switchyard: an OpenAI-compatible gateway that sends each chat request to a local or a cloud
//! model.
//!
//! The crate is organised the way a request flows through it:
//! [`config`] (what the operator wrote) → [`api`] (the request, parsed once; the answer) →
//! [`classify`] and [`route`] (which upstream and model) → [`pipeline`] (cache, plan, call, relay,
//! account) → [`upstream`] (the exchange with that server) → [`proxy`] (the pingora glue that
//! ties them to sockets). [`vocab`] holds the small words they all share. Only `proxy` and the
//! parts of `upstream` that meet the wire (the pooled transport, peers, the health-check service)
//! touch pingora; everything else is plain code that unit tests drive without a socket.

pub mod api;
pub mod auth;
pub mod cache;
pub mod classify;
pub mod config;
pub mod feedback;
/// Entry points for the fuzz targets in `fuzz/` and the test that replays what they found.
#[doc(hidden)]
pub mod fuzz;
pub mod hybrid;
pub mod limit;
pub mod metrics;
pub mod pipeline;
pub mod proxy;
pub mod route;
pub mod state;
pub mod telemetry;
pub mod tokens;
pub mod upstream;
pub mod vocab;

/// The version reported by `/health` and `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
