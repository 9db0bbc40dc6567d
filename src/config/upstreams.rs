//! The `upstreams:` section: each upstream's kind, side, backends, credentials, fallback,
//! timeouts and local-model options, and the references to upstreams from the rest of the file.

use std::time::Duration;

use super::raw::{self, Ordered, RawTimeouts, RawUpstream, Text};
use super::resilience::{Balance, ContextOverflow, HealthConfig, RetryConfig};
use super::{
    parse_duration, Checker, RawApi, Secret, Target, Timeouts, UpstreamConfig, UpstreamKind,
    UpstreamUrl,
};
use crate::tokens::Counting;
use crate::vocab::Route;

/// The port Ollama (and a raw upstream on it) listens on when its address names none.
const OLLAMA_PORT: u16 = 11434;

impl Checker<'_> {
    /// Every upstream, with fallbacks resolved (local upstreams fall back to the first cloud one
    /// unless told `fallback: none`), their names in file order, and warnings about the disabled.
    pub(super) fn upstreams(
        &mut self,
        raw: &Ordered<RawUpstream>,
    ) -> (Vec<UpstreamConfig>, Vec<String>, Vec<String>) {
        let names: Vec<String> = raw.0.iter().map(|(n, _)| n.clone()).collect();
        if names.is_empty() {
            self.error(None, "upstreams: at least one upstream is required");
        }
        let mut fallbacks = Vec::new();
        let mut explicit_none = Vec::new();
        let mut upstreams = Vec::with_capacity(raw.0.len());
        for (index, (name, up)) in raw.0.iter().enumerate() {
            let upstream =
                self.upstream(name, up, index, &names, &mut fallbacks, &mut explicit_none);
            upstreams.push(upstream);
        }
        for (from, to) in fallbacks {
            upstreams[from].fallback = Some(to);
        }
        // Local upstreams fall back to the cloud unless told otherwise (`fallback: none`).
        let first_cloud = upstreams.iter().position(|u| u.route == Route::Cloud);
        for (i, up) in upstreams.iter_mut().enumerate() {
            if up.route == Route::Local && up.fallback.is_none() && !explicit_none.contains(&i) {
                up.fallback = first_cloud;
            }
        }

        let mut warnings = Vec::new();
        for up in upstreams.iter().filter(|u| !u.enabled) {
            let goes_to = up
                .fallback
                .map(|i| format!("its traffic goes to `{}`", upstreams[i].name))
                .unwrap_or_else(|| "requests for it are refused".into());
            warnings.push(format!(
                "upstream `{}` is disabled: it requires an API key and none is set; {goes_to}",
                up.name
            ));
        }
        (upstreams, names, warnings)
    }

    /// One upstream; its fallback (by index) is noted in `fallbacks`, or in `explicit_none`.
    fn upstream(
        &mut self,
        name: &str,
        up: &RawUpstream,
        index: usize,
        names: &[String],
        fallbacks: &mut Vec<(usize, usize)>,
        explicit_none: &mut Vec<usize>,
    ) -> UpstreamConfig {
        let field = |f: &str| format!("upstreams.{name}.{f}");
        let kind = match up.kind.as_ref().map(|k| (k, k.value.0.as_str())) {
            None | Some((_, "openai")) => UpstreamKind::OpenAi,
            Some((_, "ollama")) => UpstreamKind::Ollama,
            Some((_, "raw")) => UpstreamKind::Raw,
            Some((at, other)) => {
                self.error(
                    Some(at),
                    format!(
                        "{}: unknown kind `{other}` (known: openai, ollama, raw)",
                        field("kind")
                    ),
                );
                UpstreamKind::OpenAi
            }
        };
        let route = self.parsed(&field("route"), Some(&up.route), Route::Cloud, |t| {
            Route::side(t)
        });
        let backends = self.backends(name, up, kind);
        let model = up
            .model
            .as_ref()
            .and_then(|m| self.text(&field("model"), m))
            .filter(|m| !m.is_empty());
        let api_key = up
            .api_key
            .as_ref()
            .and_then(|k| self.text(&field("api_key"), k))
            .filter(|k| !k.is_empty());
        if let Some(key) = &api_key {
            if key.bytes().any(|b| b.is_ascii_control() || b == b' ') {
                self.error(
                    up.api_key.as_ref(),
                    format!(
                        "{}: contains spaces or control characters",
                        field("api_key")
                    ),
                );
            }
        }
        let require_key = up
            .require_api_key
            .as_ref()
            .map(|b| b.value)
            .unwrap_or(false);
        let enabled = !(require_key && api_key.is_none());
        if let Some(fallback) = &up.fallback {
            if let Some(target) = self.text(&field("fallback"), fallback) {
                match names.iter().position(|n| *n == target) {
                    _ if target == "none" => explicit_none.push(index),
                    Some(i) if names[i] != *name => fallbacks.push((index, i)),
                    Some(_) => self.error(
                        Some(fallback),
                        format!(
                            "{}: an upstream cannot fall back to itself",
                            field("fallback")
                        ),
                    ),
                    None => self.error(
                        Some(fallback),
                        format!("{}: no upstream named `{target}`", field("fallback")),
                    ),
                }
            }
        }
        let timeouts = self.timeouts(name, up.timeouts.as_ref());
        let price = up.price.as_ref().map(|p| self.price(&field("price"), p));
        let num_ctx = up.num_ctx.as_ref().map(|n| {
            self.parsed(&field("num_ctx"), Some(n), 0, |t| match t.parse::<u64>() {
                Ok(n) if n >= 256 => Ok(n),
                _ => Err(format!("`{t}` is not a context size (256 tokens or more)")),
            })
        });
        let keep_alive = up
            .keep_alive
            .as_ref()
            .and_then(|k| self.text(&field("keep_alive"), k));
        let raw_api = self.parsed(
            &field("raw_api"),
            up.raw_api.as_ref(),
            RawApi::OllamaGenerate,
            |t| match t {
                "ollama" => Ok(RawApi::OllamaGenerate),
                "llamacpp" => Ok(RawApi::LlamaCpp),
                other => Err(format!("`{other}` is not ollama or llamacpp")),
            },
        );
        UpstreamConfig {
            name: name.to_owned(),
            kind,
            route,
            backends,
            balance: self.balance(name, up),
            max_outstanding: up.max_outstanding.as_ref().map(|t| {
                self.parsed(&field("max_outstanding"), Some(t), 1, |t| {
                    match t.parse::<usize>() {
                        Ok(0) => Err("must be more than 0".into()),
                        Ok(n) => Ok(n),
                        Err(_) => Err(format!("`{t}` is not a whole number")),
                    }
                })
            }),
            health: self.health(name, kind, raw_api, up.health.as_ref()),
            retry: self.retry(name, up.retry.as_ref()),
            num_ctx,
            keep_alive,
            context_overflow: self.context_overflow(name, up),
            tokenizer: self.parsed(
                &field("tokenizer"),
                up.tokenizer.as_ref(),
                Counting::Auto,
                Counting::parse,
            ),
            raw_api,
            model,
            api_key: api_key.map(Secret),
            enabled,
            fallback: None,
            timeouts,
            price,
        }
    }

    fn timeouts(&mut self, name: &str, raw: Option<&RawTimeouts>) -> Timeouts {
        let d = Timeouts::default();
        let Some(raw) = raw else { return d };
        let mut one = |f: &str, v: Option<&Text>, default: Duration| {
            self.parsed(&format!("upstreams.{name}.timeouts.{f}"), v, default, |t| {
                match parse_duration(t)? {
                    d if d.is_zero() => Err("must be more than 0".into()),
                    d => Ok(d),
                }
            })
        };
        Timeouts {
            connect: one("connect", raw.connect.as_ref(), d.connect),
            first_byte: one("first_byte", raw.first_byte.as_ref(), d.first_byte),
            idle: one("idle", raw.idle.as_ref(), d.idle),
            total: one("total", raw.total.as_ref(), d.total),
        }
    }

    /// `url` (one backend) or `backends` (a list), exactly one of them.
    fn backends(
        &mut self,
        name: &str,
        up: &raw::RawUpstream,
        kind: UpstreamKind,
    ) -> Vec<UpstreamUrl> {
        let texts: Vec<(String, &Text)> = match (&up.url, &up.backends) {
            (Some(url), None) => vec![(format!("upstreams.{name}.url"), url)],
            (None, Some(list)) if !list.is_empty() => list
                .iter()
                .enumerate()
                .map(|(i, t)| (format!("upstreams.{name}.backends[{i}]"), t))
                .collect(),
            (Some(url), Some(_)) => {
                self.error(
                    Some(url),
                    format!("upstreams.{name}: give either url or backends, not both"),
                );
                return Vec::new();
            }
            _ => {
                self.error(
                    None,
                    format!("upstreams.{name}: url (or a list of backends) is required"),
                );
                return Vec::new();
            }
        };
        let mut out = Vec::with_capacity(texts.len());
        for (field, text) in texts {
            // An OpenAI-compatible server's base URL is often written with its /v1 (as
            // OPENAI_BASE_URL is); the gateway adds /v1 itself.
            let http_port = if kind == UpstreamKind::OpenAi {
                80
            } else {
                OLLAMA_PORT
            };
            let url = self.parsed(&field, Some(text), None, |t| {
                let mut url = UpstreamUrl::parse_for(t, http_port)?;
                if kind == UpstreamKind::OpenAi {
                    if let Some(base) = url.path_prefix.strip_suffix("/v1") {
                        url.path_prefix = base.to_owned();
                    }
                }
                Ok(Some(url))
            });
            if let Some(url) = url {
                if out.contains(&url) {
                    self.error(Some(text), format!("{field}: listed twice"));
                } else {
                    out.push(url);
                }
            }
        }
        out
    }

    /// Resolves an upstream reference, following fallbacks past disabled upstreams.
    ///
    /// `inherit` gives a target without a model the upstream's own model; otherwise such a target
    /// keeps the client's model name (the default route's pass-through behaviour).
    pub(super) fn target(
        &mut self,
        field: &str,
        upstream: &Text,
        model: Option<String>,
        inherit: bool,
        upstreams: &[UpstreamConfig],
        names: &[String],
    ) -> Option<Target> {
        let name = self.text(field, upstream)?;
        let Some(mut index) = names.iter().position(|n| *n == name) else {
            self.error(
                Some(upstream),
                format!("{field}: no upstream named `{name}`"),
            );
            return None;
        };
        let mut model = model;
        let mut hops = 0;
        while !upstreams[index].enabled {
            match upstreams[index].fallback {
                Some(next) if hops < upstreams.len() => {
                    index = next;
                    // A model name meant for the disabled upstream means nothing to its fallback.
                    model = upstreams[index].model.clone();
                    hops += 1;
                }
                _ => {
                    self.error(
                        Some(upstream),
                        format!(
                            "{field}: upstream `{name}` is disabled and has no enabled fallback"
                        ),
                    );
                    return None;
                }
            }
        }
        Some(Target {
            upstream: index,
            model: model.or_else(|| {
                if inherit {
                    upstreams[index].model.clone()
                } else {
                    None
                }
            }),
        })
    }
}

/// A service the gateway itself calls on the request path (the intent classifier), as an
/// upstream: one backend at `url`, no key, one attempt, no active checks; `budget` bounds every
/// phase of the exchange. Three failures in a row rest it for five seconds (then one request
/// tries it again), so a service that is down costs requests nothing while it rests.
pub fn called_service(name: &str, url: UpstreamUrl, budget: Duration) -> UpstreamConfig {
    UpstreamConfig {
        name: name.to_owned(),
        kind: UpstreamKind::OpenAi,
        route: Route::Local,
        backends: vec![url],
        balance: Balance::RoundRobin,
        max_outstanding: None,
        health: HealthConfig {
            active: false,
            path: "/".to_owned(),
            interval: Duration::from_secs(10),
            timeout: budget,
            healthy_after: 1,
            unhealthy_after: 2,
            failures: 3,
            cooldown: Duration::from_secs(5),
        },
        retry: RetryConfig {
            attempts: 1,
            ..RetryConfig::default()
        },
        num_ctx: None,
        keep_alive: None,
        context_overflow: ContextOverflow::Reject,
        tokenizer: Counting::Estimate,
        raw_api: RawApi::OllamaGenerate,
        model: None,
        api_key: None,
        enabled: true,
        fallback: None,
        timeouts: Timeouts {
            connect: budget,
            first_byte: budget,
            idle: budget,
            total: budget,
        },
        price: None,
    }
}
