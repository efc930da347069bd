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
//!
//! Patterns come from peers, so matching must cost the same whatever a pattern holds: it runs
//! the pattern as a set of positions (one bit each) advanced once per segment of the name — no
//! recursion, no backtracking, at most [`MAX_PATTERN_SEGMENTS`](crate::limits::MAX_PATTERN_SEGMENTS) × (segments of the name) segment
//! comparisons, nothing allocated.

use crate::limits::MAX_PATTERN_SEGMENTS;

/// Whether event `name` matches `pattern`.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    if !pattern.contains('*') {
        return pattern == name;
    }
    let mut segments = [""; MAX_PATTERN_SEGMENTS];
    let mut len = 0;
    for segment in pattern.split('.') {
        let Some(slot) = segments.get_mut(len) else {
            return false;
        };
        *slot = segment;
        len += 1;
    }
    let pattern = &segments[..len];
    // Bit i of a set: the first i segments of the pattern have matched the name so far.
    let any_segments: u128 = pattern
        .iter()
        .enumerate()
        .filter(|(_, s)| **s == "**")
        .fold(0, |mask, (i, _)| mask | 1 << i);
    let mut at = skip_empty_matches(1, any_segments, len);
    for segment in name.split('.') {
        let mut next = at & any_segments;
        for (i, part) in pattern.iter().enumerate() {
            #[cfg(test)]
            tests::COMPARISONS.with(|n| n.set(n.get() + 1));
            if at & 1 << i != 0 && (*part == "*" || *part == segment) {
                next |= 1 << (i + 1);
            }
        }
        at = skip_empty_matches(next, any_segments, len);
        if at == 0 {
            return false;
        }
    }
    at & 1 << len != 0
}

/// Adds to `at` the positions reached by letting each `**` match no segment.
fn skip_empty_matches(mut at: u128, any_segments: u128, len: usize) -> u128 {
    for i in 0..len {
        if at & any_segments & 1 << i != 0 {
            at |= 1 << (i + 1);
        }
    }
    at
}

#[cfg(test)]
mod tests {
    use super::{MAX_PATTERN_SEGMENTS, pattern_matches};
    use proptest::prelude::*;

    thread_local! {
        /// Segment comparisons made by this thread's matches.
        pub(super) static COMPARISONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

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
            ("**", "", true),
            ("a.**.b.**.c", "a.x.b.y.z.c", true),
            ("a.**.b.**.c", "a.x.y.c", false),
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

    #[test]
    fn a_pattern_of_many_double_stars_is_answered_at_once() {
        // With backtracking this took exponential time (and recursion depth) in the segments.
        let pattern = vec!["**"; MAX_PATTERN_SEGMENTS - 1].join(".") + ".x";
        let name = vec!["a"; 10_000].join(".");
        let started = std::time::Instant::now();
        assert!(!pattern_matches(&pattern, &name));
        assert!(pattern_matches(&pattern, &(name + ".x")));
        // Generous: the point is "not exponential", which would not finish at all.
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn patterns_over_the_segment_limit_match_nothing() {
        let pattern = vec!["*"; MAX_PATTERN_SEGMENTS + 1].join(".");
        let name = vec!["a"; MAX_PATTERN_SEGMENTS + 1].join(".");
        assert!(!pattern_matches(&pattern, &name));
    }

    /// The backtracking matcher this one replaced: right by definition, exponential in time.
    fn reference(pattern: &[&str], name: &[&str]) -> bool {
        match pattern.split_first() {
            None => name.is_empty(),
            Some((&"**", rest)) => (0..=name.len()).any(|skip| reference(rest, &name[skip..])),
            Some((&"*", rest)) => !name.is_empty() && reference(rest, &name[1..]),
            Some((segment, rest)) => name.first() == Some(segment) && reference(rest, &name[1..]),
        }
    }

    proptest! {
        #[test]
        fn agrees_with_the_definition(
            pattern in prop::collection::vec(prop::sample::select(vec!["a", "b", "*", "**"]), 1..8),
            name in prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..10),
        ) {
            let (p, n) = (pattern.join("."), name.join("."));
            prop_assert_eq!(pattern_matches(&p, &n), reference(&pattern, &name), "{} vs {}", p, n);
        }

        #[test]
        fn work_is_linear_in_the_pattern_and_in_the_name(
            pattern in prop::collection::vec(prop::sample::select(vec!["a", "*", "**"]), 1..MAX_PATTERN_SEGMENTS),
            name in prop::collection::vec(prop::sample::select(vec!["a", "b"]), 1..500),
        ) {
            COMPARISONS.with(|n| n.set(0));
            let _ = pattern_matches(&pattern.join("."), &name.join("."));
            let work = COMPARISONS.with(|n| n.get());
            // At most one comparison per pattern segment per name segment, however many `**`.
            prop_assert!(work <= pattern.len() * name.len(), "{} comparisons", work);
        }
    }
}
