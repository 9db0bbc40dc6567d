//! Classification: what a request is (features), what the operator's rules say about it, and
//! what the scorer thinks when no rule decides. No I/O and nothing of pingora here, but for
//! reading the scorer's embedding table.

pub mod dataset;
pub mod embedding;
pub mod features;
pub mod intent;
pub mod rules;
pub mod scorer;
pub mod wordpiece;

pub use embedding::StaticTable;
pub use features::{estimate_prompt_tokens, estimate_tokens, Feature, Features, PER_MESSAGE};
pub use intent::Intent;
pub use rules::{Cond, Op, Patterns, Rule, RuleSet, Target};
pub use scorer::Scorer;
