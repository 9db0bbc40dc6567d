//! State shared by replicas through Redis: the limits' counters, the budgets, and the response
//! cache's answers. Every call has a time limit; a Redis that fails or is slow costs a request
//! nothing but the shared part (limits fail open or closed as configured, the cache misses), and
//! is counted and logged (at most once every ten seconds).

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use redis::aio::ConnectionManager;

use crate::config::StateConfig;

/// How often a Redis failure is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// How long counters live, in seconds: a minute window is read for two minutes, a day's spend
/// for that day, a month's for that month (each with a margin).
const WINDOW_TTL: u64 = 150;
const DAY_TTL: u64 = 2 * 86_400;
const MONTH_TTL: u64 = 32 * 86_400;

/// Checks a key's windows and budgets and, when all hold, counts the request: one round trip,
/// atomic. KEYS: requests (current, previous window), tokens (current, previous), spend (day,
/// month). ARGV: the previous window's weight, the requests limit (0: none), the tokens, the
/// tokens limit (0: none), the cost, the day and month budgets (-1: none), the lifetimes of a
/// window, a day and a month. Returns the verdict (0 admitted, 1 requests, 2 tokens, 3 day,
/// 4 month) and the counts before the request.
const ADMIT: &str = r"
local w = tonumber(ARGV[1])
local function n(k) return tonumber(redis.call('GET', k) or '0') end
local rq_prev, rq_curr = n(KEYS[2]), n(KEYS[1])
local tk_prev, tk_curr = n(KEYS[4]), n(KEYS[3])
local day, month = n(KEYS[5]), n(KEYS[6])
local tokens, cost = tonumber(ARGV[3]), tonumber(ARGV[5])
local verdict = 0
if tonumber(ARGV[2]) > 0 and rq_prev * w + rq_curr + 1 > tonumber(ARGV[2]) then verdict = 1
elseif tonumber(ARGV[4]) > 0 and tk_prev * w + tk_curr + tokens > tonumber(ARGV[4]) then verdict = 2
elseif tonumber(ARGV[6]) >= 0 and day + cost > tonumber(ARGV[6]) then verdict = 3
elseif tonumber(ARGV[7]) >= 0 and month + cost > tonumber(ARGV[7]) then verdict = 4 end
if verdict == 0 then
  redis.call('INCRBY', KEYS[1], 1)
  redis.call('EXPIRE', KEYS[1], ARGV[8])
  redis.call('INCRBY', KEYS[3], tokens)
  redis.call('EXPIRE', KEYS[3], ARGV[8])
  redis.call('INCRBYFLOAT', KEYS[5], ARGV[5])
  redis.call('EXPIRE', KEYS[5], ARGV[9])
  redis.call('INCRBYFLOAT', KEYS[6], ARGV[5])
  redis.call('EXPIRE', KEYS[6], ARGV[10])
end
return {verdict, tostring(rq_prev), tostring(rq_curr), tostring(tk_prev), tostring(tk_curr), tostring(day), tostring(month)}
";

/// The Redis keys of a key's counters, in the order [`ADMIT`] takes them: requests in the current
/// and previous minute, tokens likewise, spend today and this month.
fn counters(ask: &Ask<'_>) -> [String; 6] {
    let (key, window) = (ask.key, ask.window.0);
    let previous = window.saturating_sub(1);
    [
        format!("sy:{key}:rq:{window}"),
        format!("sy:{key}:rq:{previous}"),
        format!("sy:{key}:tk:{window}"),
        format!("sy:{key}:tk:{previous}"),
        format!("sy:{key}:day:{}", ask.day),
        format!("sy:{key}:month:{}", ask.month),
    ]
}

/// What Redis said of a request's admission.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// 0: admitted and counted; 1 requests, 2 tokens, 3 day budget, 4 month budget: refused.
    pub code: i64,
    /// Requests in the previous and current window, before this one.
    pub requests: (f64, f64),
    /// Tokens in the previous and current window, before this one.
    pub tokens: (f64, f64),
    /// US dollars spent today and this month, before this one.
    pub spent: (f64, f64),
}

/// What one admission asks of Redis.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// The key's name.
    pub key: &'a str,
    /// The current minute window (minutes since the epoch) and how far into it we are (0..1).
    pub window: (u64, f64),
    /// The day and the month (their first day), as days since the epoch.
    pub day: u64,
    /// The first day of the month.
    pub month: u64,
    /// The requests limit.
    pub requests_limit: Option<u64>,
    /// The request's estimated tokens and the tokens limit.
    pub tokens: (u64, Option<u64>),
    /// The request's estimated cost and the day and month budgets.
    pub cost: (f64, Option<f64>, Option<f64>),
}

/// The connection to Redis and what counts its failures.
pub struct Shared {
    client: redis::Client,
    settings: redis::aio::ConnectionManagerConfig,
    /// Made at first use, within the runtime that serves requests (it runs a task there).
    redis: OnceLock<Result<ConnectionManager, String>>,
    timeout: Duration,
    /// Admit requests without counting them when Redis fails.
    pub fail_open: bool,
    admit: redis::Script,
    errors: IntCounterVec,
    shared_hits: IntCounter,
    logged: Mutex<Option<Instant>>,
}

impl Shared {
    /// A connection to the configured Redis, made at first use (a Redis that is down at start-up
    /// is no reason not to start); `None` without `state.redis`.
    pub fn connect(config: &StateConfig, registry: &Registry) -> Result<Option<Shared>, String> {
        let Some(url) = &config.redis else {
            return Ok(None);
        };
        let client = redis::Client::open(url.expose())
            .map_err(|_| "state.redis: not a valid Redis URL".to_owned())?;
        let settings = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1);
        let errors = IntCounterVec::new(
            Opts::new(
                "switchyard_state_errors_total",
                "Failed or timed-out calls to the shared state (Redis), by operation",
            ),
            &["op"],
        )
        .map_err(|e| e.to_string())?;
        let shared_hits = IntCounter::new(
            "switchyard_cache_shared_hits_total",
            "Answers found in the shared cache (another replica stored them)",
        )
        .map_err(|e| e.to_string())?;
        registry
            .register(Box::new(errors.clone()))
            .map_err(|e| e.to_string())?;
        registry
            .register(Box::new(shared_hits.clone()))
            .map_err(|e| e.to_string())?;
        Ok(Some(Shared {
            client,
            settings,
            redis: OnceLock::new(),
            timeout: config.timeout,
            fail_open: config.fail_open,
            admit: redis::Script::new(ADMIT),
            errors,
            shared_hits,
            logged: Mutex::new(None),
        }))
    }

    /// Checks and counts an admission; `None` when Redis failed.
    pub async fn admit(&self, ask: &Ask<'_>) -> Option<Verdict> {
        let mut invocation = self.admit.prepare_invoke();
        for key in counters(ask) {
            invocation.key(key);
        }
        invocation
            .arg(1.0 - ask.window.1)
            .arg(ask.requests_limit.unwrap_or(0))
            .arg(ask.tokens.0)
            .arg(ask.tokens.1.unwrap_or(0))
            .arg(ask.cost.0)
            .arg(ask.cost.1.unwrap_or(-1.0))
            .arg(ask.cost.2.unwrap_or(-1.0))
            .arg(WINDOW_TTL)
            .arg(DAY_TTL)
            .arg(MONTH_TTL);
        let mut conn = self.connection("admit")?;
        let call = invocation
            .invoke_async::<(i64, String, String, String, String, String, String)>(&mut conn);
        let (code, rqp, rqc, tkp, tkc, day, month) = self.timed("admit", call).await?;
        let f = |s: &str| s.parse::<f64>().unwrap_or(0.0);
        Some(Verdict {
            code,
            requests: (f(&rqp), f(&rqc)),
            tokens: (f(&tkp), f(&tkc)),
            spent: (f(&day), f(&month)),
        })
    }

    /// Corrects an admission by what the answer used (in the current window and period).
    pub async fn settle(&self, ask: &Ask<'_>, tokens_delta: i64, cost_delta: f64) {
        let [_, _, tokens, _, day, month] = counters(ask);
        let mut pipe = redis::pipe();
        pipe.cmd("INCRBY").arg(&tokens).arg(tokens_delta).ignore();
        pipe.cmd("EXPIRE").arg(&tokens).arg(WINDOW_TTL).ignore();
        for (key, ttl) in [(&day, DAY_TTL), (&month, MONTH_TTL)] {
            pipe.cmd("INCRBYFLOAT").arg(key).arg(cost_delta).ignore();
            pipe.cmd("EXPIRE").arg(key).arg(ttl).ignore();
        }
        let Some(mut conn) = self.connection("settle") else {
            return;
        };
        let _ = self
            .timed("settle", pipe.query_async::<()>(&mut conn))
            .await;
    }

    /// A key's counts as they stand (the verdict's code is 0); `None` when Redis failed.
    pub async fn counts(&self, ask: &Ask<'_>) -> Option<Verdict> {
        let mut conn = self.connection("counts")?;
        let mut cmd = redis::cmd("MGET");
        for key in counters(ask) {
            cmd.arg(key);
        }
        let call = cmd.query_async::<Vec<Option<String>>>(&mut conn);
        let got = self.timed("counts", call).await?;
        let n = |i: usize| {
            got.get(i)
                .and_then(|v| v.as_deref()?.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Some(Verdict {
            code: 0,
            requests: (n(1), n(0)),
            tokens: (n(3), n(2)),
            spent: (n(4), n(5)),
        })
    }

    /// A cached answer (its JSON body) another replica stored.
    pub async fn cached(&self, key: u128) -> Option<Bytes> {
        let mut conn = self.connection("cache_get")?;
        let mut cmd = redis::cmd("GET");
        cmd.arg(format!("sy:cache:{key:032x}"));
        let call = cmd.query_async::<Option<Vec<u8>>>(&mut conn);
        let found = self.timed("cache_get", call).await.flatten()?;
        self.shared_hits.inc();
        Some(Bytes::from(found))
    }

    /// Stores an answer (as the cache encodes it) for the other replicas, for `ttl`.
    pub async fn store(&self, key: u128, value: Bytes, ttl: Duration) {
        let Some(mut conn) = self.connection("cache_put") else {
            return;
        };
        let mut cmd = redis::cmd("SET");
        cmd.arg(format!("sy:cache:{key:032x}"))
            .arg(value.as_ref())
            .arg("EX")
            .arg(ttl.as_secs().max(1));
        let call = cmd.query_async::<()>(&mut conn);
        let _ = self.timed("cache_put", call).await;
    }

    /// Keeps a served request's record for `ttl`, so that feedback reaching any replica finds
    /// it; `key` names the tenant and the request.
    pub async fn put_record(&self, key: &str, value: String, ttl: Duration) {
        let Some(mut conn) = self.connection("record_put") else {
            return;
        };
        let mut cmd = redis::cmd("SET");
        cmd.arg(format!("sy:req:{key}"))
            .arg(value)
            .arg("EX")
            .arg(ttl.as_secs().max(1));
        let call = cmd.query_async::<()>(&mut conn);
        let _ = self.timed("record_put", call).await;
    }

    /// A served request's record another replica (or this one) kept.
    pub async fn record(&self, key: &str) -> Option<String> {
        let mut conn = self.connection("record_get")?;
        let mut cmd = redis::cmd("GET");
        cmd.arg(format!("sy:req:{key}"));
        let call = cmd.query_async::<Option<String>>(&mut conn);
        self.timed("record_get", call).await.flatten()
    }

    /// The connection (a handle to it: cheap to clone), made at first use.
    fn connection(&self, op: &'static str) -> Option<ConnectionManager> {
        let made = self.redis.get_or_init(|| {
            self.client
                .get_connection_manager_lazy(self.settings.clone())
                .map_err(|e| e.to_string())
        });
        match made {
            Ok(conn) => Some(conn.clone()),
            Err(e) => {
                self.failed(op, e.clone());
                None
            }
        }
    }

    /// Runs a call within the time limit; a failure is counted and (now and then) logged.
    async fn timed<T>(
        &self,
        op: &'static str,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        let error = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => return Some(v),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", self.timeout),
        };
        self.failed(op, error);
        None
    }

    /// Counts a failure and, now and then, logs it.
    fn failed(&self, op: &'static str, error: String) {
        self.errors.with_label_values(&[op]).inc();
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        if logged.is_none_or(|at| at.elapsed() > LOG_EVERY) {
            *logged = Some(Instant::now());
            tracing::warn!("shared state (Redis) failed on {op}: {error}");
        }
    }
}
