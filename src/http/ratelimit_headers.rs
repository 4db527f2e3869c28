//! Rate-limit answer headers (DESIGN §4, PEERS §1d): OpenAI's
//! `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` for the tightest minute
//! window, with Go-style duration strings (`6m0s`) as OpenAI sends them, and the IETF
//! draft's `RateLimit-Policy` / `RateLimit` fields with one named policy per bucket.

use std::{cell::RefCell, time::Duration};

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use crate::limits::{BucketState, LimitKind, Scope};

/// `1s`, `6m0s`, `1h2m3.5s`, `250ms`, `0s` — Go's `time.Duration` format at ms precision.
pub fn go_duration(d: Duration) -> String {
    let mut out = String::new();
    push_go_duration(&mut out, d);
    out
}

/// [`go_duration`] appended to `out` (the hot path reuses one buffer; no `fmt`).
fn push_go_duration(out: &mut String, d: Duration) {
    let ms = d.as_millis();
    if ms == 0 {
        out.push_str(if d.is_zero() { "0s" } else { "1ms" });
        return;
    }
    let mut number = itoa::Buffer::new();
    if ms < 1000 {
        out.push_str(number.format(ms));
        out.push_str("ms");
        return;
    }
    let hours = ms / 3_600_000;
    let minutes = (ms / 60_000) % 60;
    let seconds = (ms / 1000) % 60;
    let millis = ms % 1000;
    if hours > 0 {
        out.push_str(number.format(hours));
        out.push('h');
    }
    if hours > 0 || minutes > 0 {
        out.push_str(number.format(minutes));
        out.push('m');
    }
    out.push_str(number.format(seconds));
    if millis > 0 {
        // Three digits, trailing zeros dropped: 500 → ".5", 250 → ".25", 5 → ".005".
        let digits = [millis / 100, millis / 10 % 10, millis % 10];
        let significant = digits.iter().rposition(|&d| d != 0).unwrap_or(0) + 1;
        out.push('.');
        out.extend(
            digits[..significant]
                .iter()
                .map(|&d| char::from(b'0' + d as u8)),
        );
    }
    out.push('s');
}

/// Where answer headers go: a `HeaderMap` (the router's answers) or the wire itself (the
/// inference fast path writes them straight into the answer's head).
pub trait HeaderSink {
    /// `value` is digits, a duration or a structured field built here: always a valid
    /// header value.
    fn put(&mut self, name: &'static str, value: &[u8]);
}

impl HeaderSink for HeaderMap {
    fn put(&mut self, name: &'static str, value: &[u8]) {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            self.insert(HeaderName::from_static(name), value);
        }
    }
}

/// OpenAI's headers for the tightest request window (`false`) and token window (`true`).
const OPENAI_HEADERS: [(bool, [&str; 3]); 2] = [
    (
        false,
        [
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ],
    ),
    (
        true,
        [
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
        ],
    ),
];

/// Every `/v1` answer carries these.
pub fn apply(headers: &mut HeaderMap, states: &[BucketState]) {
    write(headers, states);
}

/// [`apply`] into any sink. Built on the hot path, so every value is formatted into one
/// reused buffer and handed over as bytes (no string per header or per bucket).
pub fn write(sink: &mut impl HeaderSink, states: &[BucketState]) {
    let mut number = itoa::Buffer::new();
    let mut text = String::with_capacity(40 * states.len());
    for (tokens, [limit, remaining, reset]) in OPENAI_HEADERS {
        if let Some(state) = BucketState::tightest_minute(states, tokens) {
            sink.put(limit, number.format(state.limit).as_bytes());
            sink.put(remaining, number.format(state.remaining.max(0)).as_bytes());
            text.clear();
            push_go_duration(&mut text, state.reset_after);
            sink.put(reset, text.as_bytes());
        }
    }
    if states.is_empty() {
        return;
    }
    POLICIES.with_borrow_mut(|policies| {
        if !policies.describe(states) {
            policies.rebuild(states);
        }
        sink.put("ratelimit-policy", policies.policy.as_bytes());
        text.clear();
        for (i, state) in states.iter().enumerate() {
            if i > 0 {
                text.push_str(", ");
            }
            text.push_str(policies.name(i));
            text.push_str(";r=");
            text.push_str(number.format(state.remaining.max(0)));
            text.push_str(";t=");
            text.push_str(number.format(state.reset_after.as_secs_f64().ceil() as u64));
        }
        sink.put("ratelimit", text.as_bytes());
    });
}

thread_local! {
    static POLICIES: RefCell<Policies> = RefCell::default();
}

/// What of the IETF fields depends only on which buckets a request has (their scopes,
/// kinds and limits), not on their state: the whole `RateLimit-Policy` value and each
/// bucket's quoted name. Kept per thread and rebuilt only when a request's buckets differ
/// from the last ones, which for clients reusing their keys is rare; formatting them for
/// every answer cost more than the limiter.
#[derive(Default)]
struct Policies {
    buckets: Vec<(Scope, LimitKind, u64)>,
    policy: String,
    names: String,
    /// End of each bucket's name in `names`.
    name_ends: Vec<usize>,
}

impl Policies {
    /// Whether this describes exactly `states`' buckets.
    fn describe(&self, states: &[BucketState]) -> bool {
        self.buckets.len() == states.len()
            && self
                .buckets
                .iter()
                .zip(states)
                .all(|((scope, kind, limit), state)| {
                    *kind == state.kind && *limit == state.limit && *scope == state.scope
                })
    }

    fn rebuild(&mut self, states: &[BucketState]) {
        let mut number = itoa::Buffer::new();
        self.buckets.clear();
        self.policy.clear();
        self.names.clear();
        self.name_ends.clear();
        for (i, state) in states.iter().enumerate() {
            self.buckets.push((state.scope, state.kind, state.limit));
            let start = self.names.len();
            push_policy_name(&mut self.names, state);
            self.name_ends.push(self.names.len());
            if i > 0 {
                self.policy.push_str(", ");
            }
            self.policy.push_str(&self.names[start..]);
            self.policy.push_str(";q=");
            self.policy.push_str(number.format(state.limit));
            self.policy.push_str(";w=");
            self.policy
                .push_str(number.format(state.kind.window().as_secs()));
            self.policy.push_str(if state.kind.is_tokens() {
                ";qu=\"kg-tokens\""
            } else {
                ";qu=\"requests\""
            });
        }
    }

    fn name(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.name_ends[i - 1] };
        &self.names[start..self.name_ends[i]]
    }
}

/// `"rpm"` or `"<model>:rpm"`, quoted. A structured-field string holds printable ASCII
/// without `"` and `\\` (RFC 8941 §3.3.3), so any other byte of a model name becomes `_`.
fn push_policy_name(out: &mut String, state: &BucketState) {
    let plain = |b: u8| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\';
    out.push('"');
    if let Scope::Model(model) = &state.scope {
        if model.bytes().all(plain) {
            out.push_str(model);
        } else {
            out.extend(
                model
                    .bytes()
                    .map(|b| if plain(b) { char::from(b) } else { '_' }),
            );
        }
        out.push(':');
    }
    out.push_str(state.kind.as_str());
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_match_openai() {
        assert_eq!(go_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(go_duration(Duration::from_secs(1)), "1s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(go_duration(Duration::from_secs(3723)), "1h2m3s");
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(Duration::from_micros(10)), "1ms");
        assert_eq!(go_duration(Duration::from_millis(60_005)), "1m0.005s");
        assert_eq!(go_duration(Duration::from_millis(3_600_250)), "1h0m0.25s");
        assert_eq!(go_duration(Duration::from_millis(999)), "999ms");
    }

    #[test]
    fn policy_names_are_quoted_and_sanitised() {
        let states = [
            BucketState {
                kind: crate::limits::LimitKind::Rpm,
                scope: Scope::Global,
                limit: 60,
                remaining: 59,
                reset_after: Duration::from_millis(1500),
            },
            BucketState {
                kind: crate::limits::LimitKind::Tpm,
                scope: Scope::Model("we\"ird\\model é"),
                limit: 1000,
                remaining: -5,
                reset_after: Duration::from_secs(61),
            },
        ];
        let mut headers = HeaderMap::new();
        apply(&mut headers, &states);
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        assert_eq!(get("x-ratelimit-limit-requests"), Some("60"));
        assert_eq!(get("x-ratelimit-remaining-requests"), Some("59"));
        assert_eq!(get("x-ratelimit-reset-requests"), Some("1.5s"));
        assert_eq!(get("x-ratelimit-limit-tokens"), Some("1000"));
        assert_eq!(get("x-ratelimit-remaining-tokens"), Some("0"));
        assert_eq!(get("x-ratelimit-reset-tokens"), Some("1m1s"));
        assert_eq!(
            get("ratelimit-policy"),
            Some("\"rpm\";q=60;w=60;qu=\"requests\", \"we_ird_model __:tpm\";q=1000;w=60;qu=\"kg-tokens\"")
        );
        assert_eq!(
            get("ratelimit"),
            Some("\"rpm\";r=59;t=2, \"we_ird_model __:tpm\";r=0;t=61")
        );
    }

    #[test]
    fn the_policy_follows_the_buckets_of_each_answer() {
        let bucket = |model: Option<&'static str>, limit: u64| BucketState {
            kind: LimitKind::Rpm,
            scope: model.map_or(Scope::Global, Scope::Model),
            limit,
            remaining: 1,
            reset_after: Duration::from_secs(1),
        };
        let policy_of = |states: &[BucketState]| {
            let mut headers = HeaderMap::new();
            apply(&mut headers, states);
            let field = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string()
            };
            (field("ratelimit-policy"), field("ratelimit"))
        };
        let a = [bucket(None, 10), bucket(Some("m1"), 5)];
        let changed_limit = [bucket(None, 11), bucket(Some("m1"), 5)];
        let changed_model = [bucket(None, 10), bucket(Some("m2"), 5)];
        for _ in 0..2 {
            assert_eq!(
                policy_of(&a),
                (
                    "\"rpm\";q=10;w=60;qu=\"requests\", \"m1:rpm\";q=5;w=60;qu=\"requests\""
                        .to_string(),
                    "\"rpm\";r=1;t=1, \"m1:rpm\";r=1;t=1".to_string()
                )
            );
            assert!(policy_of(&changed_limit).0.starts_with("\"rpm\";q=11;"));
            assert!(policy_of(&changed_model).1.ends_with("\"m2:rpm\";r=1;t=1"));
            assert_eq!(policy_of(&a[..1]).1, "\"rpm\";r=1;t=1");
        }
    }
}
