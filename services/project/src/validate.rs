//! Checks of project input, each adding field violations.

use capsule::rpc::{self, FieldViolations};

pub const MAX_VARIABLES: i64 = 100;
pub const MAX_VALUE_BYTES: usize = 32 * 1024;

pub fn name(value: &str, field: &str, violations: &mut FieldViolations) -> String {
    rpc::name(value, field, 100, violations)
}

/// A slug made from a name: "My App!" → "my-app".
pub fn slug_from(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            slug.push(c);
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
        if slug.len() >= 63 {
            break;
        }
    }
    let mut slug = slug.trim_end_matches('-').to_owned();
    if slug.len() < 3 {
        slug = if slug.is_empty() {
            "project".to_owned()
        } else {
            format!("{slug}-project")
        };
    }
    slug
}

/// Letters, digits and underscores, not starting with a digit, at most 128.
pub fn variable_name(value: &str, field: &str, violations: &mut FieldViolations) {
    let ok = !value.is_empty()
        && value.len() <= 128
        && !value.starts_with(|c: char| c.is_ascii_digit())
        && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        violations.add(
            field,
            "must be letters, digits and underscores, not starting with a digit, at most 128, such as DATABASE_URL",
        );
    }
}

pub fn variable_value(value: &str, field: &str, violations: &mut FieldViolations) {
    if value.len() > MAX_VALUE_BYTES {
        violations.add(field, "must be at most 32 KiB");
    } else if value.contains('\0') {
        violations.add(field, "must not contain NUL characters");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(check: impl Fn(&mut FieldViolations)) -> bool {
        let mut violations = FieldViolations::new();
        check(&mut violations);
        violations.is_empty()
    }

    #[test]
    fn slugs_are_derived_from_names() {
        assert_eq!(slug_from("My App!"), "my-app");
        assert_eq!(slug_from("  Ünïcode  Rocks "), "n-code-rocks");
        assert_eq!(slug_from("A"), "a-project");
        assert_eq!(slug_from("!!!"), "project");
        assert!(slug_from(&"x".repeat(200)).len() <= 63);
    }

    #[test]
    fn variables_are_checked() {
        assert!(ok(|v| variable_name("DATABASE_URL", "name", v)));
        for bad in ["", "1ABC", "A-B", "A B", &"A".repeat(129)] {
            assert!(!ok(|v| variable_name(bad, "name", v)), "{bad}");
        }
        assert!(!ok(|v| variable_value(&"x".repeat(MAX_VALUE_BYTES + 1), "value", v)));
    }
}
