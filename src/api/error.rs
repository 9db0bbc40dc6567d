//! OpenAI-shaped errors: `{"error":{"message","type","param","code"}}` with the matching status.

use serde::Serialize;

/// An error the gateway answers itself, in the shape OpenAI's SDKs understand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// What happened, for a person.
    pub message: String,
    /// OpenAI's error `type` (`invalid_request_error`, `server_error`, …).
    pub kind: &'static str,
    /// The request parameter at fault, if any.
    pub param: Option<String>,
    /// A stable machine-readable code, if any.
    pub code: Option<&'static str>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    /// A 400 for a request the gateway cannot accept.
    pub fn invalid_request(
        message: impl Into<String>,
        param: Option<&str>,
        code: Option<&'static str>,
    ) -> Self {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_owned),
            code,
        }
    }

    /// A 404 for a path the gateway does not serve.
    pub fn unknown_path(method: &str, path: &str) -> Self {
        ApiError {
            status: 404,
            message: format!("Invalid URL ({method} {path})"),
            kind: "invalid_request_error",
            param: None,
            code: Some("unknown_url"),
        }
    }

    /// A 405 for a known path asked with the wrong method.
    pub fn method_not_allowed(method: &str, path: &str, allow: &str) -> Self {
        ApiError {
            status: 405,
            message: format!("Method {method} is not allowed for {path}; use {allow}"),
            kind: "invalid_request_error",
            param: None,
            code: Some("method_not_allowed"),
        }
    }

    /// A 413 for a body over `limits.max_body_bytes`.
    pub fn body_too_large(limit: u64) -> Self {
        ApiError {
            status: 413,
            message: format!("Request body is larger than this gateway accepts ({limit} bytes)"),
            kind: "invalid_request_error",
            param: None,
            code: Some("request_too_large"),
        }
    }

    /// A 408: the client took longer than `limits.*_timeout` to send `what`.
    pub fn request_timeout(what: &str, limit: std::time::Duration) -> Self {
        ApiError {
            status: 408,
            message: format!("The request's {what} did not arrive within {limit:?}"),
            kind: "invalid_request_error",
            param: None,
            code: Some("request_timeout"),
        }
    }

    /// A 431: the request's header is larger, or has more fields, than the gateway reads.
    pub fn header_too_large(detail: &str) -> Self {
        ApiError {
            status: 431,
            message: format!("Request header fields too large: {detail}"),
            kind: "invalid_request_error",
            param: None,
            code: Some("request_header_fields_too_large"),
        }
    }

    /// A 400 for bytes that are not a well-formed HTTP request (bad framing, conflicting
    /// lengths, a broken chunked body).
    pub fn malformed_http(detail: &str) -> Self {
        ApiError {
            status: 400,
            message: format!("The request is not well-formed HTTP: {detail}"),
            kind: "invalid_request_error",
            param: None,
            code: Some("malformed_request"),
        }
    }

    /// A 503: the gateway is at one of its capacity limits; the client may retry shortly.
    pub fn overloaded(what: &str) -> Self {
        ApiError {
            status: 503,
            message: format!("The gateway is at capacity ({what}); retry shortly"),
            kind: "server_error",
            param: None,
            code: Some("server_overloaded"),
        }
    }

    /// A 502: an upstream's answer is larger than the gateway holds to translate it.
    pub fn answer_too_large(upstream: &str, limit: u64) -> Self {
        ApiError {
            status: 502,
            message: format!(
                "Upstream `{upstream}` answered with more than {limit} bytes, more than this gateway holds (limits.max_answer_bytes)"
            ),
            kind: "server_error",
            param: None,
            code: Some("upstream_answer_too_large"),
        }
    }

    /// A 502: the upstream refused, reset or answered nonsense.
    pub fn upstream_unreachable(upstream: &str, detail: &str) -> Self {
        ApiError {
            status: 502,
            message: format!("Upstream `{upstream}` could not be reached: {detail}"),
            kind: "server_error",
            param: None,
            code: Some("upstream_unreachable"),
        }
    }

    /// A 504: the upstream did not answer within the configured time.
    pub fn upstream_timeout(upstream: &str, what: &str) -> Self {
        ApiError {
            status: 504,
            message: format!("Upstream `{upstream}` timed out ({what})"),
            kind: "server_error",
            param: None,
            code: Some("upstream_timeout"),
        }
    }

    /// A 502 for an upstream failure after the answer had started.
    pub fn upstream_broken(upstream: &str, detail: &str) -> Self {
        ApiError {
            status: 502,
            message: format!("Upstream `{upstream}` failed during the response: {detail}"),
            kind: "server_error",
            param: None,
            code: Some("upstream_error"),
        }
    }

    /// A 502: the upstream refused the gateway's own credentials, which only its operator can
    /// fix (the client's key, if any, was not what failed).
    pub fn upstream_auth_failed(upstream: &str) -> Self {
        ApiError {
            status: 502,
            message: format!(
                "Upstream `{upstream}` refused the gateway's credentials: the gateway is misconfigured; please tell its operator."
            ),
            kind: "server_error",
            param: None,
            code: Some("upstream_auth_failed"),
        }
    }

    /// A 503: every backend of the upstream is already serving as many requests as it may.
    pub fn upstream_saturated(upstream: &str) -> Self {
        ApiError {
            status: 503,
            message: format!(
                "Upstream `{upstream}` is serving as many requests as it can; retry shortly"
            ),
            kind: "server_error",
            param: None,
            code: Some("upstream_saturated"),
        }
    }

    /// A 503: every backend of the upstream is down or ejected.
    pub fn no_healthy_backend(upstream: &str) -> Self {
        ApiError {
            status: 503,
            message: format!("Upstream `{upstream}` has no healthy backend right now"),
            kind: "server_error",
            param: None,
            code: Some("upstream_unavailable"),
        }
    }

    /// A 503: a request a keep-local rule holds could not be served locally, and is not sent
    /// anywhere else.
    pub fn kept_local(rule: &str) -> Self {
        ApiError {
            status: 503,
            message: format!(
                "This request is kept on the local model by rule `{rule}`, and the local model cannot serve it right now. It was not sent anywhere else; try again later."
            ),
            kind: "server_error",
            param: None,
            code: Some("local_only_unavailable"),
        }
    }

    /// A 400: the prompt, and the completion asked for, do not fit the model's context window.
    pub fn context_length_exceeded(
        upstream: &str,
        estimated: u64,
        completion: u64,
        limit: u64,
    ) -> Self {
        let asked = match completion {
            0 => format!("the messages take about {estimated} tokens"),
            n => format!(
                "about {} tokens were asked for ({estimated} in the messages, {n} in the completion)",
                estimated.saturating_add(n)
            ),
        };
        ApiError {
            status: 400,
            message: format!(
                "This model's maximum context length is {limit} tokens on upstream `{upstream}`, \
                 but {asked}. Shorten the messages or max_tokens, or ask a model with a larger \
                 context."
            ),
            kind: "invalid_request_error",
            param: Some("messages".into()),
            code: Some("context_length_exceeded"),
        }
    }

    /// A 404 for a model the gateway does not list.
    pub fn model_not_found(model: &str) -> Self {
        ApiError {
            status: 404,
            message: format!("The model `{model}` does not exist"),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    /// A 404 for something the request names that the gateway does not have.
    pub fn not_found(message: impl Into<String>, code: &'static str) -> Self {
        ApiError {
            status: 404,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: Some(code),
        }
    }

    /// A 401: no gateway key, a wrong one, or an expired one.
    pub fn unauthorized(message: impl Into<String>, code: &'static str) -> Self {
        ApiError {
            status: 401,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: Some(code),
        }
    }

    /// A 403: the key may not do this (use this route or model, force a route, read this).
    pub fn forbidden(message: impl Into<String>, param: Option<&str>, code: &'static str) -> Self {
        ApiError {
            status: 403,
            message: message.into(),
            kind: "permission_error",
            param: param.map(str::to_owned),
            code: Some(code),
        }
    }

    /// A 429 for a key over one of its limits.
    pub fn rate_limited(message: impl Into<String>, code: &'static str) -> Self {
        ApiError {
            status: 429,
            message: message.into(),
            kind: "rate_limit_error",
            param: None,
            code: Some(code),
        }
    }

    /// A 500 for a fault of the gateway itself.
    pub fn internal(detail: &str) -> Self {
        ApiError {
            status: 500,
            message: format!("Internal gateway error: {detail}"),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// The JSON body.
    pub fn to_json(&self) -> Vec<u8> {
        let envelope = Envelope {
            error: Body {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        };
        // Serializing plain strings into a Vec cannot fail.
        serde_json::to_vec(&envelope).unwrap_or_default()
    }

    /// The body as one SSE event, for an error in the middle of a stream.
    pub fn to_sse_event(&self) -> Vec<u8> {
        let mut out = b"data: ".to_vec();
        out.extend_from_slice(&self.to_json());
        out.extend_from_slice(b"\n\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_openai_shape() {
        let e = ApiError::invalid_request("bad", Some("messages"), Some("empty_array"));
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {"message": "bad", "type": "invalid_request_error",
                "param": "messages", "code": "empty_array"}})
        );
        let v: serde_json::Value =
            serde_json::from_slice(&ApiError::internal("x").to_json()).unwrap();
        assert!(v["error"]["param"].is_null() && v["error"]["code"].is_null());
    }

    #[test]
    fn sse_event_is_one_data_line() {
        let e = ApiError::upstream_broken("cloud", "reset");
        let event = e.to_sse_event();
        assert!(event.starts_with(b"data: {\"error\":"));
        assert!(event.ends_with(b"}\n\n"));
        assert_eq!(event.iter().filter(|b| **b == b'\n').count(), 2);
    }
}
