//! Response headers the client sees: the upstream's, cleaned, plus the gateway's own.

use http::HeaderValue;
use pingora::http::ResponseHeader;

use crate::api::ApiError;

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
];

/// What the gateway says about a request in its `x-switchyard-*` headers.
#[derive(Debug, Clone, Copy)]
pub struct Explain<'a> {
    /// `x-request-id`.
    pub request_id: &'a str,
    /// `x-switchyard-route`: `local`, `cloud`, or `gateway` for answers the gateway gave itself.
    pub route: &'a str,
    /// `x-switchyard-upstream`: the upstream's name, or `none`.
    pub upstream: &'a str,
    /// `x-switchyard-rule`: what decided the route.
    pub rule: Option<&'a str>,
    /// `x-switchyard-score`: the scorer's score of a classified request.
    pub score: Option<f64>,
    /// `x-switchyard-cache`: `hit`, `miss` or `bypass`, on chat answers.
    pub cache: Option<&'a str>,
    /// `x-switchyard-fallback`: `from->to` when the request went down its fallback chain.
    pub fallback: Option<&'a str>,
}

impl<'a> Explain<'a> {
    /// For answers the gateway gives itself.
    pub fn gateway(request_id: &'a str) -> Explain<'a> {
        Explain {
            request_id,
            route: "gateway",
            upstream: "none",
            rule: None,
            score: None,
            cache: None,
            fallback: None,
        }
    }

    /// For a request served by `upstream` on `route`.
    pub fn served(request_id: &'a str, route: &'a str, upstream: &'a str) -> Explain<'a> {
        Explain {
            request_id,
            route,
            upstream,
            rule: None,
            score: None,
            cache: None,
            fallback: None,
        }
    }

    /// Sets the gateway's headers on `resp`.
    pub fn apply(&self, resp: &mut ResponseHeader) {
        for (name, value) in [
            ("x-request-id", Some(self.request_id)),
            ("x-switchyard-route", Some(self.route)),
            ("x-switchyard-upstream", Some(self.upstream)),
            ("x-switchyard-rule", self.rule),
            ("x-switchyard-cache", self.cache),
            ("x-switchyard-fallback", self.fallback),
        ] {
            // Values are the request id (checked to be visible ASCII) or configured names.
            if let Some(Ok(value)) = value.map(HeaderValue::from_str) {
                let _ = resp.insert_header(name, value);
            }
        }
        if let Some(score) = self.score {
            let _ = resp.insert_header("x-switchyard-score", format!("{score:.3}"));
        }
    }
}

/// Turns the upstream's response header into the client's, in place.
///
/// The upstream's own `x-request-id` is kept as `x-switchyard-upstream-request-id` (useful when
/// asking the provider about a request). A body without `content-length` is sent chunked, so the
/// client connection can be kept alive.
pub fn rewrite_upstream_header(resp: &mut ResponseHeader, explain: &Explain) {
    for name in DROPPED {
        resp.remove_header(*name);
    }
    if let Some(id) = resp.remove_header("x-request-id") {
        let _ = resp.insert_header("x-switchyard-upstream-request-id", id);
    }
    let bodiless = resp.status.as_u16() == 204 || resp.status.as_u16() == 304;
    if resp.headers.get(http::header::CONTENT_LENGTH).is_none() && !bodiless {
        let _ = resp.insert_header(http::header::TRANSFER_ENCODING, "chunked");
    }
    explain.apply(resp);
}

/// A complete JSON response header for a body of `len` bytes.
pub fn json_header(status: u16, len: usize, explain: &Explain) -> ResponseHeader {
    sized_header(status, "application/json", len, explain)
}

/// A complete response header for a body of `len` bytes of `content_type`.
pub fn sized_header(
    status: u16,
    content_type: &str,
    len: usize,
    explain: &Explain,
) -> ResponseHeader {
    // Every status used here is a valid one.
    let mut resp = ResponseHeader::build(status, Some(4))
        .unwrap_or_else(|_| ResponseHeader::build(500, Some(4)).expect("500 is a valid status"));
    let _ = resp.insert_header(http::header::CONTENT_TYPE, content_type);
    let _ = resp.insert_header(http::header::CONTENT_LENGTH, len.to_string());
    explain.apply(&mut resp);
    resp
}

/// Whether a body is a JSON object (an upstream's error body worth passing on as it is).
pub fn is_json_body(body: &[u8]) -> bool {
    body.trim_ascii_start().starts_with(b"{")
        && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
}

/// Whether a response is an SSE stream.
pub fn is_event_stream(resp: &ResponseHeader) -> bool {
    resp.headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

/// Whether an error answer from an upstream is already JSON (and so passes through as it is).
pub fn is_json(resp: &ResponseHeader) -> bool {
    resp.headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"))
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
        route: "cloud",
        upstream: "cloud",
        rule: Some("tools"),
        score: None,
        cache: Some("miss"),
        fallback: None,
    };

    #[test]
    fn upstream_header_is_cleaned_and_explained() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        for (k, v) in [
            ("content-type", "text/event-stream"),
            ("transfer-encoding", "chunked"),
            ("connection", "keep-alive"),
            ("set-cookie", "__cf_bm=abc"),
            ("openai-organization", "acme-corp"),
            ("x-request-id", "req_upstream"),
            ("x-ratelimit-remaining-requests", "99"),
        ] {
            resp.append_header(k, v).unwrap();
        }
        rewrite_upstream_header(&mut resp, &EXPLAIN);
        let h = &resp.headers;
        assert!(h.get("set-cookie").is_none() && h.get("openai-organization").is_none());
        assert!(h.get("connection").is_none());
        assert_eq!(
            h["transfer-encoding"], "chunked",
            "no content-length: chunked"
        );
        assert_eq!(h["x-request-id"], "req_1");
        assert_eq!(h["x-switchyard-upstream-request-id"], "req_upstream");
        assert_eq!(h["x-switchyard-route"], "cloud");
        assert_eq!(h["x-switchyard-rule"], "tools");
        assert!(h.get("x-switchyard-score").is_none());
        assert_eq!(h["x-ratelimit-remaining-requests"], "99");
        assert!(is_event_stream(&resp));
    }

    #[test]
    fn sized_bodies_keep_their_length() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.append_header("content-length", "12").unwrap();
        resp.append_header("content-type", "application/json")
            .unwrap();
        rewrite_upstream_header(&mut resp, &EXPLAIN);
        assert!(resp.headers.get("transfer-encoding").is_none());
        assert!(is_json(&resp) && !is_event_stream(&resp));
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
}
