//! MQTT topic filters: matching a topic against `+`/`#` wildcards and capturing the levels
//! they matched (used to name tags from topics).

/// Returns the levels matched by wildcards (`+` one level each, `#` the remainder joined by
/// `/`), or `None` if `topic` does not match `filter`.
pub fn match_filter<'t>(filter: &str, topic: &'t str) -> Option<Vec<&'t str>> {
    let mut captures = Vec::new();
    let mut t_levels = topic.split('/');
    let mut consumed = 0usize;
    for f in filter.split('/') {
        match f {
            "#" => {
                // `#` also matches the parent level ("a/#" matches "a").
                let rest = topic.get(consumed..).unwrap_or("");
                captures.push(rest);
                return Some(captures);
            }
            "+" => {
                let lvl = t_levels.next()?;
                consumed += lvl.len() + 1;
                captures.push(lvl);
            }
            lit => {
                let lvl = t_levels.next()?;
                if lvl != lit {
                    return None;
                }
                consumed += lvl.len() + 1;
            }
        }
    }
    t_levels.next().is_none().then_some(captures)
}

/// Why a subscription filter breaks the MQTT rules ([`validate_filter`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// The filter is empty.
    #[error("topic filter is empty")]
    Empty,
    /// `#` is not the whole last level (the filter).
    #[error("`#` must be the whole last level in `{0}`")]
    MisplacedHash(String),
    /// `+` shares a level with other characters (the filter).
    #[error("`+` must be a whole level in `{0}`")]
    MisplacedPlus(String),
}

/// Checks a subscription filter for the MQTT rules: `#` only last and alone in its level,
/// `+` alone in its level, no empty filter.
pub fn validate_filter(filter: &str) -> Result<(), FilterError> {
    if filter.is_empty() {
        return Err(FilterError::Empty);
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if l.contains('#') && (*l != "#" || i + 1 != levels.len()) {
            return Err(FilterError::MisplacedHash(filter.to_string()));
        }
        if l.contains('+') && *l != "+" {
            return Err(FilterError::MisplacedPlus(filter.to_string()));
        }
    }
    Ok(())
}

/// Whether a topic filter has `+` or `#` wildcards.
pub fn has_wildcards(filter: &str) -> bool {
    filter.contains(['+', '#'])
}

/// Expands `{1}`, `{2}`, … in a tag name template with wildcard captures (`{1}` is the first).
pub fn expand_name(template: &str, captures: &[&str]) -> String {
    let mut out = template.to_string();
    for (i, c) in captures.iter().enumerate().rev() {
        out = out.replace(&format!("{{{}}}", i + 1), c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_matching_follows_the_spec() {
        assert_eq!(match_filter("a/b", "a/b"), Some(vec![]));
        assert_eq!(match_filter("a/b", "a/b/c"), None);
        assert_eq!(match_filter("a/+/c", "a/x/c"), Some(vec!["x"]));
        assert_eq!(match_filter("a/+/c", "a/x/y"), None);
        assert_eq!(match_filter("a/#", "a/x/y"), Some(vec!["x/y"]));
        assert_eq!(match_filter("a/#", "a"), Some(vec![""]));
        assert_eq!(match_filter("+/+", "a/b"), Some(vec!["a", "b"]));
        assert_eq!(match_filter("+", "a/b"), None);
        assert_eq!(match_filter("#", "x/y/z"), Some(vec!["x/y/z"]));
    }

    #[test]
    fn filter_validation_and_name_expansion() {
        assert!(validate_filter("a/+/b/#").is_ok());
        assert!(validate_filter("a/#/b").is_err());
        assert!(validate_filter("a/b+").is_err());
        assert!(validate_filter("").is_err());
        assert_eq!(
            expand_name("{1}.{2}.temp", &["line1", "pump3"]),
            "line1.pump3.temp"
        );
    }
}
