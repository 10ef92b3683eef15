//! The `buf.validate` rules of a field in JSON Schema, so the OpenAPI
//! document states what the services enforce ([`capsule::rules`]).

use capsule::rules::types::{
    EnumRules, FieldRules, Ignore, StringRules, field_rules::Type, int32_rules, int64_rules, string_rules::WellKnown,
};
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Value, json};

/// Adds the rules declared on `field` to `schema`, the schema of its type.
pub fn constrain(field: &FieldDescriptor, schema: &mut Value) {
    let Some(rules) = capsule::rules::field_rules(field) else {
        return;
    };
    match &rules.r#type {
        Some(Type::Repeated(repeated)) if field.is_list() => {
            set(schema, "minItems", repeated.min_items.map(Value::from));
            set(schema, "maxItems", repeated.max_items.map(Value::from));
            if let Some(items) = repeated.items.as_deref() {
                scalar(field, items, &mut schema["items"]);
            }
        }
        Some(Type::FieldMask(mask)) if !mask.r#in.is_empty() => {
            // The proto3 JSON form of a mask: camelCase paths joined by commas.
            let one = mask
                .r#in
                .iter()
                .map(|path| escape(&camel(path)))
                .collect::<Vec<_>>()
                .join("|");
            schema["pattern"] = json!(format!("^(?:{one})(?:,(?:{one}))*$"));
        }
        _ => scalar(field, &rules, schema),
    }
}

fn scalar(field: &FieldDescriptor, rules: &FieldRules, schema: &mut Value) {
    let empty_allowed = rules.ignore == Some(Ignore::IfZeroValue as i32);
    match &rules.r#type {
        Some(Type::String(string)) if empty_allowed => {
            // Empty, or everything the rules ask.
            let mut strict = schema.clone();
            string_schema(string, &mut strict);
            *schema = json!({ "anyOf": [{ "type": "string", "maxLength": 0 }, strict] });
        }
        Some(Type::String(string)) => string_schema(string, schema),
        Some(Type::Int32(int)) => {
            if let Some(int32_rules::GreaterThan::Gte(min)) = int.greater_than {
                schema["minimum"] = json!(min);
            }
            if let Some(int32_rules::GreaterThan::Gt(min)) = int.greater_than {
                schema["minimum"] = json!(i64::from(min) + 1);
            }
            if let Some(int32_rules::LessThan::Lte(max)) = int.less_than {
                schema["maximum"] = json!(max);
            }
            if let Some(int32_rules::LessThan::Lt(max)) = int.less_than {
                schema["maximum"] = json!(i64::from(max) - 1);
            }
        }
        Some(Type::Int64(int)) => {
            // int64 travels as a string of digits; only "not negative" is
            // said here, the bounds go in the description.
            if let Some(int64_rules::GreaterThan::Gte(min) | int64_rules::GreaterThan::Gt(min)) = int.greater_than
                && min >= 0
            {
                schema["pattern"] = json!("^[0-9]+$");
            }
        }
        Some(Type::Enum(enumeration)) => {
            if let Kind::Enum(descriptor) = field.kind() {
                enum_schema(&descriptor, enumeration, schema);
            }
        }
        _ => {}
    }
}

fn string_schema(rules: &StringRules, schema: &mut Value) {
    set(schema, "minLength", rules.len.or(rules.min_len).map(Value::from));
    // JSON Schema counts characters; a byte limit is at least that many.
    set(
        schema,
        "maxLength",
        rules.len.or(rules.max_len).or(rules.max_bytes).map(Value::from),
    );
    if let Some(max_bytes) = rules.max_bytes {
        schema["description"] = json!(format!("At most {max_bytes} bytes of UTF-8."));
    }
    match rules.well_known {
        Some(WellKnown::Uuid(true)) => schema["format"] = json!("uuid"),
        Some(WellKnown::Email(true)) => schema["format"] = json!("email"),
        Some(WellKnown::Uri(true)) => schema["format"] = json!("uri"),
        _ => {}
    }
    let pattern = rules
        .pattern
        .clone()
        .or_else(|| rules.prefix.as_ref().map(|prefix| format!("^{}", escape(prefix))));
    if let Some(pattern) = pattern {
        schema["pattern"] = json!(pattern);
    }
    if !rules.r#in.is_empty() {
        schema["enum"] = json!(rules.r#in);
    }
}

fn enum_schema(descriptor: &prost_reflect::EnumDescriptor, rules: &EnumRules, schema: &mut Value) {
    let names: Vec<String> = descriptor
        .values()
        .filter(|value| rules.r#in.is_empty() || rules.r#in.contains(&value.number()))
        .filter(|value| !rules.not_in.contains(&value.number()))
        .map(|value| value.name().to_owned())
        .collect();
    schema["enum"] = json!(names);
}

fn escape(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if "\\.^$|?*+()[]{}".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn set(schema: &mut Value, key: &str, value: Option<Value>) {
    if let Some(value) = value {
        schema[key] = value;
    }
}

fn camel(path: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in path.chars() {
        match c {
            '_' => upper = true,
            c if upper => {
                out.extend(c.to_uppercase());
                upper = false;
            }
            c => out.push(c),
        }
    }
    out
}

/// The fields of `message` that must be present: those whose empty value
/// breaks a rule, found by checking an empty message against the rules.
pub fn required_fields(message: &MessageDescriptor) -> Vec<String> {
    let mut names: Vec<String> = capsule::rules::broken_fields(&DynamicMessage::new(message.clone()))
        .into_iter()
        .filter(|field| !field.contains(['.', '[']))
        .filter_map(|field| {
            message
                .get_field_by_name(&field)
                .map(|field| field.json_name().to_owned())
        })
        .collect();
    names.dedup();
    names
}
