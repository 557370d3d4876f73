//! A JSON Schema check for the schemas schemars generates.
//!
//! It implements the subset of draft 2020-12 that schemars emits (`$ref` into
//! `$defs`, `type`, `const`, `enum`, `properties`, `required`, `items`,
//! `oneOf`/`anyOf`/`allOf`, bounds, `date-time` and `uuid` formats) and refuses
//! any keyword it does not know, rather than pass a schema it cannot check.

use serde_json::{Map, Value};

/// Checks `instance` against the root schema `root`.
pub fn validate(root: &Value, instance: &Value) -> Result<(), String> {
    check(root, root, instance, "$")
}

/// Checks `instance` against `schema` (a subschema of `root`, which holds `$defs`).
fn check(root: &Value, schema: &Value, instance: &Value, path: &str) -> Result<(), String> {
    let schema = match schema {
        Value::Bool(true) => return Ok(()),
        Value::Bool(false) => return Err(format!("{path}: not allowed")),
        Value::Object(schema) => schema,
        other => {
            return Err(format!("{path}: schema {other} is neither an object nor a boolean"));
        }
    };
    for (keyword, value) in schema {
        match keyword.as_str() {
            "$schema" | "$defs" | "title" | "description" | "default" | "examples" => {}
            "$ref" => check(root, resolve(root, value)?, instance, path)?,
            "type" => check_type(value, instance, path)?,
            "const" if instance != value => {
                return Err(format!("{path}: {instance} is not {value}"));
            }
            "const" => {}
            "enum" if !value.as_array().is_some_and(|values| values.contains(instance)) => {
                return Err(format!("{path}: {instance} is not one of {value}"));
            }
            "enum" => {}
            "properties" => {
                if let (Some(properties), Some(object)) = (value.as_object(), instance.as_object()) {
                    for (name, subschema) in properties {
                        if let Some(field) = object.get(name) {
                            check(root, subschema, field, &format!("{path}.{name}"))?;
                        }
                    }
                }
            }
            "required" => {
                if let (Some(required), Some(object)) = (value.as_array(), instance.as_object()) {
                    for name in required.iter().filter_map(Value::as_str) {
                        if !object.contains_key(name) {
                            return Err(format!("{path}: required field {name} is missing"));
                        }
                    }
                }
            }
            "additionalProperties" => check_additional(root, schema, value, instance, path)?,
            "items" => {
                if let Some(items) = instance.as_array() {
                    for (index, item) in items.iter().enumerate() {
                        check(root, value, item, &format!("{path}[{index}]"))?;
                    }
                }
            }
            "minimum" | "maximum" => check_bound(keyword, value, instance, path)?,
            "format" => check_format(value, instance, path)?,
            "allOf" => {
                for subschema in value.as_array().into_iter().flatten() {
                    check(root, subschema, instance, path)?;
                }
            }
            "anyOf" | "oneOf" => {
                let branches = value.as_array().map(Vec::as_slice).unwrap_or_default();
                let errors: Vec<String> =
                    branches.iter().filter_map(|branch| check(root, branch, instance, path).err()).collect();
                let matched = branches.len() - errors.len();
                if matched == 0 {
                    return Err(explain_no_match(root, branches, instance, path));
                }
                if keyword == "oneOf" && matched > 1 {
                    return Err(format!("{path}: matches {matched} oneOf branches, not one"));
                }
            }
            other => {
                return Err(format!("{path}: the schema check does not know the keyword {other}"));
            }
        }
    }
    Ok(())
}

/// Why no branch matched, told briefly: the branch for the instance's `type`
/// tag when there is one, the allowed values for an enum of constants.
fn explain_no_match(root: &Value, branches: &[Value], instance: &Value, path: &str) -> String {
    let tag = instance.get("type");
    if let Some(branch) = branches
        .iter()
        .find(|branch| tag.is_some() && branch["properties"]["type"]["const"] == tag.cloned().unwrap_or_default())
    {
        return check(root, branch, instance, path).err().unwrap_or_default();
    }
    let constants: Vec<String> =
        branches.iter().filter_map(|branch| branch.get("const")).map(Value::to_string).collect();
    if !constants.is_empty() && constants.len() == branches.len() {
        return format!("{path}: {instance} is not one of {}", constants.join(", "));
    }
    let errors: Vec<String> = branches.iter().filter_map(|branch| check(root, branch, instance, path).err()).collect();
    format!("{path}: matches none of [{}]", errors.join("; "))
}

fn resolve<'a>(root: &'a Value, reference: &Value) -> Result<&'a Value, String> {
    let reference = reference.as_str().unwrap_or_default();
    reference
        .strip_prefix('#')
        .and_then(|pointer| root.pointer(pointer))
        .ok_or_else(|| format!("unresolvable $ref {reference}"))
}

fn check_type(expected: &Value, instance: &Value, path: &str) -> Result<(), String> {
    let matches = |name: &str| match name {
        "null" => instance.is_null(),
        "boolean" => instance.is_boolean(),
        "string" => instance.is_string(),
        "object" => instance.is_object(),
        "array" => instance.is_array(),
        "number" => instance.is_number(),
        "integer" => instance.is_i64() || instance.is_u64(),
        _ => false,
    };
    let names: Vec<&str> = match expected {
        Value::String(name) => vec![name.as_str()],
        Value::Array(names) => names.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if names.iter().any(|name| matches(name)) {
        Ok(())
    } else {
        Err(format!("{path}: {instance} is not of type {expected}"))
    }
}

fn check_additional(
    root: &Value,
    schema: &Map<String, Value>,
    additional: &Value,
    instance: &Value,
    path: &str,
) -> Result<(), String> {
    let Some(object) = instance.as_object() else {
        return Ok(());
    };
    let declared = schema.get("properties").and_then(Value::as_object);
    for (name, field) in object {
        if !declared.is_some_and(|properties| properties.contains_key(name)) {
            check(root, additional, field, &format!("{path}.{name}"))?;
        }
    }
    Ok(())
}

fn check_bound(keyword: &str, bound: &Value, instance: &Value, path: &str) -> Result<(), String> {
    let (Some(bound), Some(number)) = (bound.as_f64(), instance.as_f64()) else {
        return Ok(());
    };
    let within = if keyword == "minimum" { number >= bound } else { number <= bound };
    if within { Ok(()) } else { Err(format!("{path}: {number} is outside the {keyword} {bound}")) }
}

fn check_format(format: &Value, instance: &Value, path: &str) -> Result<(), String> {
    let Some(text) = instance.as_str() else {
        return Ok(());
    };
    let valid = match format.as_str().unwrap_or_default() {
        "date-time" => chrono::DateTime::parse_from_rfc3339(text).is_ok(),
        "uuid" => uuid::Uuid::parse_str(text).is_ok(),
        // Integer formats (uint32, int8, ...) come with minimum/maximum.
        _ => true,
    };
    if valid { Ok(()) } else { Err(format!("{path}: {text} is not a valid {format}")) }
}
