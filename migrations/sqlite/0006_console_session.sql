-- Web console sessions (issue 15 §4, src/http/console). Twin:
-- migrations/postgres/0006_console_session.sql.
--
-- id:           SHA-256 (hex) of the random id in the browser's cookie, so that reading
--               this table does not hand anyone a session
-- principal:    who signed in: `member:<username>` or `key:<uuid>` (an admin key); the
--               role is read anew on every request, so a demotion or revocation counts at once
-- csrf_token:   the token every form of this session carries
-- last_seen_at: moved forward on use; a session idle past `console.session_idle_secs`
--               is gone (times: microseconds since the epoch)
create table console_session (
    id           text primary key,
    workspace_id text not null references workspace (id),
    principal    text not null,
    csrf_token   text not null,
    created_at   integer not null,
    last_seen_at integer not null
);

create index console_session_last_seen on console_session (last_seen_at);
