//! Upstream servers: where they are, how requests to them are addressed, and the exchange.
//!
//! [`Upstream`] holds what is fixed per upstream (its peer template, `Host` and `Authorization`
//! values); [`prepare_headers`] turns a client's request header into the one the upstream sees,
//! for the gateway's own exchange and for pass-through paths alike; [`client`] runs the exchange.

pub mod answer;
pub mod call;
pub mod client;
pub mod health;
pub mod metrics;
pub mod ollama;
pub mod pool;
pub mod raw;
mod resolve;
pub mod retry;
pub mod scripted;
pub mod scrub;

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::upstreams::peer::HttpPeer;

use crate::api::ApiError;
use crate::config::UpstreamConfig;
pub use pool::{Backend, BackendState, Lease, Pool};

/// How long an idle upstream connection stays in the pool.
const POOL_IDLE: std::time::Duration = std::time::Duration::from_secs(90);

/// Client headers that never reach an upstream: hop-by-hop headers, the client's credentials
/// (the gateway key is not the upstream's), and the gateway's own control headers.
const DROPPED: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "api-key",
    "x-api-key",
    "cookie",
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "openai-organization",
    "openai-project",
    // The client's network: the gateway is the upstream's client, and a cloud provider has
    // no business with internal addresses (nor a spoofed one to trust).
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
];

/// A configured upstream, ready to address requests to.
#[derive(Debug)]
pub struct Upstream {
    /// What the operator configured.
    pub config: UpstreamConfig,
    /// Its backends and their health.
    pub pool: Arc<Pool>,
    /// Masks this upstream's key in what it answers.
    pub scrub: scrub::Scrub,
    authorization: Option<HeaderValue>,
}

impl Upstream {
    /// Prepares the fixed parts of every request to this upstream.
    pub fn new(config: UpstreamConfig) -> Result<Upstream, String> {
        let authorization = match &config.api_key {
            None => None,
            Some(key) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
                    .map_err(|_| {
                        format!("upstream `{}`: api_key is not a valid header", config.name)
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        let several = config.backends.len() > 1;
        let backends = config
            .backends
            .iter()
            .enumerate()
            .map(|(i, url)| {
                let label = if several {
                    format!("{}/{}", config.name, i + 1)
                } else {
                    config.name.clone()
                };
                Backend::new(url.clone(), label)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if backends.is_empty() {
            return Err(format!("upstream `{}` has no backend", config.name));
        }
        Ok(Upstream {
            pool: Arc::new(
                Pool::new(backends, config.balance, config.health.clone())
                    .with_max_outstanding(config.max_outstanding),
            ),
            scrub: scrub::Scrub::new(config.api_key.as_ref().map(|k| k.expose())),
            config,
            authorization,
        })
    }

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// A peer for `backend`: the address is resolved off the request path (never blocking a
    /// worker thread), and the connect timeout is the configured one.
    pub async fn peer(&self, backend: &Backend) -> Result<HttpPeer, ApiError> {
        let timeouts = &self.config.timeouts;
        let addr = backend
            .resolver
            .resolve(timeouts.connect)
            .await
            .map_err(|e| ApiError::upstream_unreachable(self.name(), &e))?;
        let url = &backend.url;
        let mut peer = HttpPeer::new(addr, url.tls, url.host.clone());
        peer.options.connection_timeout = Some(timeouts.connect);
        peer.options.total_connection_timeout = Some(timeouts.connect);
        peer.options.idle_timeout = Some(POOL_IDLE);
        // pingora's proxy path (pass-through requests) applies these; the gateway's own exchange
        // sets its timeouts on the session itself.
        peer.options.read_timeout = Some(timeouts.idle);
        peer.options.write_timeout = Some(timeouts.idle);
        Ok(peer)
    }

    /// The path to request on `backend` for a client path (the URL's prefix, then the path).
    pub fn path(backend: &Backend, client_path_and_query: &str) -> String {
        let mut path = backend.url.path_prefix.clone();
        path.push_str(client_path_and_query);
        path
    }
}

/// The head of a request to `backend` of `upstream` at `path_and_query`, made from the client's
/// method and headers: the upstream's `Host` and credentials; none of the client's credentials,
/// hop-by-hop headers or `x-switchyard-*` headers. Used for the gateway's own exchange and for
/// pass-through paths alike.
pub fn request_head(
    method: &http::Method,
    client: &HeaderMap,
    upstream: &Upstream,
    backend: &Backend,
    path_and_query: &str,
) -> Result<http::request::Parts, ApiError> {
    let uri = Upstream::path(backend, path_and_query)
        .parse::<http::Uri>()
        .map_err(|_| ApiError::invalid_request("The request path is not valid", None, None))?;
    let mut head = http::Request::new(()).into_parts().0;
    head.method = method.clone();
    head.uri = uri;
    // Upstream connections speak HTTP/1.1, whatever the client spoke (h2c included).
    head.version = http::Version::HTTP_11;
    // Connection-specific headers named in `Connection` are hop-by-hop too.
    let named = |name: &HeaderName| {
        client
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|n| n.trim().eq_ignore_ascii_case(name.as_str()))
    };
    let headers = &mut head.headers;
    headers.reserve(client.len() + 2);
    for (name, value) in client {
        let gone = DROPPED.contains(&name.as_str())
            || name.as_str().starts_with(crate::vocab::header::PREFIX)
            || named(name);
        if !gone {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(http::header::HOST, backend.host.clone());
    if let Some(auth) = &upstream.authorization {
        headers.insert(http::header::AUTHORIZATION, auth.clone());
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn upstreams() -> Vec<Upstream> {
        let yaml = r#"
upstreams:
  local: {route: local, url: "http://127.0.0.1:11434"}
  cloud: {route: cloud, url: "https://api.example.test/openai/", api_key: "sk-upstream"}
default_route: {upstream: cloud}
"#;
        Config::from_yaml(yaml, |_| None)
            .unwrap()
            .upstreams
            .into_iter()
            .map(|c| Upstream::new(c).unwrap())
            .collect()
    }

    fn client_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("host", "gateway.local:8080"),
            ("authorization", "Bearer sk-client-gateway-key"),
            ("x-api-key", "sk-client-other"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("x-switchyard-route", "cloud"),
            ("openai-organization", "org-client"),
            ("x-forwarded-for", "10.1.2.3, 1.2.3.4"),
            ("forwarded", "for=10.1.2.3"),
            ("user-agent", "OpenAI/Python 1.0"),
            ("x-stainless-lang", "python"),
            ("content-type", "application/json"),
        ] {
            h.append(
                HeaderName::from_static(k),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn cloud_gets_its_own_key_and_host_and_prefix() {
        let ups = upstreams();
        let backend = &ups[1].pool.backends[0];
        let post = http::Method::POST;
        let req = request_head(
            &post,
            &client_headers(),
            &ups[1],
            backend,
            "/v1/chat/completions",
        )
        .unwrap();
        assert_eq!(req.uri.path(), "/openai/v1/chat/completions");
        assert_eq!(req.version, http::Version::HTTP_11);
        assert_eq!(req.method, http::Method::POST);
        assert_eq!(req.headers["host"], "api.example.test");
        assert_eq!(req.headers["authorization"], "Bearer sk-upstream");
        for gone in [
            "x-api-key",
            "connection",
            "x-hop",
            "x-switchyard-route",
            "openai-organization",
            "x-forwarded-for",
            "forwarded",
        ] {
            assert!(
                req.headers.get(gone).is_none(),
                "{gone} must not be forwarded"
            );
        }
        assert_eq!(req.headers["user-agent"], "OpenAI/Python 1.0");
        assert_eq!(req.headers["x-stainless-lang"], "python");
    }

    #[test]
    fn local_gets_no_credentials_at_all() {
        let ups = upstreams();
        let backend = &ups[0].pool.backends[0];
        let get = http::Method::GET;
        let req = request_head(
            &get,
            &client_headers(),
            &ups[0],
            backend,
            "/v1/embeddings?x=1",
        )
        .unwrap();
        assert_eq!(req.uri.to_string(), "/v1/embeddings?x=1");
        assert_eq!(req.headers["host"], "127.0.0.1:11434");
        assert!(req.headers.get("authorization").is_none());
        let all = format!("{:?}", req.headers);
        assert!(!all.contains("sk-client"), "{all}");
    }

    #[test]
    fn the_key_is_not_in_debug_output() {
        let ups = upstreams();
        assert!(!format!("{:?}", ups[1]).contains("sk-upstream"));
    }
}
