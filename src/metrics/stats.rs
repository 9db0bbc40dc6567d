//! `GET /stats`: the few numbers a person wants from the metrics, as JSON.

use std::time::Duration;

use prometheus::proto::{MetricFamily, MetricType};
use serde_json::{json, Value};

use super::Metrics;

/// Sums a family's samples whose labels match every `(name, value)` in `filter`; for
/// histograms, sums the sample counts (`count`) or the sums (`sum`).
fn total(families: &[MetricFamily], name: &str, filter: &[(&str, &str)], part: Part) -> f64 {
    let Some(family) = families.iter().find(|f| f.name() == name) else {
        return 0.0;
    };
    family
        .get_metric()
        .iter()
        .filter(|m| {
            filter.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })
        .map(|m| match (family.get_field_type(), part) {
            (MetricType::COUNTER, _) => m.get_counter().get_value(),
            (MetricType::GAUGE, _) => m.get_gauge().get_value(),
            (MetricType::HISTOGRAM, Part::Count) => m.get_histogram().get_sample_count() as f64,
            (MetricType::HISTOGRAM, Part::Sum) => m.get_histogram().get_sample_sum(),
            _ => 0.0,
        })
        .sum()
}

#[derive(Clone, Copy)]
enum Part {
    Count,
    Sum,
}

/// A quantile of a histogram family (all series but the gateway's own), estimated by linear
/// interpolation inside the bucket where it falls, as Prometheus' `histogram_quantile` does.
fn quantile(families: &[MetricFamily], name: &str, q: f64) -> Option<f64> {
    let family = families.iter().find(|f| f.name() == name)?;
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    let mut count = 0u64;
    for m in family.get_metric() {
        let own = m
            .get_label()
            .iter()
            .any(|l| l.name() == "route" && l.value() == "gateway");
        if own {
            continue;
        }
        let h = m.get_histogram();
        count += h.get_sample_count();
        for (i, b) in h.get_bucket().iter().enumerate() {
            match buckets.get_mut(i) {
                Some(slot) => slot.1 += b.cumulative_count(),
                None => buckets.push((b.upper_bound(), b.cumulative_count())),
            }
        }
    }
    if count == 0 {
        return None;
    }
    let rank = q * count as f64;
    let mut lower = (0.0, 0u64);
    for &(bound, cumulative) in &buckets {
        if cumulative as f64 >= rank {
            let inside = (cumulative - lower.1) as f64;
            let share = if inside > 0.0 {
                (rank - lower.1 as f64) / inside
            } else {
                1.0
            };
            return Some(lower.0 + (bound - lower.0) * share);
        }
        lower = (bound, cumulative);
    }
    // Beyond the last bucket: its bound is all that is known.
    Some(lower.0)
}

/// Hybrid requests the stage left as they were.
fn skipped(families: &[MetricFamily]) -> f64 {
    let name = "switchyard_hybrid_requests_total";
    label_values(families, name, "outcome")
        .iter()
        .filter(|o| o.starts_with("skipped"))
        .map(|o| total(families, name, &[("outcome", o)], Part::Sum))
        .sum()
}

/// Distinct values of one label in a family.
fn label_values(families: &[MetricFamily], name: &str, label: &str) -> Vec<String> {
    let mut out: Vec<String> = families
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric())
        .flat_map(|m| m.get_label())
        .filter(|l| l.name() == label)
        .map(|l| l.value().to_owned())
        .collect();
    out.sort();
    out.dedup();
    out
}

fn ratio(part: f64, whole: f64) -> Value {
    if whole > 0.0 {
        json!(part / whole)
    } else {
        Value::Null
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (v * scale).round() / scale
}

/// The summary: requests and their share per route, errors, latency and time to first token
/// (average and estimated percentiles, of requests that reached an upstream or the cache), cache
/// hit rate, tokens, cost and savings, and per tenant its requests, tokens, spend and savings.
pub fn stats(m: &Metrics, uptime: Duration) -> Value {
    let f = m.gather();
    let requests = "switchyard_requests_total";
    // The gateway's own endpoints (metrics, health) are not traffic; a chat request the gateway
    // refused (a 400) is, and carries a cache result.
    let served = |filter: &[(&str, &str)]| {
        let own: Vec<(&str, &str)> = filter
            .iter()
            .copied()
            .chain([("route", "gateway"), ("cache", "none")])
            .collect();
        total(&f, requests, filter, Part::Count) - total(&f, requests, &own, Part::Count)
    };
    let all = served(&[]);
    let mut routes = serde_json::Map::new();
    for route in label_values(&f, requests, "route") {
        if route == "gateway" {
            continue;
        }
        let n = served(&[("route", &route)]);
        routes.insert(route, json!({"requests": n, "share": ratio(n, all)}));
    }
    let errors: f64 = label_values(&f, requests, "status")
        .iter()
        .filter(|s| s.as_str() >= "400")
        .map(|s| served(&[("status", s)]))
        .sum();
    let hits = served(&[("cache", "hit")]);
    let misses = served(&[("cache", "miss")]);
    let bypass = served(&[("cache", "bypass")]);
    let dur = "switchyard_request_duration_seconds";
    let ttft = "switchyard_time_to_first_token_seconds";
    let avg_ms = |name: &str| {
        let count = total(&f, name, &[], Part::Count)
            - total(&f, name, &[("route", "gateway")], Part::Count);
        let sum =
            total(&f, name, &[], Part::Sum) - total(&f, name, &[("route", "gateway")], Part::Sum);
        ratio(sum * 1000.0, count)
    };
    let tokens = "switchyard_tokens_total";
    let cost = total(&f, "switchyard_cost_usd_total", &[], Part::Sum);
    let baseline = total(&f, "switchyard_baseline_cost_usd_total", &[], Part::Sum);
    let mut tenants = serde_json::Map::new();
    for tenant in label_values(&f, requests, "tenant") {
        let t = [("tenant", tenant.as_str())];
        let spent = total(&f, "switchyard_cost_usd_total", &t, Part::Sum);
        let base = total(&f, "switchyard_baseline_cost_usd_total", &t, Part::Sum);
        let n = served(&t);
        if n == 0.0 {
            continue;
        }
        tenants.insert(
            tenant.clone(),
            json!({
                "requests": n,
                "tokens": total(&f, tokens, &t, Part::Sum),
                "spent_usd": round(spent, 6),
                "saved_usd": round(base - spent, 6),
            }),
        );
    }
    // Failures and fallbacks by upstream and reason: what the dashboard's backend list shows.
    let by = |name: &str, first: &str, second: &str| {
        let mut out = serde_json::Map::new();
        for a in label_values(&f, name, first) {
            let mut inner = serde_json::Map::new();
            for b in label_values(&f, name, second) {
                let n = total(&f, name, &[(first, &a), (second, &b)], Part::Sum);
                if n > 0.0 {
                    inner.insert(b, json!(n));
                }
            }
            out.insert(a, Value::Object(inner));
        }
        Value::Object(out)
    };
    json!({
        "uptime_seconds": uptime.as_secs(),
        "failures": by("switchyard_upstream_failures_total", "upstream", "reason"),
        "fallbacks": by("switchyard_fallbacks_total", "from", "reason"),
        "recent": m.recent(),
        "requests": {
            "total": all,
            "errors": errors,
            "by_route": routes,
        },
        "by_tenant": tenants,
        "latency_ms": {
            "average": avg_ms(dur),
            "p50": quantile(&f, dur, 0.5).map(|v| round(v * 1e3, 3)),
            "p95": quantile(&f, dur, 0.95).map(|v| round(v * 1e3, 3)),
            "first_token_average": avg_ms(ttft),
            "first_token_p50": quantile(&f, ttft, 0.5).map(|v| round(v * 1e3, 3)),
            "first_token_p95": quantile(&f, ttft, 0.95).map(|v| round(v * 1e3, 3)),
        },
        "cache": {
            "hits": hits,
            "misses": misses,
            "bypassed": bypass,
            "hit_rate": ratio(hits, hits + misses),
            "entries": total(&f, "switchyard_cache_entries", &[], Part::Sum),
            "bytes": total(&f, "switchyard_cache_bytes", &[], Part::Sum),
        },
        "tokens": {
            "prompt": total(&f, tokens, &[("direction", "prompt")], Part::Sum),
            "completion": total(&f, tokens, &[("direction", "completion")], Part::Sum),
            "estimated": total(&f, tokens, &[("source", "estimated")], Part::Sum),
        },
        "hybrid": {
            "requests": total(&f, "switchyard_hybrid_requests_total", &[], Part::Sum),
            "shortened": total(&f, "switchyard_hybrid_requests_total", &[], Part::Sum)
                - skipped(&f),
            "prompt_tokens_saved": total(&f, "switchyard_hybrid_prompt_tokens_saved_total", &[], Part::Sum),
            "summaries": total(&f, "switchyard_hybrid_summaries_total", &[("source", "local")], Part::Sum),
            "summaries_cached": total(&f, "switchyard_hybrid_summaries_total", &[("source", "cache")], Part::Sum),
            "stage_p50_ms": quantile(&f, "switchyard_hybrid_stage_seconds", 0.5).map(|v| round(v * 1e3, 3)),
        },
        "cost_usd": {
            "spent": round(cost, 6),
            "baseline": round(baseline, 6),
            "saved": round(baseline - cost, 6),
            "saved_share": ratio(baseline - cost, baseline),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Usage;
    use crate::metrics::Record;
    use crate::vocab::{CacheOutcome, Route};

    #[test]
    fn sums_what_was_recorded() {
        let m = Metrics::new().unwrap();
        let local = Record {
            route: Some(Route::Local),
            upstream: Some("local".into()),
            model: Some("llama".into()),
            cache: Some(CacheOutcome::Miss),
            usage: Some(Usage {
                prompt_tokens: 100,
                completion_tokens: 50,
            }),
            cost: 0.0,
            baseline_cost: 0.00075,
            first_byte: Some(Duration::from_millis(10)),
            ..Record::new()
        };
        m.record(&local, "200", Duration::from_millis(100));
        m.record(
            &Record {
                cache: Some(CacheOutcome::Hit),
                ..local.clone()
            },
            "200",
            Duration::from_millis(1),
        );
        let cloud = Record {
            route: Some(Route::Cloud),
            upstream: Some("cloud".into()),
            model: Some("gpt-4o".into()),
            cache: Some(CacheOutcome::Bypass),
            cost: 0.00075,
            tenant_label: Some("team-b".into()),
            ..local.clone()
        };
        m.record(&cloud, "502", Duration::from_millis(200));
        m.record(&Record::new(), "200", Duration::from_millis(1));

        let s = stats(&m, Duration::from_secs(7));
        assert_eq!(s["requests"]["total"], 3.0);
        assert_eq!(s["requests"]["errors"], 1.0);
        assert_eq!(s["requests"]["by_route"]["local"]["requests"], 2.0);
        let share = s["requests"]["by_route"]["cloud"]["share"]
            .as_f64()
            .unwrap();
        assert!((share - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(s["cache"]["hit_rate"], 0.5);
        assert_eq!(s["tokens"]["prompt"], 200.0, "miss and bypass, not the hit");
        let avg = s["latency_ms"]["average"].as_f64().unwrap();
        assert!((avg - 301.0 / 3.0).abs() < 1e-6, "{avg}");
        // Samples 1, 100 and 200 ms: the median falls in the (50, 100] ms bucket, p95 in
        // (100, 250].
        let p50 = s["latency_ms"]["p50"].as_f64().unwrap();
        assert!(p50 > 50.0 && p50 <= 100.0, "{p50}");
        let p95 = s["latency_ms"]["p95"].as_f64().unwrap();
        assert!(p95 > 100.0 && p95 <= 250.0, "{p95}");
        assert_eq!(s["cost_usd"]["spent"], 0.00075);
        assert_eq!(s["cost_usd"]["baseline"], 0.00225);
        assert_eq!(s["cost_usd"]["saved"], 0.0015);
        let teams = &s["by_tenant"];
        assert_eq!(teams["anonymous"]["requests"], 2.0);
        assert_eq!(teams["anonymous"]["tokens"], 150.0, "the hit did no work");
        assert_eq!(teams["anonymous"]["saved_usd"], 0.0015);
        assert_eq!(teams["team-b"]["requests"], 1.0);
        assert_eq!(teams["team-b"]["spent_usd"], 0.00075);
        assert_eq!(teams.as_object().map(|t| t.len()), Some(2));
    }
}
