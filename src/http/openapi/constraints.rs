//! The limits the server enforces on request fields, written into the document's schemas
//! from the constants the validation itself uses (`keys::input`, the compatibility wire
//! modules), so the two cannot drift: name rules as a `pattern`, list sizes as `maxItems`,
//! number ranges as `minimum`/`maximum`, and `null` removed where the server refuses it.
//!
//! Only what JSON Schema can say is here. Rules it cannot say (an expiry in the future,
//! model names unique within `model_limits`, IP/CIDR syntax, metadata size in bytes, the
//! aiXplain body `id` equal to the path's) are in the fields' descriptions and answered
//! with 422 (400 on the Venice surface) naming the field.

use serde_json::{json, Map, Value};

use crate::{
    http::compat::venice::wire::{MAX_IP_ENTRIES as VENICE_MAX_IP_ENTRIES, MAX_IP_ENTRY_CHARS},
    keys::input::{
        MAX_IP_ENTRIES, MAX_LIMIT, MAX_MODELS, MAX_NAME_CHARS, MAX_PARALLEL, MODEL_NAME_PATTERN,
        NAME_PATTERN,
    },
};

/// A model name: 1 to 200 characters, not only white space, all visible
/// (`keys::input::validate_model_name`).
fn model_name() -> Value {
    json!({
        "minLength": 1,
        "maxLength": MAX_NAME_CHARS,
        "pattern": MODEL_NAME_PATTERN,
    })
}

fn key_name() -> Value {
    json!({ "minLength": 1, "pattern": NAME_PATTERN })
}

/// Applies every constraint to `document` (the whole OpenAPI document as JSON).
pub fn add_constraints(document: &mut Value) {
    // aiXplain's model-path lookup reads its path as a model name.
    if let Some(parameters) = document
        .pointer_mut("/paths/~1v2~1models~1{path}/get/parameters")
        .and_then(Value::as_array_mut)
    {
        for parameter in parameters.iter_mut().filter(|p| p["name"] == "path") {
            merge(&mut parameter["schema"], &model_name());
        }
    }
    let Some(schemas) = document
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let limit = json!({ "maximum": MAX_LIMIT });
    for schema in [
        "Limits",
        "ModelLimits",
        "AixplainLimitsInput",
        "AixplainAssetLimitsInput",
    ] {
        for field in ["rpm", "rpd", "tpm", "tpd"] {
            constrain(schemas, schema, field, &limit);
        }
    }
    constrain(schemas, "ModelLimits", "model", &model_name());
    constrain(
        schemas,
        "Budget",
        "limit_usd",
        &json!({ "minimum": 0, "maximum": 1_000_000_000 }),
    );

    for schema in ["NewKey", "KeyPatch"] {
        constrain(schemas, schema, "name", &key_name());
        constrain(
            schemas,
            schema,
            "max_parallel",
            &json!({ "maximum": MAX_PARALLEL }),
        );
        constrain(
            schemas,
            schema,
            "allowed_models",
            &json!({ "maxItems": MAX_MODELS }),
        );
        constrain_items(schemas, schema, "allowed_models", &model_name());
        constrain(
            schemas,
            schema,
            "model_limits",
            &json!({ "maxItems": MAX_MODELS }),
        );
        constrain(
            schemas,
            schema,
            "ip_allowlist",
            &json!({ "maxItems": MAX_IP_ENTRIES }),
        );
        constrain(
            schemas,
            schema,
            "alert_thresholds",
            &json!({ "maxItems": 10 }),
        );
        constrain_items(
            schemas,
            schema,
            "alert_thresholds",
            &json!({ "exclusiveMinimum": 0, "maximum": 10 }),
        );
    }
    // `name`, `kind` and `fit_max_tokens` cannot be cleared: `null` is refused, not ignored.
    not_null(schemas, "KeyPatch", "name");
    not_null(schemas, "KeyPatch", "kind");
    not_null(schemas, "KeyPatch", "fit_max_tokens");

    for schema in [
        "CreateApiKeyRequest",
        "UpdateApiKeyRequest",
        "Web3CreateApiKeyRequest",
    ] {
        constrain(schemas, schema, "description", &key_name());
        constrain(
            schemas,
            schema,
            "ipAllowlist",
            &json!({ "maxItems": VENICE_MAX_IP_ENTRIES }),
        );
        constrain_items(
            schemas,
            schema,
            "ipAllowlist",
            &json!({ "maxLength": MAX_IP_ENTRY_CHARS }),
        );
    }
    constrain(schemas, "AixplainSaveRequest", "name", &key_name());
    // The SDK echoes the key's `id` back on update; it is never a field to set.
    constrain(
        schemas,
        "AixplainSaveRequest",
        "id",
        &json!({ "readOnly": true }),
    );
    constrain(
        schemas,
        "AixplainSaveRequest",
        "budget",
        &json!({ "minimum": 0, "maximum": 1_000_000_000 }),
    );
    constrain(
        schemas,
        "AixplainAssetLimitsInput",
        "assetId",
        &model_name(),
    );
    not_null(schemas, "AixplainAssetLimitsInput", "assetId");
    required(schemas, "AixplainAssetLimitsInput", "assetId");
}

fn required(schemas: &mut Map<String, Value>, schema: &str, field: &str) {
    let Some(target) = schemas.get_mut(schema).and_then(Value::as_object_mut) else {
        return;
    };
    let list = target.entry("required").or_insert_with(|| json!([]));
    if let Some(list) = list.as_array_mut() {
        if !list.iter().any(|f| f == field) {
            list.push(json!(field));
        }
    }
}

/// The schema of `field` in component `schema`, or of its non-null alternative when it is
/// written `oneOf: [null, …]`.
fn property<'a>(
    schemas: &'a mut Map<String, Value>,
    schema: &str,
    field: &str,
) -> Option<&'a mut Value> {
    schemas
        .get_mut(schema)?
        .get_mut("properties")?
        .get_mut(field)
}

fn constrain(schemas: &mut Map<String, Value>, schema: &str, field: &str, rules: &Value) {
    if let Some(target) = property(schemas, schema, field) {
        merge(target, rules);
    }
}

fn constrain_items(schemas: &mut Map<String, Value>, schema: &str, field: &str, rules: &Value) {
    if let Some(items) = property(schemas, schema, field).and_then(|p| p.get_mut("items")) {
        merge(items, rules);
    }
}

fn merge(target: &mut Value, rules: &Value) {
    if let (Some(target), Some(rules)) = (target.as_object_mut(), rules.as_object()) {
        for (key, value) in rules {
            target.insert(key.clone(), value.clone());
        }
    }
}

/// Removes `null` from what `field` accepts (`type: [T, "null"]` or `oneOf: [null, T]`).
fn not_null(schemas: &mut Map<String, Value>, schema: &str, field: &str) {
    let Some(target) = property(schemas, schema, field).and_then(Value::as_object_mut) else {
        return;
    };
    if let Some(Value::Array(types)) = target.get_mut("type") {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            let only = types[0].clone();
            target.insert("type".into(), only);
        }
    }
    if let Some(Value::Array(alternatives)) = target.remove("oneOf") {
        let mut rest: Vec<Value> = alternatives
            .into_iter()
            .filter(|a| a.get("type") != Some(&json!("null")))
            .collect();
        if rest.len() == 1 {
            if let Some(Value::Object(only)) = rest.pop() {
                for (key, value) in only {
                    target.entry(key).or_insert(value);
                }
            }
        } else {
            target.insert("oneOf".into(), Value::Array(rest));
        }
    }
}
