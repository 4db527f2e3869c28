//! The store conformance suite (DESIGN §2): every body is written once as
//! `pub async fn name(store: DynStore)` in a module under `store_conformance/` and runs
//! against both backends: SQLite on a fresh temporary file (`sqlite::name`) and PostgreSQL
//! on a fresh database (`postgres::name`, server from `KEYGATE_TEST_PG_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`).

// Test bodies are plain async fns (not `#[test]`s), which `allow-unwrap-in-tests` does not cover.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "store_conformance/auth.rs"]
mod auth;
#[path = "store_conformance/deletion.rs"]
mod deletion;
#[path = "store_conformance/events.rs"]
mod events;
#[path = "store_conformance/harness.rs"]
mod harness;
#[path = "store_conformance/keys.rs"]
mod keys;
#[path = "store_conformance/last_admin.rs"]
mod last_admin;
#[path = "store_conformance/retries.rs"]
mod retries;
#[path = "store_conformance/sessions.rs"]
mod sessions;
#[path = "store_conformance/usage.rs"]
mod usage;
#[path = "store_conformance/workspaces.rs"]
mod workspaces;

mod support;

use support::backends::backend_tests;

// Bodies taking a `DynStore` get a migrated one, `harness::EmptyStore` an unmigrated one,
// `harness::StoreWithUrl` a migrated one and its URL (to reach the database directly).
backend_tests! {
    flavor: multi_thread,
    both: [
        workspaces::default_workspace_exists_after_migrate,
        workspaces::migrate_twice_is_idempotent,
        workspaces::default_workspace_survives_a_rename,
        workspaces::workspaces_create_find_list_update,
        workspaces::duplicate_workspace_name_is_a_conflict,
        workspaces::members_create_find_list_delete,
        workspaces::duplicate_username_is_a_conflict,
        deletion::a_workspace_with_live_keys_is_not_deleted,
        deletion::a_deleted_workspace_is_gone_but_its_history_stays,
        deletion::the_last_owner_stays,
        deletion::racing_removals_of_the_last_two_owners_leave_one,
        deletion::audit_events_filter_and_find_key_sees_every_workspace,
        keys::insert_get_and_list_keys_oldest_first,
        keys::keys_of_another_workspace_are_invisible,
        keys::update_key_round_trips_every_field,
        keys::update_key_of_missing_or_revoked_key_is_not_found,
        keys::insert_key_is_all_or_nothing,
        keys::revoke_hides_key_but_find_secret_still_sees_it,
        keys::key_cap_holds_under_concurrent_inserts,
        keys::key_cap_ignores_revoked_keys,
        last_admin::the_last_active_admin_key_is_kept,
        last_admin::racing_changes_of_the_last_two_admin_keys_leave_one,
        auth::rotate_limits_old_secrets_and_deletes_expired_ones,
        sessions::console_sessions_live_while_used_and_end_when_idle_or_deleted,
        auth::rotate_with_no_grace_deletes_old_secrets,
        auth::find_secret_of_unknown_lookup_id_is_none,
        auth::count_live_admin_keys_across_workspaces,
        auth::touch_keys_never_lowers_last_used_at,
        usage::add_usage_sums_into_the_same_minute_bucket,
        usage::concurrent_usage_flushes_sum_exactly,
        usage::usage_aggregates_by_granularity_and_filters,
        usage::usage_totals_per_key_and_workspace,
        usage::spend_in_answers_many_ranges_in_order,
        auth::secret_versions_answer_many_lookup_ids_at_once,
        events::audit_events_are_listed_newest_first,
        events::rate_limit_events_filter_and_page_newest_first,
        events::once_tokens_are_single_use,
        events::budget_alerts_are_claimed_once,
        events::budget_alert_leases_and_attempts,
        retries::a_usage_batch_sent_twice_is_added_once,
        retries::rate_limit_events_sent_twice_are_stored_once,
        workspaces::fresh_database_reports_migrations_missing,
        keys::undecodable_json_is_reported_as_corrupt,
    ],
}
