//! One pass over a request body before serde_json reads it, for what serde_json checks only
//! when it builds values, not when it skips them: how deep arrays and objects nest,
//! `\u` escapes that are lone UTF-16 surrogates, and numbers too large for an `f64`.
//!
//! Why: the request reader skips the members keygate does not read (`IgnoredAny`,
//! `RawValue`), and serde_json skips without those checks. Without this pass a body nested
//! 100 000 levels deep in a member keygate ignores was passed on, and bodies that
//! `serde_json::Value` refuses were accepted. The pass keeps no stack (a depth counter
//! suffices: brackets match or serde_json refuses the body anyway), allocates nothing,
//! and recurses nowhere, so 4 MB of `[` costs one linear scan.
//!
//! Exactness: on valid JSON this pass refuses exactly what `Value` would refuse for these
//! three reasons. On invalid JSON it may refuse or not; serde_json refuses such a body
//! afterwards in any case.

/// Nesting serde_json accepts by default: 127 levels; it refuses the 128th array or
/// object inside others (its recursion limit of 128).
pub const MAX_DEPTH: usize = 127;

/// Why a body is refused before it is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooDeep,
    LoneSurrogate,
    NumberOutOfRange,
}

/// Checks `json` for the three things above.
pub fn check(json: &str) -> Result<(), Refusal> {
    let bytes = json.as_bytes();
    let mut depth = 0usize;
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        match byte {
            b'"' => at = string_end(bytes, at + 1)?,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(Refusal::TooDeep);
                }
                at += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                at += 1;
            }
            b'-' | b'0'..=b'9' => at = number_end(json, at)?,
            _ => at += 1,
        }
    }
    Ok(())
}

/// Index just after the string starting at `at` (after its opening quote), checking
/// its `\u` escapes pair surrogates as serde_json requires of a string.
fn string_end(bytes: &[u8], mut at: usize) -> Result<usize, Refusal> {
    loop {
        let Some(found) = memchr::memchr2(b'"', b'\\', &bytes[at.min(bytes.len())..]) else {
            return Ok(bytes.len()); // unterminated: serde_json refuses it
        };
        at += found;
        if bytes[at] == b'"' {
            return Ok(at + 1);
        }
        // An escape: `\` and one byte, or `\uXXXX`.
        if bytes.get(at + 1) != Some(&b'u') {
            at += 2;
            continue;
        }
        let Some(unit) = hex4(bytes, at + 2) else {
            at += 2; // malformed: serde_json refuses it
            continue;
        };
        at += 6;
        match unit {
            0xDC00..=0xDFFF => return Err(Refusal::LoneSurrogate),
            0xD800..=0xDBFF => {
                // serde_json wants `\u` and a trailing surrogate right after.
                let trailing = (bytes.get(at) == Some(&b'\\') && bytes.get(at + 1) == Some(&b'u'))
                    .then(|| hex4(bytes, at + 2))
                    .flatten();
                match trailing {
                    Some(0xDC00..=0xDFFF) => at += 6,
                    _ => return Err(Refusal::LoneSurrogate),
                }
            }
            _ => {}
        }
    }
}

fn hex4(bytes: &[u8], at: usize) -> Option<u16> {
    let digits = bytes.get(at..at + 4)?;
    let text = std::str::from_utf8(digits).ok()?;
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u16::from_str_radix(text, 16).ok()
}

/// Index just after the number starting at `at`. A number that could be too large for
/// an `f64` (an exponent, or more digits than a u64 holds) is read by serde_json itself,
/// so that the boundary is exactly serde_json's.
fn number_end(json: &str, at: usize) -> Result<usize, Refusal> {
    let bytes = json.as_bytes();
    let len = bytes[at..]
        .iter()
        .position(|b| !matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
        .unwrap_or(bytes.len() - at);
    let token = &json[at..at + len];
    let may_overflow = len > 19 || token.bytes().any(|b| matches!(b, b'e' | b'E'));
    if may_overflow
        && is_json_number(token)
        && serde_json::from_str::<serde_json::Number>(token).is_err()
    {
        // A well-formed number serde_json refuses is one out of range.
        return Err(Refusal::NumberOutOfRange);
    }
    Ok(at + len)
}

/// RFC 8259 §6: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
fn is_json_number(token: &str) -> bool {
    let mut rest = token.strip_prefix('-').unwrap_or(token).as_bytes();
    let digits = |rest: &mut &[u8]| {
        let n = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        *rest = &rest[n..];
        n
    };
    let int = digits(&mut rest);
    if int == 0 || (int > 1 && token.trim_start_matches('-').starts_with('0')) {
        return false;
    }
    if let Some(fraction) = rest.strip_prefix(b".") {
        rest = fraction;
        if digits(&mut rest) == 0 {
            return false;
        }
    }
    if let Some(exponent) = rest.strip_prefix(b"e").or_else(|| rest.strip_prefix(b"E")) {
        rest = exponent;
        if let Some(signed) = rest.strip_prefix(b"+").or_else(|| rest.strip_prefix(b"-")) {
            rest = signed;
        }
        if digits(&mut rest) == 0 {
            return false;
        }
    }
    rest.is_empty()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn nesting_is_refused_where_serde_json_refuses_it() {
        assert_eq!(check(&nested(MAX_DEPTH)), Ok(()));
        assert!(serde_json::from_str::<Value>(&nested(MAX_DEPTH)).is_ok());
        assert_eq!(check(&nested(MAX_DEPTH + 1)), Err(Refusal::TooDeep));
        assert!(serde_json::from_str::<Value>(&nested(MAX_DEPTH + 1)).is_err());
        // Brackets inside strings are text.
        let quoted = format!(r#"{{"a":"{}"}}"#, "[".repeat(1000));
        assert_eq!(check(&quoted), Ok(()));
        // Four megabytes of `[`: one pass, no stack.
        assert_eq!(check(&"[".repeat(4 << 20)), Err(Refusal::TooDeep));
    }

    #[test]
    fn surrogates_must_pair_as_serde_json_wants() {
        for (json, ok) in [
            (r#""\ud83d\ude00""#, true),
            (r#""\uD83D\uDE00""#, true),
            (r#""\u00e9 \\ud800""#, true), // an escaped backslash, then text
            (r#""\ud800""#, false),
            (r#""\udc00""#, false),
            (r#""\ud800\u0041""#, false),
            (r#""\ud800\n""#, false),
            (r#""\ud800\ud800""#, false),
        ] {
            assert_eq!(check(json).is_ok(), ok, "{json}");
            assert_eq!(serde_json::from_str::<Value>(json).is_ok(), ok, "{json}");
        }
    }

    #[test]
    fn numbers_out_of_range_are_refused() {
        for (json, ok) in [
            ("1e400", false),
            ("-1E+400", false),
            ("1.7976931348623159e308", false),
            ("1.7976931348623157e308", true),
            ("0e400", true),
            ("1e-400", true),
            ("18446744073709551616", true),
            (&"9".repeat(400), false),
            ("[1e2,2E-3,-0.5]", true),
        ] {
            assert_eq!(check(json).is_ok(), ok, "{json}");
            assert_eq!(serde_json::from_str::<Value>(json).is_ok(), ok, "{json}");
        }
    }

    /// JSON text made of pieces that exercise each check.
    fn pieces() -> impl Strategy<Value = String> {
        let piece = prop::sample::select(vec![
            "[",
            "]",
            "{",
            "}",
            ",",
            ":",
            "\"a\"",
            "\"[{\"",
            "\"\\\"[\"",
            "\"\\\\\"",
            "\"\\ud83d\\ude00\"",
            "\"\\ud800\"",
            "\"\\udc00x\"",
            "\"\\ud800\\u0041\"",
            "\"\\u00e9\\n\"",
            "\"\\\\ud800\"",
            "0",
            "-1",
            "12.5",
            "1e3",
            "-2E-4",
            "1e400",
            "1.7976931348623159e308",
            "-",
            "1e",
            "01",
            "null",
            "true",
            " ",
        ]);
        proptest::collection::vec(piece, 0..60).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        /// On anything serde_json accepts as a `Value`, the check passes; on anything the
        /// check refuses, serde_json refuses too. Arbitrary text never panics it.
        #[test]
        fn agrees_with_serde_json(json in pieces()) {
            let value = serde_json::from_str::<Value>(&json);
            let checked = check(&json);
            if value.is_ok() {
                prop_assert_eq!(checked, Ok(()));
            }
            if checked.is_err() {
                prop_assert!(value.is_err());
            }
        }

        #[test]
        fn never_panics(json in "\\PC{0,200}") {
            let _ = check(&json);
        }
    }
}
