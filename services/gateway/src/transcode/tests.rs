//! The transcoder's own rules, without a server.
use serde_json::json;

use super::{Routes, enum_number_at, refuse_nulls, response_body};

#[test]
fn a_null_in_a_body_is_refused_naming_where() {
    assert!(refuse_nulls(&json!({"name": "x", "tags": ["a"], "inner": {"n": 1}})).is_ok());
    let message = |body| refuse_nulls(&body).unwrap_err().message().to_owned();
    assert!(message(json!(null)).starts_with("the body's top level: null"));
    assert!(message(json!({"description": null})).starts_with("the body's \"description\": null"));
    assert!(message(json!({"a": {"b": [1, null]}})).starts_with("the body's \"a.b[1]\": null"));
}

#[test]
fn an_enum_given_by_number_is_found_wherever_it_is() {
    let message = |name: &str| capsule::proto::pool().get_message_by_name(name).unwrap();
    let invite = message("capsule.project.v1.InviteMemberRequest");
    let at = |descriptor, body| {
        enum_number_at(descriptor, &body).map(|mut path| {
            path.reverse();
            path.concat()
        })
    };
    assert_eq!(at(&invite, json!({"role": "ORGANIZATION_ROLE_VIEWER"})), None);
    assert_eq!(at(&invite, json!({"role": 1})).as_deref(), Some(".role"));
    let create = message("capsule.project.v1.CreateOrganizationRequest");
    assert_eq!(
        at(&create, json!({"organization": {"name": "x", "role": 0}})).as_deref(),
        Some(".organization.role")
    );
    assert_eq!(
        at(&create, json!({"organization": {"createTime": "2000-01-01T00:00:00Z"}})),
        None
    );
}

#[test]
fn an_answer_with_maps_is_the_same_bytes_every_time() {
    let routes = Routes::from_descriptor_set(capsule::proto::FILE_DESCRIPTOR_SET).unwrap();
    let route = |path: &str| {
        routes
            .find(&http::Method::GET, path)
            .unwrap_or_else(|_| panic!("no route for GET {path}"))
            .0
    };
    let project = route("/v1/projects/p");
    assert!(project.written_directly, "a project holds no map");
    let settings = route("/v1/projects/p/settings");
    assert!(!settings.written_directly, "settings hold process types by name");
    assert!(
        routes.routes.iter().any(|route| route.written_directly)
            && !routes.routes.iter().all(|route| route.written_directly)
    );

    let descriptor = settings.method.output();
    let names: Vec<String> = (0..32).map(|n| format!("worker-{n}")).collect();
    // Each message a new map, each map its own hash seed.
    let answer = || {
        let kinds: serde_json::Map<_, _> = names
            .iter()
            .map(|name| (name.clone(), json!({"command": format!("run {name}")})))
            .collect();
        let body = json!({"projectId": "p", "processTypes": kinds});
        let message = prost_reflect::DynamicMessage::deserialize(descriptor.clone(), body).unwrap();
        String::from_utf8(response_body(settings, &message)).unwrap()
    };
    let first = answer();
    for _ in 0..8 {
        assert_eq!(answer(), first);
    }
    let mut sorted = names.clone();
    sorted.sort();
    let mut written = names.clone();
    written.sort_by_key(|name| first.find(&format!("\"{name}\"")).unwrap());
    assert_eq!(written, sorted, "{first}");
}
