//! The deployment files give a gateway that starts: the configuration in the Kubernetes
//! ConfigMap, and the embedded configuration under the compose file's environment, are valid.
//! (`.ci/run` validates the files themselves against the Compose and Kubernetes schemas.)

use std::collections::HashMap;
use std::path::Path;

use switchyard::config::{Config, DEFAULT_YAML};

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).expect(path)
}

#[test]
fn the_kubernetes_configmap_holds_a_valid_configuration() {
    let manifest: serde_json::Value =
        serde_saphyr::from_str(&read("deploy/kubernetes/configmap.yaml")).expect("YAML");
    let yaml = manifest["data"]["switchyard.yaml"]
        .as_str()
        .expect("data.switchyard.yaml");
    let env = |name: &str| (name == "OPENAI_API_KEY").then(|| "sk-from-the-secret".to_owned());
    let config = Config::from_yaml(yaml, env).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(config.listen.to_string(), "0.0.0.0:8080");
    let local = &config.upstreams[0];
    assert_eq!(local.backends.len(), 2);
    assert_eq!(
        (local.backends[0].host.as_str(), local.backends[0].port),
        ("ollama-0.ollama", 11434)
    );
    assert!(
        config.upstreams[1].enabled,
        "the Secret's key enables the cloud"
    );
    assert!(
        config.state.redis.is_some(),
        "the replicas share their state"
    );
}

#[test]
fn the_compose_environment_gives_a_valid_configuration() {
    let compose: serde_json::Value =
        serde_saphyr::from_str(&read("deploy/compose.yaml")).expect("YAML");
    let mut env: HashMap<String, String> = read("deploy/switchyard.env.example")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let service = &compose["services"]["switchyard"];
    for (k, v) in service["environment"].as_object().expect("environment") {
        env.insert(k.clone(), v.as_str().expect("a string").to_owned());
    }
    let config = Config::from_yaml(DEFAULT_YAML, |name| env.get(name).cloned())
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(config.listen.to_string(), "0.0.0.0:8080");
    let local = &config.upstreams[0].backends[0];
    assert_eq!((local.host.as_str(), local.port), ("ollama", 11434));
    // Published on the host's loopback only.
    assert_eq!(service["ports"][0], "127.0.0.1:8080:8080");
    // The pulled model is the one the gateway asks for.
    let pulled = compose["services"]["pull-model"]["entrypoint"][2]
        .as_str()
        .unwrap_or_default();
    assert!(pulled.contains("SWITCHYARD_LOCAL_MODEL"), "{pulled}");
}
