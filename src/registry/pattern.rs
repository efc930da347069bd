//! Event name patterns: `*` matches one dot-separated segment, `**` any number of segments.
//!
//! ```
//! use phalanx::registry::pattern_matches;
//!
//! assert!(pattern_matches("user.*", "user.created"));
//! assert!(!pattern_matches("user.*", "user.profile.updated"));
//! assert!(pattern_matches("user.**", "user.profile.updated"));
//! assert!(pattern_matches("**", "anything.at.all"));
//! ```

/// Whether event `name` matches `pattern`.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    if !pattern.contains('*') {
        return pattern == name;
    }
    let pattern: Vec<&str> = pattern.split('.').collect();
    let name: Vec<&str> = name.split('.').collect();
    segments_match(&pattern, &name)
}

fn segments_match(pattern: &[&str], name: &[&str]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((&"**", rest)) => (0..=name.len()).any(|skip| segments_match(rest, &name[skip..])),
        Some((&"*", rest)) => !name.is_empty() && segments_match(rest, &name[1..]),
        Some((segment, rest)) => name.first() == Some(segment) && segments_match(rest, &name[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::pattern_matches;

    #[test]
    fn exact_and_wildcards() {
        let cases = [
            ("user.created", "user.created", true),
            ("user.created", "user.removed", false),
            ("user.*", "user.created", true),
            ("user.*", "user", false),
            ("*.created", "order.created", true),
            ("user.**", "user.a.b.c", true),
            ("user.**", "user", true),
            ("**.done", "a.b.done", true),
            ("**.done", "a.b.failed", false),
            ("$node.*", "$node.connected", true),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.b.b.c", false),
        ];
        for (pattern, name, expected) in cases {
            assert_eq!(
                pattern_matches(pattern, name),
                expected,
                "{pattern} vs {name}"
            );
        }
    }
}
