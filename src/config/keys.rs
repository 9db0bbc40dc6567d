//! The `keys:` section: who may use the gateway, and within which limits. Keys are stored as
//! SHA-256 hashes, never in clear (`switchyard key new` makes one).

use super::raw::RawKey;
use super::Checker;
use crate::vocab::Route;

/// One gateway key and what it allows.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyConfig {
    /// Its name: the tenant in the cache, metrics, `/stats` and the access log.
    pub name: String,
    /// SHA-256 of the key.
    pub sha256: [u8; 32],
    /// Routes it may use; `None`: all.
    pub routes: Option<Vec<Route>>,
    /// Model names it may ask for; `None`: all.
    pub models: Option<Vec<String>>,
    /// Whether it may force a route with `x-switchyard-route`.
    pub force_route: bool,
    /// Requests a minute; `None`: no limit.
    pub requests_per_minute: Option<u64>,
    /// Tokens (prompt and completion) a minute; `None`: no limit.
    pub tokens_per_minute: Option<u64>,
    /// US dollars a day (UTC); `None`: no budget.
    pub budget_day: Option<f64>,
    /// US dollars a calendar month (UTC); `None`: no budget.
    pub budget_month: Option<f64>,
    /// The end of its validity, in seconds since the Unix epoch (the end of the day given).
    pub expires: Option<u64>,
    /// May read `/metrics` and everyone's `/stats`.
    pub admin: bool,
}

impl KeyConfig {
    /// Whether any limit or budget applies to it.
    pub fn is_limited(&self) -> bool {
        self.requests_per_minute.is_some()
            || self.tokens_per_minute.is_some()
            || self.budget_day.is_some()
            || self.budget_month.is_some()
    }

    /// Whether the key may use `route`.
    pub fn allows_route(&self, route: Route) -> bool {
        self.routes.as_ref().is_none_or(|r| r.contains(&route))
    }

    /// Whether the key may ask for `model`.
    pub fn allows_model(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|m| m.iter().any(|x| x == model))
    }
}

impl Checker<'_> {
    /// `keys:`; names are unique, hashes are 64 hex digits and distinct.
    pub(super) fn keys(&mut self, raw: &[RawKey]) -> Vec<KeyConfig> {
        let mut out: Vec<KeyConfig> = Vec::with_capacity(raw.len());
        for (i, k) in raw.iter().enumerate() {
            let at = format!("keys[{i}]");
            let Some(name) = self.text(&format!("{at}.name"), &k.name) else {
                continue;
            };
            if name.is_empty() || out.iter().any(|o| o.name == name) || name == "anonymous" {
                self.error(
                    Some(&k.name),
                    format!("{at}.name: `{name}` is empty, reserved or used twice"),
                );
                continue;
            }
            let field = |f: &str| format!("keys.{name}.{f}");
            let sha256 = self.parsed(&field("sha256"), Some(&k.sha256), [0u8; 32], parse_sha256);
            if out.iter().any(|o| o.sha256 == sha256) {
                self.error(
                    Some(&k.sha256),
                    format!("{}: used by another key", field("sha256")),
                );
            }
            let routes = k.routes.as_ref().map(|list| {
                list.iter()
                    .filter_map(|r| {
                        self.parsed(&field("routes"), Some(r), None, |t| {
                            t.parse::<Route>().map(Some)
                        })
                    })
                    .collect()
            });
            let models = k.models.as_ref().map(|list| {
                list.iter()
                    .filter_map(|m| self.text(&field("models"), m))
                    .collect()
            });
            let count = |t: &str| match t.parse::<u64>() {
                Ok(n) if n > 0 => Ok(Some(n)),
                _ => Err(format!("`{t}` is not a whole number above 0")),
            };
            let dollars = |t: &str| match t.parse::<f64>() {
                Ok(x) if x.is_finite() && x >= 0.0 => Ok(Some(x)),
                _ => Err(format!("`{t}` is not an amount in US dollars")),
            };
            let budget = k.budget_usd.as_ref();
            out.push(KeyConfig {
                sha256,
                routes,
                models,
                force_route: k.force_route.as_ref().is_some_and(|b| b.value),
                requests_per_minute: self.parsed(
                    &field("requests_per_minute"),
                    k.requests_per_minute.as_ref(),
                    None,
                    count,
                ),
                tokens_per_minute: self.parsed(
                    &field("tokens_per_minute"),
                    k.tokens_per_minute.as_ref(),
                    None,
                    count,
                ),
                budget_day: self.parsed(
                    &field("budget_usd.day"),
                    budget.and_then(|b| b.day.as_ref()),
                    None,
                    dollars,
                ),
                budget_month: self.parsed(
                    &field("budget_usd.month"),
                    budget.and_then(|b| b.month.as_ref()),
                    None,
                    dollars,
                ),
                expires: self.parsed(&field("expires"), k.expires.as_ref(), None, |t| {
                    end_of_day(t).map(Some)
                }),
                admin: k.admin.as_ref().is_some_and(|b| b.value),
                name,
            });
        }
        out
    }
}

/// 64 hex digits.
fn parse_sha256(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    let bad =
        || format!("`{text}` is not a SHA-256 in hex (64 digits; `switchyard key new` prints one)");
    if text.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.as_bytes().chunks(2).enumerate() {
        let hex = std::str::from_utf8(pair).map_err(|_| bad())?;
        out[i] = u8::from_str_radix(hex, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// The end of day `YYYY-MM-DD` (UTC), in seconds since the Unix epoch.
fn end_of_day(text: &str) -> Result<u64, String> {
    let bad = || format!("`{text}` is not a date like 2027-06-30");
    let mut parts = text.trim().splitn(3, '-');
    let mut next = |max: u32| -> Result<u32, String> {
        let n: u32 = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        (n <= max).then_some(n).ok_or_else(bad)
    };
    let (y, m, d) = (next(9999)?, next(12)?, next(31)?);
    if y < 1970 || m == 0 || d == 0 {
        return Err(bad());
    }
    Ok((days_from_civil(y, m, d) + 1) * 86_400 - 1)
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar.
pub fn days_from_civil(y: u32, m: u32, d: u32) -> u64 {
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe - 719_468) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_hashes_read_back() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(end_of_day("1970-01-01"), Ok(86_399));
        assert!(end_of_day("2027-13-01").is_err() && end_of_day("tomorrow").is_err());
        let hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        assert_eq!(parse_sha256(hex).unwrap()[0], 0x9f);
        assert!(parse_sha256("abc").is_err());
    }
}
