//! Usage buckets and totals (SQLite).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{id, micros, Lite, SqliteStore};
use crate::store::{
    codec::floor_minute,
    rows::{TotalsRow, UsageBucketRow},
    Granularity, SpendRange, SpendScope, StoreResult, UsageDelta, UsageQuery, UsageRow,
    UsageTotals, USAGE_BATCH_RETENTION,
};

/// The length of a granularity's bucket, in the microseconds timestamps are stored in.
fn bucket_micros(granularity: Granularity) -> i64 {
    const MINUTE: i64 = 60_000_000;
    match granularity {
        Granularity::Minute => MINUTE,
        Granularity::Hour => 60 * MINUTE,
        Granularity::Day => 24 * 60 * MINUTE,
    }
}

pub(super) async fn add_usage_batch(
    store: &SqliteStore,
    batch: Uuid,
    deltas: &[UsageDelta],
) -> StoreResult<bool> {
    if deltas.is_empty() {
        return Ok(true);
    }
    let now = crate::clock::now();
    let mut w = store.begin_write().await?;
    let first_time = sqlx::query(
        "insert into usage_batch (id, applied_at) values (?, ?) on conflict (id) do nothing",
    )
    .bind(id(batch))
    .bind(micros(now))
    .execute(w.conn())
    .await?
    .rows_affected()
        == 1;
    if !first_time {
        return Ok(false);
    }
    for d in deltas {
        sqlx::query(
            "insert into usage_minute
                 (key_id, workspace_id, model, minute, requests, input_tokens, output_tokens, cost_pico)
             values (?, ?, ?, ?, ?, ?, ?, ?)
             on conflict (key_id, model, minute) do update set
                 requests = usage_minute.requests + excluded.requests,
                 input_tokens = usage_minute.input_tokens + excluded.input_tokens,
                 output_tokens = usage_minute.output_tokens + excluded.output_tokens,
                 cost_pico = usage_minute.cost_pico + excluded.cost_pico",
        )
        .bind(id(d.key_id))
        .bind(id(d.workspace_id))
        .bind(&d.model)
        .bind(micros(floor_minute(d.minute)))
        .bind(d.requests)
        .bind(d.input_tokens)
        .bind(d.output_tokens)
        .bind(d.cost_pico)
        .execute(w.conn())
        .await?;
    }
    sqlx::query("delete from usage_batch where applied_at < ?")
        .bind(micros(now - USAGE_BATCH_RETENTION))
        .execute(w.conn())
        .await?;
    w.commit().await?;
    Ok(true)
}

pub(super) async fn usage(store: &SqliteStore, query: &UsageQuery) -> StoreResult<Vec<UsageRow>> {
    // `minute` is never negative (after 1970), so `%` floors it to the bucket start.
    sqlx::query_as::<_, UsageBucketRow<Lite>>(
        "select minute - (minute % ?2) as start,
                model,
                sum(requests) as requests,
                sum(input_tokens) as input_tokens,
                sum(output_tokens) as output_tokens,
                sum(cost_pico) as cost_pico
         from usage_minute
         where key_id = ?1 and minute >= ?3 and minute < ?4 and (?5 is null or model = ?5)
         group by 1, 2
         order by 1, 2",
    )
    .bind(id(query.key_id))
    .bind(bucket_micros(query.granularity))
    .bind(micros(query.from))
    .bind(micros(query.to))
    .bind(&query.model)
    .fetch_all(&store.pool)
    .await?
    .into_iter()
    .map(UsageRow::try_from)
    .collect()
}

pub(super) async fn key_usage_totals(
    store: &SqliteStore,
    key_id: Uuid,
    since: DateTime<Utc>,
    model: Option<&str>,
) -> StoreResult<UsageTotals> {
    let row = sqlx::query_as::<_, TotalsRow>(
        "select coalesce(sum(requests), 0) as requests,
                coalesce(sum(input_tokens), 0) as input_tokens,
                coalesce(sum(output_tokens), 0) as output_tokens,
                coalesce(sum(cost_pico), 0) as cost_pico
         from usage_minute
         where key_id = ?1 and minute >= ?2 and (?3 is null or model = ?3)",
    )
    .bind(id(key_id))
    .bind(micros(since))
    .bind(model)
    .fetch_one(&store.pool)
    .await?;
    Ok(row.into())
}

pub(super) async fn workspace_usage_totals(
    store: &SqliteStore,
    workspace_id: Uuid,
    since: DateTime<Utc>,
) -> StoreResult<UsageTotals> {
    let row = sqlx::query_as::<_, TotalsRow>(
        "select coalesce(sum(requests), 0) as requests,
                coalesce(sum(input_tokens), 0) as input_tokens,
                coalesce(sum(output_tokens), 0) as output_tokens,
                coalesce(sum(cost_pico), 0) as cost_pico
         from usage_minute
         where workspace_id = ? and minute >= ?",
    )
    .bind(id(workspace_id))
    .bind(micros(since))
    .fetch_one(&store.pool)
    .await?;
    Ok(row.into())
}

/// [`Store::spend_in`](crate::store::Store::spend_in): a statement per range. SQLite is in
/// process, so a statement is no round trip and one per range costs what a batched one
/// would.
pub(super) async fn spend_in(
    store: &SqliteStore,
    scope: SpendScope,
    ranges: &[SpendRange],
) -> StoreResult<Vec<i64>> {
    let sql = match scope {
        SpendScope::Key => {
            "select coalesce(sum(cost_pico), 0) from usage_minute
             where key_id = ?1 and minute >= ?2 and (?3 is null or minute < ?3)"
        }
        SpendScope::Workspace => {
            "select coalesce(sum(cost_pico), 0) from usage_minute
             where workspace_id = ?1 and minute >= ?2 and (?3 is null or minute < ?3)"
        }
    };
    let mut spent = Vec::with_capacity(ranges.len());
    for range in ranges {
        let sum: i64 = sqlx::query_scalar(sql)
            .bind(id(range.id))
            .bind(micros(range.from))
            .bind(range.until.map(micros))
            .fetch_one(&store.pool)
            .await?;
        spent.push(sum);
    }
    Ok(spent)
}
