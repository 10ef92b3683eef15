//! The OpenAPI 3 document of the REST bridge, derived from the same
//! descriptors as the routes: paths, parameters, request and response
//! schemas in the proto3 JSON mapping, bearer security, the error schema;
//! the `buf.validate` rules of every field as JSON Schema ([`rules`]), and
//! links from what a create returns to the calls that take its id.

mod rules;

use std::collections::{BTreeMap, BTreeSet};

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Value, json};

use crate::transcode::{Route, Routes};

fn schema_ref(message: &MessageDescriptor) -> Value {
    json!({ "$ref": format!("#/components/schemas/{}", message.full_name()) })
}

/// The JSON schema of a field's type in the proto3 JSON mapping.
fn kind_schema(kind: &Kind, wanted: &mut BTreeSet<String>, pool: &mut Vec<MessageDescriptor>) -> Value {
    match kind {
        Kind::Double | Kind::Float => json!({ "type": "number" }),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => json!({ "type": "integer", "format": "int32" }),
        Kind::Uint32 | Kind::Fixed32 => {
            json!({ "type": "integer", "format": "int64", "minimum": 0, "maximum": u32::MAX })
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            let magnitude = rules::decimal_at_most(i64::MAX.unsigned_abs());
            json!({ "type": "string", "format": "int64", "pattern": format!("^(?:-?(?:{magnitude})|-9223372036854775808)$") })
        }
        Kind::Uint64 | Kind::Fixed64 => json!({
            "type": "string",
            "format": "uint64",
            "pattern": format!("^(?:{})$", rules::decimal_at_most(u64::MAX)),
        }),
        Kind::Bool => json!({ "type": "boolean" }),
        // Every service refuses NUL in a string (`capsule::codec`); a rule's
        // own pattern replaces this one, and refuses it too.
        Kind::String => json!({ "type": "string", "pattern": "^[^\\x00]*$" }),
        Kind::Bytes => json!({ "type": "string", "format": "byte" }),
        Kind::Enum(enumeration) => json!({
            "type": "string",
            "enum": enumeration.values().map(|value| value.name().to_owned()).collect::<Vec<_>>(),
        }),
        Kind::Message(message) => match message.full_name() {
            "google.protobuf.Timestamp" => json!({ "type": "string", "format": "date-time" }),
            "google.protobuf.Duration" => json!({ "type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?s$" }),
            "google.protobuf.FieldMask" => json!({ "type": "string" }),
            "google.protobuf.Any" => json!({
                "type": "object",
                "properties": { "@type": { "type": "string" } },
                "additionalProperties": true,
            }),
            "google.protobuf.Struct" | "google.protobuf.Value" => json!({}),
            _ => {
                if wanted.insert(message.full_name().to_owned()) {
                    pool.push(message.clone());
                }
                schema_ref(message)
            }
        },
    }
}

fn field_schema(field: &FieldDescriptor, wanted: &mut BTreeSet<String>, pool: &mut Vec<MessageDescriptor>) -> Value {
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else {
            return json!({});
        };
        let value = kind_schema(&entry.map_entry_value_field().kind(), wanted, pool);
        let mut schema = json!({ "type": "object", "additionalProperties": value });
        rules::constrain(field, &mut schema);
        return schema;
    }
    let item = kind_schema(&field.kind(), wanted, pool);
    let mut schema = if field.is_list() {
        json!({ "type": "array", "items": item })
    } else {
        item
    };
    rules::constrain(field, &mut schema);
    schema
}

/// A message's schema. `updatable`: when the message is the body of an
/// update, the fields an update may change — the others are read-only.
fn message_schema(
    message: &MessageDescriptor,
    updatable: Option<&Vec<String>>,
    wanted: &mut BTreeSet<String>,
    pool: &mut Vec<MessageDescriptor>,
) -> Value {
    let mut properties = serde_json::Map::new();
    for field in message.fields() {
        let mut schema = field_schema(&field, wanted, pool);
        if updatable.is_some_and(|paths| !paths.iter().any(|path| path == field.name())) {
            schema = read_only(schema);
        }
        properties.insert(field.json_name().to_owned(), schema);
    }
    let mut schema = json!({ "type": "object", "properties": properties, "additionalProperties": false });
    let required = rules::required_fields(message);
    if !required.is_empty() {
        schema["required"] = json!(required);
    }
    schema
}

/// The schema of a request body: its message's (a reference when the path
/// binds none of its fields), without the fields the path binds (`prefix`
/// + name), which the bridge takes from the path.
fn body_schema(
    message: &MessageDescriptor,
    prefix: &str,
    bound: &BTreeSet<String>,
    wanted: &mut BTreeSet<String>,
    pool: &mut Vec<MessageDescriptor>,
) -> Value {
    let taken: Vec<String> = message
        .fields()
        .filter(|field| bound.contains(&format!("{prefix}{}", field.name())))
        .map(|field| field.json_name().to_owned())
        .collect();
    if taken.is_empty() {
        if wanted.insert(message.full_name().to_owned()) {
            pool.push(message.clone());
        }
        return schema_ref(message);
    }
    let mut schema = message_schema(message, None, wanted, pool);
    if let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        properties.retain(|name, _| !taken.contains(name));
    }
    if let Some(required) = schema.get_mut("required").and_then(Value::as_array_mut) {
        required.retain(|name| !taken.iter().any(|taken| name == taken));
        if required.is_empty()
            && let Some(object) = schema.as_object_mut()
        {
            object.remove("required");
        }
    }
    schema
}

/// A `$ref` cannot carry siblings in OpenAPI 3.0: it is wrapped.
fn read_only(schema: Value) -> Value {
    if schema.get("$ref").is_some() {
        json!({ "allOf": [schema], "readOnly": true })
    } else {
        let mut schema = schema;
        schema["readOnly"] = json!(true);
        schema
    }
}

/// For a PATCH whose body is a resource and whose mask the gateway infers
/// from the body: the resource's message and the paths it may update.
fn inferred_update(route: &Route) -> Option<(MessageDescriptor, Vec<String>)> {
    if route.verb != http::Method::PATCH {
        return None;
    }
    let Kind::Message(resource) = route.method.input().get_field_by_name(&route.body)?.kind() else {
        return None;
    };
    Some((resource, route.updatable.clone()?))
}

/// The field a path variable binds (`project.id` is `id` in `project`).
fn bound_field(message: &MessageDescriptor, path: &str) -> Option<FieldDescriptor> {
    let (head, rest) = path
        .split_once('.')
        .map_or((path, None), |(head, rest)| (head, Some(rest)));
    let field = message.get_field_by_name(head)?;
    match (rest, field.kind()) {
        (None, _) => Some(field),
        (Some(rest), Kind::Message(inner)) => bound_field(&inner, rest),
        _ => None,
    }
}

/// Fields that can be query parameters: scalars, enums and well-known
/// scalar-like messages, nested with dots.
fn query_fields(
    message: &MessageDescriptor,
    prefix: &str,
    skip: &BTreeSet<String>,
    out: &mut Vec<(String, FieldDescriptor)>,
    depth: usize,
) {
    for field in message.fields() {
        let name = format!("{prefix}{}", field.name());
        if skip.contains(&name) || field.is_map() {
            continue;
        }
        match field.kind() {
            Kind::Message(inner)
                if !matches!(
                    inner.full_name(),
                    "google.protobuf.Timestamp" | "google.protobuf.Duration" | "google.protobuf.FieldMask"
                ) =>
            {
                if depth < 3 && !field.is_list() {
                    query_fields(&inner, &format!("{name}."), skip, out, depth + 1);
                }
            }
            _ => out.push((name, field)),
        }
    }
}

/// The query parameters of a request: its fields not bound elsewhere;
/// required when an empty value breaks a rule.
fn query_parameters(
    input: &MessageDescriptor,
    skip: &BTreeSet<String>,
    parameters: &mut Vec<Value>,
    wanted: &mut BTreeSet<String>,
    pending: &mut Vec<MessageDescriptor>,
) {
    let mut fields = Vec::new();
    query_fields(input, "", skip, &mut fields, 0);
    let required = rules::required_fields(input);
    for (name, field) in fields {
        parameters.push(json!({
            "required": required.contains(&name),
            "name": name,
            "in": "query",
            "schema": field_schema(&field, wanted, pending),
        }));
    }
}

fn operation_id(route: &Route) -> String {
    format!("{}_{}", route.method.parent_service().name(), route.method.name())
}

/// OpenAPI links from each `CreateX` that returns an X with an `id` to
/// every operation whose only path parameter is `x_id`, so a client (and a
/// stateful test) can follow a created resource.
fn link_creates(
    operations: &[(&Route, String, Vec<String>)],
    paths: &mut BTreeMap<String, serde_json::Map<String, Value>>,
) {
    for (create, path, _) in operations {
        let output = create.method.output();
        if !create.method.name().starts_with("Create") || output.get_field_by_name("id").is_none() {
            continue;
        }
        let parameter = format!("{}_id", snake(output.name()));
        let mut links = serde_json::Map::new();
        for (target, _, names) in operations {
            if names.len() == 1 && names[0] == parameter && !target.method.is_server_streaming() {
                links.insert(
                    target.method.name().to_owned(),
                    json!({
                        "operationId": operation_id(target),
                        "parameters": { parameter.clone(): "$response.body#/id" },
                    }),
                );
            }
        }
        if let Some(operation) = paths
            .get_mut(path)
            .and_then(|verbs| verbs.get_mut(&create.verb.as_str().to_lowercase()))
        {
            operation["responses"]["200"]["links"] = Value::Object(links);
        }
    }
}

fn snake(name: &str) -> String {
    let mut out = String::new();
    for (index, c) in name.chars().enumerate() {
        if c.is_uppercase() && index > 0 {
            out.push('_');
        }
        out.extend(c.to_lowercase());
    }
    out
}

/// The document.
pub fn document(routes: &Routes) -> Value {
    let mut wanted = BTreeSet::new();
    let mut pending: Vec<MessageDescriptor> = Vec::new();
    let mut paths: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
    // OpenAPI forbids two paths of one shape with different parameter
    // names: the first route of a shape names its parameters for all.
    let mut shape_names: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut updatable: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut operations: Vec<(&Route, String, Vec<String>)> = Vec::new();
    let status = routes.pool.get_message_by_name("google.rpc.Status");
    if let Some(status) = &status {
        wanted.insert(status.full_name().to_owned());
        pending.push(status.clone());
    }
    for route in &routes.routes {
        let method = &route.method;
        let input = method.input();
        let fields = route.template.fields();
        let bound: BTreeSet<String> = fields.iter().cloned().collect();
        let names = shape_names
            .entry(route.template.shape().to_owned())
            .or_insert_with(|| fields.iter().map(|field| field.replace('.', "_")).collect())
            .clone();
        let mut parameters = Vec::new();
        for (name, field_path) in names.iter().zip(&fields) {
            let schema = bound_field(&input, field_path).map_or(json!({ "type": "string" }), |field| {
                field_schema(&field, &mut wanted, &mut pending)
            });
            parameters.push(json!({
                "name": name,
                "in": "path",
                "required": true,
                "description": format!("Binds the request field `{field_path}`."),
                "schema": schema,
            }));
        }
        let update = inferred_update(route);
        let mut request_body = None;
        match route.body.as_str() {
            "" => query_parameters(&input, &bound, &mut parameters, &mut wanted, &mut pending),
            "*" => request_body = Some(body_schema(&input, "", &bound, &mut wanted, &mut pending)),
            field_name => {
                if let Some(field) = input.get_field_by_name(field_name) {
                    request_body = Some(match &update {
                        // The mask is the body's fields: at least one, none
                        // required, each held to its rules.
                        Some((resource, paths)) => {
                            let mut schema = message_schema(resource, Some(paths), &mut wanted, &mut pending);
                            if let Some(object) = schema.as_object_mut() {
                                object.remove("required");
                            }
                            schema["minProperties"] = json!(1);
                            schema
                        }
                        None => match field.kind() {
                            Kind::Message(message) => {
                                body_schema(&message, &format!("{field_name}."), &bound, &mut wanted, &mut pending)
                            }
                            _ => field_schema(&field, &mut wanted, &mut pending),
                        },
                    });
                }
                let mut skip = bound.clone();
                skip.insert(field_name.to_owned());
                if let Some((resource, paths)) = &update {
                    skip.insert("update_mask".to_owned());
                    updatable.insert(resource.full_name().to_owned(), paths.clone());
                }
                query_parameters(&input, &skip, &mut parameters, &mut wanted, &mut pending);
            }
        }
        let output = method.output();
        let response_schema = if route.response_body.is_empty() {
            if wanted.insert(output.full_name().to_owned()) {
                pending.push(output.clone());
            }
            schema_ref(&output)
        } else {
            output
                .get_field_by_name(&route.response_body)
                .map_or(json!({}), |field| field_schema(&field, &mut wanted, &mut pending))
        };
        let success = if method.is_server_streaming() {
            json!({
                "description": "A stream: newline-delimited JSON ({\"result\": …} per line), or Server-Sent Events with Accept: text/event-stream",
                "content": {
                    "application/x-ndjson": { "schema": { "type": "object", "properties": { "result": response_schema, "error": { "$ref": "#/components/schemas/google.rpc.Status" } } } },
                    "text/event-stream": { "schema": { "type": "string" } },
                },
            })
        } else {
            json!({ "description": "OK", "content": { "application/json": { "schema": response_schema } } })
        };
        let public = matches!(
            capsule::auth::policies().get(&route.grpc_path()),
            Some(capsule::auth::Access::Public)
        );
        let mut operation = json!({
            "operationId": operation_id(route),
            "tags": [method.parent_service().full_name()],
            "summary": method.name(),
            "parameters": parameters,
            "responses": {
                "200": success,
                "default": {
                    "description": "An error: google.rpc.Status",
                    "content": { "application/json": { "schema": { "$ref": "#/components/schemas/google.rpc.Status" } } },
                },
            },
        });
        if let Some(schema) = request_body {
            // Required only when an empty body breaks a rule the path does
            // not fill.
            let broken = capsule::rules::broken_fields(&prost_reflect::DynamicMessage::new(input.clone()));
            let required = match route.body.as_str() {
                "*" => broken.iter().any(|path| !bound.contains(path)),
                // An update names at least one field.
                _ if update.is_some() => true,
                field => {
                    broken.iter().any(|path| path == field)
                        && !bound.iter().any(|path| path.starts_with(&format!("{field}.")))
                }
            };
            operation["requestBody"] =
                json!({ "required": required, "content": { "application/json": { "schema": schema } } });
        }
        operation["security"] = if public { json!([]) } else { json!([{ "bearer": [] }]) };
        let path = route.template.openapi_path_named(&names);
        operations.push((route, path.clone(), names.clone()));
        paths
            .entry(path)
            .or_default()
            .insert(route.verb.as_str().to_lowercase(), operation);
    }
    link_creates(&operations, &mut paths);
    let mut schemas = serde_json::Map::new();
    while let Some(message) = pending.pop() {
        let schema = message_schema(&message, updatable.get(message.full_name()), &mut wanted, &mut pending);
        schemas.insert(message.full_name().to_owned(), schema);
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Capsule API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The REST/JSON bridge of Capsule's gRPC services, derived from their google.api.http annotations. JSON follows the proto3 JSON mapping.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" } },
        },
    })
}
