//! `…MatchesPatterns` values (spec 12.2): regular expressions, compiled once
//! when the configuration is read.
//!
//! Matching is case-insensitive, as Exchange's is, and unanchored (a pattern
//! matches anywhere unless it says `^` or `$`). A pattern that does not compile
//! is kept as a problem, never as a pattern: [`Patterns::problems`] lists it
//! for `check-config` (with every other problem of the file), and a
//! configuration with problems never starts, so evaluation never meets one.
//! The syntax is the `regex` crate's: no look-around or backreferences, so a
//! match is linear in the text (no catastrophic backtracking on mail content).

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Deserializer};

/// Compiled size limit per pattern: generous for rules, bounded for memory.
const SIZE_LIMIT: usize = 1 << 20;

/// The patterns of one condition.
#[derive(Debug, Clone, Default)]
pub struct Patterns {
    compiled: Vec<Regex>,
    problems: Vec<String>,
}

impl Patterns {
    /// Compiles `sources`, keeping a problem per pattern that fails.
    pub fn new<S: AsRef<str>>(sources: &[S]) -> Self {
        let mut patterns = Patterns::default();
        for source in sources {
            let source = source.as_ref();
            match RegexBuilder::new(source).case_insensitive(true).size_limit(SIZE_LIMIT).build() {
                Ok(regex) => patterns.compiled.push(regex),
                Err(err) => {
                    // The crate's message spans lines (a caret under the error); keep its last line.
                    let why = err.to_string();
                    let why = why.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default().trim();
                    let why = why.strip_prefix("error: ").unwrap_or(why);
                    patterns.problems.push(format!("`{source}` is not a valid pattern: {why}"));
                }
            }
        }
        patterns
    }

    /// Whether the condition is set (any pattern was given).
    pub fn is_set(&self) -> bool {
        !self.compiled.is_empty() || !self.problems.is_empty()
    }

    /// Whether any pattern matches `text`.
    pub fn matches(&self, text: &str) -> bool {
        self.compiled.iter().any(|regex| regex.is_match(text))
    }

    /// The patterns that did not compile, explained.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }
}

impl<'de> Deserialize<'de> for Patterns {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let sources = Vec::<String>::deserialize(deserializer)?;
        Ok(Patterns::new(&sources))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_case_insensitive_and_unanchored_unless_they_say_so() {
        let patterns = Patterns::new(&[r"\d{3}-\d{2}-\d{4}", r"^urgent:"]);
        assert!(patterns.matches("SSN 123-45-6789 inside"));
        assert!(patterns.matches("URGENT: wire"));
        assert!(!patterns.matches("not urgent: anything"));
        assert!(!Patterns::default().is_set());
    }

    #[test]
    fn an_invalid_pattern_is_a_problem_not_a_pattern() {
        let patterns = Patterns::new(&["(unclosed", "fine", r"(?<=x)y"]);
        assert!(patterns.is_set());
        assert_eq!(patterns.problems().len(), 2, "{:?}", patterns.problems());
        assert!(
            patterns.problems()[0].starts_with("`(unclosed` is not a valid pattern: "),
            "{:?}",
            patterns.problems()
        );
        assert!(patterns.matches("FINE"));
        assert!(!patterns.matches("(unclosed"));
    }
}
