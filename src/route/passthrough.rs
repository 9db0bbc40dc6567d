//! What may be passed through to the OpenAI-compatible upstream as it is: the methods the
//! OpenAI API uses, on clean paths under `/v1/`. Anything else never leaves the gateway with
//! its key: no `TRACE` reflecting the key back, no dot segments or encoded separators that an
//! upstream or a proxy in front of it could resolve to another path.

use http::Method;

use crate::api::ApiError;

/// The methods the OpenAI API uses.
pub const METHODS: &str = "GET, POST, DELETE";

/// Checks a request for pass-through; `path` is the path as the client sent it, without the
/// query.
pub fn check(method: &Method, path: &str) -> Result<(), ApiError> {
    if !matches!(*method, Method::GET | Method::POST | Method::DELETE) {
        return Err(ApiError::method_not_allowed(method.as_str(), path, METHODS));
    }
    let Some(rest) = path.strip_prefix("/v1/") else {
        return Err(ApiError::unknown_path(method.as_str(), path));
    };
    let lower = rest.to_ascii_lowercase();
    let encoded_separator = ["%2e", "%2f", "%5c", "%00"]
        .iter()
        .any(|e| lower.contains(e));
    let dot_segment = rest.split('/').any(|s| s == "." || s == "..");
    if encoded_separator || dot_segment || rest.contains('\\') || path.contains("//") {
        return Err(ApiError::invalid_request(
            format!("Invalid URL ({} {path}): dot segments, empty segments and encoded separators are not allowed", method.as_str()),
            None,
            Some("invalid_url"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clean_v1_paths_with_api_methods_pass() {
        for (method, path) in [
            (Method::POST, "/v1/embeddings"),
            (Method::GET, "/v1/files/file-abc/content"),
            (Method::DELETE, "/v1/files/file-abc"),
        ] {
            assert!(check(&method, path).is_ok(), "{method} {path}");
        }
        let status = |m: Method, p: &str| check(&m, p).map_err(|e| e.status).err();
        assert_eq!(status(Method::TRACE, "/v1/x"), Some(405));
        assert_eq!(status(Method::PUT, "/v1/files"), Some(405));
        assert_eq!(status(Method::GET, "/v1/../../etc/passwd"), Some(400));
        assert_eq!(status(Method::GET, "/v1/files/.."), Some(400));
        assert_eq!(status(Method::GET, "/v1/%2e%2e/secrets"), Some(400));
        assert_eq!(status(Method::GET, "/v1/files%2Fx"), Some(400));
        assert_eq!(status(Method::GET, "/v1/files\\x"), Some(400));
        assert_eq!(status(Method::GET, "/v1//files"), Some(400));
        assert_eq!(status(Method::GET, "/v2/files"), Some(404));
    }
}
