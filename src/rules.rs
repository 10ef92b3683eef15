//! The `buf.validate` rules declared in the protos (protovalidate), checked
//! on every request before a handler sees it: a message that breaks one is
//! INVALID_ARGUMENT with a `google.rpc.BadRequest` field violation per
//! rule, named by the field's path. Handlers keep only what a rule cannot
//! say (uniqueness, ownership, state). The gateway's OpenAPI document reads
//! the same rules ([`field_rules`]), so what it publishes is what is
//! enforced.

use std::{collections::HashSet, sync::OnceLock};

pub use prost_protovalidate::types;
use prost_protovalidate::{Error, Validator, types::FieldRules};
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, Value};
use tonic::Status;

use crate::rpc::FieldViolations;

const FIELD_EXTENSION: &str = "buf.validate.field";

/// The rules declared on one field, if any (read from the field's own
/// descriptor pool: the gateway decodes one of its own).
pub fn field_rules(field: &FieldDescriptor) -> Option<FieldRules> {
    let extension = field.parent_pool().get_extension_by_name(FIELD_EXTENSION)?;
    let options = field.options();
    if !options.has_extension(&extension) {
        return None;
    }
    match options.get_extension(&extension).as_ref() {
        Value::Message(rules) => rules.transcode_to().ok(),
        _ => None,
    }
}

/// Whether a message, or one it holds, declares any rule: only those are
/// decoded a second time to be checked. Found once, for every message of
/// the contracts.
fn has_rules(message: &MessageDescriptor) -> bool {
    static WITH_RULES: OnceLock<HashSet<String>> = OnceLock::new();
    WITH_RULES
        .get_or_init(|| {
            crate::proto::pool()
                .all_messages()
                .filter(|message| declares_rules(message, &mut Vec::new()))
                .map(|message| message.full_name().to_owned())
                .collect()
        })
        .contains(message.full_name())
}

fn declares_rules(message: &MessageDescriptor, seen: &mut Vec<String>) -> bool {
    if seen.iter().any(|name| name == message.full_name()) {
        return false;
    }
    seen.push(message.full_name().to_owned());
    message.fields().any(|field| {
        field_rules(&field).is_some()
            || match field.kind() {
                Kind::Message(inner) => declares_rules(&inner, seen),
                _ => false,
            }
    })
}

/// Checks `bytes`, an encoded `message`, against its rules. Bytes that do
/// not decode pass: the decoder then says what is wrong with them.
pub fn check(message: &MessageDescriptor, bytes: &[u8]) -> Result<(), Status> {
    if !has_rules(message) {
        return Ok(());
    }
    let Ok(decoded) = DynamicMessage::decode(message.clone(), bytes) else {
        return Ok(());
    };
    check_message(&decoded)
}

fn validator() -> &'static Validator {
    static VALIDATOR: OnceLock<Validator> = OnceLock::new();
    VALIDATOR.get_or_init(Validator::new)
}

/// Checks a decoded message against its rules.
pub fn check_message(message: &impl ReflectMessage) -> Result<(), Status> {
    match validator().validate(message) {
        Ok(()) => Ok(()),
        Err(Error::Validation(error)) => {
            let mut violations = FieldViolations::new();
            for violation in error.violations() {
                violations.add(violation.field_path(), describe(violation));
            }
            violations.check()
        }
        Err(other) => {
            tracing::error!(error = %other, message = %message.descriptor().full_name(), "a validation rule cannot be evaluated");
            Err(Status::internal("internal error"))
        }
    }
}

/// The paths of the fields of `message` that break a rule: the gateway asks
/// it of an empty message to know which fields a request must carry.
pub fn broken_fields(message: &impl ReflectMessage) -> Vec<String> {
    match validator().validate(message) {
        Err(Error::Validation(error)) => error
            .violations()
            .iter()
            .map(|violation| violation.field_path())
            .collect(),
        _ => Vec::new(),
    }
}

/// What a broken rule asks of the client. protovalidate leaves the message
/// of its standard rules empty; it is written here from the rule and its
/// value, in the words the handlers used before the rules moved here.
fn describe(violation: &prost_protovalidate::Violation) -> String {
    if !violation.message().is_empty() {
        return violation.message().trim_start_matches("value ").to_owned();
    }
    let value = violation.rule_value().map(value_text).unwrap_or_default();
    let id = violation.rule_id();
    let rule = id.rsplit_once('.').map_or(id, |(_, rule)| rule);
    match rule {
        "required" => "is required".to_owned(),
        "uuid" | "uuid_empty" => "must be a UUID such as 0190c3c2-5f1e-7cc0-8b6e-4a1f2d3c4b5a".to_owned(),
        "email" | "email_empty" => "must be an email address such as ada@example.com".to_owned(),
        "min_len" => format!("must be at least {value} characters"),
        "max_len" => format!("must be at most {value} characters"),
        "len" => format!("must be exactly {value} characters"),
        "min_bytes" => format!("must be at least {value} bytes"),
        "max_bytes" => format!("must be at most {value} bytes"),
        "pattern" => format!("must match the pattern {value}"),
        "defined_only" => "must be one of the enum's values".to_owned(),
        "in" => format!("must be one of {value}"),
        "min_items" => format!("must have at least {value} items"),
        "max_items" => format!("must have at most {value} items"),
        "unique" => "must not repeat an item".to_owned(),
        "min_pairs" => format!("must have at least {value} entries"),
        "max_pairs" => format!("must have at most {value} entries"),
        _ => format!("breaks the rule {id}"),
    }
}

fn value_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::List(items) => items.iter().map(value_text).collect::<Vec<_>>().join(", "),
        other => format!("{other}"),
    }
}

#[cfg(test)]
mod tests {
    use prost::{Message, Name};

    use super::*;
    use crate::proto::project::v1 as pb;

    fn violations<M: Message + Name>(message: &M) -> Vec<(String, String)> {
        let descriptor = crate::proto::pool().get_message_by_name(&M::full_name()).unwrap();
        match check(&descriptor, &message.encode_to_vec()) {
            Ok(()) => Vec::new(),
            Err(status) => {
                use tonic_types::StatusExt;
                assert_eq!(status.code(), tonic::Code::InvalidArgument);
                status
                    .get_details_bad_request()
                    .unwrap()
                    .field_violations
                    .into_iter()
                    .map(|violation| (violation.field, violation.description))
                    .collect()
            }
        }
    }

    #[test]
    fn a_declared_rule_is_a_field_violation_named_by_its_path() {
        let good = pb::GetProjectRequest {
            project_id: "6d8f1c52-2f3e-4a4e-9a55-1b2c3d4e5f60".into(),
        };
        assert_eq!(violations(&good), []);
        let bad = pb::GetProjectRequest {
            project_id: "42".into(),
        };
        let found = violations(&bad);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "project_id");
        assert!(found[0].1.starts_with("must be a UUID"), "{found:?}");
        for (size, ok) in [(0, true), (100, true), (101, false), (-1, false)] {
            let request = pb::ListProjectsRequest {
                page_size: size,
                ..Default::default()
            };
            let found = violations(&request);
            assert_eq!(found.is_empty(), ok, "page_size {size}: {found:?}");
            if !ok {
                assert_eq!(
                    found[0].1,
                    "must be greater than or equal to 0 and less than or equal to 100"
                );
            }
        }
    }

    fn settings_violations(settings: pb::ProjectSettings) -> Vec<(String, String)> {
        violations(&pb::UpdateProjectSettingsRequest {
            settings: Some(pb::ProjectSettings {
                project_id: "6d8f1c52-2f3e-4a4e-9a55-1b2c3d4e5f60".into(),
                ..settings
            }),
            update_mask: None,
        })
    }

    #[test]
    fn the_patterns_of_paths_branches_and_repositories_match_the_handlers() {
        for (root, ok) in [
            ("", true),
            ("apps/web", true),
            ("./a/.b/...", true),
            ("/etc", false),
            ("../up", false),
            ("a/../../b", false),
            ("a/\u{7}", false),
        ] {
            let found = settings_violations(pb::ProjectSettings {
                root_directory: root.into(),
                ..Default::default()
            });
            assert_eq!(found.is_empty(), ok, "{root:?}: {found:?}");
        }
        for (branch, ok) in [
            ("", true),
            ("main", true),
            ("release/2.0", true),
            ("a./b", true),
            ("-x", false),
            ("a..b", false),
            ("a//b", false),
            ("a b", false),
            ("x.lock", false),
            ("x/", false),
            ("x.", false),
        ] {
            let found = settings_violations(pb::ProjectSettings {
                branch: branch.into(),
                ..Default::default()
            });
            assert_eq!(found.is_empty(), ok, "{branch:?}: {found:?}");
        }
        for (url, ok) in [
            ("", true),
            ("https://github.com/acme/app.git", true),
            ("ssh://git@example.com:2222/acme/app.git", true),
            ("file:///srv/git/app", true),
            ("/srv/git/app", true),
            ("https://user:secret@github.com/acme/app.git", false),
            ("ftp://example.com/app.git", false),
            ("https://exa mple.com/app.git", false),
        ] {
            let found = settings_violations(pb::ProjectSettings {
                repository_url: url.into(),
                ..Default::default()
            });
            assert_eq!(found.is_empty(), ok, "{url:?}: {found:?}");
        }
    }

    #[test]
    fn names_need_one_visible_character_and_masks_name_their_fields() {
        for (name, ok) in [("My App", true), ("", true), ("   ", false), ("a\u{1b}b", false)] {
            let found = violations(&pb::UpdateProjectRequest {
                project: Some(pb::Project {
                    name: name.into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["name".into()],
                }),
            });
            assert_eq!(found.is_empty(), ok, "{name:?}: {found:?}");
        }
        let found = violations(&pb::UpdateProjectRequest {
            project: Some(pb::Project::default()),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["owner_id".into()],
            }),
        });
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "update_mask");
        let found = violations(&pb::CreateProjectRequest { project: None });
        assert_eq!(found, [("project".to_owned(), "is required".to_owned())]);
    }
}
