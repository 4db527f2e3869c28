-- keygate schema, SQLite flavour. It covers the whole domain of DESIGN §3 so that later
-- features add code, not schema. Its twin is migrations/postgres/0001_init.sql: keep the
-- two in step (same tables, columns, constraints and index names).
--
-- Conventions: lower-case SQL, singular table names, STRICT tables, `id` primary keys.
-- Representations that differ from Postgres, chosen so that comparisons and ordering in
-- SQL are correct:
--   * uuids are TEXT in the lower-case hyphenated form (uuid v7 ids sort by time);
--   * every timestamp is an INTEGER of microseconds since the Unix epoch (UTC), the same
--     precision as Postgres' timestamptz; RFC 3339 text with a variable number of
--     fractional digits would not sort or compare correctly;
--   * JSON is TEXT holding the serde form of the Rust model types.

-- A tenant. Keys, members, usage and events all belong to exactly one workspace.
create table workspace (
    id          text primary key,
    name        text not null,
    -- maximum number of live (not revoked) keys; null = no cap
    key_cap     integer check (key_cap is null or key_cap >= 0),
    -- prepaid credit balance in USD as exact decimal text (e.g. '12.50'); null = not enforced
    credits_usd text,
    -- where budget alerts are posted; null = no alerts
    webhook_url text,
    created_at  integer not null default (cast(strftime('%s', 'now') as integer) * 1000000),
    updated_at  integer not null default (cast(strftime('%s', 'now') as integer) * 1000000),
    constraint workspace_name unique (name)
) strict;

-- The workspace that exists from the first start (DESIGN §3). Its id is fixed so that
-- every installation agrees on it; it has no key cap unless an operator sets one.
insert into workspace (id, name)
values ('00000000-0000-0000-0000-000000000001', 'default');

-- A console user of a workspace.
create table member (
    id            text primary key,
    workspace_id  text not null references workspace (id),
    username      text not null,
    role          text not null check (role in ('owner', 'admin', 'member')),
    -- argon2id PHC string of the console password
    password_hash text not null,
    created_at    integer not null,
    updated_at    integer not null,
    constraint member_username unique (workspace_id, username)
) strict;

-- An API key, without any secret material (that lives in api_key_secret). Keys are never
-- deleted: revoking sets revoked_at, so usage and events keep pointing at a real row.
create table api_key (
    id               text primary key,
    workspace_id     text not null references workspace (id),
    name             text not null,
    kind             text not null check (kind in ('inference', 'admin')),
    -- `kg_<lookup>…<last4>`: enough to recognise a key, never enough to use it
    partial_key      text not null,
    last6            text not null,
    created_by       text not null,
    created_at       integer not null,
    updated_at       integer not null,
    expires_at       integer,
    last_used_at     integer,
    revoked_at       integer,
    -- free-form JSON object given by the client
    metadata         text not null default '{}',
    -- JSON array of model names; null = every model
    allowed_models   text,
    -- {"limit_usd": "<exact decimal text>", "period": "day|month|lifetime"}; null = no budget
    budget           text,
    -- keys::model::Limits
    limits           text not null default '{}',
    -- JSON array of keys::model::ModelLimits
    model_limits     text not null default '[]',
    max_parallel     integer check (max_parallel is null or max_parallel >= 0),
    -- JSON array of IP addresses / CIDRs; null = any address
    ip_allowlist     text,
    -- JSON array of budget fractions (0.5, 0.8, 1.0); null = no alerts
    alert_thresholds text,
    -- keys::model::CompatFields (Venice / aiXplain fields kept only to echo them)
    compat           text not null default '{}',
    -- set on keys made by the Web3 flow
    wallet_address   text
) strict;

-- list_keys: live keys of a workspace, oldest first.
create index api_key_workspace_created on api_key (workspace_id, created_at);

-- The secrets that authenticate a key: one current (valid_until null) plus the previous
-- ones during a rotation's grace period. Only argon2id hashes, never plaintext.
create table api_key_secret (
    -- public lookup id embedded in the token (`kg_<lookup_id>_…`)
    lookup_id   text primary key,
    key_id      text not null references api_key (id),
    -- argon2id PHC string of the whole token
    hash        text not null,
    valid_until integer,
    created_at  integer not null
) strict;

create index api_key_secret_key on api_key_secret (key_id);

-- Usage per key·model·minute. Hour, day and month views aggregate these rows in SQL.
create table usage_minute (
    key_id        text not null references api_key (id),
    workspace_id  text not null references workspace (id),
    model         text not null,
    -- start of the minute (seconds are zero), microseconds since the epoch
    minute        integer not null,
    requests      integer not null default 0,
    input_tokens  integer not null default 0,
    output_tokens integer not null default 0,
    -- cost in pico-USD (1e-12 USD, see money::PICO_PER_USD)
    cost_pico     integer not null default 0,
    primary key (key_id, model, minute)
) strict;

-- workspace_usage_totals: every key of a workspace since a time.
create index usage_minute_workspace on usage_minute (workspace_id, minute);

-- A refused inference request (DESIGN §3).
create table rate_limit_event (
    id           text primary key,
    workspace_id text not null references workspace (id),
    key_id       text not null references api_key (id),
    model        text,
    -- which limit refused it: rpm | rpd | tpm | tpd | budget | credits | concurrency
    limit_kind   text not null,
    -- the limit's configured value as text ('60', '25.00')
    limit_value  text not null,
    at           integer not null
) strict;

create index rate_limit_event_workspace_at on rate_limit_event (workspace_id, at);
create index rate_limit_event_key_at on rate_limit_event (key_id, at);

-- Every admin action. Never holds secrets.
create table audit_event (
    id           text primary key,
    workspace_id text not null references workspace (id),
    -- `key:<uuid>`, `member:<username>`, `cli`, `bootstrap`, `web3:<address>`
    actor        text not null,
    -- `key.create`, `key.update`, `key.rotate`, `key.revoke`, `member.create`, …
    action       text not null,
    -- what was acted on, e.g. `key:<uuid>`
    target       text not null,
    at           integer not null,
    -- client address, when the action came over HTTP
    source       text,
    details      text not null default '{}'
) strict;

create index audit_event_workspace_at on audit_event (workspace_id, at);

-- One-time tokens (Web3 sign-in challenges) that have been used, so a replay is refused.
create table once_token (
    token_id   text primary key,
    expires_at integer not null,
    used_at    integer not null
) strict;

-- garbage collection of long-expired tokens
create index once_token_expires on once_token (expires_at);

-- Budget alerts already sent: at most one per key, budget period and threshold, however
-- many instances see the threshold crossed.
create table budget_alert (
    key_id       text not null references api_key (id),
    period_start integer not null,
    -- threshold in basis points (0.8 = 8000)
    threshold_bp integer not null,
    sent_at      integer not null,
    primary key (key_id, period_start, threshold_bp)
) strict;
