use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

#[test]
fn embedded_default_runs_without_any_environment() {
    let c = Config::from_yaml(DEFAULT_YAML, no_env).expect("default config is valid");
    assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.limits.max_body_bytes, 8 << 20);
    let local = &c.upstreams[0];
    assert_eq!((local.name.as_str(), local.route), ("local", Route::Local));
    assert_eq!(local.backends[0].port, 11434);
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
    assert_eq!(c.upstreams[0].backends[0].host, "gpu-box");
    assert!(!c.upstreams[0].backends[0].tls);
    assert_eq!(c.upstreams[0].model.as_deref(), Some("qwen2.5:7b"));
    let cloud = &c.upstreams[1];
    assert!(cloud.enabled && cloud.backends[0].tls);
    assert_eq!(cloud.backends[0].path_prefix, "/openai");
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

const ROUTED: &str = r#"
upstreams:
  local: {route: local, url: "http://127.0.0.1:1", model: small}
  cloud: {route: cloud, url: "http://127.0.0.1:2", model: big}
default_route: {upstream: cloud}
routing:
  rules:
"#;

fn routed(rules: &str) -> Result<Config, Vec<ConfigError>> {
    Config::from_yaml(&format!("{ROUTED}{rules}"), no_env)
}

#[test]
fn routing_errors_name_the_rule_and_line() {
    // ROUTED's `rules:` is line 7; the rules below start on line 8.
    let cases: &[(&str, &str, u64)] = &[
        ("    - {name: a, when: {regex: ['(unclosed']}, route: cloud}\n", "bad regex", 8),
        ("    - {name: a, when: {feature: colour, gt: 1}, route: cloud}\n", "unknown feature `colour`", 8),
        ("    - {name: a, when: {feature: tokens}, route: cloud}\n", "needs a comparison", 8),
        ("    - {name: a, when: {feature: tokens, gt: 1}, route: sideways}\n", "not a route", 8),
        ("    - {name: a, route: cloud}\n    - {name: a, route: local}\n", "used twice", 9),
        (
            "    - name: a\n      when:\n        all:\n          - {feature: tokens, gt: 1, regex: [x]}\n      route: cloud\n",
            "exactly one of",
            11,
        ),
        ("    - {name: a, when: {gt: 3}, route: cloud}\n", "go with `feature`", 8),
        ("    - {name: a, when: {regex: [x], target: elsewhere}, route: cloud}\n", "unknown target", 8),
        ("    - {name: a, when: {feature: tokens, gt: lots}, route: cloud}\n", "not a number", 8),
    ];
    for (rules, needle, line) in cases {
        let errors = routed(rules).expect_err(rules);
        let e = errors
            .iter()
            .find(|e| e.message.contains(needle))
            .unwrap_or_else(|| panic!("no `{needle}` in {errors:?}"));
        assert_eq!(e.line, *line, "{rules}: {e}");
        assert!(e.message.contains("`a`"), "the rule is named: {e}");
    }
    let missing = routed("    - {name: a, when: {feature: tokens, gt: 1}}\n").unwrap_err();
    assert!(missing[0].message.contains("route"), "{missing:?}");
}

#[test]
fn a_cloud_budget_raises_a_configured_local_share() {
    let scorer = |yaml: &str| routed(&format!("    []\n  scorer: {yaml}\n"));
    let c = scorer("{local_share: 0.4, cloud_budget: {daily_usd: 25}}").expect("valid");
    let shares = c
        .routing
        .as_ref()
        .and_then(|r| r.shares.clone())
        .expect("shares");
    assert_eq!(
        shares.cloud_budget,
        Some(CloudBudget {
            daily_usd: 25.0,
            max_local_share: 0.95
        })
    );
    let cases = [
        ("{cloud_budget: {daily_usd: 25}}", "needs `local_share`"),
        (
            "{local_share: 0.4, cloud_budget: {max_local_share: 0.9}}",
            "daily_usd",
        ),
        (
            "{local_share: 0.4, cloud_budget: {daily_usd: 0}}",
            "above 0",
        ),
        (
            "{local_share: 0.4, cloud_budget: {daily_usd: 5, max_local_share: 0.3}}",
            "from local_share",
        ),
        (
            "{local_share: 0.4, cloud_budget: {daily_usd: 5, ceiling: 1}}",
            "ceiling",
        ),
    ];
    for (yaml, needle) in cases {
        let errors = scorer(yaml).expect_err(yaml);
        assert!(
            errors
                .iter()
                .any(|e| e.message.contains(needle) && e.line == 9),
            "{yaml}: no `{needle}` on line 9 in {errors:?}"
        );
    }
}

#[test]
fn a_rule_after_a_catch_all_is_a_warning() {
    let c = routed("    - {name: everything, route: local}\n    - {name: never, route: cloud}\n")
        .unwrap();
    assert_eq!(c.warnings.len(), 1);
    assert!(
        c.warnings[0].contains("`never`") && c.warnings[0].contains("`everything`"),
        "{:?}",
        c.warnings
    );
}

#[test]
fn scorer_files_are_read_beside_the_config_and_checked() {
    let dir = std::env::temp_dir().join(format!("switchyard-scorer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("good.json"), DEFAULT_SCORER).unwrap();
    std::fs::write(dir.join("bad.json"), "{\"version\": 1}").unwrap();
    let yaml = |file: &str| {
        format!("{ROUTED}    []\n  scorer: {{file: {file}, local_below: 0.2, cloud_from: 0.6}}\n")
    };
    let c = Config::from_yaml_in(&yaml("good.json"), no_env, &dir).unwrap();
    let r = c.routing.unwrap();
    assert_eq!((r.local_below, r.cloud_from), (0.2, 0.6));
    let e = Config::from_yaml_in(&yaml("bad.json"), no_env, &dir).unwrap_err();
    assert!(e[0].message.contains("bad.json"), "{e:?}");
    let e = Config::from_yaml_in(&yaml("missing.json"), no_env, &dir).unwrap_err();
    assert!(e[0].message.contains("missing.json"), "{e:?}");
}

#[test]
fn a_scorer_s_table_is_read_beside_it_and_checked_whole() {
    let dir = std::env::temp_dir().join(format!("switchyard-table-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let builtin = crate::classify::embedding::BUILTIN;
    let scorer = DEFAULT_SCORER.replacen("\"table\":\"builtin\"", "\"table\":\"t.bin\"", 1);
    assert_ne!(
        scorer, DEFAULT_SCORER,
        "the default scorer names the built-in table"
    );
    std::fs::write(dir.join("semantic.json"), scorer).unwrap();
    std::fs::write(dir.join("surface.json"), SURFACE_SCORER).unwrap();
    let yaml = |file: &str| format!("{ROUTED}    []\n  scorer: {{file: {file}}}\n");

    std::fs::write(dir.join("t.bin"), builtin).unwrap();
    let c = Config::from_yaml_in(&yaml("semantic.json"), no_env, &dir).unwrap();
    let described = c.routing.unwrap().scorer.describe();
    assert!(described.starts_with("semantic"), "{described}");

    // Truncated, damaged, or another table: a clear error naming the file, no fallback.
    std::fs::write(dir.join("t.bin"), &builtin[..builtin.len() / 2]).unwrap();
    let e = Config::from_yaml_in(&yaml("semantic.json"), no_env, &dir).unwrap_err();
    assert!(
        e[0].message.contains("t.bin") && e[0].message.contains("checksum"),
        "{e:?}"
    );
    let other = crate::classify::embedding::tests::sample();
    std::fs::write(dir.join("t.bin"), other).unwrap();
    let e = Config::from_yaml_in(&yaml("semantic.json"), no_env, &dir).unwrap_err();
    assert!(
        e[0].message.contains("t.bin") && e[0].message.contains("SHA-256"),
        "{e:?}"
    );
    std::fs::remove_file(dir.join("t.bin")).unwrap();
    let e = Config::from_yaml_in(&yaml("semantic.json"), no_env, &dir).unwrap_err();
    assert!(e[0].message.contains("t.bin"), "{e:?}");

    // A scorer without a table is the surface scorer, and says so.
    let c = Config::from_yaml_in(&yaml("surface.json"), no_env, &dir).unwrap();
    let described = c.routing.unwrap().scorer.describe();
    assert!(
        described.starts_with("surface features only"),
        "{described}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_default_rules_are_valid_and_reachable() {
    let c = Config::from_yaml(DEFAULT_YAML, |n| {
        (n == "OPENAI_API_KEY").then(|| "sk-x".to_owned())
    })
    .unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let r = c.routing.expect("the default configuration routes `auto`");
    assert_eq!(r.classify, ["auto"]);
    assert!(!r.rules.rules().is_empty());
}

/// An example configuration, loaded as `switchyard --config conf/examples/NAME` loads it.
fn example(name: &str, env: &[(&str, &str)]) -> Result<Config, Vec<ConfigError>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("conf/examples")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("the example exists");
    let base = path.parent().expect("a folder");
    Config::from_yaml_in(
        &text,
        |k| {
            env.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| (*v).to_owned())
        },
        base,
    )
}

#[test]
fn every_example_configuration_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/examples");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("conf/examples")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "local-and-cloud.yaml",
            "local-only.yaml",
            "several-gpus.yaml",
            "small-model.yaml"
        ]
    );
    for name in &names {
        let c = example(name, &[("OPENAI_API_KEY", "sk-test")]);
        assert!(c.is_ok(), "{name}: {:?}", c.err());
    }
}

#[test]
fn each_example_does_what_it_says() {
    let only = example("local-only.yaml", &[]).unwrap();
    assert_eq!(only.upstreams.len(), 1);
    assert_eq!(only.upstreams[0].fallback, None, "nowhere else to go");
    assert_eq!(only.upstreams[0].context_overflow, ContextOverflow::Reject);
    assert_eq!(only.default_route.upstream, 0);

    let both = example("local-and-cloud.yaml", &[("OPENAI_API_KEY", "sk-test")]).unwrap();
    assert_eq!(both.upstreams[0].fallback, Some(1));
    assert_eq!(both.upstreams[1].fallback, Some(0));
    assert!(both
        .routing
        .as_ref()
        .unwrap()
        .classify
        .contains(&"auto".to_owned()));
    let missing = example("local-and-cloud.yaml", &[]).unwrap_err();
    assert!(
        missing.iter().any(|e| e.message.contains("OPENAI_API_KEY")),
        "{missing:?}"
    );

    let gpus = example(
        "several-gpus.yaml",
        &[("GPU1_URL", "http://10.0.0.2:11434")],
    )
    .unwrap();
    let local = &gpus.upstreams[0];
    assert_eq!(local.backends.len(), 2);
    assert_eq!(local.backends[1].host, "10.0.0.2");
    assert_eq!(local.balance, Balance::Conversation);
    assert!(
        !gpus.upstreams[1].enabled,
        "no key: the GPUs answer everything"
    );

    let small = example("small-model.yaml", &[]).unwrap();
    assert_eq!(small.upstreams[0].kind, UpstreamKind::OpenAi);
    assert_eq!(small.upstreams[0].backends[0].port, 8091);
}

fn with_state(state: &str) -> Result<Config, Vec<ConfigError>> {
    routed(&format!("    - {{name: all, route: cloud}}\n{state}"))
}

#[test]
fn shared_state_is_checked_and_its_url_kept_secret() {
    let c = with_state(
        "state:\n  redis: \"redis://:hunter2@cache:6379/1\"\n  timeout: 50ms\n  fail_open: false\n",
    )
    .expect("valid state");
    let url = c.state.redis.as_ref().map(Secret::expose);
    assert_eq!(url, Some("redis://:hunter2@cache:6379/1"));
    assert_eq!(c.state.timeout, Duration::from_millis(50));
    assert!(!c.state.fail_open);
    assert!(!format!("{:?}", c.state).contains("hunter2"));
    assert_eq!(with_state("").unwrap().state, StateConfig::default());

    let errors =
        with_state("state:\n  redis: \"http://:hunter2@cache\"\n  timeout: 0s\n").unwrap_err();
    let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(text.len(), 2, "{text:?}");
    assert!(text[0].contains("not a redis://"), "{text:?}");
    assert!(text[1].contains("state.timeout"), "{text:?}");
    assert!(!text.concat().contains("hunter2"), "{text:?}");
}

#[test]
fn limits_are_read_checked_and_defaulted() {
    let base = "upstreams:\n  a:\n    route: local\n    url: http://127.0.0.1:1\ndefault_route:\n  upstream: a\n";
    let c = Config::from_yaml(base, no_env).unwrap();
    assert_eq!(c.limits, Limits::default());
    assert!(c.limits.max_connections >= 16);

    let set = format!(
        "limits:\n  header_timeout: 2s\n  max_headers: 50\n  max_connections: 300\n  max_buffered_bytes: 64MiB\n{base}"
    );
    let c = Config::from_yaml(&set, no_env).unwrap();
    assert_eq!(c.limits.header_timeout, Duration::from_secs(2));
    assert_eq!(
        (
            c.limits.max_headers,
            c.limits.max_connections,
            c.limits.max_buffered_bytes
        ),
        (50, 300, 64 << 20)
    );

    let bad = format!(
        "limits:\n  max_body_bytes: 8MiB\n  max_buffered_bytes: 1MiB\n  max_headers: 1000\n  idle_timeout: 0s\n  max_connections: many\n{base}"
    );
    let errors = Config::from_yaml(&bad, no_env).unwrap_err();
    let text = errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    for needle in [
        "limits.max_buffered_bytes: must be at least",
        "limits.max_headers: must be at most 256",
        "limits.idle_timeout: must be more than 0",
        "limits.max_connections: `many`",
    ] {
        assert!(text.contains(needle), "no error about {needle}: {text}");
    }
}

#[test]
fn ollama_addresses_mean_its_port_and_a_base_url_may_end_in_v1() {
    let yaml = |local: &str, cloud: &str| {
        format!(
            "upstreams:\n  local:\n    kind: ollama\n    route: local\n    url: \"{local}\"\n  cloud:\n    route: cloud\n    url: \"{cloud}\"\ndefault_route:\n  upstream: cloud\n"
        )
    };
    for (local, host, port, tls) in [
        ("0.0.0.0", "0.0.0.0", 11434, false),
        ("http://gpu-box", "gpu-box", 11434, false),
        ("gpu-box:8000", "gpu-box", 8000, false),
        (
            "https://ollama.example.com",
            "ollama.example.com",
            443,
            true,
        ),
    ] {
        let c = Config::from_yaml(&yaml(local, "https://api.example.com"), no_env).unwrap();
        let b = &c.upstreams[0].backends[0];
        assert_eq!(
            (b.host.as_str(), b.port, b.tls),
            (host, port, tls),
            "{local}"
        );
    }
    for (cloud, prefix) in [
        ("https://api.example.com/v1", ""),
        ("http://localhost:8000/v1/", ""),
        ("http://localhost:8000/openai/v1", "/openai"),
        ("http://localhost:8000/openai", "/openai"),
    ] {
        let c = Config::from_yaml(&yaml("127.0.0.1", cloud), no_env).unwrap();
        let b = &c.upstreams[1].backends[0];
        assert_eq!(b.path_prefix, prefix, "{cloud}");
        assert_eq!(
            b.port,
            if cloud.starts_with("https") {
                443
            } else {
                8000
            }
        );
    }
}
