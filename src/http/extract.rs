//! Extractors whose rejections come out in our error shape and name the field at fault
//! (axum's own rejections are plain text). JSON and query strings are parsed with
//! `serde_path_to_error`, so `limits.rpm` rather than "invalid type" reaches the client.

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request},
    http::{header, request::Parts, StatusCode},
};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::error::ApiError;

/// JSON body; bad JSON → 400 `invalid_json`, a bad field → 422 `invalid_field` naming it.
pub struct AppJson<T>(pub T);

impl<S, T> FromRequest<S> for AppJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let JsonBytes(bytes) = JsonBytes::from_request(req, state).await?;
        parse_json(&bytes).map(AppJson)
    }
}

/// The raw bytes of a JSON body (content type checked, size limited), for handlers that
/// look at the document before reading it into a type.
pub struct JsonBytes(pub Bytes);

impl<S> FromRequest<S> for JsonBytes
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(content_type) = req.headers().get(header::CONTENT_TYPE) {
            let content_type = content_type
                .to_str()
                .unwrap_or_default()
                .to_ascii_lowercase();
            if !content_type.starts_with("application/json") && !content_type.contains("+json") {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    format!("expected `Content-Type: application/json`, got `{content_type}`"),
                ));
            }
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            let status = rejection.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(status, "body_too_large", "request body is too large")
                    .with_field("body")
            } else {
                ApiError::new(status, "invalid_body", rejection.body_text())
            }
        })?;
        Ok(JsonBytes(bytes))
    }
}

/// [`parse_json_as_sent`], reading a number with a zero fraction or an exponent (`2.0`,
/// `1e3`) as the integer it equals where an integer is expected: JSON does not tell them
/// apart, and JSON Schema (so the OpenAPI document and the clients generated from it) calls
/// `2.0` an integer. Only a body refused for that alone is read again with such numbers
/// written as integers (which then also holds for them inside `metadata`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    match parse_json_as_sent(bytes) {
        // serde's wording for a float where an integer was expected.
        Err(err) if err.message.contains("invalid type: floating point") => {
            match whole_numbers_as_integers(bytes) {
                Some(rewritten) => parse_json_as_sent(&rewritten).map_err(|_| err),
                None => Err(err),
            }
        }
        other => other,
    }
}

/// The document with every number that equals an integer (and is exactly representable,
/// |n| ≤ 2^53) written as that integer; `None` when there is none or it is not JSON.
fn whole_numbers_as_integers(bytes: &[u8]) -> Option<Vec<u8>> {
    fn rewrite(value: &mut serde_json::Value) -> bool {
        const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
        match value {
            serde_json::Value::Number(n) if !(n.is_i64() || n.is_u64()) => match n.as_f64() {
                Some(f) if f.fract() == 0.0 && f.abs() <= EXACT => {
                    *value = serde_json::Value::from(f as i64);
                    true
                }
                _ => false,
            },
            serde_json::Value::Array(items) => {
                let mut changed = false;
                for item in items {
                    changed |= rewrite(item);
                }
                changed
            }
            serde_json::Value::Object(fields) => {
                let mut changed = false;
                for field in fields.values_mut() {
                    changed |= rewrite(field);
                }
                changed
            }
            _ => false,
        }
    }
    let mut document: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    if !rewrite(&mut document) {
        return None;
    }
    serde_json::to_vec(&document).ok()
}

/// A JSON body read exactly as sent into `T`, refusals naming the field at fault.
fn parse_json_as_sent<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // JSON text is UTF-8 (RFC 8259 §8.1). Checked first and whole: serde_json reports bad
    // bytes only inside strings, and in terms that say nothing about encodings.
    if let Err(err) = std::str::from_utf8(bytes) {
        return Err(invalid_json(
            "body",
            format!(
                "request body is not valid UTF-8 (at byte {})",
                err.valid_up_to()
            ),
        ));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(invalid_json(
            "body",
            "request body is empty; expected a JSON object",
        ));
    }
    // serde lets a derived struct be read from a JSON array (fields by position), so
    // `["name"]` would pass for `{"name": …}`; our bodies are objects, nothing else.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(ApiError::invalid_field(
            "body",
            "expected a JSON object, got an array",
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|err| refusal(err.path().to_string(), err.into_inner(), bytes))?;
    deserializer
        .end()
        .map_err(|err| invalid_json("body", format!("request body is not valid JSON: {err}")))?;
    Ok(value)
}

fn invalid_json(field: impl Into<String>, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", message).with_field(field)
}

/// What was wrong with a body serde_json refused, at `path` (`.` for the document itself).
/// serde_json calls several different problems "syntax"; each is named as what it is.
fn refusal(path: String, inner: serde_json::Error, bytes: &[u8]) -> ApiError {
    let at_root = matches!(path.as_str(), "." | "");
    let message = inner.to_string();
    let problem = strip_position(&message);
    if inner.is_data() {
        return ApiError::invalid_field(field_name(&path, &message), problem);
    }
    let field = if at_root { "body".to_string() } else { path };
    if problem == "number out of range" {
        // Valid JSON grammar, but no number the field's type can hold (`1e400`).
        return ApiError::invalid_field(field, "number out of range");
    }
    if problem.contains("surrogate") || problem == "unexpected end of hex escape" {
        // `"\ud800"`: a UTF-16 half without its other half is no character at all.
        return invalid_json(
            field,
            format!(
                "invalid unicode escape (lone surrogate) at line {} column {}",
                inner.line(),
                inner.column()
            ),
        );
    }
    if inner.is_syntax()
        && !at_root
        && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
    {
        // The document is valid JSON, so this "syntax" error is serde_json refusing a
        // value of the wrong type for an enum (`"kind": 1`): name the field.
        return ApiError::invalid_field(
            field,
            "has the wrong type (expected one of the documented string values)",
        );
    }
    invalid_json("body", format!("request body is not valid JSON: {inner}"))
}

/// The name in a serde message about an unknown, missing or repeated field
/// (`unknown field `foo``).
fn named_field(message: &str) -> Option<&str> {
    ["unknown field `", "missing field `", "duplicate field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next())
}

/// Fails when any of `fields` of the body object is a JSON array: serde reads a derived
/// struct from an array too (fields by position), so `"limits": [1]` would pass as
/// `{"rpm": 1}`. Entries of `lists` are checked one by one.
pub fn require_objects(
    body: &serde_json::Value,
    fields: &[&str],
    lists: &[&str],
) -> Result<(), ApiError> {
    let positional =
        |field: String| ApiError::invalid_field(field, "expected a JSON object, got an array");
    for field in fields {
        if body.get(*field).is_some_and(serde_json::Value::is_array) {
            return Err(positional((*field).to_string()));
        }
    }
    for list in lists {
        if let Some(serde_json::Value::Array(entries)) = body.get(*list) {
            if let Some(i) = entries.iter().position(serde_json::Value::is_array) {
                return Err(positional(format!("{list}[{i}]")));
            }
        }
    }
    Ok(())
}

/// The field a serde data error is about. A missing field is reported at its parent's
/// path, with its name in the message (`missing field `foo``); an unknown or repeated key
/// is already the last segment of the path.
fn field_name(path: &str, message: &str) -> String {
    match (named_field(message), path) {
        (Some(name), "." | "") => name.to_string(),
        (Some(name), path) if path == name || path.ends_with(&format!(".{name}")) => {
            path.to_string()
        }
        (Some(name), parent) => format!("{parent}.{name}"),
        (None, "." | "") => "body".to_string(),
        (None, path) => path.to_string(),
    }
}

fn strip_position(message: &str) -> String {
    match message.find(" at line ") {
        Some(at) => message[..at].to_string(),
        None => message.to_string(),
    }
}

/// Query string; a bad parameter → 422 naming it.
pub struct AppQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for AppQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let deserializer = serde_urlencoded::Deserializer::new(form_urlencoded_parse(query));
        serde_path_to_error::deserialize(deserializer)
            .map(AppQuery)
            .map_err(|err| {
                let path = err.path().to_string();
                let message = err.into_inner().to_string();
                ApiError::invalid_field(field_name(&path, &message), message)
            })
    }
}

fn form_urlencoded_parse(query: &str) -> form_urlencoded::Parse<'_> {
    form_urlencoded::parse(query.as_bytes())
}

/// Parses an id from the path; a malformed one is a 400 naming `id`, never a 500.
pub fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            format!(
                "`{}` is not a valid id (expected a UUID)",
                raw.chars().take(64).collect::<String>()
            ),
        )
        .with_field("id")
    })
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        rpm: Option<u64>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        limits: Option<Inner>,
    }

    fn field_of(json: &str) -> (StatusCode, Option<String>) {
        let err = parse_json::<Body>(json.as_bytes()).unwrap_err();
        (err.status, err.field)
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            field_of(r#"{"name": 5}"#),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("name".into()))
        );
        assert_eq!(
            field_of(r#"{"name": "a", "limits": {"rpm": -1}}"#)
                .1
                .as_deref(),
            Some("limits.rpm")
        );
        assert_eq!(
            field_of(r#"{"name": "a", "colour": 1}"#).1.as_deref(),
            Some("colour")
        );
        assert_eq!(
            field_of(r#"{"name": "a", "limits": {"rmp": 1}}"#)
                .1
                .as_deref(),
            Some("limits.rmp")
        );
        assert_eq!(field_of(r#"{}"#).1.as_deref(), Some("name"));
        assert_eq!(field_of(r#"{"name": "a""#).0, StatusCode::BAD_REQUEST);
        assert_eq!(field_of("").0, StatusCode::BAD_REQUEST);
        assert_eq!(
            field_of(r#"{"name": "a"} trailing"#).0,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn whole_numbers_are_integers() {
        let body = parse_json::<Body>(br#"{"name": "a", "limits": {"rpm": 5.0}}"#).unwrap();
        assert_eq!(body.limits.unwrap().rpm, Some(5));
        let body = parse_json::<Body>(br#"{"name": "a", "limits": {"rpm": 1e3}}"#).unwrap();
        assert_eq!(body.limits.unwrap().rpm, Some(1000));
        assert_eq!(
            field_of(r#"{"name": "a", "limits": {"rpm": 5.5}}"#),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("limits.rpm".into()))
        );
        assert_eq!(
            field_of(r#"{"name": "a", "limits": {"rpm": -1.0}}"#)
                .1
                .as_deref(),
            Some("limits.rpm")
        );
    }

    fn message_of(json: &[u8]) -> (StatusCode, Option<String>, String) {
        let err = parse_json::<Body>(json).unwrap_err();
        (err.status, err.field, err.message)
    }

    #[test]
    fn errors_name_the_real_problem() {
        let (status, field, message) = message_of(b"{\"name\": \"\xc3\"}");
        assert_eq!(
            (status, field.as_deref()),
            (StatusCode::BAD_REQUEST, Some("body"))
        );
        assert_eq!(message, "request body is not valid UTF-8 (at byte 10)");

        for surrogate in [
            &br#"{"name": "\ud800"}"#[..],
            br#"{"name": "\udfff"}"#,
            br#"{"name": "\ud800\u0041"}"#,
        ] {
            let (status, field, message) = message_of(surrogate);
            assert_eq!(
                (status, field.as_deref()),
                (StatusCode::BAD_REQUEST, Some("name"))
            );
            assert!(
                message.starts_with("invalid unicode escape (lone surrogate) at line 1 column "),
                "{message}"
            );
        }
        // A valid pair is one character.
        assert!(parse_json::<Body>(br#"{"name": "\ud83d\ude00"}"#).is_ok());

        let (status, field, message) = message_of(br#"{"name": "a", "limits": {"rpm": 1e400}}"#);
        assert_eq!(
            (status, field.as_deref()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("limits.rpm"))
        );
        assert_eq!(message, "`limits.rpm`: number out of range");
    }
}
