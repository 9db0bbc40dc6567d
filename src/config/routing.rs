//! The `routing:` section: which requests are classified, the rules, and the scorer.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::raw::{RawCond, RawRouting, Text};
use super::{parse_duration, Checker, Target as UpstreamTarget, UpstreamConfig};
use crate::classify::{Cond, Feature, Op, Patterns, Rule, RuleSet, Scorer, StaticTable, Target};
use crate::vocab::CachePolicy;
use crate::vocab::Route;
use serde_saphyr::Spanned;

/// The scorer compiled into the binary: the semantic scorer, a static embedding of the last user
/// message over the built-in table on top of hand-set surface weights, fitted to the routing
/// development set (see the README).
pub const DEFAULT_SCORER: &str = include_str!("../../conf/scorer.json");

/// The hand-set surface scorer, also compiled in: the prior the default was fitted on top of.
pub const SURFACE_SCORER: &str = include_str!("../../conf/scorer-surface.json");

/// How requests are classified.
#[derive(Debug, Clone)]
pub struct Routing {
    /// Requested model names that are classified (others follow the model table).
    pub classify: Vec<String>,
    /// When false, every request is classified, whatever model it names.
    pub respect_explicit_model: bool,
    /// Whether clients may force a route with the `x-switchyard-route` request header.
    pub allow_route_header: bool,
    /// Where `local` requests go.
    pub local: UpstreamTarget,
    /// Where `cloud` requests go.
    pub cloud: UpstreamTarget,
    /// Where `hybrid` requests go.
    pub hybrid: UpstreamTarget,
    /// The rules, first match wins.
    pub rules: RuleSet,
    /// The scorer for requests no rule decides.
    pub scorer: Arc<Scorer>,
    /// Scores below this go local.
    pub local_below: f64,
    /// Scores from this up go to the cloud; between the two thresholds, hybrid.
    pub cloud_from: f64,
    /// Shares the thresholds follow instead, when configured.
    pub shares: Option<SharesConfig>,
    /// Shadow judging, when on.
    pub shadow: Option<ShadowConfig>,
    /// The team's intent classifier, when configured.
    pub classifier: Option<ClassifierConfig>,
}

/// Shares instead of thresholds (`routing.scorer.local_share`, `hybrid_share`, `window`).
#[derive(Debug, Clone, PartialEq)]
pub struct SharesConfig {
    /// The share of the scorer's decisions that goes local.
    pub local: f64,
    /// The share that goes hybrid; the rest goes to the cloud.
    pub hybrid: f64,
    /// How many recent scores the thresholds are taken from.
    pub window: usize,
    /// A daily cloud budget that raises the local share as it runs out.
    pub cloud_budget: Option<CloudBudget>,
}

/// `routing.scorer.cloud_budget`: what the cloud side may cost a UTC day before the local share
/// reaches its ceiling (see [`crate::route::shares`]).
#[derive(Debug, Clone, PartialEq)]
pub struct CloudBudget {
    /// US dollars a day.
    pub daily_usd: f64,
    /// The local share when the budget is spent.
    pub max_local_share: f64,
}

/// An intent classifier on the team's network (`routing.classifier`), asked about the requests
/// the other rules leave to the scorer; rules then match its answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifierConfig {
    /// Where it answers, as an upstream the gateway calls (no key, no retries, no active
    /// checks; its time limits are the budget).
    pub upstream: UpstreamConfig,
    /// How long a request waits for it at most; past it the request is routed without.
    pub timeout: Duration,
    /// Answers kept, per message hash.
    pub max_entries: u64,
    /// How long an answer is kept.
    pub ttl: Duration,
}

/// Shadow judging (`routing.shadow`): a sample of local answers is also asked of the cloud, and a
/// judge model compares the two, which labels the request for retraining.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowConfig {
    /// The share of local answers shadowed by the cloud.
    pub sample: f64,
    /// The share of cloud answers shadowed by the local model.
    pub reverse_sample: f64,
    /// The judge: an upstream and the model to ask.
    pub judge: UpstreamTarget,
    /// Shadowed requests per minute, at most.
    pub max_per_minute: u32,
    /// What shadowing may spend a day (UTC), the shadow answers and the judge together.
    pub daily_budget_usd: f64,
    /// Where each judged request is appended as a label line.
    pub labels: Option<std::path::PathBuf>,
    /// Keep the messages in the label lines (training on text needs them).
    pub store_text: bool,
}

impl Routing {
    /// Where a route's requests go.
    pub fn target(&self, route: Route) -> &UpstreamTarget {
        match route {
            Route::Local => &self.local,
            Route::Cloud => &self.cloud,
            Route::Hybrid => &self.hybrid,
        }
    }
}

const OPS: [(&str, Op); 6] = [
    ("lt", Op::Lt),
    ("le", Op::Le),
    ("gt", Op::Gt),
    ("ge", Op::Ge),
    ("eq", Op::Eq),
    ("ne", Op::Ne),
];

impl Checker<'_> {
    pub(super) fn routing(
        &mut self,
        raw: &RawRouting,
        upstreams: &[UpstreamConfig],
        names: &[String],
        base: &Path,
        warnings: &mut Vec<String>,
    ) -> Option<Routing> {
        let classify = match &raw.classify {
            None => vec!["auto".to_owned()],
            Some(list) => list
                .iter()
                .enumerate()
                .filter_map(|(i, t)| self.text(&format!("routing.classify[{i}]"), t))
                .collect(),
        };
        let side = |route: Route| {
            upstreams
                .iter()
                .position(|u| u.route == route)
                .map(|i| names[i].clone())
        };
        let ups = raw.upstreams.as_ref();
        let mut target = |route: Route, given: Option<&Text>, default: Option<String>| {
            let field = format!("routing.upstreams.{}", route.as_str());
            let text = match (given, default) {
                (Some(t), _) => t.clone(),
                (None, Some(name)) => Spanned {
                    value: super::raw::Scalar(name),
                    referenced: serde_saphyr::Location::UNKNOWN,
                    defined: serde_saphyr::Location::UNKNOWN,
                },
                (None, None) => {
                    self.error(
                        None,
                        format!(
                            "{field}: no upstream has route {}; name one",
                            route.as_str()
                        ),
                    );
                    return None;
                }
            };
            self.target(&field, &text, None, true, upstreams, names)
        };
        let local = target(
            Route::Local,
            ups.and_then(|u| u.local.as_ref()),
            side(Route::Local),
        );
        let cloud_default = side(Route::Cloud).or_else(|| side(Route::Local));
        let cloud = target(
            Route::Cloud,
            ups.and_then(|u| u.cloud.as_ref()),
            cloud_default.clone(),
        );
        let hybrid = target(
            Route::Hybrid,
            ups.and_then(|u| u.hybrid.as_ref()),
            cloud_default,
        );

        let mut patterns = Patterns::default();
        let mut rules = Vec::new();
        let mut catch_all: Option<String> = None;
        for (i, r) in raw.rules.iter().enumerate() {
            let r = &r.value;
            let Some(name) = self.text(&format!("routing.rules[{i}].name"), &r.name) else {
                continue;
            };
            let field = format!("routing.rules[{i}] `{name}`");
            if rules.iter().any(|x: &Rule| x.name == name) {
                self.error(Some(&r.name), format!("{field}: the name is used twice"));
            }
            let route = self.parsed(
                &format!("{field}.route"),
                Some(&r.route),
                Route::Cloud,
                str::parse::<Route>,
            );
            let model = r
                .model
                .as_ref()
                .and_then(|m| self.text(&format!("{field}.model"), m));
            let cache = self.parsed(
                &format!("{field}.cache"),
                r.cache.as_ref(),
                CachePolicy::Auto,
                str::parse::<CachePolicy>,
            );
            let method = r.method.as_ref().map(|m| {
                self.parsed(
                    &format!("{field}.method"),
                    Some(m),
                    Default::default(),
                    str::parse::<crate::vocab::Shorten>,
                )
            });
            let validate = r.validate.as_ref().is_some_and(|v| v.value);
            let pin = r.pin.as_ref().is_some_and(|v| v.value);
            if pin && route != Route::Local {
                self.error_at(
                    r.pin.as_ref().map(|p| &p.referenced),
                    format!("{field}.pin: only a `route: local` rule can keep requests local"),
                );
            }
            let when = match &r.when {
                None => None,
                Some(c) => match self.cond(&field, c, &mut patterns) {
                    Some(c) => Some(c),
                    None => continue,
                },
            };
            if when.as_ref().is_some_and(Cond::uses_intent) {
                if pin {
                    self.error(
                        Some(&r.name),
                        format!("{field}: a keep-local rule cannot look at the intent (keep-local rules hold before anything is asked)"),
                    );
                }
                if raw.classifier.is_none() {
                    self.error(
                        Some(&r.name),
                        format!("{field}: `feature: intent` needs routing.classifier"),
                    );
                }
            }
            if let Some(before) = &catch_all {
                warnings.push(format!(
                    "line {}: rule `{name}` can never match: rule `{before}` before it matches every request",
                    r.name.referenced.line()
                ));
            }
            if when.is_none() && catch_all.is_none() {
                catch_all = Some(name.clone());
            }
            rules.push(Rule {
                name,
                when,
                route,
                model,
                cache,
                method,
                validate,
                pin,
            });
        }
        let rules = match RuleSet::new(rules, patterns) {
            Ok(set) => set,
            Err(e) => {
                self.error(None, format!("routing.rules: {e}"));
                return None;
            }
        };

        let scorer_raw = raw.scorer.as_ref();
        let scorer = match scorer_raw.and_then(|s| s.file.as_ref()) {
            None => load_scorer(DEFAULT_SCORER, base).map_err(|e| format!("built-in scorer: {e}")),
            Some(file) => {
                let path = self.text("routing.scorer.file", file)?;
                let path = base.join(path);
                let dir = path.parent().unwrap_or(base).to_owned();
                std::fs::read_to_string(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))
                    .and_then(|t| {
                        load_scorer(&t, &dir).map_err(|e| format!("{}: {e}", path.display()))
                    })
            }
        };
        let scorer = match scorer {
            Ok(s) => s,
            Err(e) => {
                self.error(
                    scorer_raw.and_then(|s| s.file.as_ref()),
                    format!("routing.scorer.file: {e}"),
                );
                return None;
            }
        };
        let threshold = |c: &mut Checker, f: &str, v: Option<&Text>, d: f64| {
            c.parsed(f, v, d, |t| match t.parse::<f64>() {
                Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
                _ => Err(format!("`{t}` is not a number from 0 to 1")),
            })
        };
        let local_below = threshold(
            self,
            "routing.scorer.local_below",
            scorer_raw.and_then(|s| s.local_below.as_ref()),
            0.5,
        );
        let cloud_from = threshold(
            self,
            "routing.scorer.cloud_from",
            scorer_raw.and_then(|s| s.cloud_from.as_ref()),
            local_below,
        );
        if cloud_from < local_below {
            self.error(
                scorer_raw.and_then(|s| s.cloud_from.as_ref()),
                "routing.scorer.cloud_from: must not be below local_below",
            );
        }

        let share =
            |c: &mut Checker, f: &str, v: Option<&Text>| v.map(|v| threshold(c, f, Some(v), 0.0));
        let local_share = share(
            self,
            "routing.scorer.local_share",
            scorer_raw.and_then(|s| s.local_share.as_ref()),
        );
        let hybrid_share = share(
            self,
            "routing.scorer.hybrid_share",
            scorer_raw.and_then(|s| s.hybrid_share.as_ref()),
        );
        let window = self.parsed(
            "routing.scorer.window",
            scorer_raw.and_then(|s| s.window.as_ref()),
            2000,
            |t| match t.parse::<usize>() {
                Ok(n) if n >= crate::route::shares::MIN_SCORES => Ok(n),
                _ => Err(format!(
                    "`{t}` is not a number of requests (at least {})",
                    crate::route::shares::MIN_SCORES
                )),
            },
        );
        let budget_raw = scorer_raw.and_then(|s| s.cloud_budget.as_ref());
        let cloud_budget = budget_raw.map(|b| self.cloud_budget(b, local_share));
        let shares = match (local_share, hybrid_share) {
            (None, None) => {
                if let Some(b) = budget_raw {
                    self.error(
                        Some(&b.daily_usd),
                        "routing.scorer.cloud_budget: needs `local_share` (the budget raises it)",
                    );
                }
                None
            }
            (l, h) => {
                let (l, h) = (l.unwrap_or(0.0), h.unwrap_or(0.0));
                if l + h > 1.0 {
                    self.error(
                        scorer_raw.and_then(|s| s.hybrid_share.as_ref()),
                        "routing.scorer: local_share and hybrid_share add up to more than 1",
                    );
                }
                Some(SharesConfig {
                    local: l,
                    hybrid: h,
                    window,
                    cloud_budget,
                })
            }
        };

        let shadow = raw
            .shadow
            .as_ref()
            .and_then(|s| self.shadow(s, upstreams, names, base));

        let classifier = raw.classifier.as_ref().and_then(|c| self.classifier(c));

        Some(Routing {
            classifier,
            shadow,
            shares,
            classify,
            respect_explicit_model: raw.respect_explicit_model.as_ref().is_none_or(|b| b.value),
            allow_route_header: raw.allow_route_header.as_ref().is_some_and(|b| b.value),
            local: local?,
            cloud: cloud?,
            hybrid: hybrid?,
            rules,
            scorer: Arc::new(scorer),
            local_below,
            cloud_from,
        })
    }

    fn cond(
        &mut self,
        field: &str,
        raw: &Spanned<RawCond>,
        patterns: &mut Patterns,
    ) -> Option<Cond> {
        let at = Some(&raw.referenced);
        let c = &raw.value;
        let kinds = [
            c.all.is_some(),
            c.any.is_some(),
            c.not.is_some(),
            c.feature.is_some(),
            c.regex.is_some(),
            c.model.is_some(),
        ]
        .iter()
        .filter(|k| **k)
        .count();
        let comparisons = OPS.iter().zip([&c.lt, &c.le, &c.gt, &c.ge, &c.eq, &c.ne]);
        if c.feature.is_none() && comparisons.clone().any(|(_, v)| v.is_some()) {
            self.error_at(
                at,
                format!("{field}: lt, le, gt, ge, eq and ne go with `feature`"),
            );
            return None;
        }
        if kinds != 1 {
            self.error_at(at, format!("{field}: a condition needs exactly one of all, any, not, feature, regex, model"));
            return None;
        }
        if c.regex.is_none() && c.target.is_some() {
            self.error_at(at, format!("{field}: `target` goes with `regex`"));
            return None;
        }
        if c.one_of.is_some() && c.feature.is_none() {
            self.error_at(at, format!("{field}: `in` goes with `feature: intent`"));
            return None;
        }
        if let Some(list) = c.all.as_ref().or(c.any.as_ref()) {
            let mut out = Vec::with_capacity(list.len());
            for sub in list {
                out.push(self.cond(field, sub, patterns)?);
            }
            return Some(if c.all.is_some() {
                Cond::All(out)
            } else {
                Cond::Any(out)
            });
        }
        if let Some(sub) = &c.not {
            return Some(Cond::Not(Box::new(self.cond(field, sub, patterns)?)));
        }
        if let Some(models) = &c.model {
            let names = models.iter().filter_map(|m| self.text(field, m)).collect();
            return Some(Cond::Model(names));
        }
        if let Some(feature) = &c.feature {
            let name = self.text(field, feature)?;
            if name == "intent" {
                return self.intent_cond(field, feature, c);
            }
            if c.one_of.is_some() {
                self.error(
                    Some(feature),
                    format!("{field}: `in` goes with `feature: intent`, not `{name}`"),
                );
                return None;
            }
            let intent_score = name == "intent_score";
            let feature_id = Feature::from_name(&name);
            if feature_id.is_none() && !intent_score {
                let mut known: Vec<&str> = Feature::ALL.iter().map(|f| f.name()).collect();
                known.extend(["intent", "intent_score"]);
                self.error(
                    Some(feature),
                    format!(
                        "{field}: unknown feature `{name}` (known: {})",
                        known.join(", ")
                    ),
                );
                return None;
            }
            let mut parts = Vec::new();
            for ((op_name, op), value) in comparisons {
                if let Some(v) = value {
                    let n = self.parsed(&format!("{field}.{op_name}"), Some(v), f64::NAN, |t| {
                        t.parse::<f64>()
                            .map_err(|_| format!("`{t}` is not a number"))
                    });
                    parts.push(match feature_id {
                        Some(id) => Cond::Compare(id, *op, n),
                        None => Cond::IntentScore(*op, n),
                    });
                }
            }
            return match parts.len() {
                0 => {
                    self.error(Some(feature), format!("{field}: `feature: {name}` needs a comparison (lt, le, gt, ge, eq or ne)"));
                    None
                }
                1 => parts.pop(),
                _ => Some(Cond::All(parts)),
            };
        }
        let regexes = c.regex.as_ref()?;
        let target = match &c.target {
            None => Target::LastUser,
            Some(t) => {
                let name = self.text(field, t)?;
                match Target::from_name(&name) {
                    Some(target) => target,
                    None => {
                        self.error(
                            Some(t),
                            format!(
                                "{field}: unknown target `{name}` (last_user, user, system or all)"
                            ),
                        );
                        return None;
                    }
                }
            }
        };
        let mut indices = Vec::new();
        for r in regexes {
            let pattern = self.text(field, r)?;
            match patterns.add(target, &pattern) {
                Ok(i) => indices.push(i),
                Err(e) => {
                    self.error(Some(r), format!("{field}: bad regex `{pattern}`: {e}"));
                    return None;
                }
            }
        }
        Some(Cond::Regex(target, indices))
    }
}

impl Checker<'_> {
    /// `{feature: intent, in: [...]}`.
    fn intent_cond(&mut self, field: &str, feature: &Text, c: &RawCond) -> Option<Cond> {
        let compared = [&c.lt, &c.le, &c.gt, &c.ge, &c.eq, &c.ne];
        if compared.iter().any(|v| v.is_some()) {
            self.error(
                Some(feature),
                format!(
                    "{field}: `feature: intent` takes `in: [...]`; compare `intent_score` instead"
                ),
            );
            return None;
        }
        let Some(list) = c.one_of.as_ref().filter(|l| !l.is_empty()) else {
            self.error(
                Some(feature),
                format!("{field}: `feature: intent` needs `in: [...]` with the intents that match"),
            );
            return None;
        };
        let names = list.iter().filter_map(|t| self.text(field, t)).collect();
        Some(Cond::Intent(names))
    }

    /// `routing.scorer.cloud_budget`, given the configured `local_share`.
    fn cloud_budget(
        &mut self,
        raw: &super::raw::RawCloudBudget,
        local_share: Option<f64>,
    ) -> CloudBudget {
        const FIELD: &str = "routing.scorer.cloud_budget";
        let daily_usd = self.parsed(
            &format!("{FIELD}.daily_usd"),
            Some(&raw.daily_usd),
            0.0,
            |t| match t.parse::<f64>() {
                Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
                _ => Err(format!("`{t}` is not an amount of dollars above 0")),
            },
        );
        let local = local_share.unwrap_or(0.0);
        let max_local_share = self.parsed(
            &format!("{FIELD}.max_local_share"),
            raw.max_local_share.as_ref(),
            local.max(0.95),
            |t| match t.parse::<f64>() {
                Ok(x) if (local..=1.0).contains(&x) => Ok(x),
                _ => Err(format!(
                    "`{t}` is not a share from local_share ({local}) to 1"
                )),
            },
        );
        CloudBudget {
            daily_usd,
            max_local_share,
        }
    }

    /// `routing.classifier`.
    fn classifier(&mut self, raw: &super::raw::RawClassifier) -> Option<ClassifierConfig> {
        let url = self.text("routing.classifier.url", &raw.url)?;
        let url = match super::UpstreamUrl::parse(&url) {
            Ok(u) => u,
            Err(e) => {
                self.error(Some(&raw.url), format!("routing.classifier.url: {e}"));
                return None;
            }
        };
        let timeout = self.parsed(
            "routing.classifier.timeout",
            raw.timeout.as_ref(),
            Duration::from_millis(50),
            |t| match parse_duration(t)? {
                d if d.is_zero() => Err("must be more than 0".into()),
                d => Ok(d),
            },
        );
        let max_entries = self.parsed(
            "routing.classifier.max_entries",
            raw.max_entries.as_ref(),
            10_000,
            |t| {
                t.parse::<u64>()
                    .map_err(|_| format!("`{t}` is not a whole number"))
            },
        );
        let ttl = self.parsed(
            "routing.classifier.ttl",
            raw.ttl.as_ref(),
            Duration::from_secs(600),
            parse_duration,
        );
        Some(ClassifierConfig {
            upstream: super::upstreams::called_service("routing.classifier", url, timeout),
            timeout,
            max_entries,
            ttl,
        })
    }

    /// `routing.shadow`.
    fn shadow(
        &mut self,
        raw: &super::raw::RawShadow,
        upstreams: &[UpstreamConfig],
        names: &[String],
        base: &Path,
    ) -> Option<ShadowConfig> {
        let share = |c: &mut Checker, f: &str, v: Option<&Text>| {
            c.parsed(f, v, 0.0, |t| match t.parse::<f64>() {
                Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
                _ => Err(format!("`{t}` is not a share from 0 to 1")),
            })
        };
        let sample = share(self, "routing.shadow.sample", raw.sample.as_ref());
        let reverse_sample = share(
            self,
            "routing.shadow.reverse_sample",
            raw.reverse_sample.as_ref(),
        );
        let Some(judge) = &raw.judge else {
            self.error(
                None,
                "routing.shadow.judge: name the judge's upstream (and model)",
            );
            return None;
        };
        let model = judge
            .model
            .as_ref()
            .and_then(|m| self.text("routing.shadow.judge.model", m));
        let judge = self.target(
            "routing.shadow.judge.upstream",
            &judge.upstream,
            model,
            true,
            upstreams,
            names,
        )?;
        let max_per_minute = self.parsed(
            "routing.shadow.max_per_minute",
            raw.max_per_minute.as_ref(),
            10,
            |t| {
                t.parse::<u32>()
                    .map_err(|_| format!("`{t}` is not a whole number"))
            },
        );
        let daily_budget_usd = self.parsed(
            "routing.shadow.daily_budget_usd",
            raw.daily_budget_usd.as_ref(),
            1.0,
            |t| match t.parse::<f64>() {
                Ok(x) if x >= 0.0 => Ok(x),
                _ => Err(format!("`{t}` is not an amount of dollars")),
            },
        );
        let labels = raw
            .labels
            .as_ref()
            .and_then(|p| self.text("routing.shadow.labels", p))
            .filter(|p| !p.is_empty())
            .map(|p| base.join(p));
        Some(ShadowConfig {
            sample,
            reverse_sample,
            judge,
            max_per_minute,
            daily_budget_usd,
            labels,
            store_text: raw.store_text.as_ref().is_some_and(|b| b.value),
        })
    }
}

/// Reads a scorer file's text and attaches the table its semantic part names: the built-in one,
/// or a file taken from `dir`, checked whole.
pub fn load_scorer(text: &str, dir: &Path) -> Result<Scorer, String> {
    let mut scorer: Scorer = serde_json::from_str(text).map_err(|e| e.to_string())?;
    scorer.validate()?;
    if let Some(name) = scorer.table_name().map(str::to_owned) {
        let table = match name.as_str() {
            "builtin" => crate::classify::embedding::builtin()?,
            file => Arc::new(
                StaticTable::load(&dir.join(file)).map_err(|e| format!("embedding table {e}"))?,
            ),
        };
        scorer
            .attach(table)
            .map_err(|e| format!("embedding table {name}: {e}"))?;
    }
    Ok(scorer)
}
