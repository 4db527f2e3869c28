//! The client's request headers as the gateway reads them: a `HeaderMap` (requests served
//! by hyper and the router) or the raw header lines of an HTTP/1 head (the inference fast
//! path, which forwards them as received instead of building a map: on the hot path,
//! building one cost more than checking the key).

use std::ops::Range;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue};

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
