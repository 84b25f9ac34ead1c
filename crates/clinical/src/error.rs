//! Field-level validation errors, shaped so the gRPC layer can pass them through as
//! `google.rpc.BadRequest` field violations without rewording.

use serde::{Deserialize, Serialize};

/// One invalid field: its path in the request (`instruments[0].answers[3]`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FieldViolation {
    /// Path to the field in the request's own field names, e.g. `instruments[1].instrument`.
    pub field: String,
    /// What is wrong and how to fix it, in words a client developer can act on.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field` described by `description`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self { field: field.into(), description: description.into() }
    }

    /// The same violation with its field path nested under `prefix`.
    fn nested_under(self, prefix: &str) -> Self {
        let field = join_path(prefix, &self.field);
        Self { field, description: self.description }
    }
}

/// Joins a parent path and a child path: `instruments[0]` + `answers[3]` gives
/// `instruments[0].answers[3]`; a child starting with `[` is an index and takes no dot.
fn join_path(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        return field.to_owned();
    }
    if field.is_empty() {
        return prefix.to_owned();
    }
    if field.starts_with('[') {
        return format!("{prefix}{field}");
    }
    format!("{prefix}.{field}")
}

/// Every field violation found in one piece of input; never empty when returned as an error.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("invalid input: {}", summary(.violations))]
pub struct ValidationErrors {
    violations: Vec<FieldViolation>,
}

fn summary(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|violation| format!("{}: {}", violation.field, violation.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ValidationErrors {
    /// No violations yet; collect with [`ValidationErrors::push`], then [`ValidationErrors::into_result`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Exactly one violation.
    pub fn single(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self { violations: vec![FieldViolation::new(field, description)] }
    }

    /// Records one more violation.
    pub fn push(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.violations.push(FieldViolation::new(field, description));
    }

    /// Moves every violation of `other` into `self`, keeping their order.
    pub fn append(&mut self, other: ValidationErrors) {
        self.violations.extend(other.violations);
    }

    /// True when nothing was wrong.
    pub fn is_empty(&self) -> bool {
        self.violations.is_empty()
    }

    /// How many violations there are.
    pub fn len(&self) -> usize {
        self.violations.len()
    }

    /// The violations, in the order they were found.
    pub fn violations(&self) -> &[FieldViolation] {
        &self.violations
    }

    /// The violations, by value, for mapping onto `google.rpc.BadRequest`.
    pub fn into_violations(self) -> Vec<FieldViolation> {
        self.violations
    }

    /// The same violations with every field path nested under `prefix`
    /// (`answers[3]` under `instruments[0]` becomes `instruments[0].answers[3]`).
    pub fn nested_under(self, prefix: &str) -> Self {
        Self { violations: self.violations.into_iter().map(|violation| violation.nested_under(prefix)).collect() }
    }

    /// `Ok(value)` when no violation was recorded, else `Err(self)`.
    pub fn into_result<T>(self, value: T) -> Result<T, Self> {
        if self.is_empty() {
            return Ok(value);
        }
        Err(self)
    }
}

impl IntoIterator for ValidationErrors {
    type Item = FieldViolation;
    type IntoIter = std::vec::IntoIter<FieldViolation>;

    fn into_iter(self) -> Self::IntoIter {
        self.violations.into_iter()
    }
}

/// Shortens client-supplied text before it is echoed back in an error message, so a
/// megabyte of garbage is not reflected into logs and responses.
pub(crate) fn excerpt(text: &str) -> String {
    const MAX_CHARS: usize = 40;
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(MAX_CHARS).collect();
    if chars.next().is_some() {
        return format!("{head}…");
    }
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_joins_paths_the_way_protobuf_field_paths_read() {
        let mut errors = ValidationErrors::new();
        errors.push("answers[3]", "answers are 0-3, got 4");
        errors.push("instrument", "unknown instrument");
        errors.push("", "whole message");
        let nested = errors.nested_under("instruments[0]");
        let fields: Vec<&str> = nested.violations().iter().map(|violation| violation.field.as_str()).collect();
        assert_eq!(fields, ["instruments[0].answers[3]", "instruments[0].instrument", "instruments[0]"]);
        assert_eq!(join_path("instruments", "[2]"), "instruments[2]");
    }

    #[test]
    fn display_lists_every_violation() {
        let mut errors = ValidationErrors::single("mood", "mood is 0-10, got 11");
        errors.push("journal", "too long");
        assert_eq!(errors.to_string(), "invalid input: mood: mood is 0-10, got 11; journal: too long");
    }

    #[test]
    fn into_result_is_ok_only_without_violations() {
        assert_eq!(ValidationErrors::new().into_result(7), Ok(7));
        assert!(ValidationErrors::single("mood", "bad").into_result(7).is_err());
    }

    #[test]
    fn excerpt_cuts_long_input_on_a_char_boundary() {
        assert_eq!(excerpt("phq"), "phq");
        let long = "é".repeat(100);
        let cut = excerpt(&long);
        assert_eq!(cut.chars().count(), 41);
        assert!(cut.ends_with('…'));
    }
}
