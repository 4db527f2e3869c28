//! The console's HTML (maud: checked and compiled with the binary). Every field has a
//! label, every table a caption, and nothing here carries an inline script or style: the
//! CSP forbids them, and `console.js` adds the behaviour (dialogs, copy, charts).

use axum::{http::StatusCode, response::Html};
use chrono::{DateTime, Utc};
use maud::{html, Markup, DOCTYPE};

use super::session::Console;
use crate::{
    keys::ApiKey,
    money::pico_to_usd,
    store::{AuditEvent, Member, RateLimitEvent, Role, UsageRow},
};

/// htmx settings: no inline indicator styles (CSP), no eval, and boosted links only.
const HTMX_CONFIG: &str = r#"{"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false,"historyCacheSize":0}"#;

pub fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

fn page(title: &str, console: Option<&Console>, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    meta name="htmx-config" content=(HTMX_CONFIG);
                    // No favicon request (it would reach the key-protected routes).
                    link rel="icon" href="data:,";
                    title { (title) " · keygate console" }
                    link rel="stylesheet" href="/console/assets/uPlot.min.css";
                    link rel="stylesheet" href="/console/assets/console.css";
                    script src="/console/assets/htmx.min.js" defer {}
                    script src="/console/assets/uPlot.iife.min.js" defer {}
                    script src="/console/assets/console.js" defer {}
                }
                body {
                    a.skip href="#main" { "Skip to content" }
                    header {
                        span.brand { "keygate" }
                        @if let Some(console) = console {
                            nav aria-label="Console" hx-boost="true" {
                                a href="/console/keys" { "Keys" }
                                @if console.caller.role >= Role::Admin {
                                    a href="/console/members" { "Members" }
                                    a href="/console/audit" { "Audit log" }
                                }
                            }
                            form.sign-out method="post" action="/console/sign-out" {
                                (csrf(console))
                                span.who { (console.who) }
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                    main #main {
                        h1 { (title) }
                        (body)
                    }
                }
            }
        }
        .into_string(),
    )
}

fn csrf(console: &Console) -> Markup {
    html! { input type="hidden" name="csrf_token" value=(console.session.csrf_token); }
}

pub fn error_page(status: StatusCode, message: &str) -> Html<String> {
    page(
        status.canonical_reason().unwrap_or("Error"),
        None,
        html! {
            p.error role="alert" { (message) }
            p { a href="/console/keys" { "Back to the console" } }
        },
    )
}

pub fn sign_in(token: &str, error: Option<&str>) -> Html<String> {
    page(
        "Sign in",
        None,
        html! {
            @if let Some(error) = error { p.error role="alert" { (error) } }
            div.cards {
                form.card method="post" action="/console/sign-in" #sign-in-password {
                    h2 { "With your password" }
                    input type="hidden" name="csrf_token" value=(token);
                    input type="hidden" name="method" value="password";
                    label for="workspace" { "Workspace" }
                    input #workspace name="workspace" value="default" autocomplete="organization" required;
                    label for="username" { "Username" }
                    input #username name="username" autocomplete="username" required;
                    label for="password" { "Password" }
                    input #password name="password" type="password" autocomplete="current-password" required;
                    button type="submit" { "Sign in" }
                }
                form.card method="post" action="/console/sign-in" #sign-in-key {
                    h2 { "With an admin key" }
                    input type="hidden" name="csrf_token" value=(token);
                    input type="hidden" name="method" value="key";
                    label for="admin_key" { "Admin key" }
                    input #admin_key name="admin_key" type="password" autocomplete="off" required;
                    button type="submit" { "Sign in with key" }
                }
            }
        },
    )
}

/// What the keys page shows besides the list: a new key's secret (once), or a form error.
pub enum KeysNotice<'a> {
    None,
    Created { key: &'a ApiKey, secret: &'a str },
    Error(&'a str),
}

pub fn may_delete(console: &Console, key: &ApiKey) -> bool {
    console.caller.role >= Role::Admin || key.created_by == console.caller.actor
}

pub fn keys(console: &Console, keys: &[ApiKey], total: u64, notice: KeysNotice) -> Html<String> {
    let now = crate::clock::now();
    page(
        "Keys",
        Some(console),
        html! {
            @if let KeysNotice::Error(message) = notice { p.error role="alert" { (message) } }
            p { a.button #new-key href="/console/keys/new" data-dialog="create-dialog" { "New key" } }
            dialog #create-dialog aria-labelledby="create-title" {
                h2 #create-title { "New key" }
                (create_form(console))
            }
            @if let KeysNotice::Created { key, secret } = notice {
                dialog #secret-dialog open data-modal aria-labelledby="secret-title" {
                    h2 #secret-title { "Key " (key.name) " created" }
                    p { "Copy the secret now: it is shown only once." }
                    label for="new-secret" { "Secret" }
                    div.copy-row {
                        input #new-secret readonly value=(secret);
                        button type="button" data-copy="new-secret" { "Copy" }
                    }
                    p.copied aria-live="polite" {}
                    form method="dialog" { button type="submit" #secret-done { "Done" } }
                }
            }
            div.table-wrap {
                table #keys {
                    caption { (total) " live keys" }
                    thead { tr {
                        th scope="col" { "Name" } th scope="col" { "Created by" }
                        th scope="col" { "Created" } th scope="col" { "Expires" }
                        th scope="col" { "Status" } th scope="col" { "Key" }
                        th scope="col" { span.visually-hidden { "Actions" } }
                    } }
                    tbody {
                        @for key in keys {
                            tr data-key-id=(key.id) {
                                td { a href={ "/console/keys/" (key.id) } { (key.name) } @if key.kind == crate::keys::KeyKind::Admin { " " span.badge { "admin" } } }
                                td.by { (key.created_by) }
                                td { (when(key.created_at)) }
                                td { @match key.expires_at { Some(at) => (when(at)), None => "never" } }
                                td { (format!("{:?}", key.status_at(now)).to_lowercase()) }
                                td { code { (key.partial_key) } }
                                td { @if may_delete(console, key) {
                                    a.danger href={ "/console/keys/" (key.id) "/delete" } aria-label={ "Delete " (key.name) } { "Delete" }
                                } }
                            }
                        }
                    }
                }
            }
        },
    )
}

pub fn create_form(console: &Console) -> Markup {
    html! {
        form method="post" action="/console/keys" #create-form {
            (csrf(console))
            label for="key-name" { "Name" }
            input #key-name name="name" required maxlength="200";
            @if console.caller.role >= Role::Admin {
                label for="key-kind" { "Kind" }
                select #key-kind name="kind" {
                    option value="inference" selected { "Inference key" }
                    option value="admin" { "Admin key" }
                }
            }
            label for="key-expires" { "Expires after (days, empty for never)" }
            input #key-expires name="expires_days" type="number" min="1" max="3650" inputmode="numeric";
            div.actions {
                button type="submit" #create-submit { "Create key" }
                a href="/console/keys" data-close="create-dialog" { "Cancel" }
            }
        }
    }
}

pub fn new_key(console: &Console) -> Html<String> {
    page("New key", Some(console), create_form(console))
}

pub fn confirm_delete(console: &Console, key: &ApiKey) -> Html<String> {
    page(
        "Delete key",
        Some(console),
        html! {
            form method="post" action={ "/console/keys/" (key.id) "/delete" } #delete-form {
                (csrf(console))
                p { "Delete key " strong { (key.name) } " (" code { (key.partial_key) } ")? It stops working at once; its usage history stays." }
                div.actions {
                    button.danger type="submit" #confirm-delete { "Delete " (key.name) }
                    a href="/console/keys" { "Cancel" }
                }
            }
        },
    )
}

pub struct Detail<'a> {
    pub key: &'a ApiKey,
    pub days: u32,
    pub usage: &'a [UsageRow],
    pub refusals: &'a [RateLimitEvent],
}

pub fn key_detail(console: &Console, d: Detail) -> Html<String> {
    let key = d.key;
    page(
        &format!("Key {}", key.name),
        Some(console),
        html! {
            dl.facts {
                dt { "Key" } dd { code { (key.partial_key) } }
                dt { "Kind" } dd { (key.kind.as_str()) }
                dt { "Created by" } dd { (key.created_by) }
                dt { "Created" } dd { (when(key.created_at)) }
                dt { "Expires" } dd { @match key.expires_at { Some(at) => (when(at)), None => "never" } }
                dt { "Last used" } dd { @match key.last_used_at { Some(at) => (when(at)), None => "never" } }
            }
            h2 { "Usage" }
            nav.range aria-label="Range" hx-boost="true" {
                @for days in [7u32, 30] {
                    @if days == d.days {
                        a href={ "?days=" (days) } aria-current="page" { "Last " (days) " days" }
                    } @else {
                        a href={ "?days=" (days) } { "Last " (days) " days" }
                    }
                }
            }
            div #usage-charts data-usage-src={ "/console/keys/" (key.id) "/usage.json?days=" (d.days) } {}
            div.table-wrap {
                table #usage {
                    caption { "Per day and model, last " (d.days) " days (UTC)" }
                    thead { tr {
                        th scope="col" { "Day" } th scope="col" { "Model" } th scope="col" { "Requests" }
                        th scope="col" { "Input tokens" } th scope="col" { "Output tokens" } th scope="col" { "Cost (USD)" }
                    } }
                    tbody {
                        @for row in d.usage {
                            tr {
                                td { (row.start.format("%Y-%m-%d")) } td { (row.model) } td { (row.requests) }
                                td { (row.input_tokens) } td { (row.output_tokens) } td { (pico_to_usd(row.cost_pico).round_dp(6)) }
                            }
                        }
                        @if d.usage.is_empty() { tr { td colspan="6" { "No requests in this range." } } }
                    }
                }
            }
            h2 { "Violation log" }
            div.table-wrap {
                table #violations {
                    caption { "Requests refused by a limit, newest first" }
                    thead { tr { th scope="col" { "At" } th scope="col" { "Limit" } th scope="col" { "Value" } th scope="col" { "Model" } } }
                    tbody {
                        @for event in d.refusals {
                            tr { td { (when(event.at)) } td { (event.limit) } td { (event.limit_value) } td { (event.model.as_deref().unwrap_or("any")) } }
                        }
                        @if d.refusals.is_empty() { tr { td colspan="4" { "No refusals." } } }
                    }
                }
            }
            @if may_delete(console, key) {
                p { a.danger href={ "/console/keys/" (key.id) "/delete" } { "Delete this key" } }
            }
        },
    )
}

pub fn members(console: &Console, members: &[Member]) -> Html<String> {
    page(
        "Members",
        Some(console),
        html! {
            div.table-wrap {
                table #members {
                    caption { (members.len()) " members of this workspace" }
                    thead { tr { th scope="col" { "Username" } th scope="col" { "Role" } th scope="col" { "Added" } } }
                    tbody {
                        @for member in members {
                            tr { td { (member.username) } td { (member.role.as_str()) } td { (when(member.created_at)) } }
                        }
                    }
                }
            }
        },
    )
}

pub fn audit(console: &Console, events: &[AuditEvent], total: u64) -> Html<String> {
    page(
        "Audit log",
        Some(console),
        html! {
            div.table-wrap {
                table #audit {
                    caption { "Newest first: " (events.len()) " of " (total) }
                    thead { tr {
                        th scope="col" { "At" } th scope="col" { "Actor" } th scope="col" { "Action" }
                        th scope="col" { "Target" } th scope="col" { "From" } th scope="col" { "Details" }
                    } }
                    tbody {
                        @for event in events {
                            tr {
                                td { (when(event.at)) } td.by { (event.actor) } td { (event.action) }
                                td { (event.target) } td { (event.source.as_deref().unwrap_or("")) }
                                td { code { (event.details.to_string()) } }
                            }
                        }
                    }
                }
            }
        },
    )
}
