//! The configuration file as serde reads it: every value keeps its line and column.

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_saphyr::Spanned;
use std::fmt;

/// Any YAML scalar (string, number or bool) kept as text, so `${VAR}` works in every field.
#[derive(Debug, Clone, Default)]
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A scalar with its position in the file.
pub type Text = Spanned<Scalar>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub upstreams: Ordered<RawUpstream>,
    #[serde(default)]
    pub models: Vec<RawModel>,
    pub default_route: Option<RawTarget>,
    pub passthrough: Option<RawPassthrough>,
    pub routing: Option<RawRouting>,
    pub cache: Option<RawCache>,
    pub pricing: Option<RawPricing>,
    pub access_log: Option<RawAccessLog>,
    pub hybrid: Option<RawHybrid>,
    #[serde(default)]
    pub keys: Vec<RawKey>,
    pub state: Option<RawState>,
    pub telemetry: Option<RawTelemetry>,
    pub feedback: Option<RawFeedback>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFeedback {
    pub retention: Option<Text>,
    pub max_records: Option<Text>,
    pub labels: Option<Text>,
    pub store_text: Option<Spanned<bool>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    pub log_format: Option<Text>,
    pub traces: Option<RawTraces>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTraces {
    pub enabled: Option<Spanned<bool>>,
    pub endpoint: Option<Text>,
    pub service_name: Option<Text>,
    pub sample: Option<Text>,
    pub capture_content: Option<Spanned<bool>>,
    pub timeout: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    pub redis: Option<Text>,
    pub fail_open: Option<Spanned<bool>>,
    pub timeout: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub name: Text,
    pub sha256: Text,
    pub routes: Option<Vec<Text>>,
    pub models: Option<Vec<Text>>,
    pub force_route: Option<Spanned<bool>>,
    pub requests_per_minute: Option<Text>,
    pub tokens_per_minute: Option<Text>,
    pub budget_usd: Option<RawBudget>,
    pub expires: Option<Text>,
    pub admin: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    pub day: Option<Text>,
    pub month: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHybrid {
    pub enabled: Option<Spanned<bool>>,
    pub method: Option<Text>,
    pub summarizer: Option<Text>,
    pub model: Option<Text>,
    pub budget: Option<Text>,
    pub min_saving: Option<Text>,
    pub min_part_tokens: Option<Text>,
    pub keep_last_turns: Option<Text>,
    pub keep_ratio: Option<Text>,
    pub summary_tokens: Option<Text>,
    pub markers: Option<Vec<Text>>,
    pub prompts: Option<RawPrompts>,
    pub cache: Option<RawSummaryCache>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrompts {
    pub document: Option<Text>,
    pub history: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSummaryCache {
    pub ttl: Option<Text>,
    pub max_entries: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub enabled: Option<Spanned<bool>>,
    pub ttl: Option<Text>,
    pub max_bytes: Option<Text>,
    pub max_entry_bytes: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPricing {
    pub baseline: Option<Text>,
    #[serde(default)]
    pub models: Ordered<RawPrice>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    pub input: Text,
    pub output: Text,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    pub enabled: Option<Spanned<bool>>,
    pub path: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouting {
    pub classify: Option<Vec<Text>>,
    pub respect_explicit_model: Option<Spanned<bool>>,
    pub allow_route_header: Option<Spanned<bool>>,
    pub upstreams: Option<RawRouteUpstreams>,
    pub scorer: Option<RawScorer>,
    #[serde(default)]
    pub rules: Vec<Spanned<RawRule>>,
    pub shadow: Option<RawShadow>,
    pub classifier: Option<RawClassifier>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClassifier {
    pub url: Text,
    pub timeout: Option<Text>,
    pub max_entries: Option<Text>,
    pub ttl: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShadow {
    pub sample: Option<Text>,
    pub reverse_sample: Option<Text>,
    pub judge: Option<RawJudge>,
    pub max_per_minute: Option<Text>,
    pub daily_budget_usd: Option<Text>,
    pub labels: Option<Text>,
    pub store_text: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJudge {
    pub upstream: Text,
    pub model: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteUpstreams {
    pub local: Option<Text>,
    pub cloud: Option<Text>,
    pub hybrid: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScorer {
    pub file: Option<Text>,
    pub local_below: Option<Text>,
    pub cloud_from: Option<Text>,
    pub local_share: Option<Text>,
    pub hybrid_share: Option<Text>,
    pub window: Option<Text>,
    pub cloud_budget: Option<RawCloudBudget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCloudBudget {
    pub daily_usd: Text,
    pub max_local_share: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: Text,
    pub when: Option<Spanned<RawCond>>,
    pub route: Text,
    pub model: Option<Text>,
    pub cache: Option<Text>,
    pub method: Option<Text>,
    pub validate: Option<Spanned<bool>>,
    pub pin: Option<Spanned<bool>>,
}

/// A rule condition: exactly one of `all`, `any`, `not`, `feature` (with comparisons),
/// `regex` (with an optional `target`) or `model`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCond {
    pub all: Option<Vec<Spanned<RawCond>>>,
    pub any: Option<Vec<Spanned<RawCond>>>,
    pub not: Option<Box<Spanned<RawCond>>>,
    pub feature: Option<Text>,
    pub lt: Option<Text>,
    pub le: Option<Text>,
    pub gt: Option<Text>,
    pub ge: Option<Text>,
    pub eq: Option<Text>,
    pub ne: Option<Text>,
    pub regex: Option<Vec<Text>>,
    pub target: Option<Text>,
    pub model: Option<Vec<Text>>,
    /// `feature: intent`: the intents that match.
    #[serde(rename = "in")]
    pub one_of: Option<Vec<Text>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Text>,
    pub threads: Option<Text>,
    pub drain_timeout: Option<Text>,
    pub ui: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_body_bytes: Option<Text>,
    pub default_max_tokens: Option<Text>,
    pub header_timeout: Option<Text>,
    pub idle_timeout: Option<Text>,
    pub body_timeout: Option<Text>,
    pub max_header_bytes: Option<Text>,
    pub max_headers: Option<Text>,
    pub max_connections: Option<Text>,
    pub max_in_flight: Option<Text>,
    pub max_buffered_bytes: Option<Text>,
    pub max_answer_bytes: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub kind: Option<Text>,
    pub route: Text,
    pub url: Option<Text>,
    pub backends: Option<Vec<Text>>,
    pub balance: Option<Text>,
    pub max_outstanding: Option<Text>,
    pub health: Option<RawHealth>,
    pub retry: Option<RawRetry>,
    pub num_ctx: Option<Text>,
    pub keep_alive: Option<Text>,
    pub context_overflow: Option<Text>,
    pub tokenizer: Option<Text>,
    pub raw_api: Option<Text>,
    pub model: Option<Text>,
    pub api_key: Option<Text>,
    pub require_api_key: Option<Spanned<bool>>,
    pub fallback: Option<Text>,
    pub timeouts: Option<RawTimeouts>,
    pub price: Option<RawPrice>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub active: Option<Spanned<bool>>,
    pub path: Option<Text>,
    pub interval: Option<Text>,
    pub timeout: Option<Text>,
    pub healthy_after: Option<Text>,
    pub unhealthy_after: Option<Text>,
    pub failures: Option<Text>,
    pub cooldown: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub attempts: Option<Text>,
    pub backoff: Option<Text>,
    pub max_backoff: Option<Text>,
    pub retry_after_cap: Option<Text>,
    pub budget: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<Text>,
    pub first_byte: Option<Text>,
    pub idle: Option<Text>,
    pub total: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub name: Text,
    pub upstream: Text,
    pub model: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub upstream: Text,
    pub model: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPassthrough {
    pub upstream: Text,
}

/// A YAML mapping read in file order (upstreams are listed in the order the operator wrote them).
#[derive(Debug)]
pub struct Ordered<T>(pub Vec<(String, T)>);

impl<T> Default for Ordered<T> {
    fn default() -> Self {
        Ordered(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Ordered<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Ordered<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping of names to settings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered<T>, A::Error> {
                let mut out: Vec<(String, T)> = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, T>()? {
                    if out.iter().any(|(k, _)| *k == key) {
                        return Err(de::Error::custom(format!("`{key}` is defined twice")));
                    }
                    out.push((key, value));
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}
