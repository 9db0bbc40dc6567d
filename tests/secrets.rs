//! No key leaks, whatever fails: a matrix of failures (a wrong client key, an upstream that
//! echoes the gateway's key in a 401, a 400 with JSON escapes, a 429, an SSE error event cut
//! across writes, an HTML page, headers; timeouts; pass-through errors; a broken configuration
//! and a broken reload; Redis down) while every response body and header, `/health`,
//! `/metrics`, `/stats`, what the local upstream received, and every log line at debug level
//! are searched for the upstream key, the clients' keys and the Redis password.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

const TEAM: &str = "sy-team-secret-0123456789";
const ADMIN: &str = "sy-admin-secret-0123456789";
const WRONG: &str = "sy-wrong-secret-0123456789";
const REDIS_PASSWORD: &str = "redis-pass-word-789";

/// Every secret of the test, none of which may be seen outside where it belongs.
const SECRETS: [&str; 5] = [CLOUD_KEY, TEAM, ADMIN, WRONG, REDIS_PASSWORD];

fn config(local: &str, cloud: &str) -> String {
    two_upstreams(local, cloud, "    timeouts: {first_byte: 1s, idle: 1s, total: 3s}\n    retry: {attempts: 2, backoff: 10ms, retry_after_cap: 1s}")
        .replace("    require_api_key: true\n", "")
        .replace("    fallback: local\n", "    fallback: none\n")
        + &format!(
            r#"
keys:
  - name: team
    sha256: {}
  - name: admin
    sha256: {}
    admin: true
state:
  redis: "redis://:{REDIS_PASSWORD}@127.0.0.1:1/0"
  timeout: 50ms
  fail_open: true
"#,
            sha256(TEAM),
            sha256(ADMIN)
        )
}

/// Each character of `text` as a JSON `\u` escape: what no byte search for it finds.
fn escaped(text: &str) -> String {
    text.chars()
        .map(|c| format!("\\u{:04x}", c as u32))
        .collect()
}

/// A cloud that quotes the key it was sent, in the way the request's last message asks.
fn echoing(req: &Recorded) -> Reply {
    let sent = req
        .header("authorization")
        .unwrap_or_default()
        .trim_start_matches("Bearer ")
        .to_owned();
    let quoted = format!("Incorrect API key provided: {sent}");
    let error = |status: u16, message: &str| {
        json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": "x"}})
            .to_string()
            + &" ".repeat(status as usize % 3)
    };
    let how = if req.path.starts_with("/v1/chat") {
        req.last_message()
    } else {
        req.path.clone()
    };
    let headers = |extra: Vec<(String, String)>| {
        let mut h = vec![("content-type".to_owned(), "application/json".to_owned())];
        h.extend(extra);
        h
    };
    match how.as_str() {
        "401" | "/v1/files" => Reply::Custom {
            status: 401,
            headers: headers(vec![
                ("www-authenticate".into(), format!("Bearer realm=\"{sent}\"")),
                ("x-echo".into(), sent.clone()),
            ]),
            body: error(401, &quoted),
        },
        "400-escaped" => Reply::Custom {
            status: 400,
            headers: headers(vec![
                ("location".into(), format!("https://x.test/?key={sent}")),
                ("x-echo".into(), sent.clone()),
            ]),
            body: format!(
                r#"{{"error":{{"message":"bad key {}","type":"invalid_request_error","param":null,"code":null}}}}"#,
                escaped(&sent)
            ),
        },
        "429" => Reply::Custom {
            status: 429,
            headers: headers(vec![("retry-after".into(), "0".into())]),
            body: error(429, &quoted),
        },
        "stream" => Reply::Sse {
            events: vec![
                json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"}, "finish_reason": null}]})
                .to_string(),
                json!({"error": {"message": quoted, "type": "server_error", "param": null, "code": null}})
                    .to_string(),
            ],
            pause: Duration::from_millis(5),
            split: true,
        },
        "html" | "/v1/fine_tuning/jobs" => Reply::Custom {
            status: 404,
            headers: vec![("content-type".into(), "text/html".into())],
            body: format!("<html><body>key {sent} not found</body></html>"),
        },
        "hang" => Reply::Hang,
        _ => Reply::json(completion("gpt-4o", &quoted)),
    }
}

fn ask(text: &str, stream: bool) -> serde_json::Value {
    json!({"model": "gpt-4o", "stream": stream, "messages": [{"role": "user", "content": text}]})
}

/// Asserts that no secret is in `what`, saying where it was found.
fn clean(place: &str, what: &str) {
    for secret in SECRETS {
        assert!(!what.contains(secret), "{secret} is in {place}: {what}");
    }
}

fn clean_response(place: &str, r: &Response) {
    clean(&format!("{place} (body)"), &r.text());
    for (name, value) in &r.headers {
        clean(&format!("{place} (header {name})"), value);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_failure_shows_a_key_to_a_client_an_upstream_or_a_log() {
    let local =
        Mock::start(|req: &Recorded| Reply::json(completion("llama-local", &req.last_message())))
            .await;
    let cloud = Mock::start(echoing).await;
    let yaml = config(&local.url(), &cloud.url());
    let gw = Gateway::start_with_env(&yaml, &[("RUST_LOG", "debug")]);
    let addr = gw.addr();

    // A wrong client key: refused, and not repeated back.
    let r = chat_as(addr, WRONG, &ask("hello", false)).await;
    r.assert_error(401);
    clean_response("a wrong key's 401", &r);

    // The cloud refuses the gateway's key, quoting it in the body and in headers: the client
    // hears that the gateway is misconfigured.
    let r = chat_as(addr, TEAM, &ask("401", false)).await;
    assert_eq!(r.assert_error(502)["code"], "upstream_auth_failed");
    clean_response("a 401", &r);

    // Every other failure, answered and searched.
    for (what, stream, status) in [
        ("400-escaped", false, 400),
        ("429", false, 429),
        ("html", false, 404),
        ("hang", false, 504),
        ("stream", true, 200),
        ("plain", false, 200),
    ] {
        let r = chat_as(addr, TEAM, &ask(what, stream)).await;
        assert_eq!(r.status, status, "{what}: {}", r.text());
        clean_response(what, &r);
    }

    // Pass-through errors: a 401 quoting the key becomes the gateway's 502, an HTML 404 is
    // wrapped in an OpenAI-shaped error; neither says the key.
    let auth = format!("Bearer {TEAM}");
    let r = request(addr, "GET", "/v1/files", &[("authorization", &auth)], b"").await;
    assert_eq!(r.assert_error(502)["code"], "upstream_auth_failed");
    clean_response("pass-through 401", &r);
    let r = request(
        addr,
        "GET",
        "/v1/fine_tuning/jobs",
        &[("authorization", &auth)],
        b"",
    )
    .await;
    let e = r.assert_error(404);
    assert!(
        e["message"].as_str().unwrap().contains("key *** not found"),
        "{e}"
    );
    clean_response("pass-through 404", &r);

    // The local model's side.
    let r = chat_as(
        addr,
        TEAM,
        &json!({"model": "auto", "messages": [{"role": "user", "content": "local"}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(local.requests().len(), 1);

    // The gateway's own reports, with Redis down all along.
    let admin = format!("Bearer {ADMIN}");
    for path in ["/health", "/metrics", "/stats", "/v1/models"] {
        let r = request(addr, "GET", path, &[("authorization", &admin)], b"").await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        clean_response(path, &r);
    }

    // A broken reload: refused, logged, and the log says nothing secret either.
    std::fs::write(
        &gw.config,
        yaml.replace("limits:", "limits:\n  max_headers: many"),
    )
    .unwrap();
    gw.hangup();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = gw.log();
    assert!(log.contains("configuration reload refused"), "{log}");
    assert!(log.contains("DEBUG"), "debug logging is on");

    // What the local model received: the client's text, never a key.
    for sent in local.requests() {
        clean(
            "a request to the local upstream",
            &format!("{:?}", sent.headers),
        );
        clean(
            "a request to the local upstream",
            &String::from_utf8_lossy(&sent.body),
        );
    }
    // The cloud gets its own key, never a client's.
    for sent in cloud.requests() {
        let headers = format!("{:?}", sent.headers);
        for secret in [TEAM, ADMIN, WRONG] {
            assert!(
                !headers.contains(secret),
                "{secret} went upstream: {headers}"
            );
        }
    }
    for line in log.lines() {
        clean("the log", line);
    }
}

#[test]
fn a_broken_configuration_is_reported_without_its_secrets() {
    let yaml = config("http://127.0.0.1:1", "http://127.0.0.1:2")
        .replace("  drain_timeout: 5s", "  drain_timeout: 5 parsecs");
    let file = scratch_file("broken.yaml", &yaml);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .expect("run switchyard check");
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("drain_timeout"), "{text}");
    clean("`switchyard check`", &text);
}
