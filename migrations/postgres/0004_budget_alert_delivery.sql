-- Budget alerts become their own delivery queue (issue 15 §2). Twin:
-- migrations/sqlite/0004_budget_alert_delivery.sql.
--
-- A row is written when one instance claims an alert (the primary key makes that claim
-- unique across replicas and restarts) and carries what to POST and how delivery went, so
-- an operator can see it and a restarted or surviving instance can carry on.
--
-- claimed_at:      when the threshold was seen crossed (was sent_at; the payload's `at`)
-- payload:         the JSON body POSTed, fixed at the claim; each attempt signs it anew
-- status:          pending → delivered | failed (gave up) | refused (non-public address)
-- attempts:        POSTs tried so far
-- last_error:      why the last attempt failed (never a secret)
-- next_attempt_at: a pending row is not tried before this; the instance that tries it
--                  moves it forward first (its lease), so two instances never both try
-- finished_at:     when it was delivered, given up or refused
alter table budget_alert rename column sent_at to claimed_at;
alter table budget_alert add column workspace_id uuid references workspace (id);
alter table budget_alert add column payload text;
alter table budget_alert add column status text not null default 'pending'
    check (status in ('pending', 'delivered', 'failed', 'refused'));
alter table budget_alert add column attempts bigint not null default 0;
alter table budget_alert add column last_error text;
alter table budget_alert add column next_attempt_at timestamptz;
alter table budget_alert add column finished_at timestamptz;

-- The sweep for pending deliveries that are due.
create index budget_alert_due on budget_alert (status, next_attempt_at);
