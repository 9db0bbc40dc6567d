//! `${VAR}` and `${VAR:-default}` substitution in configuration values.

/// Replaces every `${VAR}` / `${VAR:-default}` in `text` using `lookup`.
///
/// `$$` stands for a literal `$`. An unset variable without a default is an error that names it,
/// so a missing secret is caught at start-up instead of being sent upstream as an empty string.
/// A variable set to the empty string counts as unset for `:-`, as in the shell.
pub fn interpolate(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    if !text.contains('$') {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
            continue;
        }
        let Some(body) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let end = body
            .find('}')
            .ok_or_else(|| format!("unclosed `${{` in `{text}`"))?;
        let expr = &body[..end];
        let (name, default) = match expr.find(":-") {
            Some(split) => (&expr[..split], Some(&expr[split + 2..])),
            None => (expr, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("`${{{expr}}}` is not a valid variable reference"));
        }
        match (lookup(name).filter(|v| !v.is_empty() || default.is_none()), default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set (write ${{{name}:-default}} to give a default)"
                ))
            }
        }
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("example.test".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_set_variables_and_defaults() {
        assert_eq!(
            interpolate("http://${HOST}:80", env).unwrap(),
            "http://example.test:80"
        );
        assert_eq!(interpolate("${MISSING:-x}", env).unwrap(), "x");
        assert_eq!(interpolate("${EMPTY:-fallback}", env).unwrap(), "fallback");
        assert_eq!(interpolate("${EMPTY}", env).unwrap(), "");
        assert_eq!(interpolate("${MISSING:-}", env).unwrap(), "");
        assert_eq!(interpolate("cost $$5 $x", env).unwrap(), "cost $5 $x");
        assert_eq!(interpolate("plain", env).unwrap(), "plain");
    }

    #[test]
    fn unset_variable_without_default_names_it() {
        let err = interpolate("${OPENAI_API_KEY}", env).unwrap_err();
        assert!(err.contains("OPENAI_API_KEY"), "{err}");
        assert!(interpolate("${UNCLOSED", env).is_err());
        assert!(interpolate("${bad name}", env).is_err());
    }
}
