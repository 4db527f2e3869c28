//! Rate-limit answer headers (DESIGN §4, PEERS §1d): OpenAI's
//! `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` for the tightest minute
//! window, with Go-style duration strings (`6m0s`) as OpenAI sends them, and the IETF
//! draft's `RateLimit-Policy` / `RateLimit` fields with one named policy per bucket.

use std::{fmt::Write, time::Duration};

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use crate::limits::{BucketState, Scope};

/// `1s`, `6m0s`, `1h2m3.5s`, `250ms`, `0s` — Go's `time.Duration` format at ms precision.
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return if d.is_zero() {
            "0s".into()
        } else {
            "1ms".into()
        };
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let hours = ms / 3_600_000;
    let minutes = (ms / 60_000) % 60;
    let seconds = (ms / 1000) % 60;
    let millis = ms % 1000;
    let mut out = String::new();
    if hours > 0 {
        let _ = write!(out, "{hours}h");
    }
    if hours > 0 || minutes > 0 {
        let _ = write!(out, "{minutes}m");
    }
    if millis == 0 {
        let _ = write!(out, "{seconds}s");
    } else {
        let fraction = format!("{millis:03}");
        let _ = write!(out, "{seconds}.{}s", fraction.trim_end_matches('0'));
    }
    out
}

fn set(headers: &mut HeaderMap, name: &'static str, value: String) {
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

pub fn apply(headers: &mut HeaderMap, states: &[BucketState]) {
    for (tokens, suffix) in [(false, "requests"), (true, "tokens")] {
        if let Some(state) = BucketState::tightest_minute(states, tokens) {
            let (limit, remaining, reset) = match suffix {
                "requests" => (
                    "x-ratelimit-limit-requests",
                    "x-ratelimit-remaining-requests",
                    "x-ratelimit-reset-requests",
                ),
                _ => (
                    "x-ratelimit-limit-tokens",
                    "x-ratelimit-remaining-tokens",
                    "x-ratelimit-reset-tokens",
                ),
            };
            set(headers, limit, state.limit.to_string());
            set(headers, remaining, state.remaining.max(0).to_string());
            set(headers, reset, go_duration(state.reset_after));
        }
    }
    if states.is_empty() {
        return;
    }
    let mut policy = String::new();
    let mut current = String::new();
    for state in states {
        let name = match &state.scope {
            Scope::Global => state.kind.as_str().to_string(),
            Scope::Model(model) => format!(
                "{}:{}",
                model.replace(['"', '\\'], "_"),
                state.kind.as_str()
            ),
        };
        let unit = if state.kind.is_tokens() {
            ";qu=\"kg-tokens\""
        } else {
            ";qu=\"requests\""
        };
        if !policy.is_empty() {
            policy.push_str(", ");
            current.push_str(", ");
        }
        let _ = write!(
            policy,
            "\"{name}\";q={};w={}{unit}",
            state.limit,
            state.kind.window().as_secs()
        );
        let _ = write!(
            current,
            "\"{name}\";r={};t={}",
            state.remaining.max(0),
            state.reset_after.as_secs_f64().ceil() as u64
        );
    }
    set(headers, "ratelimit-policy", policy);
    set(headers, "ratelimit", current);
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
    }
}
