//! The request reader against `serde_json::Value`, its reference: on hand-picked bodies
//! and on generated and mutated ones (proptest; `PROPTEST_CASES` raises the count, see
//! docs/testing.md).

use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;

fn fields(body: &str) -> RequestFields<'_> {
    RequestFields::parse(body.as_bytes()).expect("an object")
}

#[test]
fn fields_read_like_a_value() {
    let body = r#"{"model":"m\u0031","stream":true,"n":"x","max_tokens":-1,"model":"gpt","nested":{"a":[1,2]},"max_completion_tokens":7}"#;
    let read = fields(body);
    let model = read.model.and_then(string);
    assert_eq!(model.as_deref(), Some("gpt"), "the last one wins");
    assert!(read.stream());
    assert_eq!(read.max_output_tokens(), Some(7));
    let read = fields(r#"{"mo\u0064el":"a\"b","max_tokens":-1,"max_tokens":3}"#);
    assert_eq!(read.model.and_then(string).as_deref(), Some("a\"b"));
    assert_eq!(read.max_output_tokens(), Some(3));
    assert_eq!(fields(r#"{"max_tokens":2.5}"#).max_output_tokens(), None);
}

#[test]
fn include_usage_is_read_from_stream_options() {
    assert!(fields(r#"{"stream_options":{"include_usage":true}}"#).wants_usage());
    assert!(
        fields(r#"{"stream_options":{"include_usage":false,"include\u005fusage":true}}"#)
            .wants_usage()
    );
    assert!(
        !fields(r#"{"stream_options":{"include_usage":true,"include_usage":1}}"#).wants_usage()
    );
    assert!(!fields(r#"{"stream_options":null}"#).wants_usage());
}

#[test]
fn other_json_is_refused_with_the_reason() {
    let reason = |body: &[u8]| RequestFields::parse(body).err().map(|err| err.to_string());
    assert_eq!(
        reason(b"[1, 2]").as_deref(),
        Some("request body must be a JSON object")
    );
    assert!(reason(b"{\"a\":").is_some_and(|r| r.contains("EOF")));
    assert!(reason(b"{} x").is_some_and(|r| r.contains("trailing")));
    assert!(reason(b"[1,,2]").is_some_and(|r| r.contains("not valid JSON")));
    assert!(reason(b"{\"a\":\"\xff\"}").is_some_and(|r| r.contains("UTF-8")));
    assert!(reason(br#"{"x":"\ud800"}"#).is_some_and(|r| r.contains("surrogate")));
    assert!(reason(br#"{"temperature":1e400}"#).is_some_and(|r| r.contains("too large")));
    let deep = format!(
        r#"{{"model":"m","x":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(reason(deep.as_bytes()).is_some_and(|r| r.contains("nesting limit")));
}

#[test]
fn stream_and_stream_options_must_have_their_type() {
    let refused = |body: &str| match read_fields(Endpoint::ChatCompletions, body.as_bytes()) {
        Err(InferenceError::InvalidRequest { param, message }) => Some((param, message)),
        _ => None,
    };
    for (body, param) in [
        (r#"{"stream":1}"#, "stream"),
        (r#"{"stream":"true"}"#, "stream"),
        (r#"{"stream":[true]}"#, "stream"),
        (
            r#"{"stream":true,"stream_options":"yes"}"#,
            "stream_options",
        ),
        (r#"{"stream_options":[]}"#, "stream_options"),
    ] {
        let (got, message) = refused(body).expect(body);
        assert_eq!(got.as_deref(), Some(param), "{body}");
        assert!(message.contains(param), "{message}");
    }
    for body in [
        r#"{"stream":true}"#,
        r#"{"stream":false}"#,
        r#"{"stream":null,"stream_options":null}"#,
        r#"{"stream_options":{"include_usage":false}}"#,
    ] {
        assert!(refused(body).is_none(), "{body}");
    }
}

#[test]
fn usage_is_requested_without_touching_the_rest() {
    let body = br#"  { "model": "m", "stream": true }"#;
    let out = with_usage_requested(body).expect("an object");
    let value: Value = serde_json::from_slice(&out).expect("still JSON");
    assert_eq!(
        value,
        json!({"model": "m", "stream": true, "stream_options": {"include_usage": true}})
    );
    assert!(out.ends_with(br#" "model": "m", "stream": true }"#));
    let empty = with_usage_requested(b"{ }").expect("an object");
    assert_eq!(
        serde_json::from_slice::<Value>(&empty).ok(),
        Some(json!({"stream_options": {"include_usage": true}}))
    );
    assert!(with_usage_requested(b"[1]").is_none());
}

/// The body as keygate sends it upstream when the client streams without asking for usage.
fn rewritten(body: &str) -> String {
    let bytes = Bytes::copy_from_slice(body.as_bytes());
    let read = RequestFields::parse(&bytes).expect("an object");
    let out = usage_requested(&bytes, read.stream_options).expect("rewritten");
    String::from_utf8(out.to_vec()).expect("UTF-8")
}

#[test]
fn existing_stream_options_are_rewritten_in_place() {
    assert_eq!(
        rewritten(r#"{"a":[1, 2], "stream_options" : { "x" : 1 , "include_usage":false }, "b":2}"#),
        r#"{"a":[1, 2], "stream_options" : {"x":1,"include_usage":true}, "b":2}"#
    );
    assert_eq!(
        rewritten(r#"{"stream_options":null,"stream":true}"#),
        r#"{"stream_options":{"include_usage":true},"stream":true}"#
    );
    assert_eq!(
        rewritten(r#"{"stream_options":{}}"#),
        r#"{"stream_options":{"include_usage":true}}"#
    );
    // Only the last `stream_options` counts (as in `Value`): that one is rewritten.
    let twice =
        rewritten(r#"{"stream_options":{"a":1},"stream_options":{"incl\u0075de_usage":0}}"#);
    assert_eq!(
        twice,
        r#"{"stream_options":{"a":1},"stream_options":{"include_usage":true}}"#
    );
}

// ---------------------------------------------------------------------------------------
// Generated bodies

/// JSON text (not always valid: escapes may be lone surrogates, numbers out of range)
/// built from pieces that exercise the reader.
fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_string()),
        Just("true".to_string()),
        Just("false".to_string()),
        "-?(0|[1-9][0-9]{0,3})(\\.[0-9]{1,3})?([eE][+-]?[0-9]{1,3})?",
        "\"([a-z ]|\\\\[nt\"\\\\/]|\\\\u00[0-7][0-9a-f]|\\\\u[dD][89abAB][0-9a-f]{2}\\\\u[dD][c-fC-F][0-9a-f]{2}|\\\\u[dD][89a-fA-F][0-9a-f]{2}|é){0,6}\"",
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6)
                .prop_map(|items| format!("[{}]", items.join(","))),
            proptest::collection::vec((name(), inner), 0..6).prop_map(|members| {
                let members: Vec<String> = members
                    .into_iter()
                    .map(|(k, v)| format!("{k}:{v}"))
                    .collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    })
}

/// A member name: mostly one keygate reads (sometimes escaped), else any.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "model", "stream", "stream_options", "include_usage", "max_tokens",
            "max_completion_tokens", "messages", "prompt", "input", "content", "role",
            "name", "text",
        ])
        .prop_map(|name| format!("\"{name}\"")),
        1 => Just(r#""mod\u0065l""#.to_string()),
        1 => "\"[a-z_]{0,8}\"",
    ]
}

/// A chat-shaped body: some of keygate's members with values of any shape.
fn body() -> impl Strategy<Value = String> {
    let message = proptest::collection::vec((name(), json_text()), 0..4).prop_map(|members| {
        let members: Vec<String> = members
            .into_iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect();
        format!("{{{}}}", members.join(","))
    });
    let member = prop_oneof![
        (name(), json_text()).prop_map(|(k, v)| format!("{k}:{v}")),
        proptest::collection::vec(message, 0..4)
            .prop_map(|messages| format!("\"messages\":[{}]", messages.join(","))),
        Just(r#""model":"gpt-4o""#.to_string()),
        Just(r#""stream":true"#.to_string()),
    ];
    proptest::collection::vec(member, 0..6).prop_map(|members| format!("{{{}}}", members.join(",")))
}

/// A body with bytes deleted, replaced or inserted.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let edit = (
        any::<prop::sample::Index>(),
        0u8..3,
        prop::sample::select(b"{}[]\",:\\u0e-9 \xffa".to_vec()),
    );
    (body(), proptest::collection::vec(edit, 1..4)).prop_map(|(body, edits)| {
        let mut bytes = body.into_bytes();
        for (at, kind, byte) in edits {
            let at = at.index(bytes.len() + 1);
            match kind {
                0 if at < bytes.len() => {
                    bytes.remove(at);
                }
                1 if at < bytes.len() => bytes[at] = byte,
                _ => bytes.insert(at, byte),
            }
        }
        bytes
    })
}

/// What `Value` makes of `body`: `Ok(Some(object))`, `Ok(None)` for other JSON, `Err`
/// for what it refuses.
fn reference(body: &[u8]) -> Result<Option<serde_json::Map<String, Value>>, ()> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(Some(object)),
        Ok(_) => Ok(None),
        Err(_) => Err(()),
    }
}

fn agrees(body: &[u8]) -> Result<(), TestCaseError> {
    let read = RequestFields::parse(body);
    match (reference(body), &read) {
        (Ok(Some(object)), Ok(read)) => {
            let model = read
                .model
                .map(|raw| string(raw).map(|text| text.into_owned()));
            let expected = object.get("model").map(|v| v.as_str().map(str::to_owned));
            prop_assert_eq!(model, expected, "model");
            prop_assert_eq!(
                read.stream(),
                object.get("stream") == Some(&Value::Bool(true))
            );
            let include_usage = object
                .get("stream_options")
                .and_then(|options| options.get("include_usage"))
                == Some(&Value::Bool(true));
            prop_assert_eq!(read.wants_usage(), include_usage);
            let max = ["max_completion_tokens", "max_tokens"]
                .iter()
                .find_map(|name| object.get(*name).and_then(Value::as_u64));
            prop_assert_eq!(read.max_output_tokens(), max);
            for (name, raw) in [
                ("messages", read.messages),
                ("prompt", read.prompt),
                ("input", read.input),
            ] {
                let parsed = raw.map(|raw| serde_json::from_str::<Value>(raw.get()).ok());
                prop_assert_eq!(
                    parsed,
                    object.get(name).map(|v| Some(v.clone())),
                    "{}",
                    name
                );
            }
        }
        (Ok(None), Err(BodyError::NotAnObject)) => {}
        (Err(()), Err(err)) if !matches!(err, BodyError::NotAnObject) => {}
        (expected, _) => {
            return Err(TestCaseError::fail(format!(
                "Value: {:?}, keygate: {:?}, body: {}",
                expected.map(|o| o.is_some()),
                read.as_ref().err(),
                String::from_utf8_lossy(body)
            )))
        }
    }
    Ok(())
}

proptest! {
    /// Whatever `Value` accepts as an object is read the same; whatever it refuses is
    /// refused; other JSON is "not an object".
    #[test]
    fn generated_bodies_read_as_a_value_reads_them(body in body()) {
        agrees(body.as_bytes())?;
    }

    #[test]
    fn mutated_bodies_are_refused_exactly_when_a_value_refuses_them(body in mutated()) {
        agrees(&body)?;
    }

    /// The rewritten body is the same JSON with `stream_options.include_usage` true.
    #[test]
    fn usage_is_requested_in_any_body(body in body()) {
        let bytes = Bytes::from(body);
        let Ok(read) = RequestFields::parse(&bytes) else { return Ok(()) };
        if read.check_types().is_err() {
            return Ok(());
        }
        let out = usage_requested(&bytes, read.stream_options).expect("rewritten");
        let Value::Object(mut expected) = serde_json::from_slice::<Value>(&bytes).expect("valid") else {
            unreachable!("read as an object")
        };
        let options = expected.entry("stream_options").or_insert(json!({}));
        if options.is_null() {
            *options = json!({});
        }
        options["include_usage"] = json!(true);
        prop_assert_eq!(serde_json::from_slice::<Value>(&out).ok(), Some(Value::Object(expected)));
    }

    /// With `model_mapping` too: the same JSON with the upstream's model name as well, in
    /// one rewrite, whichever of the two members comes first.
    #[test]
    fn the_model_is_renamed_with_usage_requested(body in body()) {
        let bytes = Bytes::from(body);
        let Ok(read) = RequestFields::parse(&bytes) else { return Ok(()) };
        let Some(model) = read.model else { return Ok(()) };
        if read.check_types().is_err() {
            return Ok(());
        }
        let mapped = "eu/\"gpt\"\u{e9}";
        let out = rewrite(&bytes, Some(read.stream_options), Some((model, mapped))).expect("rewritten");
        let Value::Object(mut expected) = serde_json::from_slice::<Value>(&bytes).expect("valid") else {
            unreachable!("read as an object")
        };
        expected.insert("model".into(), json!(mapped));
        let options = expected.entry("stream_options").or_insert(json!({}));
        if options.is_null() {
            *options = json!({});
        }
        options["include_usage"] = json!(true);
        prop_assert_eq!(serde_json::from_slice::<Value>(&out).ok(), Some(Value::Object(expected)));
    }
}

#[test]
fn only_the_model_is_renamed_when_usage_is_not_asked() {
    let body = Bytes::from_static(br#"{"stream":false, "model" : "gpt-4o","n":1}"#);
    let read = RequestFields::parse(&body).expect("an object");
    let out = rewrite(&body, None, read.model.map(|m| (m, "azure-gpt4o-eu"))).expect("rewritten");
    assert_eq!(
        &out[..],
        br#"{"stream":false, "model" : "azure-gpt4o-eu","n":1}"#
    );
}
