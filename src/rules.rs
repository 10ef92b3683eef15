//! The `buf.validate` rules declared in the protos (protovalidate), checked
//! on every request before a handler sees it: a message that breaks one is
//! INVALID_ARGUMENT with a `google.rpc.BadRequest` field violation per
//! rule, named by the field's path. Handlers keep only what a rule cannot
//! say (uniqueness, ownership, state). Capsule's own rules ride beside them
//! (`proto/capsule/auth/v1/rules.proto`): a field marked `new_password`
//! refuses the most common passwords in any letter case
//! ([`COMMON_PASSWORDS`]), one marked `time_zone` takes only IANA zone
//! names. The gateway's OpenAPI document reads the same rules
//! ([`field_rules`], [`capsule_rule`]), so what it publishes is what is
//! enforced.

use std::{
    collections::{HashMap, HashSet},
    sync::OnceLock,
};

pub use prost_protovalidate::types;
use prost_protovalidate::{Error, Validator, types::FieldRules};
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, Value};
use tonic::Status;

use crate::rpc::FieldViolations;

const FIELD_EXTENSION: &str = "buf.validate.field";
const REQUIRED: &str = "is required";

/// A rule of Capsule's own on a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapsuleRule {
    /// Not one of [`COMMON_PASSWORDS`], in any letter case.
    NewPassword,
    /// An IANA time zone name.
    TimeZone,
    /// Not a rule: the field holds a message with fields that have one.
    Holds,
}

/// The most common passwords, lowercase, one a line (NIST SP 800-63B asks
/// that new passwords be checked against such a list).
pub const COMMON_PASSWORDS: &str = include_str!("common_passwords.txt");

/// What a client whose value breaks `field`'s pattern is told, when the
/// proto says it (`(capsule.auth.v1.hint)`).
pub fn field_hint(field: &FieldDescriptor) -> Option<String> {
    field_option(field, "capsule.auth.v1.hint")?.as_str().map(str::to_owned)
}

/// The rule of Capsule's own declared on `field`, if any.
pub fn capsule_rule(field: &FieldDescriptor) -> Option<CapsuleRule> {
    let marked = |name: &str| field_option(field, name).is_some_and(|value| value.as_bool() == Some(true));
    if marked("capsule.auth.v1.new_password") {
        Some(CapsuleRule::NewPassword)
    } else if marked("capsule.auth.v1.time_zone") {
        Some(CapsuleRule::TimeZone)
    } else {
        None
    }
}

/// The value of the option `extension` on `field`, when the field sets it
/// (read from the field's own descriptor pool: the gateway decodes one of
/// its own).
fn field_option(field: &FieldDescriptor, extension: &str) -> Option<Value> {
    let extension = field.parent_pool().get_extension_by_name(extension)?;
    let options = field.options();
    options
        .has_extension(&extension)
        .then(|| options.get_extension(&extension).into_owned())
}

fn is_common_password(password: &str) -> bool {
    static COMMON: OnceLock<HashSet<&'static str>> = OnceLock::new();
    COMMON
        .get_or_init(|| COMMON_PASSWORDS.lines().map(str::trim).collect())
        .contains(password.to_lowercase().as_str())
}

/// The rules declared on one field, if any (read from the field's own
/// descriptor pool: the gateway decodes one of its own).
pub fn field_rules(field: &FieldDescriptor) -> Option<FieldRules> {
    match field_option(field, FIELD_EXTENSION)? {
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
            || capsule_rule(&field).is_some()
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
    let mut found: Vec<(String, String)> = match validator().validate(message) {
        Ok(()) => Vec::new(),
        Err(Error::Validation(error)) => error
            .violations()
            .iter()
            .map(|violation| (violation.field_path(), describe(violation)))
            .collect(),
        Err(other) => {
            return Err(crate::rpc::internal(format_args!(
                "a validation rule of {} cannot be evaluated: {other}",
                message.descriptor().full_name()
            )));
        }
    };
    if capsule_rule_fields().contains_key(message.descriptor().full_name()) {
        check_capsule_rules(&message.transcode_to_dynamic(), "", &mut found);
    }
    if found.is_empty() {
        return Ok(());
    }
    let mask = update_mask(message);
    found.retain(|(path, _)| mask.as_ref().is_none_or(|mask| mask.covers(path)));
    // A missing value is said once, not once per rule it breaks.
    let missing = |path: &str| found.iter().any(|(at, what)| at == path && what == REQUIRED);
    let mut violations = FieldViolations::new();
    for (path, what) in &found {
        if what == REQUIRED || !missing(path) {
            violations.add(path.as_str(), what.as_str());
        }
    }
    violations.check()
}

/// Capsule's own rules on `message` and the messages it holds, as
/// (path, what to fix).
fn check_capsule_rules(message: &DynamicMessage, prefix: &str, found: &mut Vec<(String, String)>) {
    let Some(fields) = capsule_rule_fields().get(message.descriptor().full_name()) else {
        return;
    };
    for (name, rule) in fields {
        let value = message.get_field_by_name(name);
        match (rule, value.as_deref()) {
            (CapsuleRule::Holds, Some(Value::Message(inner))) => {
                check_capsule_rules(inner, &format!("{prefix}{name}."), found);
            }
            (CapsuleRule::NewPassword, Some(Value::String(password))) if is_common_password(password) => {
                found.push((
                    format!("{prefix}{name}"),
                    "is one of the most common passwords; choose another".to_owned(),
                ));
            }
            (CapsuleRule::TimeZone, Some(Value::String(zone))) if zone.parse::<chrono_tz::Tz>().is_err() => {
                found.push((
                    format!("{prefix}{name}"),
                    "must be an IANA time zone such as Europe/Paris or UTC".to_owned(),
                ));
            }
            _ => {}
        }
    }
}

/// What an update asks to change: only those fields of its resource are
/// held to their rules (AIP-134), so one resource message serves creates,
/// where a rule applies, and updates that leave the field alone.
struct UpdateMask(Vec<String>);

impl UpdateMask {
    /// Whether a violation at `path` concerns the update: outside the
    /// resource (a top-level field), or inside it at a path the mask names.
    /// With no paths at all, the handler says which to name.
    fn covers(&self, path: &str) -> bool {
        let Some((_, inner)) = path.split_once('.') else {
            return true;
        };
        self.0.iter().any(|named| {
            inner == named
                || inner
                    .strip_prefix(named.as_str())
                    .is_some_and(|rest| rest.starts_with(['.', '[']))
        })
    }
}

/// The `update_mask` of an update request, if the message has one.
fn update_mask(message: &impl ReflectMessage) -> Option<UpdateMask> {
    let descriptor = message.descriptor();
    let field = descriptor.get_field_by_name("update_mask")?;
    if !matches!(field.kind(), Kind::Message(mask) if mask.full_name() == "google.protobuf.FieldMask") {
        return None;
    }
    let message = message.transcode_to_dynamic();
    let paths = match message.get_field(&field).as_ref() {
        Value::Message(mask) => mask
            .get_field_by_name("paths")
            .and_then(|paths| {
                paths
                    .as_list()
                    .map(|paths| paths.iter().filter_map(|p| p.as_str().map(str::to_owned)).collect())
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    Some(UpdateMask(paths))
}

/// The fields with a rule of Capsule's own, or holding a message that has
/// some, by message: found once for the whole contract set.
fn capsule_rule_fields() -> &'static HashMap<String, Vec<(String, CapsuleRule)>> {
    static FIELDS: OnceLock<HashMap<String, Vec<(String, CapsuleRule)>>> = OnceLock::new();
    FIELDS.get_or_init(|| {
        let mut fields: HashMap<String, Vec<(String, CapsuleRule)>> = HashMap::new();
        for message in crate::proto::pool().all_messages() {
            for field in message.fields() {
                if let Some(rule) = capsule_rule(&field) {
                    fields
                        .entry(message.full_name().to_owned())
                        .or_default()
                        .push((field.name().to_owned(), rule));
                }
            }
        }
        // The messages that hold those, one level up (requests hold the
        // resource they create or update).
        for message in crate::proto::pool().all_messages() {
            for field in message.fields() {
                if let Kind::Message(inner) = field.kind()
                    && !field.is_list()
                    && !field.is_map()
                    && fields
                        .get(inner.full_name())
                        .is_some_and(|inner| inner.iter().any(|(_, rule)| *rule != CapsuleRule::Holds))
                {
                    fields
                        .entry(message.full_name().to_owned())
                        .or_default()
                        .push((field.name().to_owned(), CapsuleRule::Holds));
                }
            }
        }
        fields
    })
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
    let value = violation.rule_value().map(value_text).unwrap_or_default();
    let id = violation.rule_id();
    let rule = id.rsplit_once('.').map_or(id, |(_, rule)| rule);
    if rule == "min_len" && value == "1" {
        return REQUIRED.to_owned();
    }
    if rule == "pattern"
        && let Some(hint) = violation.field_descriptor().and_then(field_hint)
    {
        return hint;
    }
    if !violation.message().is_empty() {
        return violation.message().trim_start_matches("value ").to_owned();
    }
    match rule {
        "required" => REQUIRED.to_owned(),
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
    fn a_new_password_is_not_a_common_one_in_any_case() {
        use crate::proto::auth::v1 as auth;
        let register = |password: &str| {
            violations(&auth::RegisterRequest {
                email: "ada@example.com".into(),
                password: password.into(),
                name: "Ada".into(),
            })
        };
        assert_eq!(register("correct horse battery staple"), []);
        assert_eq!(register("ünïcödé😀pw"), []);
        for common in ["password1", "Password1", "QWERTY123"] {
            assert_eq!(
                register(common),
                [(
                    "password".to_owned(),
                    "is one of the most common passwords; choose another".to_owned()
                )],
                "{common}"
            );
        }
        assert!(register("short")[0].1.ends_with("at least 8 characters"));
        assert!(register(&"x".repeat(129))[0].1.ends_with("at most 128 characters"));
        // Signing in with a common password is not refused by this rule.
        let login = auth::LoginRequest {
            email: "ada@example.com".into(),
            password: "password1".into(),
        };
        assert_eq!(violations(&login), []);
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

    /// The violations of an update of the one field at `path`.
    fn settings_violations(path: &str, settings: pb::ProjectSettings) -> Vec<(String, String)> {
        violations(&pb::UpdateProjectSettingsRequest {
            settings: Some(pb::ProjectSettings {
                project_id: "6d8f1c52-2f3e-4a4e-9a55-1b2c3d4e5f60".into(),
                ..settings
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![path.into()],
            }),
        })
    }

    #[test]
    fn paths_branches_and_repositories_follow_their_rules() {
        for (root, ok) in [
            ("", true),
            ("apps/web", true),
            ("./a/.b/...", true),
            ("/etc", false),
            ("../up", false),
            ("a/../../b", false),
            ("a/\u{7}", false),
        ] {
            let found = settings_violations(
                "root_directory",
                pb::ProjectSettings {
                    root_directory: root.into(),
                    ..Default::default()
                },
            );
            assert_eq!(found.is_empty(), ok, "{root:?}: {found:?}");
        }
        for (branch, ok) in [
            ("", false),
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
            let found = settings_violations(
                "branch",
                pb::ProjectSettings {
                    branch: branch.into(),
                    ..Default::default()
                },
            );
            assert_eq!(found.is_empty(), ok, "{branch:?}: {found:?}");
            // A broken pattern is explained in the proto's words.
            if !ok && !branch.is_empty() && !branch.ends_with(".lock") {
                assert_eq!(found[0].1, "must be a git branch name such as main or release/2.0");
            }
        }
        for (url, ok) in [
            ("", true),
            ("https://github.com/acme/app.git", true),
            ("ssh://git@example.com:2222/acme/app.git", true),
            ("ssh://example.com/acme/app.git", false),
            ("http://gitea.lan/acme/app.git", true),
            ("git://example.com/acme/app.git", false),
            ("file:///srv/git/app", true),
            ("/srv/git/app", true),
            ("https://user:secret@github.com/acme/app.git", false),
            ("ftp://example.com/app.git", false),
            ("https://exa mple.com/app.git", false),
        ] {
            let found = settings_violations(
                "repository_url",
                pb::ProjectSettings {
                    repository_url: url.into(),
                    ..Default::default()
                },
            );
            assert_eq!(found.is_empty(), ok, "{url:?}: {found:?}");
        }
    }

    #[test]
    fn names_need_one_visible_character_and_masks_name_their_fields() {
        for (name, ok) in [("My App", true), ("", false), ("   ", false), ("a\u{1b}b", false)] {
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
        let slug = |slug: &str| {
            violations(&pb::CreateProjectRequest {
                project: Some(pb::Project {
                    name: "App".into(),
                    slug: slug.into(),
                    ..Default::default()
                }),
            })
        };
        for good in ["", "my-app", "abc", "a1-b2"] {
            assert_eq!(slug(good), [], "{good}");
        }
        for bad in ["ab", "My-App", "-app", "app-", "a--b", "a_b", &"x".repeat(64)] {
            assert!(slug(bad).iter().all(|(field, _)| field == "project.slug"), "{bad}");
            assert!(!slug(bad).is_empty(), "{bad}");
        }
        // A create needs the name; an update that leaves it alone does not.
        let found = violations(&pb::CreateProjectRequest {
            project: Some(pb::Project::default()),
        });
        assert_eq!(found[0], ("project.name".to_owned(), "is required".to_owned()));
        let description_only = pb::UpdateProjectRequest {
            project: Some(pb::Project {
                description: "x\u{1}".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["description".into()],
            }),
        };
        let found = violations(&description_only);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "project.description");
    }
}
