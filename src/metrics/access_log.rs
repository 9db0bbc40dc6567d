//! The access log: one JSON line per request, written by a thread of its own so that a slow
//! disk or a full pipe never holds up a request; or, with `path: log`, one structured event per
//! request among the log lines (target `access`), in their format.
//!
//! A line names the request, its tenant (by fingerprint), route, rule, upstream, model, status,
//! tokens, cost, latency and cache result. It never holds message content or a key.

use std::io::{self, Write};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::Record;
use crate::config::AccessLogTarget;

/// How many lines may wait for the writer before new ones are dropped (and counted).
const BACKLOG: usize = 16_384;

/// Where the access log goes.
pub enum AccessLog {
    /// Lines queued for the writer thread.
    Lines(mpsc::SyncSender<String>),
    /// Events among the log lines.
    Events,
}

impl AccessLog {
    /// Opens the target (a file is appended to) and starts the writer.
    pub fn open(target: &AccessLogTarget) -> io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match target {
            AccessLogTarget::Log => return Ok(AccessLog::Events),
            AccessLogTarget::Stdout => Box::new(io::stdout()),
            AccessLogTarget::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (tx, rx) = mpsc::sync_channel::<String>(BACKLOG);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(rx, out))?;
        Ok(AccessLog::Lines(tx))
    }

    /// Logs a finished request: queues its line (dropped when the writer has fallen far
    /// behind), or writes its event.
    pub fn write(
        &self,
        request_id: &str,
        method: &str,
        path: &str,
        status: u16,
        rec: &Record,
        elapsed: Duration,
    ) {
        match self {
            AccessLog::Lines(lines) => {
                let line = line(request_id, method, path, status, rec, elapsed);
                if lines.try_send(line).is_err() {
                    tracing::debug!("access log backlog full: a line was dropped");
                }
            }
            AccessLog::Events => event(request_id, method, path, status, rec, elapsed),
        }
    }
}

/// One request as an event: the line's fields, typed.
fn event(request_id: &str, method: &str, path: &str, status: u16, rec: &Record, elapsed: Duration) {
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    tracing::info!(
        target: "access",
        request_id,
        tenant = rec.tenant.as_deref(),
        method,
        path,
        status,
        route = rec.route_label(),
        rule = rec.rule.as_deref(),
        upstream = rec.upstream.as_deref(),
        model = rec.model.as_deref(),
        cache = rec.cache_label(),
        prompt_tokens = rec.usage.map(|u| u.prompt_tokens),
        completion_tokens = rec.usage.map(|u| u.completion_tokens),
        usage_estimated = rec.usage.map(|_| rec.usage_estimated),
        cost_usd = rec.usage.map(|_| rec.cost),
        baseline_cost_usd = rec.usage.map(|_| rec.baseline_cost),
        retries = rec.retries,
        hybrid = rec.hybrid.map(|h| h.done.as_str()),
        tokens_before = rec.hybrid.map(|h| h.before),
        tokens_after = rec.hybrid.map(|h| h.after),
        latency_ms = ms(elapsed),
        first_byte_ms = rec.first_byte.map(ms),
        "request"
    );
}

/// Writes lines as they come, flushing whenever the queue runs dry.
fn write_lines(rx: mpsc::Receiver<String>, out: Box<dyn Write + Send>) {
    let mut out = io::BufWriter::new(out);
    while let Ok(line) = rx.recv() {
        let mut next = Some(line);
        while let Some(line) = next {
            if writeln!(out, "{line}").is_err() {
                return;
            }
            next = rx.try_recv().ok();
        }
        if out.flush().is_err() {
            return;
        }
    }
}

/// One request as a JSON line.
pub fn line(
    request_id: &str,
    method: &str,
    path: &str,
    status: u16,
    rec: &Record,
    elapsed: Duration,
) -> String {
    let time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    json!({
        "time": (time * 1e3).round() / 1e3,
        "request_id": request_id,
        "tenant": rec.tenant,
        "method": method,
        "path": path,
        "status": status,
        "route": rec.route_label(),
        "rule": rec.rule,
        "upstream": rec.upstream,
        "model": rec.model,
        "cache": rec.cache_label(),
        "prompt_tokens": rec.usage.map(|u| u.prompt_tokens),
        "completion_tokens": rec.usage.map(|u| u.completion_tokens),
        "usage_estimated": rec.usage.map(|_| rec.usage_estimated),
        "cost_usd": rec.usage.map(|_| rec.cost),
        "baseline_cost_usd": rec.usage.map(|_| rec.baseline_cost),
        "retries": rec.retries,
        "hybrid": rec.hybrid.map(|h| h.done.as_str()),
        "tokens_before": rec.hybrid.map(|h| h.before),
        "tokens_after": rec.hybrid.map(|h| h.after),
        "hybrid_ms": rec.hybrid.map(|h| ms(h.elapsed)),
        "latency_ms": ms(elapsed),
        "first_byte_ms": rec.first_byte.map(ms),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Usage;
    use crate::vocab::{CacheOutcome, Route};

    #[test]
    fn a_line_is_one_json_object_with_the_fields() {
        let rec = Record {
            route: Some(Route::Local),
            upstream: Some("local".into()),
            rule: Some("greeting".into()),
            tenant: Some("key-0123456789abcdef".into()),
            cache: Some(CacheOutcome::Miss),
            usage: Some(Usage {
                prompt_tokens: 12,
                completion_tokens: 3,
            }),
            usage_estimated: true,
            first_byte: Some(Duration::from_micros(1500)),
            ..Record::new()
        };
        let text = line(
            "req-1",
            "POST",
            "/v1/chat/completions",
            200,
            &rec,
            Duration::from_millis(20),
        );
        assert!(!text.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["request_id"], "req-1");
        assert_eq!(v["tenant"], "key-0123456789abcdef");
        assert_eq!(v["rule"], "greeting");
        assert_eq!(v["prompt_tokens"], 12);
        assert_eq!(v["usage_estimated"], true);
        assert_eq!(v["latency_ms"], 20.0);
        assert_eq!(v["first_byte_ms"], 1.5);
        assert_eq!(v["status"], 200);
    }

    #[test]
    fn lines_reach_the_file() {
        let path = std::env::temp_dir().join(format!("switchyard-log-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let log = AccessLog::open(&AccessLogTarget::File(path.clone())).unwrap();
        let rec = Record::new();
        for id in ["req-1", "req-2"] {
            log.write(id, "GET", "/v1/models", 200, &rec, Duration::ZERO);
        }
        let mut text = String::new();
        for _ in 0..200 {
            text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let ids: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["request_id"].to_string()
            })
            .collect();
        assert_eq!(ids, ["\"req-1\"", "\"req-2\""]);
        let _ = std::fs::remove_file(&path);
    }
}
