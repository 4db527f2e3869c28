//! The console's key pages: list, create (the secret shown once), detail with usage
//! charts and the violation log, delete with confirmation. Every action goes through
//! `KeysService` as the signed-in `Caller`, so a member creates only inference keys and
//! deletes only their own, whatever the markup offers.

use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
    Form, Json,
};
use chrono::{Duration, DurationRound, Utc};
use rust_decimal::prelude::ToPrimitive;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{
    pages::{self, Detail, KeysNotice},
    session::{Console, CsrfOnly},
    PageError,
};
use crate::{
    error::ApiError,
    keys::{input::NewKey, ApiKey, KeyError, KeyKind},
    money::pico_to_usd,
    state::AppState,
    store::{EventFilter, Granularity, Page, UsageRow},
    usage::RangeRequest,
};

/// The console lists one page of this many keys (the admin API pages further).
const LIST_LIMIT: u32 = 500;

fn parse_key_id(raw: &str) -> Result<Uuid, PageError> {
    Uuid::parse_str(raw).map_err(|_| PageError::new(StatusCode::NOT_FOUND, format!("no key {raw}")))
}

async fn list_page(
    state: &AppState,
    console: &Console,
    status: StatusCode,
    notice: KeysNotice<'_>,
) -> Result<Response, PageError> {
    let page = Page {
        page: 1,
        limit: LIST_LIMIT,
    };
    let keys = state.keys.list(&console.caller, None, page).await?;
    Ok((
        status,
        pages::keys(console, &keys.items, keys.total, notice),
    )
        .into_response())
}

/// GET `/console/keys`.
pub async fn list(State(state): State<AppState>, console: Console) -> Result<Response, PageError> {
    list_page(&state, &console, StatusCode::OK, KeysNotice::None).await
}

/// GET `/console/keys/new`: the create form as a page, for browsers without script (with
/// script it opens as a dialog over the list).
pub async fn new_form(console: Console) -> Response {
    pages::new_key(&console).into_response()
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CreateForm {
    csrf_token: Option<String>,
    name: String,
    kind: Option<String>,
    expires_days: Option<String>,
}

fn new_key(form: CreateForm) -> Result<NewKey, KeyError> {
    let invalid = |field: &str, message: &str| KeyError::Invalid {
        field: field.into(),
        message: message.into(),
    };
    let kind = match form.kind.as_deref() {
        None | Some("") | Some("inference") => KeyKind::Inference,
        Some("admin") => KeyKind::Admin,
        Some(_) => return Err(invalid("kind", "must be `inference` or `admin`")),
    };
    let expires_at = match form.expires_days.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(days) => match days.parse::<i64>() {
            Ok(days @ 1..=3650) => Some(crate::clock::now() + Duration::days(days)),
            _ => {
                return Err(invalid(
                    "expires_days",
                    "must be a whole number of days from 1 to 3650",
                ))
            }
        },
    };
    Ok(NewKey {
        name: form.name,
        kind: Some(kind),
        expires_at,
        ..NewKey::default()
    })
}

/// POST `/console/keys`: creates the key and shows the list with the secret in a dialog,
/// the only time it is shown.
pub async fn create(
    State(state): State<AppState>,
    console: Console,
    Form(form): Form<CreateForm>,
) -> Result<Response, PageError> {
    console.check_csrf(form.csrf_token.as_deref())?;
    let created = match new_key(form) {
        Ok(new) => state.keys.create(&console.caller, new).await,
        Err(err) => Err(err),
    };
    match created {
        Ok(created) => {
            let notice = KeysNotice::Created {
                key: &created.key,
                secret: created.secret.expose(),
            };
            list_page(&state, &console, StatusCode::CREATED, notice).await
        }
        Err(err @ (KeyError::Invalid { .. } | KeyError::Forbidden(_))) => {
            let err = PageError::from(err);
            list_page(
                &state,
                &console,
                err.status,
                KeysNotice::Error(&err.message),
            )
            .await
        }
        Err(err) => Err(err.into()),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RangeParams {
    days: Option<String>,
}

fn days(params: &RangeParams) -> Result<u32, PageError> {
    match params.days.as_deref() {
        None | Some("7") => Ok(7),
        Some("30") => Ok(30),
        Some(_) => Err(PageError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "days: must be 7 or 30",
        )),
    }
}

/// Daily usage of `key` over the last `days` UTC days (today included).
async fn usage(state: &AppState, key: &ApiKey, days: u32) -> Result<Vec<UsageRow>, PageError> {
    let now = Utc::now();
    let today = now.duration_trunc(Duration::days(1)).unwrap_or(now);
    let range = RangeRequest {
        from: Some(today - Duration::days(i64::from(days) - 1)),
        to: Some(today + Duration::days(1)),
        granularity: Some(Granularity::Day),
        model: None,
    };
    let rows = state
        .usage
        .key_usage(key.id, range, now)
        .await
        .map_err(ApiError::from)?;
    Ok(rows)
}

/// GET `/console/keys/{id}`.
pub async fn detail(
    State(state): State<AppState>,
    console: Console,
    Path(id): Path<String>,
    Query(params): Query<RangeParams>,
) -> Result<Response, PageError> {
    let days = days(&params)?;
    let key = state.keys.get(&console.caller, parse_key_id(&id)?).await?;
    let usage = usage(&state, &key, days).await?;
    let filter = EventFilter {
        key_id: Some(key.id),
        from: None,
        to: None,
    };
    let refusals = state
        .usage
        .refusals(
            key.workspace_id,
            &filter,
            Page {
                page: 1,
                limit: 100,
            },
        )
        .await?;
    let detail = Detail {
        key: &key,
        days,
        usage: &usage,
        refusals: &refusals.items,
    };
    Ok(pages::key_detail(&console, detail).into_response())
}

/// GET `/console/keys/{id}/usage.json`: the chart's data, one array per model aligned
/// with `x` (the days' starts, Unix seconds), as uPlot takes it.
pub async fn usage_json(
    State(state): State<AppState>,
    console: Console,
    Path(id): Path<String>,
    Query(params): Query<RangeParams>,
) -> Result<Json<Value>, PageError> {
    let days = days(&params)?;
    let key = state.keys.get(&console.caller, parse_key_id(&id)?).await?;
    let rows = usage(&state, &key, days).await?;
    let today = Utc::now()
        .duration_trunc(Duration::days(1))
        .unwrap_or_else(|_| Utc::now());
    let x: Vec<i64> = (0..i64::from(days))
        .rev()
        .map(|back| (today - Duration::days(back)).timestamp())
        .collect();
    let mut models: Vec<String> = rows.iter().map(|r| r.model.clone()).collect();
    models.sort();
    models.dedup();
    let series = |value: &dyn Fn(&UsageRow) -> f64| -> Vec<Vec<f64>> {
        models
            .iter()
            .map(|model| {
                x.iter()
                    .map(|day| {
                        rows.iter()
                            .filter(|r| &r.model == model && r.start.timestamp() == *day)
                            .map(value)
                            .sum()
                    })
                    .collect()
            })
            .collect()
    };
    Ok(Json(json!({
        "x": x,
        "models": models,
        "requests": series(&|r| r.requests as f64),
        "tokens": series(&|r| (r.input_tokens + r.output_tokens) as f64),
        "cost_usd": series(&|r| pico_to_usd(r.cost_pico).to_f64().unwrap_or(0.0)),
    })))
}

/// GET `/console/keys/{id}/delete`: asks before deleting.
pub async fn confirm_delete(
    State(state): State<AppState>,
    console: Console,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let key = state.keys.get(&console.caller, parse_key_id(&id)?).await?;
    if !pages::may_delete(&console, &key) {
        return Err(PageError::new(
            StatusCode::FORBIDDEN,
            "only workspace admins and owners may delete other members' keys",
        ));
    }
    Ok(pages::confirm_delete(&console, &key).into_response())
}

/// POST `/console/keys/{id}/delete`: the key stops working at once.
pub async fn delete(
    State(state): State<AppState>,
    console: Console,
    Path(id): Path<String>,
    Form(form): Form<CsrfOnly>,
) -> Result<Response, PageError> {
    console.check_csrf(form.csrf_token.as_deref())?;
    state
        .keys
        .revoke(&console.caller, parse_key_id(&id)?)
        .await?;
    Ok(Redirect::to("/console/keys").into_response())
}
