-- A key may have its completion cap lowered to what its token limits or budget have left
-- instead of being refused (issue 14 §4, docs/decisions.md "max_tokens fitted to what is
-- left"). Twin: migrations/postgres/0005_fit_max_tokens.sql.
-- 0 or 1
alter table api_key add column fit_max_tokens integer not null default 0;
