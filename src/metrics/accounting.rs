//! Tokens and dollars of one answer: the usage the upstream reported or an estimate of it, and
//! what it cost against what the baseline model would have cost.

use super::Record;
use crate::api::{ChatRequest, Usage};
use crate::classify::estimate_prompt_tokens;
use crate::config::Config;

/// An estimate of a request's usage when the upstream reported none: the prompt from its
/// messages, the completion from the bytes of output seen (about four a token).
pub fn estimate_usage(req: &ChatRequest, output_bytes: usize) -> Usage {
    Usage {
        prompt_tokens: estimate_prompt_tokens(&req.messages),
        completion_tokens: (output_bytes as u64).div_ceil(4),
    }
}

/// What `usage` cost on `model` at `upstream`, and what it would have cost on the baseline
/// model (the cost itself when no baseline is configured, so that nothing counts as saved).
pub fn cost(config: &Config, upstream: usize, model: &str, usage: Usage) -> (f64, f64) {
    let spent = config
        .price(upstream, model)
        .cost(usage.prompt_tokens, usage.completion_tokens);
    let baseline = config.pricing.baseline.as_ref().map_or(spent, |(_, p)| {
        p.cost(usage.prompt_tokens, usage.completion_tokens)
    });
    (spent, baseline)
}

/// Records an answer's tokens (`usage` as reported, else estimated from the request and the
/// `output_bytes` seen) and its cost on `model` at `upstream`; a cache hit costs nothing.
pub fn account(
    config: &Config,
    rec: &mut Record,
    request: &ChatRequest,
    (upstream, model): (usize, &str),
    (usage, output_bytes): (Option<Usage>, usize),
    hit: bool,
) {
    let usage = usage.unwrap_or_else(|| {
        rec.usage_estimated = true;
        estimate_usage(request, output_bytes)
    });
    let (spent, _) = cost(config, upstream, model, usage);
    // The baseline reads what the client sent: the prompt tokens the hybrid stage saved count.
    let saved = rec.hybrid.map_or(0, |h| h.before.saturating_sub(h.after));
    let original = Usage {
        prompt_tokens: usage.prompt_tokens + saved,
        ..usage
    };
    let (_, baseline) = cost(config, upstream, model, original);
    rec.usage = Some(usage);
    rec.cost = if hit {
        0.0
    } else {
        spent + rec.summarizer_cost
    };
    rec.baseline_cost = baseline;
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const YAML: &str = r#"
upstreams:
  local: {route: local, url: "http://127.0.0.1:1", model: llama, price: {input: 0.01, output: 0.02}}
  cloud: {route: cloud, url: "http://127.0.0.1:2", model: gpt-4o}
default_route: {upstream: cloud}
pricing:
  baseline: gpt-4o
  models:
    gpt-4o: {input: 2.50, output: 10.00}
    gpt-4o-mini: {input: 0.15, output: 0.60}
"#;

    #[test]
    fn costs_follow_the_price_table() {
        let c = Config::from_yaml(YAML, |_| None).unwrap();
        let usage = Usage {
            prompt_tokens: 1_000_000,
            completion_tokens: 500_000,
        };
        // Listed model: 2.50 + 0.5 × 10.00.
        assert_eq!(cost(&c, 1, "gpt-4o", usage), (7.5, 7.5));
        // 0.15 + 0.5 × 0.60 against the baseline's 7.50.
        let (spent, baseline) = cost(&c, 1, "gpt-4o-mini", usage);
        assert!((spent - 0.45).abs() < 1e-12 && baseline == 7.5);
        // Not listed: the upstream's own price.
        let (spent, _) = cost(&c, 0, "llama", usage);
        assert!((spent - 0.02).abs() < 1e-12, "{spent}");
        // Nobody priced it: free.
        assert_eq!(cost(&c, 1, "o3", usage).0, 0.0);
        let small = Usage {
            prompt_tokens: 1234,
            completion_tokens: 56,
        };
        let (spent, _) = cost(&c, 1, "gpt-4o", small);
        assert!((spent - (1234.0 * 2.5 + 56.0 * 10.0) / 1e6).abs() < 1e-15);
    }

    #[test]
    fn unpriced_configs_save_nothing() {
        let yaml = YAML.split("pricing:").next().unwrap();
        let c = Config::from_yaml(yaml, |_| None).unwrap();
        let u = Usage {
            prompt_tokens: 10,
            completion_tokens: 10,
        };
        let (spent, baseline) = cost(&c, 0, "llama", u);
        assert_eq!(spent, baseline);
    }

    #[test]
    fn estimates_grow_with_the_text() {
        let req = ChatRequest::parse(Bytes::from_static(
            br#"{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"What is the capital of France?"}]}"#,
        ))
        .unwrap();
        let u = estimate_usage(&req, 40);
        assert_eq!(u.completion_tokens, 10);
        // 9 and 30 characters: 3 + 8 tokens of text, 3 per message and 3 for the reply.
        assert_eq!(u.prompt_tokens, 3 + 8 + 3 * 2 + 3);
    }
}
