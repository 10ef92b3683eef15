//! What the rules in the protos cannot say of project input: a name's
//! normal form, the slug derived from it, how many variables a project holds.

use capsule::rpc::{self, FieldViolations};

pub const MAX_VARIABLES: i64 = 100;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_derived_from_names() {
        assert_eq!(slug_from("My App!"), "my-app");
        assert_eq!(slug_from("  Ünïcode  Rocks "), "n-code-rocks");
        assert_eq!(slug_from("A"), "a-project");
        assert_eq!(slug_from("!!!"), "project");
        assert!(slug_from(&"x".repeat(200)).len() <= 63);
    }
}
