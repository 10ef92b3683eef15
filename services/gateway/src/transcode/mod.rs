//! The REST/JSON bridge, driven by descriptors: every RPC with a
//! `google.api.http` annotation in the descriptor set is a route, with no
//! per-route code. Requests and responses follow the proto3 JSON mapping
//! (camelCase, 64-bit integers as strings, enums as names, RFC 3339
//! timestamps); errors are `google.rpc.Status` JSON with grpc-gateway's
//! status table (FAILED_PRECONDITION is 409 Conflict).

pub mod conventions;
pub mod template;

use std::collections::BTreeMap;

use prost_reflect::{
    DescriptorPool, DynamicMessage, Kind, MessageDescriptor, MethodDescriptor, SerializeOptions, Value as ReflectValue,
};
use serde_json::{Map, Value};
use tonic::{Code, Status};

use template::Template;

/// One HTTP binding of one RPC.
#[derive(Debug, Clone)]
pub struct Route {
    pub verb: http::Method,
    pub template: Template,
    /// `"*"`, a field name, or empty for no body.
    pub body: String,
    /// A response field to send instead of the whole message; empty for all.
    pub response_body: String,
    pub method: MethodDescriptor,
    /// The RPC's `(capsule.auth.v1.access)` level, from the same
    /// descriptors.
    pub access: capsule::auth::Access,
    /// The permission the method declares, for API tokens' scopes.
    pub permission: Option<capsule::auth::Permission>,
    /// The paths the request's `update_mask` may name, when its rules list
    /// them (read once here, not per request).
    pub updatable: Option<Vec<String>>,
    /// The answer holds no map at any depth, so its JSON is written
    /// straight from the message (a map's entries would come in hash
    /// order; through a `serde_json::Value` they are sorted).
    pub written_directly: bool,
}

impl Route {
    /// `/package.Service/Method`.
    pub fn grpc_path(&self) -> String {
        format!("/{}/{}", self.method.parent_service().full_name(), self.method.name())
    }
}

/// Path variables bound by a template: (field path, value).
pub type Bound = Vec<(String, String)>;

/// Why no route was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Miss {
    NoRoute,
    /// The path exists with other HTTP verbs: these.
    WrongVerb(Vec<http::Method>),
}

/// Every route of a descriptor pool.
#[derive(Debug, Clone)]
pub struct Routes {
    pub pool: DescriptorPool,
    pub routes: Vec<Route>,
}

fn rule_routes(rule: &DynamicMessage, method: &MethodDescriptor, routes: &mut Vec<Route>) -> Result<(), String> {
    let text = |name: &str| {
        rule.get_field_by_name(name)
            .and_then(|value| value.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let mut binding = None;
    for verb in ["get", "put", "post", "delete", "patch"] {
        if rule.has_field_by_name(verb) {
            binding = Some((verb.to_uppercase(), text(verb)));
        }
    }
    if rule.has_field_by_name("custom")
        && let Some(custom) = rule.get_field_by_name("custom")
        && let Some(custom) = custom.as_message()
    {
        let kind = custom
            .get_field_by_name("kind")
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let path = custom
            .get_field_by_name("path")
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        binding = Some((kind, path));
    }
    if let Some((verb, path)) = binding {
        routes.push(Route {
            verb: http::Method::from_bytes(verb.as_bytes()).map_err(|err| format!("{}: {err}", method.full_name()))?,
            template: Template::parse(&path).map_err(|err| format!("{}: {err}", method.full_name()))?,
            body: text("body"),
            response_body: text("response_body"),
            method: method.clone(),
            access: capsule::auth::method_access(method),
            permission: capsule::auth::declared_permission(method)
                .and_then(|declared| capsule::auth::Permission::parse(&declared)),
            updatable: method
                .input()
                .get_field_by_name("update_mask")
                .as_ref()
                .and_then(updatable),
            written_directly: !holds_map(&method.output(), &mut Vec::new()),
        });
    }
    if let Some(ReflectValue::List(more)) = rule.get_field_by_name("additional_bindings").as_deref() {
        for extra in more {
            if let Some(extra) = extra.as_message() {
                rule_routes(extra, method, routes)?;
            }
        }
    }
    Ok(())
}

impl Routes {
    /// The routes of every annotated RPC in `descriptor_set`.
    pub fn from_descriptor_set(descriptor_set: &[u8]) -> Result<Self, String> {
        let pool = DescriptorPool::decode(descriptor_set).map_err(|err| err.to_string())?;
        let extension = pool
            .get_extension_by_name("google.api.http")
            .ok_or("the descriptor set lacks google.api.http")?;
        let mut routes = Vec::new();
        for service in pool.services() {
            for method in service.methods() {
                let options = method.options();
                if !options.has_extension(&extension) {
                    continue;
                }
                if let Some(rule) = options.get_extension(&extension).as_message() {
                    rule_routes(rule, &method, &mut routes)?;
                }
            }
        }
        // Custom verbs first, then the most literal templates.
        routes.sort_by_key(|route| {
            (
                !route.template.has_verb(),
                std::cmp::Reverse(route.template.literal_count()),
            )
        });
        Ok(Self { pool, routes })
    }

    /// The route for a request, with its bound path variables. The most
    /// specific template that matches the path decides (a custom verb, then
    /// the most literal segments, as OpenAPI matches concrete paths first):
    /// when none of its routes takes the HTTP verb, the answer is 405 with
    /// those verbs, not a less specific route that happens to match —
    /// `GET /v1/deployments/{id}:cancel` is not `GET /v1/deployments/{id}`.
    pub fn find(&self, verb: &http::Method, path: &str) -> Result<(&Route, Bound), Miss> {
        let path = template::Split::new(path).ok_or(Miss::NoRoute)?;
        let mut shape = None;
        let mut allowed = Vec::new();
        for route in &self.routes {
            if shape.is_some_and(|shape| shape != route.template.shape()) {
                continue;
            }
            if let Some(bound) = route.template.matches(&path) {
                if route.verb == verb {
                    return Ok((route, bound));
                }
                shape = Some(route.template.shape());
                allowed.push(route.verb.clone());
            }
        }
        Err(if allowed.is_empty() {
            Miss::NoRoute
        } else {
            Miss::WrongVerb(allowed)
        })
    }
}

/// INVALID_ARGUMENT naming what to fix.
pub fn bad_request(message: impl Into<String>) -> Status {
    Status::invalid_argument(message.into())
}

/// Finds a field by proto name or JSON name.
fn field(message: &MessageDescriptor, name: &str) -> Option<prost_reflect::FieldDescriptor> {
    message
        .get_field_by_name(name)
        .or_else(|| message.get_field_by_json_name(name))
}

fn is_scalar_like(kind: &Kind) -> bool {
    match kind {
        Kind::Message(message) => matches!(
            message.full_name(),
            "google.protobuf.Timestamp"
                | "google.protobuf.Duration"
                | "google.protobuf.FieldMask"
                | "google.protobuf.StringValue"
                | "google.protobuf.BoolValue"
                | "google.protobuf.Int32Value"
                | "google.protobuf.Int64Value"
                | "google.protobuf.UInt32Value"
                | "google.protobuf.UInt64Value"
                | "google.protobuf.FloatValue"
                | "google.protobuf.DoubleValue"
        ),
        _ => true,
    }
}

const PATH: &str = "path parameter";

/// Puts a string from the path or query at `path` (dotted field names) in
/// the JSON request, converted for the field's type.
fn set_field(
    json: &mut Map<String, Value>,
    message: &MessageDescriptor,
    path: &str,
    raw: &str,
    from: &str,
) -> Result<(), Status> {
    let (head, rest) = match path.split_once('.') {
        Some((head, rest)) => (head, Some(rest)),
        None => (path, None),
    };
    let descriptor = field(message, head).ok_or_else(|| bad_request(format!("{from} {path:?}: no such field")))?;
    let key = descriptor.json_name().to_owned();
    if let Some(rest) = rest {
        let Kind::Message(inner) = descriptor.kind() else {
            return Err(bad_request(format!("{from} {path:?}: {head} has no fields")));
        };
        let entry = json.entry(key).or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(object) = entry else {
            return Err(bad_request(format!("{from} {path:?}: conflicts with the body")));
        };
        return set_field(object, &inner, rest, raw, from);
    }
    let kind = descriptor.kind();
    if descriptor.is_map() || !is_scalar_like(&kind) {
        return Err(bad_request(format!(
            "{from} {path:?}: this field cannot be set from the URL; send it in the body"
        )));
    }
    let value = match kind {
        Kind::Bool => match raw {
            "true" | "1" => Value::Bool(true),
            "false" | "0" => Value::Bool(false),
            _ => {
                return Err(bad_request(format!(
                    "{from} {path:?}: expected true or false, got {raw:?}"
                )));
            }
        },
        _ => Value::String(raw.to_owned()),
    };
    if descriptor.is_list() {
        match json.entry(key).or_insert_with(|| Value::Array(Vec::new())) {
            Value::Array(items) => items.push(value),
            _ => return Err(bad_request(format!("{from} {path:?}: conflicts with the body"))),
        }
    } else {
        // The path names the resource: a body that names another is a
        // mistake, not something to override quietly.
        if from == PATH
            && let Some(given) = json.get(&key)
            && given != &value
        {
            return Err(bad_request(format!(
                "the body's {key} is {given}, the path's {value}: the path sets it; leave it out of the body"
            )));
        }
        json.insert(key, value);
    }
    Ok(())
}

/// The update mask of a PATCH that names none: the body's fields that may
/// be updated (those the mask's `field_mask.in` rule lists; fields the
/// server sets, such as ids and times, are left out as AIP-134 asks), in
/// the mask's JSON form.
fn inferred_mask(route: &Route, body: &prost_reflect::FieldDescriptor, value: &Value) -> Option<String> {
    route.method.input().get_field_by_name("update_mask")?;
    let (Kind::Message(resource), Value::Object(object)) = (body.kind(), value) else {
        return None;
    };
    let allowed = route.updatable.as_ref();
    let paths: Vec<String> = object
        .keys()
        .filter_map(|key| {
            resource
                .get_field_by_json_name(key)
                .or_else(|| resource.get_field_by_name(key))
        })
        .filter(|field| {
            allowed
                .as_ref()
                .is_none_or(|allowed| allowed.iter().any(|path| path == field.name()))
        })
        .map(|field| field.json_name().to_owned())
        .collect();
    Some(paths.join(","))
}

fn is_mask(name: &str) -> bool {
    name == "update_mask" || name == "updateMask"
}

/// The proto3 JSON mapping reads `null` as "the default value"; the
/// contracts have no field where null means something else, and a client
/// that sends one most likely meant something the bridge cannot guess
/// (clearing a field is sending its empty value in an update). Refused,
/// naming where.
fn refuse_nulls(body: &Value) -> Result<(), Status> {
    let Some(mut path) = null_at(body) else {
        return Ok(());
    };
    path.reverse();
    let at = if path.is_empty() {
        "top level".to_owned()
    } else {
        format!("{:?}", path.concat().trim_start_matches('.'))
    };
    Err(bad_request(format!(
        "the body's {at}: null is not a value; leave the field out, or send its empty value (\"\", 0, false, [])"
    )))
}

/// Where the first `null` in `value` is, innermost step first (`.key` or
/// `[index]`); nothing is written down unless one is found.
fn null_at(value: &Value) -> Option<Vec<String>> {
    let (mut path, step) = match value {
        Value::Null => return Some(Vec::new()),
        Value::Object(object) => object
            .iter()
            .find_map(|(key, item)| Some((null_at(item)?, format!(".{key}"))))?,
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(index, item)| Some((null_at(item)?, format!("[{index}]"))))?,
        _ => return None,
    };
    path.push(step);
    Some(path)
}

/// Where the first enum field given as a number is in `value`, a JSON
/// form of `message`, innermost step first. The proto3 JSON mapping reads
/// numbers too, but the bridge's document (and so its clients) speak
/// names; a number is refused rather than taken silently, whatever it is.
/// An element of a field's JSON: its index in a list, its key in a map.
type Element<'a> = (usize, Option<&'a String>, &'a Value);

fn enum_number_at(message: &MessageDescriptor, value: &Value) -> Option<Vec<String>> {
    let Value::Object(object) = value else {
        return None;
    };
    object.iter().find_map(|(key, item)| {
        let field = field(message, key)?;
        // The kind of each element, and the elements: a list's items, a
        // map's values (by key) or the value itself.
        let (kind, items): (Kind, Vec<Element<'_>>) = match item {
            Value::Array(items) if field.is_list() => (
                field.kind(),
                items.iter().enumerate().map(|(i, v)| (i, None, v)).collect(),
            ),
            Value::Object(entries) if field.is_map() => {
                let Kind::Message(entry) = field.kind() else {
                    return None;
                };
                let values = entries.iter().map(|(name, v)| (0, Some(name), v)).collect();
                (entry.map_entry_value_field().kind(), values)
            }
            item => (field.kind(), vec![(0, None, item)]),
        };
        items.into_iter().find_map(|(index, name, item)| {
            let mut path = match (&kind, item) {
                (Kind::Enum(_), Value::Number(_)) => Vec::new(),
                (Kind::Message(inner), _) => enum_number_at(inner, item)?,
                _ => return None,
            };
            path.push(match name {
                Some(name) => format!(".{key}.{name}"),
                None if field.is_list() => format!(".{key}[{index}]"),
                None => format!(".{key}"),
            });
            Some(path)
        })
    })
}

/// The paths an update mask may name, when its rules list them.
fn updatable(mask: &prost_reflect::FieldDescriptor) -> Option<Vec<String>> {
    match capsule::rules::field_rules(mask)?.r#type? {
        capsule::rules::types::field_rules::Type::FieldMask(rules) if !rules.r#in.is_empty() => Some(rules.r#in),
        _ => None,
    }
}

/// Builds the gRPC request of `route` from path variables, query
/// parameters and the body, as `google.api.http` binds them.
pub fn build_request(
    route: &Route,
    bound: &[(String, String)],
    query: &[(String, String)],
    body: &[u8],
    content_type: &str,
) -> Result<DynamicMessage, Status> {
    let input = route.method.input();
    let mut json = Map::new();
    // A `google.api.HttpBody` body field takes the bytes as they came.
    let raw_body = field(&input, &route.body)
        .filter(|field| matches!(field.kind(), Kind::Message(message) if message.full_name() == "google.api.HttpBody"));
    let body_json = if let Some(raw) = raw_body {
        use base64::Engine;
        json.insert(
            raw.json_name().to_owned(),
            serde_json::json!({
                "contentType": content_type,
                "data": base64::engine::general_purpose::STANDARD.encode(body),
            }),
        );
        None
    } else if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let value = serde_json::from_slice::<Value>(body)
            .map_err(|err| bad_request(format!("the body is not valid JSON: {err}")))?;
        refuse_nulls(&value)?;
        Some(value)
    };
    match (route.body.as_str(), body_json) {
        ("", Some(_)) => {
            return Err(bad_request(format!(
                "{} {} takes no body",
                route.verb, route.template.text
            )));
        }
        ("", None) | (_, None) => {}
        ("*", Some(Value::Object(object))) => json = object,
        ("*", Some(_)) => return Err(bad_request("the body must be a JSON object")),
        (field_name, Some(value)) => {
            let descriptor = field(&input, field_name)
                .ok_or_else(|| Status::internal(format!("the body field {field_name} does not exist")))?;
            if route.verb == http::Method::PATCH
                && !query.iter().any(|(name, value)| is_mask(name) && !value.is_empty())
                && let Some(mask) = inferred_mask(route, &descriptor, &value)
            {
                json.insert("updateMask".to_owned(), Value::String(mask));
            }
            json.insert(descriptor.json_name().to_owned(), value);
        }
    }
    for (path, value) in bound {
        set_field(&mut json, &input, path, value, PATH)?;
    }
    if route.body == "*" && !query.is_empty() {
        return Err(bad_request(format!(
            "query parameter {:?}: this route takes every field in the body",
            query[0].0
        )));
    }
    for (name, value) in query {
        // An empty mask is no mask: the body's fields are the update.
        if is_mask(name) && value.is_empty() {
            continue;
        }
        let name = name.strip_suffix("[]").unwrap_or(name);
        set_field(&mut json, &input, name, value, "query parameter")?;
    }
    let json = Value::Object(json);
    if let Some(mut path) = enum_number_at(&input, &json) {
        path.reverse();
        return Err(bad_request(format!(
            "{:?}: an enum value is sent by its name (as the OpenAPI document lists them), not its number",
            path.concat().trim_start_matches('.')
        )));
    }
    let options = prost_reflect::DeserializeOptions::new().deny_unknown_fields(true);
    DynamicMessage::deserialize_with_options(input, json, &options)
        .map_err(|err| bad_request(format!("invalid request: {err}")))
}

/// The proto3 JSON of a message.
pub fn to_json(message: &DynamicMessage) -> Value {
    let options = SerializeOptions::new();
    message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .unwrap_or(Value::Null)
}

/// Whether `message` or a message it holds has a map field, or a
/// `google.protobuf.Any`, which may hold anything.
fn holds_map(message: &MessageDescriptor, seen: &mut Vec<String>) -> bool {
    if message.full_name() == "google.protobuf.Any" {
        return true;
    }
    if seen.iter().any(|name| name == message.full_name()) {
        return false;
    }
    seen.push(message.full_name().to_owned());
    message
        .fields()
        .any(|field| field.is_map() || matches!(field.kind(), Kind::Message(inner) if holds_map(&inner, seen)))
}

/// The response body's JSON: the message's, or only its `response_body`
/// field's. A message without maps is written straight to the bytes, in
/// the order of its fields, with no tree of values in between; one with
/// maps goes through a tree, whose keys are sorted, so the same answer is
/// the same bytes every time.
pub fn response_body(route: &Route, message: &DynamicMessage) -> Vec<u8> {
    if route.response_body.is_empty() && route.written_directly {
        let mut body = Vec::with_capacity(256);
        let written =
            message.serialize_with_options(&mut serde_json::Serializer::new(&mut body), &SerializeOptions::new());
        return if written.is_ok() { body } else { b"null".to_vec() };
    }
    let json = to_json(message);
    let json = if route.response_body.is_empty() {
        json
    } else {
        let key = route
            .method
            .output()
            .get_field_by_name(&route.response_body)
            .map(|field| field.json_name().to_owned())
            .unwrap_or_default();
        json.get(&key).cloned().unwrap_or(Value::Null)
    };
    serde_json::to_vec(&json).unwrap_or_else(|_| b"null".to_vec())
}

/// grpc-gateway's gRPC → HTTP status table, but for FAILED_PRECONDITION:
/// a request refused for the state of what it names (cancelling a live
/// deployment, deploying a deleted project) is 409 Conflict, as RFC 9110
/// defines it, not 400 — the request itself was well formed.
pub fn http_status(code: Code) -> http::StatusCode {
    use http::StatusCode as S;
    match code {
        Code::Ok => S::OK,
        Code::Cancelled => S::from_u16(499).unwrap_or(S::BAD_REQUEST),
        Code::InvalidArgument | Code::OutOfRange => S::BAD_REQUEST,
        Code::DeadlineExceeded => S::GATEWAY_TIMEOUT,
        Code::NotFound => S::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => S::CONFLICT,
        Code::PermissionDenied => S::FORBIDDEN,
        Code::Unauthenticated => S::UNAUTHORIZED,
        Code::ResourceExhausted => S::TOO_MANY_REQUESTS,
        Code::Unimplemented => S::NOT_IMPLEMENTED,
        Code::Unavailable => S::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => S::INTERNAL_SERVER_ERROR,
    }
}

/// A status as `google.rpc.Status` JSON, details decoded when their types
/// are in the pool (field violations, retry info).
pub fn status_json(pool: &DescriptorPool, status: &Status) -> Value {
    let details = pool
        .get_message_by_name("google.rpc.Status")
        .filter(|_| !status.details().is_empty())
        .and_then(|descriptor| DynamicMessage::decode(descriptor, status.details()).ok())
        .map(|decoded| to_json(&decoded))
        .and_then(|json| json.get("details").cloned())
        .unwrap_or_else(|| Value::Array(Vec::new()));
    let mut object = BTreeMap::new();
    object.insert("code", Value::from(status.code() as i32));
    // A message may quote what the client sent; a NUL in it is written out,
    // as no string of the API holds one.
    object.insert("message", Value::from(status.message().replace('\0', "\\0")));
    object.insert("details", details);
    serde_json::to_value(object).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests;
