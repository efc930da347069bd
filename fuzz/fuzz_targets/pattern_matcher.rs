//! Matches arbitrary patterns against arbitrary names: never a panic, and the answer agrees with
//! a slow matcher written from the definition (on inputs small enough for it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use phalanx::registry::pattern_matches;

/// `*` is one segment, `**` any number of segments (backtracking; exponential, so kept small).
fn reference(pattern: &[&str], name: &[&str]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((&"**", rest)) => (0..=name.len()).any(|skip| reference(rest, &name[skip..])),
        Some((&"*", rest)) => !name.is_empty() && reference(rest, &name[1..]),
        Some((segment, rest)) => name.first() == Some(segment) && reference(rest, &name[1..]),
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (pattern, name) = text.split_once('|').unwrap_or((&text, "a.b.c"));
    let matched = pattern_matches(pattern, name);
    let (p, n): (Vec<&str>, Vec<&str>) = (pattern.split('.').collect(), name.split('.').collect());
    if p.len() <= 10 && n.len() <= 10 && pattern.contains('*') {
        assert_eq!(matched, reference(&p, &n), "{pattern} vs {name}");
    }
});
