//! The path of a pass-through request, made canonical before it is matched against the
//! paths upstreams declare, and forwarded in that form only.
//!
//! Why: `passthrough = ["/moderations"]` admitted `/v1/moderations/../files`, and an
//! upstream that resolves dot segments (nginx does) then served `/v1/files` with the
//! operator's credential. So the path is normalised as RFC 3986 does it (§6.2.2.2:
//! percent-encoded unreserved characters decoded, which turns `%2e` into `.`; §5.2.4:
//! dot segments removed), what cannot be made unambiguous is refused (an encoded `/` or
//! `\` is a separator to some servers and not to others; a `..` above the root has no
//! meaning), and the result has no dot segment left for an upstream to resolve.

use std::fmt::Write;

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRefusal {
    /// `%2F`, `%5C` or `\`.
    EncodedSeparator,
    /// `%` not followed by two hex digits.
    BadEncoding,
    /// A `..` that would leave the root, or a path not starting with `/`.
    AboveRoot,
}

/// `path` (starting with `/`, percent-encoded as received) in canonical form.
pub fn normalize(path: &str) -> Result<String, PathRefusal> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(PathRefusal::AboveRoot);
    };
    let decoded = decode_unreserved(rest)?;
    let mut segments: Vec<&str> = Vec::new();
    let mut parts = decoded.split('/').peekable();
    while let Some(segment) = parts.next() {
        let last = parts.peek().is_none();
        match segment {
            "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathRefusal::AboveRoot);
                }
            }
            _ => {
                segments.push(segment);
                continue;
            }
        }
        // A path ending in a dot segment keeps its trailing slash (`/a/b/..` is `/a/`).
        if last {
            segments.push("");
        }
    }
    let mut normal = String::with_capacity(path.len());
    for segment in &segments {
        normal.push('/');
        normal.push_str(segment);
    }
    if normal.is_empty() {
        normal.push('/');
    }
    Ok(normal)
}

/// `text` with percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) decoded and
/// the other encodings' hex digits in upper case.
fn decode_unreserved(text: &str) -> Result<String, PathRefusal> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(['%', '\\']) {
        out.push_str(&rest[..at]);
        if rest.as_bytes()[at] == b'\\' {
            return Err(PathRefusal::EncodedSeparator);
        }
        let byte = rest
            .get(at + 1..at + 3)
            .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .ok_or(PathRefusal::BadEncoding)?;
        match byte {
            b'/' | b'\\' => return Err(PathRefusal::EncodedSeparator),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(byte));
            }
            _ => {
                let _ = write!(out, "%{byte:02X}");
            }
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Whether the normalised `path` is `declared` or below it, segment by segment
/// (`/moderations/x` is below `/moderations`; `/moderationsX` is not).
pub fn is_within(path: &str, declared: &str) -> bool {
    let declared = declared.trim_end_matches('/');
    path.strip_prefix(declared)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn dot_segments_are_removed_as_rfc_3986_says() {
        for (path, normal) in [
            ("/moderations", "/moderations"),
            ("/moderations/", "/moderations/"),
            ("/moderations/../files", "/files"),
            ("/moderations/%2e%2e/fine_tuning/jobs", "/fine_tuning/jobs"),
            ("/moderations/%2E./x", "/x"),
            ("/a/./b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/a//..", "/a/"),
            ("/a/...", "/a/..."),
            ("/moder%61tions", "/moderations"),
            ("/a%20b/%7e", "/a%20b/~"),
            ("/a%c3%a9", "/a%C3%A9"),
            ("/", "/"),
            ("/.", "/"),
            ("/a/..", "/"),
        ] {
            assert_eq!(normalize(path), Ok(normal.to_owned()), "{path}");
        }
    }

    #[test]
    fn what_cannot_be_made_unambiguous_is_refused() {
        for (path, refusal) in [
            ("/..", PathRefusal::AboveRoot),
            ("/a/../..", PathRefusal::AboveRoot),
            ("/%2e%2e/admin", PathRefusal::AboveRoot),
            ("a", PathRefusal::AboveRoot),
            ("/moderations%2f..%2ffiles", PathRefusal::EncodedSeparator),
            ("/moderations%2F", PathRefusal::EncodedSeparator),
            ("/moderations\\..\\files", PathRefusal::EncodedSeparator),
            ("/moderations%5c", PathRefusal::EncodedSeparator),
            ("/a%2", PathRefusal::BadEncoding),
            ("/a%zz", PathRefusal::BadEncoding),
        ] {
            assert_eq!(normalize(path), Err(refusal), "{path}");
        }
    }

    #[test]
    fn matching_is_by_whole_segments() {
        assert!(is_within("/moderations", "/moderations"));
        assert!(is_within("/moderations/x", "/moderations"));
        assert!(is_within("/moderations/", "/moderations/"));
        assert!(!is_within("/moderationsX", "/moderations"));
        assert!(!is_within("/files", "/moderations"));
    }

    fn paths() -> impl Strategy<Value = String> {
        let segment = prop_oneof![
            Just(""),
            Just("a"),
            Just("moderations"),
            Just("x.y"),
            Just("..."),
            Just("."),
            Just(".."),
            Just("%2e"),
            Just("%2E"),
            Just(".%2e"),
            Just("%2e."),
            Just("%2E%2e"),
        ];
        proptest::collection::vec(segment, 0..8).prop_map(|segments| {
            segments
                .iter()
                .map(|segment| format!("/{segment}"))
                .collect::<String>()
        })
    }

    proptest! {
        /// The `url` crate (WHATWG URL, which also reads `%2e` as `.`) resolves the same
        /// path to the same place whenever keygate accepts it; and what keygate forwards
        /// has no dot segment and normalises to itself.
        #[test]
        fn agrees_with_the_url_crate(path in paths()) {
            let Ok(normal) = normalize(&path) else {
                return Ok(());
            };
            let url = url::Url::parse(&format!("http://upstream/v1{path}")).expect("a URL");
            prop_assert_eq!(url.path(), format!("/v1{normal}"));
            prop_assert!(normal.starts_with('/'));
            prop_assert!(normal.split('/').all(|segment| segment != "." && segment != ".."));
            prop_assert_eq!(normalize(&normal), Ok(normal.clone()));
        }

        /// An accepted path is always within the declared prefix it matched.
        #[test]
        fn accepted_paths_stay_below_their_prefix(path in paths(), declared in paths()) {
            let (Ok(normal), Ok(declared)) = (normalize(&path), normalize(&declared)) else {
                return Ok(());
            };
            if is_within(&normal, &declared) {
                let declared = declared.trim_end_matches('/');
                prop_assert!(normal.starts_with(declared));
                let rest = &normal[declared.len()..];
                prop_assert!(rest.is_empty() || rest.starts_with('/'));
            }
        }

        #[test]
        fn never_panics(path in "\\PC{0,40}") {
            if let Ok(normal) = normalize(&path) {
                prop_assert!(normal.split('/').all(|segment| segment != "." && segment != ".."));
            }
        }
    }
}
