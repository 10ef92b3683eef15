//! The `buf.validate` rules of a field in JSON Schema, so the OpenAPI
//! document states what the services enforce ([`capsule::rules`]).

use capsule::rules::{
    CapsuleRule,
    types::{
        EnumRules, FieldRules, Ignore, StringRules, field_rules::Type, int32_rules, int64_rules,
        string_rules::WellKnown, u_int32_rules,
    },
};
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Value, json};

/// Adds the rules declared on `field` to `schema`, the schema of its type.
pub fn constrain(field: &FieldDescriptor, schema: &mut Value) {
    match capsule::rules::capsule_rule(field) {
        Some(CapsuleRule::NewPassword) => refuse_common_passwords(schema),
        Some(CapsuleRule::TimeZone) => {
            schema["enum"] = json!(
                chrono_tz::TZ_VARIANTS
                    .iter()
                    .map(|zone| zone.name())
                    .collect::<Vec<_>>()
            );
        }
        _ => {}
    }
    if let Some(hint) = capsule::rules::field_hint(field) {
        add_description(schema, &format!("The value {hint}."));
    }
    let Some(rules) = capsule::rules::field_rules(field) else {
        return;
    };
    match &rules.r#type {
        Some(Type::Repeated(repeated)) if field.is_list() => {
            set(schema, "minItems", repeated.min_items.map(Value::from));
            set(schema, "maxItems", repeated.max_items.map(Value::from));
            set(
                schema,
                "uniqueItems",
                repeated.unique.filter(|unique| *unique).map(Value::from),
            );
            if let Some(items) = repeated.items.as_deref() {
                scalar(field, items, &mut schema["items"]);
            }
        }
        Some(Type::Map(map)) if field.is_map() => {
            set(schema, "minProperties", map.min_pairs.map(Value::from));
            set(schema, "maxProperties", map.max_pairs.map(Value::from));
            // Open API 3.0 has neither propertyNames nor patternProperties:
            // what a key must be is said in words (the field's hint) and,
            // for tools that read it, as an extension.
            let keys = map.keys.as_deref().and_then(|keys| keys.r#type.as_ref());
            if let Some(Type::String(StringRules {
                pattern: Some(pattern), ..
            })) = keys
            {
                schema["x-key-pattern"] = json!(pattern);
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
        Some(Type::Uint32(int)) => {
            let mut strict = schema.clone();
            if let Some(u_int32_rules::GreaterThan::Gte(min)) = int.greater_than {
                strict["minimum"] = json!(min);
            }
            if let Some(u_int32_rules::GreaterThan::Gt(min)) = int.greater_than {
                strict["minimum"] = json!(u64::from(min) + 1);
            }
            if let Some(u_int32_rules::LessThan::Lte(max)) = int.less_than {
                strict["maximum"] = json!(max);
            }
            if let Some(u_int32_rules::LessThan::Lt(max)) = int.less_than {
                strict["maximum"] = json!(u64::from(max).saturating_sub(1));
            }
            // 0, or everything the rules ask.
            *schema = match empty_allowed {
                true => json!({ "anyOf": [{ "type": "integer", "enum": [0] }, strict] }),
                false => strict,
            };
        }
        Some(Type::Int64(int)) => {
            // int64 travels as a string of digits; "not negative" is said
            // by the pattern, other bounds go in the description.
            if let Some(int64_rules::GreaterThan::Gte(min) | int64_rules::GreaterThan::Gt(min)) = int.greater_than
                && min >= 0
            {
                schema["pattern"] = json!(format!("^(?:{})$", decimal_at_most(i64::MAX.unsigned_abs())));
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

/// A new password: not one of the common ones, in any letter case (a
/// regular expression has no case-insensitive flag in JSON Schema, so each
/// letter is a class of both cases).
fn refuse_common_passwords(schema: &mut Value) {
    let any_case = |password: &str| {
        password
            .chars()
            .map(|c| {
                if c.is_ascii_alphabetic() {
                    format!("[{}{}]", c.to_ascii_lowercase(), c.to_ascii_uppercase())
                } else {
                    escape(&c.to_string())
                }
            })
            .collect::<String>()
    };
    let common: Vec<String> = capsule::rules::COMMON_PASSWORDS
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(any_case)
        .collect();
    schema["not"] = json!({ "pattern": format!("^(?:{})$", common.join("|")) });
    add_description(schema, "Not one of the most common passwords, in any letter case.");
}

/// A regular expression for the decimal numbers from 0 to `max`, without
/// leading zeros: shorter numbers, then those of `max`'s length digit by
/// digit.
pub fn decimal_at_most(max: u64) -> String {
    let digits: Vec<u32> = max.to_string().chars().filter_map(|c| c.to_digit(10)).collect();
    let length = digits.len();
    let mut alternatives = vec!["0".to_owned()];
    if length > 1 {
        alternatives.push(format!("[1-9][0-9]{{0,{}}}", length - 2));
    }
    for (index, &digit) in digits.iter().enumerate() {
        let lowest = u32::from(index == 0);
        if digit > lowest {
            let prefix: String = digits[..index].iter().map(u32::to_string).collect();
            let rest = length - index - 1;
            let tail = if rest > 0 {
                format!("[0-9]{{{rest}}}")
            } else {
                String::new()
            };
            alternatives.push(format!("{prefix}[{lowest}-{}]{tail}", digit - 1));
        }
    }
    if max > 0 {
        alternatives.push(max.to_string());
    }
    alternatives.join("|")
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
        add_description(schema, &format!("At most {max_bytes} bytes of UTF-8."));
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

/// Adds a sentence to the schema's description.
fn add_description(schema: &mut Value, sentence: &str) {
    let text = match schema.get("description").and_then(Value::as_str) {
        Some(before) => format!("{before} {sentence}"),
        None => sentence.to_owned(),
    };
    schema["description"] = json!(text);
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

#[cfg(test)]
mod tests {
    use super::decimal_at_most;

    #[test]
    fn decimal_bounds_take_every_number_up_to_the_bound_and_none_above() {
        for max in [0u64, 7, 10, 19, 100, 4096, 9_223_372_036_854_775_807, u64::MAX] {
            let pattern = regex::Regex::new(&format!("^(?:{})$", decimal_at_most(max))).unwrap();
            let mut probes = vec![0, 1, 9, 10, 11, 99, 100, 101, max / 2];
            probes.extend([max.saturating_sub(1), max]);
            for probe in probes.into_iter().filter(|probe| *probe <= max) {
                assert!(pattern.is_match(&probe.to_string()), "{probe} <= {max}");
            }
            assert!(!pattern.is_match(&format!("{max}0")), "{max}0 > {max}");
            if let Some(above) = max.checked_add(1) {
                assert!(!pattern.is_match(&above.to_string()), "{above} > {max}");
            }
            assert!(!pattern.is_match("01"), "no leading zeros");
            assert!(!pattern.is_match("-1"));
        }
    }
}
