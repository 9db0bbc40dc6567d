//! Which upstream and model a chat request goes to.
//!
//! In this version the choice is the model table of the configuration: a client-visible model
//! name maps to an upstream and the model name that upstream knows; names outside the table take
//! the default route.

use crate::config::Config;

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
    /// The header and log spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Local => "local",
            Route::Cloud => "cloud",
            Route::Hybrid => "hybrid",
        }
    }

    /// Parses the route of a rule.
    pub fn parse(text: &str) -> Result<Route, String> {
        match text {
            "local" => Ok(Route::Local),
            "cloud" => Ok(Route::Cloud),
            "hybrid" => Ok(Route::Hybrid),
            other => Err(format!("`{other}` is not a route (local, hybrid or cloud)")),
        }
    }

    /// Parses the `route` field of an upstream.
    pub fn parse_upstream_side(text: &str) -> Result<Route, String> {
        match text {
            "local" => Ok(Route::Local),
            "cloud" => Ok(Route::Cloud),
            other => Err(format!("`{other}` is not a route (local or cloud)")),
        }
    }
}

/// Where one request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'a> {
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// The model name to send upstream.
    pub model: &'a str,
    /// The side the upstream is on.
    pub route: Route,
}

/// Looks the requested model up in the model table, or takes the default route.
pub fn decide<'a>(config: &'a Config, requested: &'a str) -> Decision<'a> {
    let target = config
        .models
        .iter()
        .find(|m| m.name == requested)
        .map(|m| &m.target)
        .unwrap_or(&config.default_route);
    Decision {
        upstream: target.upstream,
        model: target.model.as_deref().unwrap_or(requested),
        route: config.upstream(target.upstream).route,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
upstreams:
  local: {kind: openai, route: local, url: "http://127.0.0.1:1", model: small}
  cloud: {kind: openai, route: cloud, url: "https://api.example.test", model: big, api_key: "${KEY:-}", require_api_key: true, fallback: local}
models:
  - {name: auto, upstream: local}
  - {name: gpt-4o, upstream: cloud, model: gpt-4o-2024-08-06}
default_route: {upstream: cloud}
"#;

    fn config(key: Option<&str>) -> Config {
        let key = key.map(str::to_owned);
        Config::from_yaml(YAML, move |n| if n == "KEY" { key.clone() } else { None })
            .expect("valid config")
    }

    #[test]
    fn table_entries_map_to_upstream_and_model() {
        let c = config(Some("sk-test"));
        let d = decide(&c, "auto");
        assert_eq!((d.upstream, d.model, d.route), (0, "small", Route::Local));
        let d = decide(&c, "gpt-4o");
        assert_eq!(
            (d.upstream, d.model, d.route),
            (1, "gpt-4o-2024-08-06", Route::Cloud)
        );
    }

    #[test]
    fn unlisted_models_keep_their_name_on_the_default_route() {
        let c = config(Some("sk-test"));
        let d = decide(&c, "gpt-4.1-nano");
        assert_eq!(
            (d.upstream, d.model, d.route),
            (1, "gpt-4.1-nano", Route::Cloud)
        );
    }

    #[test]
    fn without_a_key_cloud_traffic_goes_local_with_the_local_model() {
        let c = config(None);
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        for name in ["gpt-4o", "auto", "anything-else"] {
            let d = decide(&c, name);
            assert_eq!(
                (d.upstream, d.model, d.route),
                (0, "small", Route::Local),
                "{name}"
            );
        }
    }
}
