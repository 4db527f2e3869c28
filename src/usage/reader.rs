//! Reading usage back: per-bucket usage of a key, a key's spend, and the log of refused
//! requests, for the native admin API and both compatibility surfaces alike.
//!
//! Every read first has the writer flush what this instance recorded (usage, refusals,
//! `last_used_at`), so a client sees its own requests at once rather than after the next
//! tick. A failed flush is logged and the read goes on with what is stored: stale by at
//! most one flush interval, never an error.

use chrono::{DateTime, Duration, Utc};
use futures::{stream, StreamExt, TryStreamExt};
use rust_decimal::Decimal;
use uuid::Uuid;

use super::{budget::period_bounds, Recorder};
use crate::{
    keys::{model::BudgetPeriod, ApiKey},
    money::pico_to_usd,
    store::{
        DynStore, EventFilter, Granularity, Page, Paged, RateLimitEvent, StoreError, UsageQuery,
        UsageRow,
    },
};

/// Spend reads run this many at a time for a page of keys.
const SPEND_READS_IN_PARALLEL: usize = 8;

/// A usage range a client asked for, before defaults (`to` = now, `from` = 24 hours
/// before `to`, hourly buckets).
#[derive(Debug, Clone, Default)]
pub struct RangeRequest {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub granularity: Option<Granularity>,
    pub model: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The range asked for cannot be answered; `field` names the parameter at fault.
    #[error("`{field}`: {message}")]
    InvalidRange {
        field: &'static str,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A key's spend in USD: the trailing seven days, and the current limit period (its
/// budget's period, or the current UTC day for a key without a budget).
#[derive(Debug, Clone)]
pub struct KeySpend {
    pub trailing_seven_days: Decimal,
    pub current_period: Decimal,
}

/// Longest range one usage query may cover, per granularity (keeps answers bounded).
fn max_range(granularity: Granularity) -> Duration {
    match granularity {
        Granularity::Minute => Duration::days(7),
        Granularity::Hour => Duration::days(93),
        Granularity::Day => Duration::days(3660),
    }
}

/// The one way handlers read usage. Cheap to clone.
#[derive(Clone)]
pub struct UsageReader {
    store: DynStore,
    recorder: Recorder,
}

impl UsageReader {
    pub fn new(store: DynStore, recorder: Recorder) -> Self {
        UsageReader { store, recorder }
    }

    /// Writes what this instance recorded so far, so that what is read next is current.
    pub async fn flush(&self) {
        if let Err(err) = self.recorder.flush_now().await {
            tracing::warn!(error = %err, "usage flush before a read failed");
        }
    }

    /// Usage of `key_id` per bucket and model over `range`, oldest first.
    pub async fn key_usage(
        &self,
        key_id: Uuid,
        range: RangeRequest,
        now: DateTime<Utc>,
    ) -> Result<Vec<UsageRow>, ReadError> {
        let to = range.to.unwrap_or(now);
        let from = range.from.unwrap_or(to - Duration::hours(24));
        let granularity = range.granularity.unwrap_or(Granularity::Hour);
        if from >= to {
            return Err(ReadError::InvalidRange {
                field: "from",
                message: "must be before `to`".into(),
            });
        }
        if to - from > max_range(granularity) {
            return Err(ReadError::InvalidRange {
                field: "from",
                message: format!("the range is too long for granularity {granularity:?}; use a coarser granularity or a shorter range"),
            });
        }
        self.flush().await;
        Ok(self
            .store
            .usage(&UsageQuery {
                key_id,
                from,
                to,
                granularity,
                model: range.model,
            })
            .await?)
    }

    /// Today's (UTC) usage of `key_id`, one row per model.
    pub async fn today(
        &self,
        key_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Vec<UsageRow>, StoreError> {
        self.flush().await;
        let (today, _) = period_bounds(BudgetPeriod::Day, now);
        self.store
            .usage(&UsageQuery {
                key_id,
                from: today,
                to: today + Duration::days(1),
                granularity: Granularity::Day,
                model: None,
            })
            .await
    }

    /// Refused requests of `workspace_id` matching `filter`, newest first.
    pub async fn refusals(
        &self,
        workspace_id: Uuid,
        filter: &EventFilter,
        page: Page,
    ) -> Result<Paged<RateLimitEvent>, StoreError> {
        self.flush().await;
        self.store
            .list_rate_limit_events(workspace_id, filter, page)
            .await
    }

    /// The spend of each of `keys`, in order, read from what is stored (call
    /// [`flush`](Self::flush) first when the keys' own requests must show).
    pub async fn spend_of_each(
        &self,
        keys: &[ApiKey],
        now: DateTime<Utc>,
    ) -> Result<Vec<KeySpend>, StoreError> {
        // Owned inputs: a stream of futures borrowing `self` and `keys` makes the handler's
        // future `Send` only for one lifetime (rustc's higher-ranked lifetime limitation),
        // and axum needs it for all.
        let reads: Vec<(UsageReader, ApiKey)> =
            keys.iter().map(|key| (self.clone(), key.clone())).collect();
        stream::iter(reads)
            .map(|(reader, key)| async move { reader.spend(&key, now).await })
            .buffered(SPEND_READS_IN_PARALLEL)
            .try_collect()
            .await
    }

    /// One key's spend, read from what is stored.
    pub async fn spend(&self, key: &ApiKey, now: DateTime<Utc>) -> Result<KeySpend, StoreError> {
        let week = self
            .store
            .key_usage_totals(key.id, now - Duration::days(7), None)
            .await?;
        let period = key.budget.as_ref().map_or(BudgetPeriod::Day, |b| b.period);
        let (period_start, _) = period_bounds(period, now);
        let current = self
            .store
            .key_usage_totals(key.id, period_start, None)
            .await?;
        Ok(KeySpend {
            trailing_seven_days: pico_to_usd(week.cost_pico),
            current_period: pico_to_usd(current.cost_pico),
        })
    }
}
