//! Replicas that share state through a real `redis-server`: one key's limits and budgets hold
//! across gateways, an answer one gateway cached is served by the other, and a Redis that is
//! down costs only what the configuration says it may.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

const LIMITED: &str = "sy-limited-0123456789";
const ADMIN: &str = "sy-admin-0123456789";

/// A `redis-server` of its own on a free port, without persistence; stopped when dropped.
struct Redis {
    port: u16,
    child: Child,
}

impl Redis {
    fn start() -> Redis {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed for these tests (apt install redis-server)");
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { port, child }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The sum of the counters matching `pattern`.
    async fn sum(&self, pattern: &str) -> f64 {
        let client = redis::Client::open(self.url()).expect("redis url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection");
        let mut total = 0.0;
        for key in self.keys(pattern).await {
            let v: String = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .expect("GET");
            total += v.parse::<f64>().expect("a number");
        }
        total
    }

    /// The names of the keys matching `pattern`.
    async fn keys(&self, pattern: &str) -> Vec<String> {
        let client = redis::Client::open(self.url()).expect("redis url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection");
        redis::cmd("KEYS")
            .arg(pattern)
            .query_async(&mut conn)
            .await
            .expect("KEYS")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(local: &str, cloud: &str, state: &str) -> String {
    two_upstreams(local, cloud, "")
        + &format!(
            r#"
cache:
  ttl: 1m
  max_bytes: 4MiB
pricing:
  models:
    llama-local: {{input: 1000, output: 1000}}
keys:
  - name: limited
    sha256: {}
    requests_per_minute: 3
    tokens_per_minute: 1000
    budget_usd: {{day: 100}}
  - name: admin
    sha256: {}
    admin: true
state:
{state}
"#,
            sha256(LIMITED),
            sha256(ADMIN),
        )
}

async fn post(gw: &Gateway, key: &str, body: &Value) -> Response {
    chat_as(gw.addr(), key, body).await
}

async fn get(gw: &Gateway, path: &str, key: &str) -> Response {
    let auth = format!("Bearer {key}");
    request(gw.addr(), "GET", path, &[("authorization", &auth)], b"").await
}

fn ask(text: &str) -> Value {
    json!({"model": "auto", "temperature": 0, "max_tokens": 10,
           "messages": [{"role": "user", "content": text}]})
}

/// Two gateways sharing one Redis, in front of a counting local mock and an echoing cloud.
struct Replicas {
    redis: Redis,
    local: Mock,
    _cloud: Mock,
    a: Gateway,
    b: Gateway,
}

impl Replicas {
    async fn start() -> Replicas {
        let redis = Redis::start();
        let local = Mock::start(counting(Duration::ZERO)).await;
        let cloud = echo_cloud().await;
        let state = format!("  redis: \"{}\"", redis.url());
        let yaml = config(&local.url(), &cloud.url(), &state);
        let (a, b) = (Gateway::start(&yaml), Gateway::start(&yaml));
        Replicas {
            redis,
            local,
            _cloud: cloud,
            a,
            b,
        }
    }
}

#[tokio::test]
async fn replicas_share_one_limit_one_budget_and_one_cache() {
    let Replicas {
        redis, local, a, b, ..
    } = Replicas::start().await;

    // Three requests a minute for the key, wherever they arrive.
    assert_eq!(post(&a, LIMITED, &ask("one")).await.status, 200);
    assert_eq!(post(&a, LIMITED, &ask("two")).await.status, 200);
    let third = post(&b, LIMITED, &ask("three")).await;
    assert_eq!(third.status, 200);
    assert_eq!(third.header("x-ratelimit-remaining-requests"), Some("0"));
    let refused = post(&b, LIMITED, &ask("four")).await;
    assert_eq!(refused.assert_error(429)["code"], "rate_limit_exceeded");
    assert!(refused.header("retry-after").is_some());
    assert_eq!(
        local.requests().len(),
        3,
        "the refused request went nowhere"
    );

    // What the key spent through `a` shows on `b`.
    let spent = get(&b, "/stats", LIMITED).await.json();
    assert!(
        spent["spent_usd"]["day"].as_f64().unwrap_or(0.0) > 0.0,
        "{spent}"
    );
    assert_eq!(spent["requests_per_minute"]["remaining"], 0, "{spent}");
    // Charged on the estimate at admission, corrected to what the answers used.
    let (p, c) = MOCK_USAGE;
    // (The correction follows the answer: wait for it.)
    let until = Instant::now() + Duration::from_secs(5);
    let mut tokens = redis.sum("sy:limited:tk:*").await;
    while tokens != 3.0 * (p + c) as f64 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
        tokens = redis.sum("sy:limited:tk:*").await;
    }
    assert_eq!(tokens, 3.0 * (p + c) as f64);
    assert_eq!(redis.sum("sy:limited:rq:*").await, 3.0);

    // An answer cached by `a` is served by `b` without asking the upstream again (answers are
    // kept per tenant: `limited`'s three are not `admin`'s).
    let first = post(&a, ADMIN, &ask("cached")).await;
    let until = Instant::now() + Duration::from_secs(5);
    while redis.keys("sy:cache:*").await.len() < 4 {
        assert!(
            Instant::now() < until,
            "answers never reached the shared cache"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let again = post(&b, ADMIN, &ask("cached")).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.header("x-switchyard-cache"), Some("hit"));
    assert_eq!(
        again.json()["choices"][0]["message"]["content"],
        first.json()["choices"][0]["message"]["content"],
        "the same answer"
    );
    assert_eq!(local.requests().len(), 4, "`b` did not ask the upstream");
    let m = get(&b, "/metrics", ADMIN).await.text();
    assert!(
        m.contains("switchyard_cache_shared_hits_total 1"),
        "{}",
        m.lines()
            .filter(|l| l.contains("shared"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test]
async fn a_redis_that_is_down_fails_open_or_closed_as_configured() {
    let local = Mock::start(counting(Duration::ZERO)).await;
    let cloud = echo_cloud().await;
    let down = format!("redis://{}/0", refused_addr());

    let open = Gateway::start(&config(
        &local.url(),
        &cloud.url(),
        &format!("  redis: \"{down}\"\n  timeout: 200ms"),
    ));
    for n in 0..5 {
        let r = post(&open, LIMITED, &ask(&format!("open {n}"))).await;
        assert_eq!(r.status, 200, "admitted uncounted: {}", r.text());
    }
    // The local cache still serves.
    let again = post(&open, LIMITED, &ask("open 0")).await;
    assert_eq!(again.header("x-switchyard-cache"), Some("hit"));
    let m = get(&open, "/metrics", ADMIN).await.text();
    assert!(
        m.contains(r#"switchyard_state_errors_total{op="admit"}"#),
        "failures are counted"
    );
    // A key's own report says its spend is unknown rather than zero.
    let own = get(&open, "/stats", LIMITED).await.json();
    assert!(own["spent_usd"]["day"].is_null(), "{own}");
    assert!(own["requests_per_minute"].is_null(), "{own}");

    let closed = Gateway::start(&config(
        &local.url(),
        &cloud.url(),
        &format!("  redis: \"{down}\"\n  fail_open: false"),
    ));
    let r = post(&closed, LIMITED, &ask("closed")).await;
    assert_eq!(r.assert_error(503)["code"], "limits_unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(
        post(&closed, ADMIN, &ask("closed")).await.status,
        200,
        "keys without limits need no counters"
    );
    assert!(
        !closed.log().contains(CLOUD_KEY) && !closed.log().contains(LIMITED),
        "no secret in the log:\n{}",
        closed.log()
    );
}

#[tokio::test]
async fn feedback_reaches_the_record_whichever_replica_served_it() {
    let Replicas { redis, a, b, .. } = Replicas::start().await;
    let served = post(&a, ADMIN, &ask("label me")).await;
    assert_eq!(served.status, 200);
    let id = served.header("x-request-id").expect("an id").to_owned();
    let until = Instant::now() + Duration::from_secs(5);
    while redis.keys("sy:req:*").await.is_empty() {
        assert!(Instant::now() < until, "the record never reached Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body = json!({"request_id": id, "score": 1});
    let label = |gw: &Gateway, key: &'static str| {
        let (addr, body) = (gw.addr(), body.clone());
        async move { post_as(addr, "/v1/feedback", key, &body).await }
    };
    // Another key cannot label it, from either replica; its own key can, from the other one.
    assert_eq!(label(&b, LIMITED).await.status, 404);
    let ok = label(&b, ADMIN).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["request_id"], id.as_str());
}
