//! The gateway's small words: routes, cache policies and outcomes, failure reasons, and the names
//! of its own headers.
//!
//! Every other module may import these; this one imports nothing of the crate, so no circle can
//! run through it. Each word has one spelling, used in headers, metric labels, the access log and
//! the YAML.

use std::fmt;
use std::str::FromStr;

/// The side of the gateway a request is served on; reported in `x-switchyard-route`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// The local model (Ollama or another server on the operator's hardware).
    Local,
    /// The cloud model (OpenAI or another hosted API).
    Cloud,
    /// The local model shortens the request (long context, old turns), the cloud model answers.
    Hybrid,
}

impl Route {
    /// The header, label and YAML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Local => "local",
            Route::Cloud => "cloud",
            Route::Hybrid => "hybrid",
        }
    }

    /// Parses the `route` of an upstream, which is a side: `local` or `cloud`.
    pub fn side(text: &str) -> Result<Route, String> {
        match text.parse()? {
            Route::Hybrid => Err("`hybrid` is not a route (local or cloud)".into()),
            side => Ok(side),
        }
    }
}

impl FromStr for Route {
    type Err = String;

    fn from_str(text: &str) -> Result<Route, String> {
        match text {
            "local" => Ok(Route::Local),
            "cloud" => Ok(Route::Cloud),
            "hybrid" => Ok(Route::Hybrid),
            other => Err(format!("`{other}` is not a route (local, hybrid or cloud)")),
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `x-switchyard-route` of an answer: a route, or the gateway itself (its own endpoints,
/// errors before a route was chosen).
pub fn route_label(route: Option<Route>) -> &'static str {
    route.map_or("gateway", Route::as_str)
}

/// What a routing rule says about caching its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CachePolicy {
    /// Cache deterministic requests (`temperature: 0`).
    #[default]
    Auto,
    /// Cache every request the rule matches.
    Always,
    /// Never cache the rule's requests.
    Never,
}

impl FromStr for CachePolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<CachePolicy, String> {
        match text {
            "auto" => Ok(CachePolicy::Auto),
            "always" => Ok(CachePolicy::Always),
            "never" => Ok(CachePolicy::Never),
            other => Err(format!("`{other}` is not auto, always or never")),
        }
    }
}

/// How the hybrid stage shortens a part of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shorten {
    /// The local model summarizes it.
    #[default]
    Abstractive,
    /// The gateway keeps the sentences that bear on the question, verbatim; no model call.
    Extractive,
    /// Extractive first (to fit the local model's context), then abstractive.
    Both,
}

impl Shorten {
    /// The YAML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Shorten::Abstractive => "abstractive",
            Shorten::Extractive => "extractive",
            Shorten::Both => "both",
        }
    }
}

impl FromStr for Shorten {
    type Err = String;

    fn from_str(text: &str) -> Result<Shorten, String> {
        match text {
            "abstractive" => Ok(Shorten::Abstractive),
            "extractive" => Ok(Shorten::Extractive),
            "both" => Ok(Shorten::Both),
            other => Err(format!("`{other}` is not abstractive, extractive or both")),
        }
    }
}

/// How the cache took part in an answer; `x-switchyard-cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Answered from a stored answer (or from an identical request in flight).
    Hit,
    /// Looked up, not found: answered upstream.
    Miss,
    /// The cache was not consulted.
    Bypass,
}

impl CacheOutcome {
    /// The header and label spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Bypass => "bypass",
        }
    }
}

/// Why an upstream did not answer, or why a request left it for the next one of its chain; the
/// `reason` label of the failure, retry and fallback metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No connection could be made, or it was refused or reset before any answer.
    Unreachable,
    /// A time limit passed.
    Timeout,
    /// The connection failed after the answer had started.
    Broken,
    /// The upstream answered with a failing status (5xx, 408).
    Status,
    /// The upstream answered 429.
    RateLimited,
    /// Every backend of the upstream is down or was already tried.
    NoHealthyBackend,
    /// The prompt is longer than the upstream's context.
    ContextOverflow,
    /// The answer did not hold the structure the request asked for.
    InvalidOutput,
    /// The upstream refused the gateway's own credentials (401).
    Credentials,
    /// Every backend of the upstream was serving `max_outstanding` requests already.
    Saturated,
    /// A local model server does not have the model (404: not pulled there).
    ModelMissing,
}

impl Reason {
    /// The label spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unreachable => "unreachable",
            Reason::Timeout => "timeout",
            Reason::Broken => "broken",
            Reason::Status => "status",
            Reason::RateLimited => "rate_limited",
            Reason::NoHealthyBackend => "no_healthy_backend",
            Reason::ContextOverflow => "context_overflow",
            Reason::InvalidOutput => "invalid_output",
            Reason::Credentials => "credentials",
            Reason::Saturated => "saturated",
            Reason::ModelMissing => "model_missing",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The names of the headers the gateway reads and writes, in one place.
pub mod header {
    /// The request's id: the client's, or one the gateway made.
    pub const REQUEST_ID: &str = "x-request-id";
    /// The route that served the answer; on a request, the route a client asks for.
    pub const ROUTE: &str = "x-switchyard-route";
    /// The rule (or `scorer`, `header`, `model-table`) that decided the route.
    pub const RULE: &str = "x-switchyard-rule";
    /// The upstream (or `upstream/n` backend) that answered.
    pub const UPSTREAM: &str = "x-switchyard-upstream";
    /// `hit`, `miss` or `bypass`.
    pub const CACHE: &str = "x-switchyard-cache";
    /// The scorer's score of a classified request.
    pub const SCORE: &str = "x-switchyard-score";
    /// `from->to` when the request went down its fallback chain.
    pub const FALLBACK: &str = "x-switchyard-fallback";
    /// The upstream's own request id, kept under another name.
    pub const UPSTREAM_REQUEST_ID: &str = "x-switchyard-upstream-request-id";
    /// Hybrid: the prompt tokens the cloud would have read.
    pub const TOKENS_BEFORE: &str = "x-switchyard-tokens-before";
    /// Hybrid: the prompt tokens the cloud did read.
    pub const TOKENS_AFTER: &str = "x-switchyard-tokens-after";
    /// Hybrid: what the stage did (`summarized`, `extracted`, `both`, `skipped:<reason>`).
    pub const HYBRID: &str = "x-switchyard-hybrid";
    /// Attempts the upstream calls took beyond one per upstream tried (retries, not fallbacks).
    pub const RETRIES: &str = "x-switchyard-retries";
    /// What the answer cost upstream, in US dollars, when it is known before the head goes out
    /// (whole JSON answers and cache hits; a stream's cost is in the access log).
    pub const COST: &str = "x-switchyard-cost-usd";
    /// The prefix every gateway header shares; such headers never reach an upstream.
    pub const PREFIX: &str = "x-switchyard-";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_read_back_what_they_write() {
        for r in [Route::Local, Route::Cloud, Route::Hybrid] {
            assert_eq!(r.as_str().parse::<Route>(), Ok(r));
        }
        assert!("elsewhere".parse::<Route>().is_err());
        assert_eq!(Route::side("local"), Ok(Route::Local));
        assert!(Route::side("hybrid").is_err());
        assert_eq!("never".parse::<CachePolicy>(), Ok(CachePolicy::Never));
        for m in [Shorten::Abstractive, Shorten::Extractive, Shorten::Both] {
            assert_eq!(m.as_str().parse::<Shorten>(), Ok(m));
        }
        assert!("sometimes".parse::<CachePolicy>().is_err());
        assert_eq!(route_label(None), "gateway");
    }
}
