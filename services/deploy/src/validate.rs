//! Checks of request fields the protos' rules cannot express.

use capsule::rpc::FieldViolations;

pub(crate) fn check_environment(value: &str, violations: &mut FieldViolations) -> String {
    let environment = if value.is_empty() { "production" } else { value };
    let ok = environment.len() <= 63
        && environment
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        violations.add(
            "environment",
            "must be up to 63 lowercase letters, digits and hyphens, such as production",
        );
    }
    environment.to_owned()
}

pub(crate) fn check_source_ref(value: &str, violations: &mut FieldViolations) {
    let ok = value.len() <= 255
        && !value.starts_with(['-', '/'])
        && !value.contains("..")
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if !ok {
        violations.add(
            "source_ref",
            "must be a branch, tag or commit (letters, digits, '-', '_', '.', '/') of at most 255 characters",
        );
    }
}
