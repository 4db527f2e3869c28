-- Workspaces managed through the admin API (issue 15). Twin: migrations/sqlite/0003_workspaces.sql.
--
-- webhook_secret: the HMAC key budget alerts are signed with. Stored as it is because it
-- must sign; shown once, in the answer that set the webhook URL, and never again.
-- deleted_at: a deleted workspace keeps its row, so the keys, usage and audit events that
-- point at it keep their history; every read skips it, and its name is freed by renaming.
alter table workspace add column webhook_secret text;
alter table workspace add column deleted_at timestamptz;

-- The audit log across every workspace, newest first (the operator's view).
create index audit_event_at on audit_event (at);
