//! Checks of user input, each adding field violations.

use std::str::FromStr;

use capsule::rpc::{self, FieldViolations};

/// The longest email address (RFC 5321's path limit).
pub const MAX_EMAIL_CHARS: usize = 254;

/// Trims and lowercases an email address and checks its shape.
pub fn email(value: &str, field: &str, violations: &mut FieldViolations) -> String {
    let email = value.trim().to_lowercase();
    let valid = match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && local.len() <= 64
                && domain.len() >= 3
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains("..")
                && !domain.contains('@')
                && domain.chars().all(|c| c.is_alphanumeric() || c == '.' || c == '-')
                && !local
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
        }
        None => false,
    };
    if email.is_empty() {
        violations.add(field, "is required");
    } else if email.len() > MAX_EMAIL_CHARS || !valid {
        violations.add(field, "must be an email address such as ada@example.com");
    }
    email
}

/// A display name: 1 to 100 characters, no control characters.
pub fn name(value: &str, field: &str, violations: &mut FieldViolations) -> String {
    rpc::name(value, field, 100, violations)
}

/// An https URL of at most 2048 characters, or empty.
pub fn avatar_url(value: &str, field: &str, violations: &mut FieldViolations) {
    if value.is_empty() {
        return;
    }
    let ok = value.len() <= 2048
        && url::Url::parse(value).is_ok_and(|url| url.scheme() == "https" && url.host_str().is_some());
    if !ok {
        violations.add(field, "must be an https URL of at most 2048 characters, or empty");
    }
}

/// At most 500 characters; line breaks allowed, other control characters not.
pub fn bio(value: &str, field: &str, violations: &mut FieldViolations) {
    rpc::text(value, field, 500, violations);
}

pub fn theme(value: &str, field: &str, violations: &mut FieldViolations) {
    if !matches!(value, "light" | "dark" | "system") {
        violations.add(field, "must be light, dark or system");
    }
}

/// A BCP 47 language tag such as en or pt-BR.
pub fn language(value: &str, field: &str, violations: &mut FieldViolations) {
    if value.len() > 35 || language_tags::LanguageTag::parse(value).is_err() {
        violations.add(field, "must be a BCP 47 language tag such as en or pt-BR");
    }
}

/// An IANA time zone such as Europe/Paris.
pub fn timezone(value: &str, field: &str, violations: &mut FieldViolations) {
    if chrono_tz::Tz::from_str(value).is_err() {
        violations.add(field, "must be an IANA time zone such as Europe/Paris or UTC");
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
    fn emails_are_normalised_and_checked() {
        let mut violations = FieldViolations::new();
        assert_eq!(email("  Ada@Example.COM ", "email", &mut violations), "ada@example.com");
        assert!(violations.is_empty());
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a b@example.com",
            "ada@exa mple.com",
            "ada@@example.com",
        ] {
            assert!(
                !ok(|v| {
                    email(bad, "email", v);
                }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn names_urls_languages_and_zones() {
        assert!(!ok(|v| {
            name("bad\u{7}name", "name", v);
        }));
        assert!(!ok(|v| {
            name(&"n".repeat(101), "name", v);
        }));
        assert!(ok(|v| avatar_url("https://cdn.example.com/a.png", "avatar_url", v)));
        assert!(!ok(|v| avatar_url("javascript:alert(1)", "avatar_url", v)));
        assert!(!ok(|v| avatar_url("http://example.com/a.png", "avatar_url", v)));
        assert!(ok(|v| language("pt-BR", "language", v)));
        assert!(!ok(|v| language("not a tag", "language", v)));
        assert!(ok(|v| timezone("Europe/Paris", "timezone", v)));
        assert!(!ok(|v| timezone("Mars/Olympus", "timezone", v)));
    }
}
