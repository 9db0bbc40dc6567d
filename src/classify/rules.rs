//! Routing rules: conditions over features, regexes and the model name; the first match wins.
//!
//! Every regex of every rule is compiled once, at load, into one `RegexSet` per text target; a
//! request runs each set it needs at most once, however many rules use it.

use regex::RegexSet;

use super::features::{Feature, Features};
use super::intent::Intent;
use crate::api::{ChatRequest, Role};
use crate::vocab::Route;

/// The text a regex condition looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The last user message.
    LastUser,
    /// Every user message.
    User,
    /// System and developer messages.
    System,
    /// Every message.
    All,
}

impl Target {
    const COUNT: usize = 4;

    /// Parses a target name.
    pub fn from_name(name: &str) -> Option<Target> {
        match name {
            "last_user" => Some(Target::LastUser),
            "user" => Some(Target::User),
            "system" => Some(Target::System),
            "all" => Some(Target::All),
            _ => None,
        }
    }
}

/// A numeric comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

impl Op {
    fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Op::Lt => a < b,
            Op::Le => a <= b,
            Op::Gt => a > b,
            Op::Ge => a >= b,
            Op::Eq => a == b,
            Op::Ne => a != b,
        }
    }
}

/// A condition of a rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    /// Every condition holds (true when empty).
    All(Vec<Cond>),
    /// At least one condition holds (false when empty).
    Any(Vec<Cond>),
    /// The condition does not hold.
    Not(Box<Cond>),
    /// `feature op value`.
    Compare(Feature, Op, f64),
    /// One of the patterns (indices into the target's set) matches the target text.
    Regex(Target, Vec<usize>),
    /// The requested model is one of these.
    Model(Vec<String>),
    /// The intent classifier named one of these intents.
    Intent(Vec<String>),
    /// `intent_score op value` (false when the classifier gave no score).
    IntentScore(Op, f64),
}

impl Cond {
    /// Whether the condition needs the intent classifier's answer.
    pub fn uses_intent(&self) -> bool {
        match self {
            Cond::All(c) | Cond::Any(c) => c.iter().any(Cond::uses_intent),
            Cond::Not(c) => c.uses_intent(),
            Cond::Intent(_) | Cond::IntentScore(..) => true,
            Cond::Compare(..) | Cond::Regex(..) | Cond::Model(_) => false,
        }
    }
}

/// One rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Its name, reported in `x-switchyard-rule`.
    pub name: String,
    /// When it applies; `None` matches every request.
    pub when: Option<Cond>,
    /// Where a matching request goes.
    pub route: Route,
    /// The model to send, instead of the route's upstream's own.
    pub model: Option<String>,
    /// Whether matching requests' answers are cached.
    pub cache: crate::vocab::CachePolicy,
    /// Hybrid requests: how their long parts are shortened, instead of `hybrid.method`.
    pub method: Option<crate::vocab::Shorten>,
    /// Local requests asking for structured output: check the answer against the schema and
    /// send the request to the cloud when it does not hold.
    pub validate: bool,
    /// Keep-local: a matching request never leaves the local side (no cloud fallback, no
    /// hybrid, no shadow), whatever model it names or route it asks for.
    pub pin: bool,
}

impl Rule {
    /// Whether the rule looks at the intent classifier's answer: such rules are consulted only
    /// for requests the other rules leave to the scorer.
    pub fn uses_intent(&self) -> bool {
        self.when.as_ref().is_some_and(Cond::uses_intent)
    }
}

/// Collects regex patterns per target while rules are built.
#[derive(Debug, Default)]
pub struct Patterns {
    by_target: [Vec<String>; Target::COUNT],
}

impl Patterns {
    /// Checks `pattern` and registers it; returns its index in the target's set.
    pub fn add(&mut self, target: Target, pattern: &str) -> Result<usize, String> {
        regex::Regex::new(pattern).map_err(|e| first_line(&e.to_string()))?;
        let list = &mut self.by_target[target as usize];
        if let Some(i) = list.iter().position(|p| p == pattern) {
            return Ok(i);
        }
        list.push(pattern.to_owned());
        Ok(list.len() - 1)
    }
}

fn first_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(text)
        .trim()
        .to_owned()
}

/// The compiled rule list.
#[derive(Debug, Clone)]
pub struct RuleSet {
    rules: Vec<Rule>,
    sets: [Option<RegexSet>; Target::COUNT],
}

impl RuleSet {
    /// Compiles the patterns collected for `rules`.
    pub fn new(rules: Vec<Rule>, patterns: Patterns) -> Result<RuleSet, String> {
        let mut sets: [Option<RegexSet>; Target::COUNT] = Default::default();
        for (i, list) in patterns.by_target.iter().enumerate() {
            if !list.is_empty() {
                sets[i] = Some(RegexSet::new(list).map_err(|e| e.to_string())?);
            }
        }
        Ok(RuleSet { rules, sets })
    }

    /// An empty rule set.
    pub fn empty() -> RuleSet {
        RuleSet {
            rules: Vec::new(),
            sets: Default::default(),
        }
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The first rule that matches the request, of those that need no intent.
    pub fn first_match(&self, req: &ChatRequest, features: &Features) -> Option<&Rule> {
        self.first_where(req, features, None, |r| !r.uses_intent())
    }

    /// The first rule that matches the request, of those that look at its intent.
    pub fn first_intent_match(
        &self,
        req: &ChatRequest,
        features: &Features,
        intent: &Intent,
    ) -> Option<&Rule> {
        self.first_where(req, features, Some(intent), Rule::uses_intent)
    }

    /// Whether any rule looks at the intent classifier's answer.
    pub fn uses_intent(&self) -> bool {
        self.rules.iter().any(Rule::uses_intent)
    }

    /// The first keep-local rule that matches the request.
    pub fn first_pinned(&self, req: &ChatRequest, features: &Features) -> Option<&Rule> {
        self.first_where(req, features, None, |r| r.pin)
    }

    /// Whether any rule is a keep-local rule.
    pub fn pins(&self) -> bool {
        self.rules.iter().any(|r| r.pin)
    }

    fn first_where(
        &self,
        req: &ChatRequest,
        features: &Features,
        intent: Option<&Intent>,
        wanted: impl Fn(&Rule) -> bool,
    ) -> Option<&Rule> {
        let mut seen = Seen {
            req,
            features,
            intent,
            hits: Hits::default(),
        };
        self.rules
            .iter()
            .filter(|r| wanted(r))
            .find(|rule| match &rule.when {
                None => true,
                Some(cond) => self.eval(cond, &mut seen),
            })
    }

    fn eval(&self, cond: &Cond, seen: &mut Seen) -> bool {
        match cond {
            Cond::All(c) => c.iter().all(|c| self.eval(c, seen)),
            Cond::Any(c) => c.iter().any(|c| self.eval(c, seen)),
            Cond::Not(c) => !self.eval(c, seen),
            Cond::Compare(feature, op, value) => op.holds(seen.features.get(*feature), *value),
            Cond::Model(names) => names.contains(&seen.req.model),
            Cond::Intent(names) => seen.intent.is_some_and(|i| names.contains(&i.name)),
            Cond::IntentScore(op, value) => seen.intent.is_some_and(|i| op.holds(i.score, *value)),
            Cond::Regex(target, indices) => {
                let req = seen.req;
                let matched = seen.hits.get(*target, &self.sets[*target as usize], req);
                indices
                    .iter()
                    .any(|&i| matched.get(i).copied().unwrap_or(false))
            }
        }
    }
}

/// What the conditions of one look-up read: the request, and what is known of it.
struct Seen<'a> {
    req: &'a ChatRequest,
    features: &'a Features,
    intent: Option<&'a Intent>,
    hits: Hits,
}

/// Which patterns matched, per target, computed on first use.
#[derive(Default)]
struct Hits {
    by_target: [Option<Vec<bool>>; Target::COUNT],
}

impl Hits {
    fn get(&mut self, target: Target, set: &Option<RegexSet>, req: &ChatRequest) -> &[bool] {
        self.by_target[target as usize].get_or_insert_with(|| {
            let Some(set) = set else { return Vec::new() };
            let mut matched = vec![false; set.len()];
            let last_user = req.messages.iter().rposition(|m| m.role == Role::User);
            for (i, m) in req.messages.iter().enumerate() {
                let wanted = match target {
                    Target::LastUser => Some(i) == last_user,
                    Target::User => m.role == Role::User,
                    Target::System => m.role.is_system(),
                    Target::All => true,
                };
                if wanted {
                    for hit in set.matches(m.content.text()).iter() {
                        matched[hit] = true;
                    }
                }
            }
            matched
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn request(messages: serde_json::Value) -> ChatRequest {
        let body = serde_json::json!({"model": "auto", "messages": messages, "tools": [{}]});
        ChatRequest::parse(Bytes::from(body.to_string())).unwrap()
    }

    fn rule(name: &str, when: Option<Cond>, route: Route) -> Rule {
        Rule {
            name: name.into(),
            when,
            route,
            model: None,
            cache: crate::vocab::CachePolicy::Auto,
            method: None,
            validate: false,
            pin: false,
        }
    }

    #[test]
    fn operators_compare_as_written() {
        let cases = [
            (Op::Lt, 1.0, 2.0, true),
            (Op::Lt, 2.0, 2.0, false),
            (Op::Le, 2.0, 2.0, true),
            (Op::Gt, 3.0, 2.0, true),
            (Op::Gt, 2.0, 2.0, false),
            (Op::Ge, 2.0, 2.0, true),
            (Op::Eq, 2.0, 2.0, true),
            (Op::Eq, 2.5, 2.0, false),
            (Op::Ne, 2.5, 2.0, true),
            (Op::Ne, 2.0, 2.0, false),
        ];
        for (op, a, b, expected) in cases {
            assert_eq!(op.holds(a, b), expected, "{a} {op:?} {b}");
        }
    }

    #[test]
    fn first_match_wins_and_conditions_compose() {
        let mut p = Patterns::default();
        let hi = p.add(Target::LastUser, r"(?i)^\s*(hi|hello)\b").unwrap();
        let secret = p.add(Target::System, "(?i)confidential").unwrap();
        let code = p.add(Target::User, "fn main").unwrap();
        let rules = vec![
            rule(
                "system-secret",
                Some(Cond::Regex(Target::System, vec![secret])),
                Route::Local,
            ),
            rule(
                "tools-not-greeting",
                Some(Cond::All(vec![
                    Cond::Compare(Feature::Tools, Op::Gt, 0.0),
                    Cond::Not(Box::new(Cond::Regex(Target::LastUser, vec![hi]))),
                ])),
                Route::Cloud,
            ),
            rule(
                "code-or-other-model",
                Some(Cond::Any(vec![
                    Cond::Regex(Target::User, vec![code]),
                    Cond::Model(vec!["other".into()]),
                ])),
                Route::Hybrid,
            ),
            rule("catch-all", None, Route::Local),
        ];
        let set = RuleSet::new(rules, p).unwrap();
        let name = |messages: serde_json::Value| {
            let req = request(messages);
            let f = Features::of(&req);
            set.first_match(&req, &f).map(|r| r.name.clone()).unwrap()
        };
        use serde_json::json;
        assert_eq!(
            name(
                json!([{"role": "system", "content": "Confidential!"}, {"role": "user", "content": "x"}])
            ),
            "system-secret"
        );
        assert_eq!(
            name(json!([{"role": "user", "content": "summarize this"}])),
            "tools-not-greeting"
        );
        // A greeting with tools skips rule 2; code in an earlier user turn matches rule 3.
        assert_eq!(
            name(
                json!([{"role": "user", "content": "fn main() {}"}, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "Hello there"}])
            ),
            "code-or-other-model"
        );
        assert_eq!(
            name(json!([{"role": "user", "content": "hi"}])),
            "catch-all"
        );
        // The system target does not look at user text.
        assert_eq!(
            name(json!([{"role": "user", "content": "hi, confidential"}])),
            "catch-all"
        );
    }

    #[test]
    fn intent_rules_wait_for_the_intent_and_the_others_ignore_it() {
        let rules = vec![
            rule(
                "billing",
                Some(Cond::All(vec![
                    Cond::Intent(vec!["billing".into(), "refund".into()]),
                    Cond::IntentScore(Op::Ge, 0.8),
                ])),
                Route::Local,
            ),
            rule(
                "tools",
                Some(Cond::Compare(Feature::Tools, Op::Gt, 0.0)),
                Route::Cloud,
            ),
            rule(
                "not-faq",
                Some(Cond::Not(Box::new(Cond::Intent(vec!["faq".into()])))),
                Route::Hybrid,
            ),
        ];
        let set = RuleSet::new(rules, Patterns::default()).unwrap();
        assert!(set.uses_intent());
        let req = request(serde_json::json!([{"role": "user", "content": "refund please"}]));
        let f = Features::of(&req);
        // The request has tools: the plain rule decides, though an intent rule comes first.
        assert_eq!(set.first_match(&req, &f).unwrap().name, "tools");
        let intent = |name: &str, score: f64| Intent {
            name: name.into(),
            score,
        };
        let name = |i: Intent| set.first_intent_match(&req, &f, &i).map(|r| r.name.clone());
        assert_eq!(name(intent("refund", 0.9)).as_deref(), Some("billing"));
        assert_eq!(name(intent("refund", 0.5)).as_deref(), Some("not-faq"));
        assert_eq!(name(intent("refund", f64::NAN)).as_deref(), Some("not-faq"));
        assert_eq!(name(intent("faq", 0.99)), None);
        let plain = RuleSet::new(
            vec![rule(
                "tools",
                Some(Cond::Compare(Feature::Tools, Op::Gt, 0.0)),
                Route::Cloud,
            )],
            Patterns::default(),
        )
        .unwrap();
        assert!(!plain.uses_intent());
    }

    #[test]
    fn bad_patterns_are_refused_with_the_reason() {
        let mut p = Patterns::default();
        let e = p.add(Target::User, "(unclosed").unwrap_err();
        assert!(e.contains("unclosed"), "{e}");
        assert_eq!(p.add(Target::User, "a").unwrap(), 0);
        assert_eq!(
            p.add(Target::User, "a").unwrap(),
            0,
            "same pattern, same slot"
        );
        assert_eq!(p.add(Target::All, "a").unwrap(), 0, "sets are per target");
    }

    #[test]
    fn empty_groups() {
        let set = RuleSet::new(
            vec![rule("all", Some(Cond::All(vec![])), Route::Cloud)],
            Patterns::default(),
        )
        .unwrap();
        let req = request(serde_json::json!([{"role": "user", "content": "x"}]));
        assert!(set.first_match(&req, &Features::of(&req)).is_some());
        let set = RuleSet::new(
            vec![rule("any", Some(Cond::Any(vec![])), Route::Cloud)],
            Patterns::default(),
        )
        .unwrap();
        assert!(set.first_match(&req, &Features::of(&req)).is_none());
    }
}
