//! The client's request headers as the gateway reads them: a `HeaderMap` (requests served
//! by hyper and the router) or the raw header lines of an HTTP/1 head (the inference fast
//! path, which forwards them as received instead of building a map: on the hot path,
//! building one cost more than checking the key). And the rules for which headers cross
//! the proxy in each direction ([`Forwarding`], [`answer_headers`]).

use std::ops::Range;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue};

use crate::keys::presented::KEY_HEADERS;

/// Request headers never sent upstream (`name` in any case): the client's own key
/// ([`KEY_HEADERS`]), hop-by-hop headers, and anything that would change the answer's
/// encoding or identity. Run for every header of every request: one lower-casing copy,
/// then comparisons that mostly stop at the length.
pub fn is_stripped(name: &[u8]) -> bool {
    const LONGEST: usize = "proxy-authorization".len();
    if name.len() > LONGEST {
        return false;
    }
    let mut lower = [0u8; LONGEST];
    for (to, from) in lower.iter_mut().zip(name) {
        *to = from.to_ascii_lowercase();
    }
    let lower = &lower[..name.len()];
    KEY_HEADERS.iter().any(|key| key.as_bytes() == lower)
        || matches!(
            lower,
            b"host"
                | b"content-length"
                | b"connection"
                | b"keep-alive"
                | b"proxy-authorization"
                | b"proxy-authenticate"
                | b"proxy-connection"
                | b"te"
                | b"trailer"
                | b"transfer-encoding"
                | b"upgrade"
                | b"expect"
                | b"accept-encoding"
                | b"cookie"
                | b"openai-organization"
                | b"openai-project"
                | b"x-forwarded-for"
                | b"x-real-ip"
                | b"forwarded"
        )
}

/// Which of a request's headers go upstream: not the stripped ones, not those its
/// `Connection` header names (they are hop-by-hop by the client's word, RFC 9110
/// §7.6.1), and no name with `_`: nginx drops those by default, because a server that
/// maps `_` to `-` would read `Transfer_Encoding` as `Transfer-Encoding`. `Expect` is
/// never forwarded either: keygate has the whole body before it sends the request.
pub struct Forwarding<'a> {
    /// Names listed in `Connection` besides `close` and `keep-alive` (usually none, and
    /// then nothing is allocated).
    nominated: Vec<&'a [u8]>,
}

impl<'a> Forwarding<'a> {
    pub fn of(lines: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Self {
        let nominated = lines
            .filter(|(name, _)| name.eq_ignore_ascii_case(b"connection"))
            .flat_map(|(_, value)| connection_options(value))
            .filter(|option| {
                !option.eq_ignore_ascii_case(b"close")
                    && !option.eq_ignore_ascii_case(b"keep-alive")
            })
            .collect();
        Forwarding { nominated }
    }

    pub fn forwards(&self, name: &[u8]) -> bool {
        !is_stripped(name)
            && !name.contains(&b'_')
            && !self
                .nominated
                .iter()
                .any(|option| option.eq_ignore_ascii_case(name))
    }
}

/// The comma-separated options of a `Connection` value, trimmed, empty ones left out.
fn connection_options(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|option| !option.is_empty())
}

/// The upstream's answer headers as passed back: without those [`keep_answer_header`]
/// drops or the answer's `Connection` names, and with the upstream's `x-request-id`
/// renamed. The client's `x-request-id` is keygate's (it is in keygate's logs); the
/// upstream's is kept under its own name for support tickets upstream.
pub fn answer_headers(mut upstream: HeaderMap) -> HeaderMap {
    // The framing and the date are keygate's to set, and these are almost always there:
    // removed here so that the usual answer passes on as it is, without a copy.
    upstream.remove(header::CONTENT_LENGTH);
    upstream.remove(header::TRANSFER_ENCODING);
    upstream.remove(header::DATE);
    let nominated: Vec<HeaderName> = upstream
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| connection_options(value.as_bytes()))
        .filter_map(|option| HeaderName::from_bytes(option).ok())
        .filter(keep_answer_header)
        .collect();
    let passes = |name: &HeaderName| {
        name.as_str() != "x-request-id" && keep_answer_header(name) && !nominated.contains(name)
    };
    if upstream.keys().all(passes) {
        return upstream;
    }
    let mut headers = HeaderMap::with_capacity(upstream.len());
    for (name, value) in &upstream {
        if name.as_str() == "x-request-id" {
            headers.append(
                HeaderName::from_static("x-upstream-request-id"),
                value.clone(),
            );
        } else if passes(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
}

/// Answer headers never passed back: hop-by-hop, lengths we recompute, the upstream's
/// own rate-limit view (the client's limits are keygate's), and its `date`: keygate
/// dates every answer itself, and `date` is a singleton field (RFC 9110 §6.6.1), so
/// passing the upstream's on would send two (nginx's `proxy_pass` drops it too).
fn keep_answer_header(name: &HeaderName) -> bool {
    let name = name.as_str();
    !matches!(
        name,
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "content-length"
            | "content-encoding"
            | "date"
            | "trailer"
            | "upgrade"
            | "set-cookie"
            | "proxy-authenticate"
            | "proxy-connection"
            | "retry-after"
    ) && !name.starts_with("x-ratelimit")
        && !name.starts_with("ratelimit")
}

pub enum RequestHeaders {
    Map(HeaderMap),
    Raw(RawHeaders),
}

/// Header lines as received: the head's bytes and where each name and value is in them.
/// Names keep the client's case. The HTTP/1 parser has checked every name is a token and
/// no value holds CR, LF or NUL.
pub struct RawHeaders {
    head: Bytes,
    lines: Vec<(Range<u32>, Range<u32>)>,
}

impl RawHeaders {
    /// `lines` are (name, value) ranges in `head`; a range outside it reads as empty.
    pub fn new(head: Bytes, lines: Vec<(Range<u32>, Range<u32>)>) -> Self {
        RawHeaders { head, lines }
    }

    fn bytes(&self, range: &Range<u32>) -> &[u8] {
        self.head
            .get(range.start as usize..range.end as usize)
            .unwrap_or_default()
    }

    fn line(&self, (name, value): &(Range<u32>, Range<u32>)) -> (&[u8], &[u8]) {
        (self.bytes(name), self.bytes(value))
    }

    /// The value of the first line named `name` (any case).
    fn find(&self, name: &str) -> Option<&Range<u32>> {
        self.lines
            .iter()
            .find(|(line_name, _)| self.bytes(line_name).eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, value)| value)
    }

    /// The value of `name` as a `HeaderValue` sharing the head's bytes (no copy).
    pub fn value(&self, name: &str) -> Option<HeaderValue> {
        let value = self.find(name)?;
        let range = value.start as usize..value.end as usize;
        HeaderValue::from_maybe_shared(self.head.slice(range)).ok()
    }
}

impl RequestHeaders {
    /// The first value of `name` (given in lower case), if any.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        match self {
            RequestHeaders::Map(map) => map.get(name).map(HeaderValue::as_bytes),
            RequestHeaders::Raw(raw) => raw.find(name).map(|value| raw.bytes(value)),
        }
    }

    /// The first value of `name` as text, when it is visible ASCII.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.get(name)
            .filter(|value| {
                value
                    .iter()
                    .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
            })
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    /// Every header line in order, as (name, value); names are tokens (ASCII).
    pub fn lines(&self) -> Lines<'_> {
        match self {
            RequestHeaders::Map(map) => Lines::Map(map.iter()),
            RequestHeaders::Raw(raw) => Lines::Raw(raw, 0),
        }
    }
}

impl From<HeaderMap> for RequestHeaders {
    fn from(map: HeaderMap) -> Self {
        RequestHeaders::Map(map)
    }
}

pub enum Lines<'a> {
    Map(header::Iter<'a, HeaderValue>),
    Raw(&'a RawHeaders, usize),
}

impl<'a> Iterator for Lines<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Lines::Map(lines) => lines
                .next()
                .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes())),
            Lines::Raw(raw, next) => {
                let line = raw.lines.get(*next)?;
                *next += 1;
                Some(raw.line(line))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripped_headers_are_recognised_in_any_case_and_nothing_else_is() {
        for name in [
            "Authorization",
            "X-API-KEY",
            "x-aixplain-key",
            "HOST",
            "Proxy-Authorization",
            "OpenAI-Organization",
            "TE",
            "Forwarded",
            "Expect",
        ] {
            assert!(is_stripped(name.as_bytes()), "{name}");
        }
        for name in [
            "x-request-id",
            "content-type",
            "authorizations",
            "x-forwarded-proto",
            "openai-organization-extra",
            "",
        ] {
            assert!(!is_stripped(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn every_header_that_carries_a_key_is_stripped() {
        for name in KEY_HEADERS {
            assert!(is_stripped(name.as_bytes()), "{name}");
            assert!(is_stripped(name.to_ascii_uppercase().as_bytes()), "{name}");
        }
    }

    #[test]
    fn headers_named_in_connection_or_with_underscores_stay_behind() {
        let lines: [(&[u8], &[u8]); 6] = [
            (b"Connection", b"keep-alive, X-Hop ,, close"),
            (b"connection", b"x-other-hop"),
            (b"X-Hop", b"1"),
            (b"Transfer_Encoding", b"chunked"),
            (b"Expect", b"100-continue"),
            (b"X-Kept", b"2"),
        ];
        let forwarding = Forwarding::of(lines.into_iter());
        let forwarded: Vec<&[u8]> = lines
            .iter()
            .map(|(name, _)| *name)
            .filter(|name| forwarding.forwards(name))
            .collect();
        assert_eq!(forwarded, [&b"X-Kept"[..]]);
        assert!(!forwarding.forwards(b"X-OTHER-HOP"));
        assert!(Forwarding::of(std::iter::empty()).forwards(b"x-hop"));
    }

    #[test]
    fn answer_headers_named_in_connection_are_dropped() {
        let mut upstream = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, X-Upstream-Hop, date"),
            ("x-upstream-hop", "secret"),
            ("content-type", "application/json"),
            ("content-length", "12"),
            ("x-request-id", "req_1"),
            ("x-ratelimit-remaining-requests", "9"),
            ("openai-version", "2020-10-01"),
        ] {
            upstream.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let passed = answer_headers(upstream);
        let mut names: Vec<&str> = passed.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["content-type", "openai-version", "x-upstream-request-id"]
        );
        // `keep-alive` is dropped as hop-by-hop, whether named in `Connection` or not.
        let mut usual = HeaderMap::new();
        usual.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        usual.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        assert_eq!(answer_headers(usual).len(), 1);
    }

    fn raw() -> RequestHeaders {
        let head = Bytes::from_static(b"X-Api-Key: k1\r\nAccept: */*\r\nx-api-key: k2\r\n");
        RequestHeaders::Raw(RawHeaders::new(
            head,
            vec![(0..9, 11..13), (15..21, 23..26), (28..37, 39..41)],
        ))
    }

    #[test]
    fn raw_lines_read_like_a_map() {
        let headers = raw();
        assert_eq!(
            headers.get("x-api-key"),
            Some(&b"k1"[..]),
            "the first, any case"
        );
        assert_eq!(headers.text("accept"), Some("*/*"));
        assert_eq!(headers.get("absent"), None);
        let lines: Vec<_> = headers.lines().collect();
        assert_eq!(
            lines,
            [
                (&b"X-Api-Key"[..], &b"k1"[..]),
                (b"Accept", b"*/*"),
                (b"x-api-key", b"k2")
            ]
        );
        let RequestHeaders::Raw(raw) = headers else {
            unreachable!()
        };
        assert_eq!(
            raw.value("ACCEPT").as_ref().map(HeaderValue::as_bytes),
            Some(&b"*/*"[..])
        );
    }

    #[test]
    fn ranges_outside_the_head_read_as_empty() {
        let headers = RequestHeaders::Raw(RawHeaders::new(
            Bytes::from_static(b"a: b"),
            vec![(0..1, 3..99)],
        ));
        assert_eq!(headers.get("a"), Some(&b""[..]));
    }

    #[test]
    fn text_refuses_bytes_that_are_not_visible_ascii() {
        let mut map = HeaderMap::new();
        map.insert(
            "x",
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap_or(HeaderValue::from_static("")),
        );
        assert_eq!(RequestHeaders::Map(map).text("x"), None);
    }
}
