//! Wall-clock time as the stores keep it: UTC, whole microseconds. Every timestamp that
//! is stored goes through `now` or `truncate`, so a value reads back exactly as it was
//! answered at creation.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};

pub fn now() -> DateTime<Utc> {
    truncate(Utc::now())
}

pub fn truncate(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(TimeDelta::microseconds(1)).unwrap_or(at)
}
