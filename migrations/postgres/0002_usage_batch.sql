-- Usage batches already added (Store::add_usage_batch). A flush whose commit went through
-- but whose answer was lost (the connection broke) is retried under the same id and then
-- skipped, so usage is never counted twice. Rows older than a day are deleted by later
-- batches. Twin: migrations/sqlite/0002_usage_batch.sql.
create table usage_batch (
    id         uuid primary key,
    applied_at timestamptz not null
);

create index usage_batch_applied_at on usage_batch (applied_at);
