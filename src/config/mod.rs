//! The configuration: YAML schema, `${ENV}` interpolation and validation.
//!
//! A file is read in two steps. serde turns the YAML into a raw tree whose every value remembers
//! its line and column; [`Config::from_yaml`] then interpolates, checks and resolves that tree into
//! the typed [`Config`] the gateway runs, collecting every problem (with its position) instead of
//! stopping at the first, so `switchyard check` can list them all at once.

mod feedback;
mod hybrid;
mod interpolate;
mod keys;
mod limits;
mod observe;
mod raw;
mod resilience;
mod routing;
mod state;
mod telemetry;
mod units;
mod upstreams;

use std::collections::HashSet;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

pub use feedback::FeedbackConfig;
pub use hybrid::HybridConfig;
pub use interpolate::interpolate;
pub use keys::{days_from_civil, KeyConfig};
pub use limits::Limits;
pub use observe::{AccessLogTarget, CacheConfig, Price, Pricing};
pub use resilience::{Balance, ContextOverflow, HealthConfig, RetryConfig};
pub use routing::{
    load_scorer, ClassifierConfig, CloudBudget, Routing, ShadowConfig, SharesConfig,
    DEFAULT_SCORER, SURFACE_SCORER,
};
pub use state::StateConfig;
pub use telemetry::{LogFormat, Telemetry, TraceConfig};
pub use units::{parse_duration, parse_size};

use crate::vocab::Route;
use raw::{RawConfig, Text};

/// The default configuration, compiled into the binary so that it runs with no file at all.
pub const DEFAULT_YAML: &str = include_str!("../../conf/switchyard.yaml");

/// A problem in a configuration file, with the position it points at (line 0: no position).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line, or 0 when the problem is not tied to one place.
    pub line: u64,
    /// 1-based column.
    pub column: u64,
    /// What is wrong, in words.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.message)
        } else {
            write!(
                f,
                "line {}, column {}: {}",
                self.line, self.column, self.message
            )
        }
    }
}

/// A secret such as an API key: never printed by `Debug`, so it cannot slip into a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret's value, for the one place that needs it: the upstream request header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The wire protocol an upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamKind {
    /// Any OpenAI-compatible server (OpenAI, Ollama's `/v1`, vLLM, llama.cpp): forwarded as is.
    OpenAi,
    /// Ollama's native `POST /api/chat`, translated both ways; sets `num_ctx`, which Ollama's
    /// OpenAI-compatible endpoint ignores.
    Ollama,
    /// A raw completion server: the gateway renders the chat with the Llama 3.1 template.
    Raw,
}

impl UpstreamKind {
    /// `openai`, `ollama` or `raw`, as the configuration spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamKind::OpenAi => "openai",
            UpstreamKind::Ollama => "ollama",
            UpstreamKind::Raw => "raw",
        }
    }
}

/// The completion API of a `raw` upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawApi {
    /// Ollama's `POST /api/generate` with `raw: true` (NDJSON).
    OllamaGenerate,
    /// llama.cpp's server `POST /completion` (JSON, or SSE when streaming).
    LlamaCpp,
}

/// Where an upstream lives: scheme, host, port and an optional path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// `https` when true.
    pub tls: bool,
    /// Host name or IP literal (without brackets), also the TLS server name.
    pub host: String,
    /// TCP port (80 / 443 when the URL names none).
    pub port: u16,
    /// Path prepended to every request path, without a trailing slash (often empty).
    pub path_prefix: String,
}

impl UpstreamUrl {
    /// Parses `http(s)://host[:port][/prefix]`; a bare `host:port` (as `OLLAMA_HOST` allows) means http.
    pub fn parse(text: &str) -> Result<Self, String> {
        UpstreamUrl::parse_for(text, 80)
    }

    /// Like [`UpstreamUrl::parse`], with `http_port` for an http URL that names no port: a
    /// local model server is on its own port (Ollama's 11434) however its address is written,
    /// as `OLLAMA_HOST=0.0.0.0` is.
    pub fn parse_for(text: &str, http_port: u16) -> Result<Self, String> {
        let text = text.trim();
        let with_scheme = if text.contains("://") {
            text.to_owned()
        } else {
            format!("http://{text}")
        };
        let uri: http::Uri = with_scheme
            .parse()
            .map_err(|e| format!("`{text}` is not a URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            other => {
                return Err(format!(
                    "URL scheme must be http or https, not {}",
                    other.unwrap_or("none")
                ))
            }
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("`{text}` has no host"))?;
        if authority.as_str().contains('@') {
            return Err("put credentials in api_key, not in the URL".into());
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(format!("`{text}` has no host"));
        }
        if uri.query().is_some() {
            return Err("an upstream URL cannot carry a query string".into());
        }
        Ok(UpstreamUrl {
            tls,
            port: authority
                .port_u16()
                .unwrap_or(if tls { 443 } else { http_port }),
            host,
            path_prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    /// The value of the `Host` header for this upstream.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default_port = if self.tls { 443 } else { 80 };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// Time limits for one upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP (and TLS) connection set-up.
    pub connect: Duration,
    /// From the request sent to the response header received.
    pub first_byte: Duration,
    /// Longest silence between two body chunks.
    pub idle: Duration,
    /// The whole exchange, stream included.
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            first_byte: Duration::from_secs(120),
            idle: Duration::from_secs(60),
            total: Duration::from_secs(600),
        }
    }
}

/// One upstream server as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// The name used in YAML, headers and `/health`.
    pub name: String,
    /// Its wire protocol.
    pub kind: UpstreamKind,
    /// Which side of the gateway it is.
    pub route: Route,
    /// Where its servers are: one or more, serving the same models.
    pub backends: Vec<UpstreamUrl>,
    /// How a request picks a backend.
    pub balance: Balance,
    /// Requests one backend serves at once, at most; past it on every backend, a request goes
    /// to the fallback at once (`None`: no limit).
    pub max_outstanding: Option<usize>,
    /// Health checking of the backends.
    pub health: HealthConfig,
    /// Retries before the first byte went to the client.
    pub retry: RetryConfig,
    /// Ollama and raw upstreams: the context size sent (`options.num_ctx`).
    pub num_ctx: Option<u64>,
    /// Ollama: how long the model stays loaded after a request (`keep_alive`).
    pub keep_alive: Option<String>,
    /// What happens to prompts estimated past `num_ctx`.
    pub context_overflow: ContextOverflow,
    /// How its prompts are counted against `num_ctx` near the limit.
    pub tokenizer: crate::tokens::Counting,
    /// Raw upstreams: which completion API they speak.
    pub raw_api: RawApi,
    /// Its default model, used when a model entry names none.
    pub model: Option<String>,
    /// The key sent as `Authorization: Bearer …`; `None` sends no authorization at all.
    pub api_key: Option<Secret>,
    /// False when `require_api_key` is set and the key is empty.
    pub enabled: bool,
    /// Index of the upstream that takes this one's traffic while it is disabled, and the
    /// requests it fails before their first byte.
    pub fallback: Option<usize>,
    /// Its time limits.
    pub timeouts: Timeouts,
    /// The price of its models that `pricing.models` does not list.
    pub price: Option<Price>,
}

/// Where a client-visible model name goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Index into [`Config::upstreams`]; always an enabled upstream.
    pub upstream: usize,
    /// The model name to send; `None` keeps the client's.
    pub model: Option<String>,
}

/// One row of the model table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEntry {
    /// The name clients ask for.
    pub name: String,
    /// Where it goes.
    pub target: Target,
}

/// The validated configuration the gateway runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listening address.
    pub listen: SocketAddr,
    /// Worker threads (0: one per core).
    pub threads: usize,
    /// How long SIGTERM waits for in-flight requests.
    pub drain_timeout: Duration,
    /// Whether `GET /ui`, the dashboard page, is served.
    pub ui: Ui,
    /// What one client, request or answer may hold of the gateway.
    pub limits: Limits,
    /// Every upstream, in file order.
    pub upstreams: Vec<UpstreamConfig>,
    /// The model table, in file order.
    pub models: Vec<ModelEntry>,
    /// Where model names outside the table go.
    pub default_route: Target,
    /// The upstream that receives every other `/v1/` path unchanged.
    pub passthrough: usize,
    /// Classification of requests; `None`: the model table alone decides.
    pub routing: Option<Routing>,
    /// The exact response cache.
    pub cache: CacheConfig,
    /// Model prices, for cost and savings.
    pub pricing: Pricing,
    /// Where the JSON access log goes; `None`: no access log.
    pub access_log: Option<AccessLogTarget>,
    /// The hybrid stage.
    pub hybrid: HybridConfig,
    /// Gateway keys; empty: the gateway is open to whoever reaches it.
    pub keys: Vec<KeyConfig>,
    /// Where limits, budgets and cached answers are shared between replicas.
    pub state: StateConfig,
    /// The log format and traces.
    pub telemetry: Telemetry,
    /// How long served requests can be labelled, and where labels go.
    pub feedback: FeedbackConfig,
    /// Every model name the configuration mentions: the only values of the `model` label.
    pub model_names: HashSet<String>,
    /// The key that fingerprints a keyless client's token (its tenant): derived from the
    /// upstreams' keys, so replicas with one configuration agree and a fingerprint seen in a log
    /// cannot be tested against guessed tokens without them.
    pub tenant_secret: [u8; 32],
    /// Things worth telling the operator that do not stop the gateway.
    pub warnings: Vec<String>,
}

impl Config {
    /// Reads the file at `path`, or the embedded default when `path` is `None`, with the process
    /// environment for `${VAR}`.
    pub fn load(path: Option<&Path>) -> Result<Config, Vec<ConfigError>> {
        let text = match path {
            None => DEFAULT_YAML.to_owned(),
            Some(path) => std::fs::read_to_string(path).map_err(|e| {
                vec![ConfigError {
                    line: 0,
                    column: 0,
                    message: format!("cannot read {}: {e}", path.display()),
                }]
            })?,
        };
        // Files a configuration names (the scorer) are found beside it.
        let base = path
            .and_then(Path::parent)
            .unwrap_or_else(|| Path::new("."));
        Config::from_yaml_in(&text, |name| std::env::var(name).ok(), base)
    }

    /// Parses and validates YAML text; `env` answers `${VAR}` look-ups; relative file names
    /// are taken from the current directory.
    pub fn from_yaml(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, Vec<ConfigError>> {
        Config::from_yaml_in(text, env, Path::new("."))
    }

    /// Like [`Config::from_yaml`], with relative file names taken from `base`.
    pub fn from_yaml_in(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
        base: &Path,
    ) -> Result<Config, Vec<ConfigError>> {
        let raw: RawConfig = serde_saphyr::from_str(text).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((0, 0));
            vec![ConfigError {
                line,
                column,
                message: first_line(&e.to_string()),
            }]
        })?;
        let mut check = Checker {
            env: &env,
            base,
            errors: Vec::new(),
        };
        let config = check.config(raw);
        match config {
            Some(config) if check.errors.is_empty() => Ok(config),
            _ => Err(check.errors),
        }
    }

    /// The upstream at `index`.
    pub fn upstream(&self, index: usize) -> &UpstreamConfig {
        &self.upstreams[index]
    }

    /// `model` as a metric label: itself when the configuration names it, else `other`, so that
    /// names clients invent cannot grow the number of series.
    pub fn model_label<'a>(&'a self, model: &'a str) -> &'a str {
        if self.model_names.contains(model) {
            model
        } else {
            "other"
        }
    }

    /// The price of `model` on `upstream`: its `pricing.models` row, else the upstream's `price`,
    /// else free (a model nobody priced is counted at 0).
    pub fn price(&self, upstream: usize, model: &str) -> Price {
        self.pricing
            .models
            .get(model)
            .copied()
            .or(self.upstreams[upstream].price)
            .unwrap_or_default()
    }
}

/// serde-saphyr's messages can carry a rendered source snippet; the position is reported apart.
fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or(message).trim().to_owned()
}

/// Walks the raw tree, collecting errors with their positions.
struct Checker<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    base: &'a Path,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn error(&mut self, at: Option<&Text>, message: impl Into<String>) {
        self.error_at(at.map(|t| &t.referenced), message)
    }

    fn error_at(&mut self, at: Option<&serde_saphyr::Location>, message: impl Into<String>) {
        let (line, column) = at.map(|l| (l.line(), l.column())).unwrap_or((0, 0));
        self.errors.push(ConfigError {
            line,
            column,
            message: message.into(),
        });
    }

    /// The interpolated value of a text field, or `None` after recording why not.
    fn text(&mut self, field: &str, value: &Text) -> Option<String> {
        match interpolate(&value.value.0, self.env) {
            Ok(text) => Some(text),
            Err(e) => {
                self.error(Some(value), format!("{field}: {e}"));
                None
            }
        }
    }

    /// Interpolates, then converts with `parse`, reporting failures at the value's position.
    fn parsed<T>(
        &mut self,
        field: &str,
        value: Option<&Text>,
        default: T,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> T {
        let Some(value) = value else { return default };
        let Some(text) = self.text(field, value) else {
            return default;
        };
        match parse(&text) {
            Ok(v) => v,
            Err(e) => {
                self.error(Some(value), format!("{field}: {e}"));
                default
            }
        }
    }

    /// The whole file, section by section.
    fn config(&mut self, raw: RawConfig) -> Option<Config> {
        let server = self.server(&raw);
        let (upstreams, names, mut warnings) = self.upstreams(&raw.upstreams);
        let models = self.models(&raw, &upstreams, &names);
        let (default_route, passthrough) = self.routes(&raw, &upstreams, &names);
        let base = self.base;
        let routing = match &raw.routing {
            Some(r) => Some(self.routing(r, &upstreams, &names, base, &mut warnings)?),
            None => None,
        };
        let cache = self.cache(raw.cache.as_ref());
        let pricing = self.pricing(raw.pricing.as_ref());
        let access_log = self.access_log(raw.access_log.as_ref());
        let local_route = routing.as_ref().map(|r| r.local.upstream);
        let hybrid = self.hybrid(raw.hybrid.as_ref(), &upstreams, &names, local_route);
        let keys = self.keys(&raw.keys);
        let state = self.state(raw.state.as_ref());
        let telemetry = self.telemetry(raw.telemetry.as_ref());
        let feedback = self.feedback(raw.feedback.as_ref());
        let model_names = model_names(&upstreams, &models, &pricing, routing.as_ref());
        let tenant_secret = tenant_secret(&upstreams);
        Some(Config {
            listen: server.listen,
            threads: server.threads,
            drain_timeout: server.drain_timeout,
            ui: server.ui,
            limits: server.limits,
            upstreams,
            models,
            default_route: default_route?,
            passthrough: passthrough?,
            routing,
            cache,
            pricing,
            access_log,
            hybrid,
            keys,
            state,
            telemetry,
            feedback,
            model_names,
            tenant_secret,
            warnings,
        })
    }

    /// `server:` and `limits:`.
    fn server(&mut self, raw: &RawConfig) -> Server {
        let listen = self.parsed(
            "server.listen",
            raw.server.listen.as_ref(),
            SocketAddr::from(([127, 0, 0, 1], 8080)),
            parse_listen,
        );
        let drain_timeout = self.parsed(
            "server.drain_timeout",
            raw.server.drain_timeout.as_ref(),
            Duration::from_secs(30),
            parse_duration,
        );
        let threads = self.parsed("server.threads", raw.server.threads.as_ref(), 0, |t| {
            t.parse::<usize>()
                .map_err(|_| format!("`{t}` is not a whole number"))
        });
        let ui = self.parsed("server.ui", raw.server.ui.as_ref(), Ui::Auto, |t| match t {
            "auto" => Ok(Ui::Auto),
            "on" | "true" => Ok(Ui::On),
            "off" | "false" => Ok(Ui::Off),
            other => Err(format!("`{other}` is not auto, on or off")),
        });
        let limits = self.limits(&raw.limits);
        if limits.max_buffered_bytes < limits.max_body_bytes {
            self.error(
                raw.limits.max_buffered_bytes.as_ref(),
                "limits.max_buffered_bytes: must be at least limits.max_body_bytes".to_owned(),
            );
        }
        Server {
            listen,
            drain_timeout,
            ui,
            threads,
            limits,
        }
    }

    /// `models:`, the table of client-visible model names.
    fn models(
        &mut self,
        raw: &RawConfig,
        upstreams: &[UpstreamConfig],
        names: &[String],
    ) -> Vec<ModelEntry> {
        let mut models = Vec::with_capacity(raw.models.len());
        for (i, m) in raw.models.iter().enumerate() {
            let Some(name) = self.text(&format!("models[{i}].name"), &m.name) else {
                continue;
            };
            if name.is_empty() {
                self.error(
                    Some(&m.name),
                    format!("models[{i}].name: must not be empty"),
                );
                continue;
            }
            if models.iter().any(|e: &ModelEntry| e.name == name) {
                self.error(
                    Some(&m.name),
                    format!("models[{i}].name: `{name}` is listed twice"),
                );
                continue;
            }
            let model = m
                .model
                .as_ref()
                .and_then(|t| self.text(&format!("models[{i}].model"), t))
                .filter(|t| !t.is_empty());
            let field = format!("models[{i}].upstream");
            if let Some(target) = self.target(&field, &m.upstream, model, true, upstreams, names) {
                models.push(ModelEntry { name, target });
            }
        }

        models
    }

    /// `default_route:` and `passthrough:`.
    fn routes(
        &mut self,
        raw: &RawConfig,
        upstreams: &[UpstreamConfig],
        names: &[String],
    ) -> (Option<Target>, Option<usize>) {
        let default_route = match &raw.default_route {
            Some(d) => {
                let model = d
                    .model
                    .as_ref()
                    .and_then(|t| self.text("default_route.model", t))
                    .filter(|t| !t.is_empty());
                self.target(
                    "default_route.upstream",
                    &d.upstream,
                    model,
                    false,
                    upstreams,
                    names,
                )
            }
            None => {
                self.error(
                    None,
                    "default_route: missing (say which upstream takes unlisted models)",
                );
                None
            }
        };
        let passthrough = match &raw.passthrough {
            Some(p) => self
                .target(
                    "passthrough.upstream",
                    &p.upstream,
                    None,
                    false,
                    upstreams,
                    names,
                )
                .map(|t| t.upstream),
            None => default_route.as_ref().map(|t| t.upstream),
        };

        (default_route, passthrough)
    }
}

/// Whether the dashboard page is served (`server.ui`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ui {
    /// When the gateway listens on loopback only, or when keys exist (its data then needs an
    /// admin key).
    Auto,
    /// Always.
    On,
    /// Never.
    Off,
}

impl Config {
    /// Whether `GET /ui` is served under this configuration.
    pub fn serves_ui(&self) -> bool {
        match self.ui {
            Ui::On => true,
            Ui::Off => false,
            Ui::Auto => self.listen.ip().is_loopback() || !self.keys.is_empty(),
        }
    }
}

/// `server:` and `limits:`, checked.
struct Server {
    listen: SocketAddr,
    drain_timeout: Duration,
    ui: Ui,
    threads: usize,
    limits: Limits,
}

/// Every model name the configuration mentions: the only values of the `model` label.
fn model_names(
    upstreams: &[UpstreamConfig],
    models: &[ModelEntry],
    pricing: &Pricing,
    routing: Option<&Routing>,
) -> HashSet<String> {
    let mut model_names: HashSet<String> = upstreams
        .iter()
        .filter_map(|u| u.model.clone())
        .chain(
            models
                .iter()
                .flat_map(|m| [Some(m.name.clone()), m.target.model.clone()])
                .flatten(),
        )
        .chain(pricing.models.keys().cloned())
        .collect();
    if let Some(routing) = routing {
        model_names.extend(routing.rules.rules().iter().filter_map(|r| r.model.clone()));
    }

    model_names
}

/// Parses a listening address; `localhost:8080` is resolved once here.
fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    text.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("`{text}` is not an address like 127.0.0.1:8080"))
}

/// The fingerprinting key: SHA-256 of a fixed label and every upstream's key, in order.
fn tenant_secret(upstreams: &[UpstreamConfig]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"switchyard tenant fingerprint v1");
    for key in upstreams.iter().filter_map(|u| u.api_key.as_ref()) {
        h.update((key.expose().len() as u64).to_le_bytes());
        h.update(key.expose().as_bytes());
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests;
