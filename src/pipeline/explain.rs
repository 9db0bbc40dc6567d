//! The heads of the answers clients see: the upstream's head cleaned of what is not the
//! client's business, or one the gateway writes, and in both the `x-switchyard-*` headers that
//! explain the decision.

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, StatusCode};

use super::downstream::Head;
use crate::api::ApiError;
use crate::limit::Standing;
use crate::vocab::{self, CacheOutcome, Route};

/// Upstream response headers that never reach the client: hop-by-hop headers, and those that
/// identify the upstream account behind the gateway.
const DROPPED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "set-cookie",
    "openai-organization",
    "openai-project",
    // What software answers upstream is not the client's business.
    "server",
    "x-powered-by",
];

/// What the gateway says about a request in its `x-switchyard-*` headers.
#[derive(Debug, Clone, Copy)]
pub struct Explain<'a> {
    /// `x-request-id`.
    pub request_id: &'a str,
    /// `x-switchyard-route`: the route, or `gateway` (`None`) for answers the gateway gave
    /// itself.
    pub route: Option<Route>,
    /// `x-switchyard-upstream`: the upstream's (or backend's) name, or `none`.
    pub upstream: &'a str,
    /// `x-switchyard-rule`: what decided the route.
    pub rule: Option<&'a str>,
    /// `x-switchyard-score`: the scorer's score of a classified request.
    pub score: Option<f64>,
    /// `x-switchyard-cache`, on chat answers.
    pub cache: Option<CacheOutcome>,
    /// `x-switchyard-fallback`: `from->to` when the request went down its fallback chain.
    pub fallback: Option<&'a str>,
    /// `x-switchyard-tokens-before`, `-after` and `x-switchyard-hybrid`, for hybrid requests.
    pub hybrid: Option<crate::hybrid::Report>,
    /// `x-ratelimit-*`: what the key has left, for requests of a key with limits.
    pub standing: Option<Standing>,
    /// `x-switchyard-retries`, on answers that went upstream.
    pub retries: Option<u32>,
    /// `x-switchyard-cost-usd`, on answers whose cost is known before their head goes out.
    pub cost: Option<f64>,
}

impl<'a> Explain<'a> {
    /// For answers the gateway gives itself.
    pub fn gateway(request_id: &'a str) -> Explain<'a> {
        Explain {
            request_id,
            route: None,
            upstream: "none",
            rule: None,
            score: None,
            cache: None,
            fallback: None,
            hybrid: None,
            standing: None,
            retries: None,
            cost: None,
        }
    }

    /// For a request served by `upstream` on `route`.
    pub fn served(request_id: &'a str, route: Route, upstream: &'a str) -> Explain<'a> {
        Explain {
            route: Some(route),
            upstream,
            ..Explain::gateway(request_id)
        }
    }

    /// Sets the gateway's headers.
    pub fn apply(&self, headers: &mut HeaderMap) {
        use vocab::header as h;
        for (name, value) in [
            (h::REQUEST_ID, Some(self.request_id)),
            (h::ROUTE, Some(vocab::route_label(self.route))),
            (h::UPSTREAM, Some(self.upstream)),
            (h::RULE, self.rule),
            (h::CACHE, self.cache.map(CacheOutcome::as_str)),
            (h::FALLBACK, self.fallback),
        ] {
            // Values are the request id (checked to be visible ASCII) or configured names.
            if let Some(Ok(value)) = value.map(HeaderValue::from_str) {
                headers.insert(HeaderName::from_static(name), value);
            }
        }
        if let Some(score) = self.score {
            if let Ok(value) = HeaderValue::from_str(&format!("{score:.3}")) {
                headers.insert(HeaderName::from_static(h::SCORE), value);
            }
        }
        if let Some(n) = self.retries {
            headers.insert(HeaderName::from_static(h::RETRIES), HeaderValue::from(n));
        }
        if let Some(cost) = self.cost {
            cost_header(headers, cost);
        }
        if let Some(standing) = &self.standing {
            rate_headers(headers, standing);
        }
        if let Some(report) = &self.hybrid {
            headers.insert(
                HeaderName::from_static(h::TOKENS_BEFORE),
                HeaderValue::from(report.before),
            );
            headers.insert(
                HeaderName::from_static(h::TOKENS_AFTER),
                HeaderValue::from(report.after),
            );
            headers.insert(
                HeaderName::from_static(h::HYBRID),
                HeaderValue::from_static(report.done.as_str()),
            );
        }
    }
}

/// Sets `x-switchyard-cost-usd`, in the shortest form that reads back as the same number.
pub fn cost_header(headers: &mut HeaderMap, cost: f64) {
    if let Ok(value) = HeaderValue::from_str(&cost.max(0.0).to_string()) {
        headers.insert(HeaderName::from_static(vocab::header::COST), value);
    }
}

/// The `x-ratelimit-*` headers OpenAI sends, for what a key has left.
fn rate_headers(headers: &mut HeaderMap, standing: &Standing) {
    for (what, state) in [("requests", standing.requests), ("tokens", standing.tokens)] {
        let Some((limit, left, reset)) = state else {
            continue;
        };
        for (name, value) in [
            (format!("x-ratelimit-limit-{what}"), limit.to_string()),
            (format!("x-ratelimit-remaining-{what}"), left.to_string()),
            (
                format!("x-ratelimit-reset-{what}"),
                crate::limit::duration(reset),
            ),
        ] {
            if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
                headers.insert(n, v);
            }
        }
    }
}

/// A head with `status` and no headers yet.
pub fn empty_head(status: u16) -> Head {
    let mut head = http::Response::new(()).into_parts().0;
    head.status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    head
}

/// The head of a complete body of `len` bytes of `content_type`.
pub fn sized_head(status: u16, content_type: &'static str, len: usize, explain: &Explain) -> Head {
    let mut head = empty_head(status);
    head.headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    head.headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    explain.apply(&mut head.headers);
    head
}

/// The head of a complete JSON body of `len` bytes.
pub fn json_head(status: u16, len: usize, explain: &Explain) -> Head {
    sized_head(status, "application/json", len, explain)
}

/// The head of a stream the gateway writes (a translated or replayed one).
pub fn sse_head(status: u16, explain: &Explain) -> Head {
    let mut head = empty_head(status);
    let h = &mut head.headers;
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
    explain.apply(h);
    head
}

/// Turns the upstream's head into the client's, in place.
///
/// The upstream's own `x-request-id` is kept as `x-switchyard-upstream-request-id` (useful when
/// asking the provider about a request). A body without `content-length` is sent chunked, so the
/// client connection can be kept alive.
pub fn rewrite_upstream_head(head: &mut Head, explain: &Explain) {
    let h = &mut head.headers;
    for name in DROPPED {
        h.remove(*name);
    }
    if let Some(id) = h.remove(vocab::header::REQUEST_ID) {
        h.insert(
            HeaderName::from_static(vocab::header::UPSTREAM_REQUEST_ID),
            id,
        );
    }
    let bodiless = head.status == StatusCode::NO_CONTENT || head.status == StatusCode::NOT_MODIFIED;
    if !h.contains_key(header::CONTENT_LENGTH) && !bodiless {
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
    explain.apply(h);
}

/// An OpenAI-shaped error answer, with extra headers (`allow`, `retry-after`).
pub fn error_answer(
    error: &ApiError,
    explain: &Explain,
    extra: &[(HeaderName, &str)],
) -> (Head, bytes::Bytes) {
    let body = bytes::Bytes::from(error.to_json());
    let mut head = json_head(error.status, body.len(), explain);
    for (name, value) in extra {
        if let Ok(value) = HeaderValue::from_str(value) {
            head.headers.insert(name.clone(), value);
        }
    }
    (head, body)
}

/// Whether a head is an SSE stream's.
pub fn is_event_stream(head: &Head) -> bool {
    content_type(head).is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

/// Whether a head announces JSON (an upstream error that passes through as it is).
pub fn is_json(head: &Head) -> bool {
    content_type(head).is_some_and(|v| v.contains("json"))
}

fn content_type(head: &Head) -> Option<&str> {
    head.headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

/// Whether a body is a JSON object (an upstream's error body worth passing on as it is).
pub fn is_json_body(body: &[u8]) -> bool {
    body.trim_ascii_start().starts_with(b"{")
        && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
}

/// Wraps a non-JSON error answer (an HTML 502 page from a proxy in front of the upstream, say)
/// into an OpenAI-shaped error with the same status.
pub fn wrap_upstream_error(status: u16, upstream: &str, body: &[u8]) -> ApiError {
    let text = String::from_utf8_lossy(body);
    let snippet: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let snippet: String = snippet.chars().take(200).collect();
    ApiError {
        status,
        message: format!("Upstream `{upstream}` answered {status}: {snippet}"),
        kind: if status < 500 {
            "invalid_request_error"
        } else {
            "server_error"
        },
        param: None,
        code: Some("upstream_error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPLAIN: Explain = Explain {
        request_id: "req_1",
        route: Some(Route::Cloud),
        upstream: "cloud",
        rule: Some("tools"),
        score: None,
        cache: Some(CacheOutcome::Miss),
        fallback: None,
        hybrid: None,
        standing: None,
        retries: Some(0),
        cost: None,
    };

    fn upstream_head(headers: &[(&'static str, &'static str)]) -> Head {
        let mut head = empty_head(200);
        for (k, v) in headers {
            head.headers
                .append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        head
    }

    #[test]
    fn upstream_head_is_cleaned_and_explained() {
        let mut head = upstream_head(&[
            ("content-type", "text/event-stream"),
            ("transfer-encoding", "chunked"),
            ("connection", "keep-alive"),
            ("set-cookie", "__cf_bm=abc"),
            ("openai-organization", "acme-corp"),
            ("server", "cloudflare"),
            ("x-request-id", "req_upstream"),
            ("x-ratelimit-remaining-requests", "99"),
        ]);
        rewrite_upstream_head(&mut head, &EXPLAIN);
        let h = &head.headers;
        assert!(h.get("set-cookie").is_none() && h.get("openai-organization").is_none());
        assert!(h.get("server").is_none());
        assert!(h.get("connection").is_none());
        assert_eq!(
            h["transfer-encoding"], "chunked",
            "no content-length: chunked"
        );
        assert_eq!(h["x-request-id"], "req_1");
        assert_eq!(h["x-switchyard-upstream-request-id"], "req_upstream");
        assert_eq!(h["x-switchyard-route"], "cloud");
        assert_eq!(h["x-switchyard-rule"], "tools");
        assert_eq!(h["x-switchyard-cache"], "miss");
        assert!(h.get("x-switchyard-score").is_none());
        assert_eq!(h["x-ratelimit-remaining-requests"], "99");
        assert!(is_event_stream(&head));
    }

    #[test]
    fn sized_bodies_keep_their_length() {
        let mut head = upstream_head(&[
            ("content-length", "12"),
            ("content-type", "application/json"),
        ]);
        rewrite_upstream_head(&mut head, &EXPLAIN);
        assert!(head.headers.get("transfer-encoding").is_none());
        assert!(is_json(&head) && !is_event_stream(&head));
    }

    #[test]
    fn html_errors_become_openai_errors() {
        let e = wrap_upstream_error(502, "local", b"<html>\n<h1>502   Bad Gateway</h1></html>");
        assert_eq!(e.status, 502);
        assert!(
            e.message.contains("<h1>502 Bad Gateway</h1>"),
            "{}",
            e.message
        );
        assert_eq!(e.kind, "server_error");
    }

    #[test]
    fn the_gateway_names_itself_when_no_route_was_chosen() {
        let mut h = HeaderMap::new();
        Explain::gateway("req_2").apply(&mut h);
        assert_eq!(h["x-switchyard-route"], "gateway");
        assert_eq!(h["x-switchyard-upstream"], "none");
        assert!(h.get("x-switchyard-cache").is_none());
    }
}
