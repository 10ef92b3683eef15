//! The OpenAPI 3 document of the REST bridge, derived from the same
//! descriptors as the routes: paths, parameters, request and response
//! schemas in the proto3 JSON mapping, bearer security, the error schema.

use std::collections::{BTreeMap, BTreeSet};

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Value, json};

use crate::transcode::Routes;

fn schema_ref(message: &MessageDescriptor) -> Value {
    json!({ "$ref": format!("#/components/schemas/{}", message.full_name()) })
}

/// The JSON schema of a field's type in the proto3 JSON mapping.
fn kind_schema(kind: &Kind, wanted: &mut BTreeSet<String>, pool: &mut Vec<MessageDescriptor>) -> Value {
    match kind {
        Kind::Double | Kind::Float => json!({ "type": "number" }),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => json!({ "type": "integer", "format": "int32" }),
        Kind::Uint32 | Kind::Fixed32 => json!({ "type": "integer", "format": "int64", "minimum": 0 }),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => json!({ "type": "string", "format": "int64" }),
        Kind::Uint64 | Kind::Fixed64 => json!({ "type": "string", "format": "uint64" }),
        Kind::Bool => json!({ "type": "boolean" }),
        Kind::String => json!({ "type": "string" }),
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
        let value = entry.map_entry_value_field();
        return json!({ "type": "object", "additionalProperties": kind_schema(&value.kind(), wanted, pool) });
    }
    let item = kind_schema(&field.kind(), wanted, pool);
    if field.is_list() {
        json!({ "type": "array", "items": item })
    } else {
        item
    }
}

fn message_schema(
    message: &MessageDescriptor,
    wanted: &mut BTreeSet<String>,
    pool: &mut Vec<MessageDescriptor>,
) -> Value {
    let mut properties = serde_json::Map::new();
    for field in message.fields() {
        properties.insert(field.json_name().to_owned(), field_schema(&field, wanted, pool));
    }
    json!({ "type": "object", "properties": properties, "additionalProperties": false })
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

/// The document.
pub fn document(routes: &Routes) -> Value {
    let mut wanted = BTreeSet::new();
    let mut pending: Vec<MessageDescriptor> = Vec::new();
    let mut paths: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
    // OpenAPI forbids two paths of one shape with different parameter
    // names: the first route of a shape names its parameters for all.
    let mut shape_names: BTreeMap<String, Vec<String>> = BTreeMap::new();
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
            .entry(route.template.shape())
            .or_insert_with(|| fields.iter().map(|field| field.replace('.', "_")).collect())
            .clone();
        let mut parameters = Vec::new();
        for (name, field_path) in names.iter().zip(&fields) {
            parameters.push(json!({
                "name": name,
                "in": "path",
                "required": true,
                "description": format!("Binds the request field `{field_path}`."),
                "schema": { "type": "string" },
            }));
        }
        let mut request_body = None;
        match route.body.as_str() {
            "" => {
                let mut fields = Vec::new();
                query_fields(&input, "", &bound, &mut fields, 0);
                for (name, field) in fields {
                    parameters.push(json!({
                        "name": name,
                        "in": "query",
                        "required": false,
                        "schema": field_schema(&field, &mut wanted, &mut pending),
                    }));
                }
            }
            "*" => {
                if wanted.insert(input.full_name().to_owned()) {
                    pending.push(input.clone());
                }
                request_body = Some(schema_ref(&input));
            }
            field_name => {
                if let Some(field) = input.get_field_by_name(field_name) {
                    request_body = Some(field_schema(&field, &mut wanted, &mut pending));
                }
                let mut fields = Vec::new();
                let mut skip = bound.clone();
                skip.insert(field_name.to_owned());
                query_fields(&input, "", &skip, &mut fields, 0);
                for (name, field) in fields {
                    parameters.push(json!({
                        "name": name,
                        "in": "query",
                        "required": false,
                        "schema": field_schema(&field, &mut wanted, &mut pending),
                    }));
                }
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
            "operationId": format!("{}_{}", method.parent_service().name(), method.name()),
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
            operation["requestBody"] =
                json!({ "required": true, "content": { "application/json": { "schema": schema } } });
        }
        operation["security"] = if public { json!([]) } else { json!([{ "bearer": [] }]) };
        paths
            .entry(route.template.openapi_path_named(&names))
            .or_default()
            .insert(route.verb.as_str().to_lowercase(), operation);
    }
    let mut schemas = serde_json::Map::new();
    while let Some(message) = pending.pop() {
        let schema = message_schema(&message, &mut wanted, &mut pending);
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
