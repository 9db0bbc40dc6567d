use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

#[test]
fn embedded_default_runs_without_any_environment() {
    let c = Config::from_yaml(DEFAULT_YAML, no_env).expect("default config is valid");
    assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.max_body_bytes, 8 << 20);
    let local = &c.upstreams[0];
    assert_eq!((local.name.as_str(), local.route), ("local", Route::Local));
    assert_eq!(local.url.port, 11434);
    assert_eq!(local.model.as_deref(), Some("llama3.1:8b-instruct-q4_K_M"));
    let cloud = &c.upstreams[1];
    assert!(!cloud.enabled, "no OPENAI_API_KEY: cloud is disabled");
    assert_eq!(c.warnings.len(), 1);
    assert!(c.warnings[0].contains("cloud"), "{}", c.warnings[0]);
    assert!(c.models.iter().all(|m| m.target.upstream == 0));
    assert_eq!(c.default_route.upstream, 0);
    assert_eq!(c.passthrough, 0);
}

#[test]
fn default_reads_the_documented_environment() {
    let env = |name: &str| {
        Some(
            match name {
                "SWITCHYARD_LISTEN" => "0.0.0.0:9999",
                "OLLAMA_HOST" => "gpu-box:11434",
                "SWITCHYARD_LOCAL_MODEL" => "qwen2.5:7b",
                "SWITCHYARD_OPENAI_URL" => "https://llm.example.test/openai",
                "OPENAI_API_KEY" => "sk-test",
                "SWITCHYARD_CLOUD_MODEL" => "gpt-4.1",
                _ => return None,
            }
            .to_owned(),
        )
    };
    let c = Config::from_yaml(DEFAULT_YAML, env).unwrap();
    assert_eq!(c.listen.port(), 9999);
    assert_eq!(c.upstreams[0].url.host, "gpu-box");
    assert!(!c.upstreams[0].url.tls);
    assert_eq!(c.upstreams[0].model.as_deref(), Some("qwen2.5:7b"));
    let cloud = &c.upstreams[1];
    assert!(cloud.enabled && cloud.url.tls);
    assert_eq!(cloud.url.path_prefix, "/openai");
    assert_eq!(cloud.api_key.as_ref().map(Secret::expose), Some("sk-test"));
    assert_eq!(cloud.model.as_deref(), Some("gpt-4.1"));
    assert!(c.warnings.is_empty());
    assert_eq!(c.default_route.upstream, 1);
    assert_eq!(c.default_route.model, None, "unlisted names are kept");
}

#[test]
fn every_error_is_reported_with_its_position() {
    let yaml = "\
server:
  listen: nowhere
  drain_timeout: 5 parsecs
upstreams:
  a:
    route: sideways
    url: ftp://x
  b:
    route: local
    url: http://127.0.0.1:1
    api_key: ${SECRET_KEY}
models:
  - name: m
    upstream: nope
default_route:
  upstream: b
";
    let errors = Config::from_yaml(yaml, no_env).unwrap_err();
    let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    let find = |needle: &str| {
        errors
            .iter()
            .find(|e| e.message.contains(needle))
            .unwrap_or_else(|| panic!("no error about {needle}: {text:#?}"))
    };
    assert_eq!(find("server.listen").line, 2);
    assert_eq!(find("drain_timeout").line, 3);
    assert_eq!(find("sideways").line, 6);
    assert_eq!(find("scheme").line, 7);
    let key = find("SECRET_KEY");
    assert_eq!((key.line, key.column), (11, 14));
}

#[test]
fn syntax_and_unknown_keys_are_errors_with_a_line() {
    let errors = Config::from_yaml("server:\n  listen: [\n", no_env).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].line >= 1, "{:?}", errors[0]);

    let errors = Config::from_yaml(
        "upstreams:\n  a:\n    route: local\n    url: http://x\n    colour: blue\ndefault_route: {upstream: a}\n",
        no_env,
    )
    .unwrap_err();
    assert!(errors[0].message.contains("colour"), "{:?}", errors);
    assert_eq!(errors[0].line, 5, "{:?}", errors);
}

#[test]
fn references_must_exist_and_fallbacks_must_lead_somewhere() {
    let yaml = "\
upstreams:
  cloud: {route: cloud, url: https://x, api_key: '', require_api_key: true}
default_route: {upstream: cloud}
";
    let errors = Config::from_yaml(yaml, no_env).unwrap_err();
    assert!(
        errors[0].message.contains("no enabled fallback"),
        "{errors:?}"
    );

    let yaml = "\
upstreams:
  cloud: {route: cloud, url: https://x, fallback: cloud}
default_route: {upstream: cloud}
";
    let errors = Config::from_yaml(yaml, no_env).unwrap_err();
    assert!(errors[0].message.contains("itself"), "{errors:?}");
}

#[test]
fn duplicate_names_are_refused() {
    let yaml = "\
upstreams:
  a: {route: local, url: http://x}
models:
  - {name: m, upstream: a}
  - {name: m, upstream: a}
default_route: {upstream: a}
";
    let errors = Config::from_yaml(yaml, no_env).unwrap_err();
    assert_eq!(errors[0].line, 5, "{errors:?}");
}

#[test]
fn urls() {
    let u = UpstreamUrl::parse("127.0.0.1:11434").unwrap();
    assert_eq!(
        (u.tls, u.host.as_str(), u.port, u.path_prefix.as_str()),
        (false, "127.0.0.1", 11434, "")
    );
    assert_eq!(u.host_header(), "127.0.0.1:11434");
    let u = UpstreamUrl::parse("https://api.openai.com/").unwrap();
    assert_eq!((u.tls, u.port, u.path_prefix.as_str()), (true, 443, ""));
    assert_eq!(u.host_header(), "api.openai.com");
    let u = UpstreamUrl::parse("http://[::1]:8000/proxy/").unwrap();
    assert_eq!((u.host.as_str(), u.path_prefix.as_str()), ("::1", "/proxy"));
    assert_eq!(u.host_header(), "[::1]:8000");
    assert!(UpstreamUrl::parse("https://user:pw@x").is_err());
    assert!(UpstreamUrl::parse("ftp://x").is_err());
    assert!(UpstreamUrl::parse("http://x/?a=b").is_err());
}

#[test]
fn secrets_do_not_print() {
    let s = Secret("sk-live-123".into());
    assert!(!format!("{s:?}").contains("sk-live"));
}
