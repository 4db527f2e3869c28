//! Usage buckets and totals (PostgreSQL).

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::Pg;
use crate::store::{
    codec::floor_minute,
    rows::{TotalsRow, UsageBucketRow},
    Granularity, StoreResult, UsageDelta, UsageQuery, UsageRow, UsageTotals, USAGE_BATCH_RETENTION,
};

/// The `date_trunc` field for a granularity.
fn granularity_unit(granularity: Granularity) -> &'static str {
    match granularity {
        Granularity::Minute => "minute",
        Granularity::Hour => "hour",
        Granularity::Day => "day",
    }
}

pub(super) async fn add_usage_batch(
    pool: &PgPool,
    batch: Uuid,
    deltas: &[UsageDelta],
) -> StoreResult<bool> {
    if deltas.is_empty() {
        return Ok(true);
    }
    let now = crate::clock::now();
    let mut tx = pool.begin().await?;
    let first_time = sqlx::query(
        "insert into usage_batch (id, applied_at) values ($1, $2) on conflict (id) do nothing",
    )
    .bind(batch)
    .bind(now)
    .execute(&mut *tx)
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
             values ($1, $2, $3, $4, $5, $6, $7, $8)
             on conflict (key_id, model, minute) do update set
                 requests = usage_minute.requests + excluded.requests,
                 input_tokens = usage_minute.input_tokens + excluded.input_tokens,
                 output_tokens = usage_minute.output_tokens + excluded.output_tokens,
                 cost_pico = usage_minute.cost_pico + excluded.cost_pico",
        )
        .bind(d.key_id)
        .bind(d.workspace_id)
        .bind(&d.model)
        .bind(floor_minute(d.minute))
        .bind(d.requests)
        .bind(d.input_tokens)
        .bind(d.output_tokens)
        .bind(d.cost_pico)
        .execute(&mut *tx)
        .await?;
    }
    // Last, so that concurrent writers (other instances) take the usage rows' locks
    // before these and cannot deadlock over them.
    sqlx::query("delete from usage_batch where applied_at < $1")
        .bind(now - USAGE_BATCH_RETENTION)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}

pub(super) async fn usage(pool: &PgPool, query: &UsageQuery) -> StoreResult<Vec<UsageRow>> {
    sqlx::query_as::<_, UsageBucketRow<Pg>>(
        "select date_trunc($2, minute at time zone 'UTC') at time zone 'UTC' as start,
                model,
                sum(requests)::bigint as requests,
                sum(input_tokens)::bigint as input_tokens,
                sum(output_tokens)::bigint as output_tokens,
                sum(cost_pico)::bigint as cost_pico
         from usage_minute
         where key_id = $1 and minute >= $3 and minute < $4 and ($5::text is null or model = $5)
         group by 1, 2
         order by 1, 2",
    )
    .bind(query.key_id)
    .bind(granularity_unit(query.granularity))
    .bind(query.from)
    .bind(query.to)
    .bind(&query.model)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(UsageRow::try_from)
    .collect()
}

pub(super) async fn key_usage_totals(
    pool: &PgPool,
    key_id: Uuid,
    since: DateTime<Utc>,
    model: Option<&str>,
) -> StoreResult<UsageTotals> {
    let row = sqlx::query_as::<_, TotalsRow>(
        "select coalesce(sum(requests), 0)::bigint as requests,
                coalesce(sum(input_tokens), 0)::bigint as input_tokens,
                coalesce(sum(output_tokens), 0)::bigint as output_tokens,
                coalesce(sum(cost_pico), 0)::bigint as cost_pico
         from usage_minute
         where key_id = $1 and minute >= $2 and ($3::text is null or model = $3)",
    )
    .bind(key_id)
    .bind(since)
    .bind(model)
    .fetch_one(pool)
    .await?;
    Ok(row.into())
}

pub(super) async fn workspace_usage_totals(
    pool: &PgPool,
    workspace_id: Uuid,
    since: DateTime<Utc>,
) -> StoreResult<UsageTotals> {
    let row = sqlx::query_as::<_, TotalsRow>(
        "select coalesce(sum(requests), 0)::bigint as requests,
                coalesce(sum(input_tokens), 0)::bigint as input_tokens,
                coalesce(sum(output_tokens), 0)::bigint as output_tokens,
                coalesce(sum(cost_pico), 0)::bigint as cost_pico
         from usage_minute
         where workspace_id = $1 and minute >= $2",
    )
    .bind(workspace_id)
    .bind(since)
    .fetch_one(pool)
    .await?;
    Ok(row.into())
}
