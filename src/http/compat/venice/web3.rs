//! `GET|POST api_keys/generate_web3_key`: a wallet proves its address by signing a
//! challenge token and gets an inference key (Venice's Web3 flow, wire/venice.md §6).
//!
//! These two routes need no API key (`http::auth::UNAUTHENTICATED`), so:
//! - both answer 403 unless `web3.enabled` (default off), the POST before reading its body;
//! - only `web3.allowed_addresses` may create keys when that list is set;
//! - `ADMIN` keys are never made here (403), whatever the request says;
//! - a token is valid `web3.token_ttl_secs` and once (`Store::consume_once_token`);
//! - failed proofs count as failed authentications of the client address (the same
//!   per-address guard as bad keys), so signatures cannot be guessed at speed.
//!
//! The key goes into the `default` workspace, `created_by = "web3:<address>"`, with
//! `wallet_address` recorded (EIP-55 form).

use std::{net::IpAddr, time::Duration};

use axum::{
    extract::{FromRequestParts, State},
    http::{request::Parts, StatusCode},
    Json,
};

use super::{
    keys::{new_key, Settings},
    views::{timestamp, CreatedApiKey, Succeeded, VeniceErrorBody, Web3Token},
    wire::{ApiKeyType, Web3CreateApiKeyRequest},
    VeniceError, VeniceJson, VeniceResult,
};
use crate::{
    config::Web3Config,
    error::ApiError,
    http::auth::ClientIp,
    keys::{
        input::{self, NewKey},
        AuthError, Caller, CallerRole, KeyKind, Reach,
    },
    state::AppState,
    web3::{recover_personal_sign, Address, TokenSigner, Web3Error},
};

/// Name given to a Web3 key when the request has none (the SDK always sends this one).
pub const DEFAULT_DESCRIPTION: &str = "Web3 API Key";

fn signer(config: &Web3Config) -> TokenSigner {
    match &config.token_secret {
        Some(secret) => {
            TokenSigner::from_secret(secrecy::ExposeSecret::expose_secret(secret).as_bytes())
        }
        None => TokenSigner::process_default().clone(),
    }
}

fn require_enabled(config: &Web3Config) -> VeniceResult<()> {
    if config.enabled {
        Ok(())
    } else {
        Err(VeniceError(ApiError::new(
            StatusCode::FORBIDDEN,
            "web3_disabled",
            "Web3 key creation is disabled on this gateway (the operator can enable it with \
             `web3.enabled = true`)",
        )))
    }
}

#[utoipa::path(get, path = "/api/v1/api_keys/generate_web3_key", tag = "venice",
    responses(
        (status = 200, description = "A challenge token to sign with the wallet (`personal_sign`)", body = Succeeded<Web3Token>),
        (status = 403, description = "The Web3 flow is disabled (`web3.enabled = false`)", body = VeniceErrorBody),
    ))]
pub async fn web3_token(State(state): State<AppState>) -> VeniceResult<Json<Succeeded<Web3Token>>> {
    let config = &state.config.web3;
    require_enabled(config)?;
    let (token, claims) = signer(config).issue(
        chrono::Utc::now(),
        Duration::from_secs(config.token_ttl_secs),
    );
    Ok(Json(Succeeded::new(Web3Token {
        token,
        expires_at: timestamp(claims.expires_at),
    })))
}

/// What `generate_web3_key` checks before reading a body: the flow is enabled, and the
/// client's address is not blocked for failed proofs. An extractor, so that axum runs it
/// before the body extractor: a disabled flow (403) or a blocked address (429) is answered
/// at once, however slowly (or never) the announced body arrives.
pub struct Web3Open {
    ip: Option<IpAddr>,
}

impl FromRequestParts<AppState> for Web3Open {
    type Rejection = VeniceError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> VeniceResult<Self> {
        // Disabled means disabled: 403 whatever the body is.
        require_enabled(&state.config.web3)?;
        let ip = parts.extensions.get::<ClientIp>().and_then(|c| c.0);
        if let Some(wait) = ip.and_then(|ip| state.auth_attempts.blocked_for(ip)) {
            return Err(too_many_attempts(wait));
        }
        Ok(Web3Open { ip })
    }
}

/// The keys service's checks that can fail on the request alone, run before the token is
/// spent so that a typo does not cost the wallet owner a new signature. The service checks
/// again (and remains the authority).
fn precheck(new: &NewKey) -> VeniceResult<()> {
    input::validate_name(&new.name)?;
    if let Some(entries) = &new.ip_allowlist {
        input::parse_ip_allowlist(entries)?;
    }
    if let Some(budget) = &new.budget {
        input::validate_budget(budget)?;
    }
    if new.expires_at.is_some_and(|at| at <= crate::clock::now()) {
        return Err(VeniceError::invalid("expiresAt", "must be in the future"));
    }
    Ok(())
}

/// A failed proof: counted against the client address, then answered 401 (or 429 once the
/// address is past its allowance).
fn refused(
    state: &AppState,
    ip: Option<IpAddr>,
    code: &'static str,
    message: String,
) -> VeniceError {
    if let Some(wait) = ip.and_then(|ip| state.auth_attempts.record_failure(ip)) {
        return too_many_attempts(wait);
    }
    VeniceError(ApiError::new(StatusCode::UNAUTHORIZED, code, message))
}

fn too_many_attempts(retry_after: Duration) -> VeniceError {
    VeniceError(ApiError::from(AuthError::TooManyAttempts { retry_after }))
}

#[utoipa::path(post, path = "/api/v1/api_keys/generate_web3_key", tag = "venice",
    request_body = Web3CreateApiKeyRequest,
    responses(
        (status = 200, description = "Created; `apiKey` is the full key, shown only now", body = Succeeded<CreatedApiKey>),
        (status = 400, description = "A field is invalid (`issues` names it)", body = VeniceErrorBody),
        (status = 401, description = "The token is invalid, expired or used, or the signature is not the address's", body = VeniceErrorBody),
        (status = 403, description = "Disabled, an `ADMIN` key asked for, or the address is not allowed", body = VeniceErrorBody),
        (status = 429, description = "Too many failed proofs from this address", body = VeniceErrorBody),
    ))]
pub async fn web3_create_key(
    State(state): State<AppState>,
    Web3Open { ip }: Web3Open,
    body: Result<VeniceJson<Web3CreateApiKeyRequest>, VeniceError>,
) -> VeniceResult<Json<Succeeded<CreatedApiKey>>> {
    let config = &state.config.web3;
    let VeniceJson(request) = body?;
    if request.api_key_type == ApiKeyType::Admin {
        return Err(VeniceError(ApiError::new(
            StatusCode::FORBIDDEN,
            "web3_admin_key_refused",
            "ADMIN keys cannot be created through the Web3 flow; ask for an INFERENCE key",
        )));
    }
    let address: Address = request
        .address
        .parse()
        .map_err(|err: Web3Error| VeniceError::invalid("address", err.to_string()))?;

    // The proof: a token this gateway issued, still valid, signed by the address's key.
    let claims = signer(config)
        .verify(&request.token, chrono::Utc::now())
        .map_err(|err| refused(&state, ip, "invalid_web3_token", err.to_string()))?;
    let signer_address = recover_personal_sign(request.token.as_bytes(), &request.signature)
        .map_err(|err| refused(&state, ip, "invalid_signature", err.to_string()))?;
    if signer_address != address {
        return Err(refused(
            &state,
            ip,
            "invalid_signature",
            format!("the signature was not made by {address}"),
        ));
    }
    if !config.allowed_addresses.is_empty()
        && !config
            .allowed_addresses
            .iter()
            .any(|allowed| allowed.parse::<Address>().is_ok_and(|a| a == address))
    {
        return Err(VeniceError(ApiError::new(
            StatusCode::FORBIDDEN,
            "web3_address_not_allowed",
            format!("{address} may not create keys on this gateway (web3.allowed_addresses)"),
        )));
    }

    let mut new = new_key(
        KeyKind::Inference,
        request
            .description
            .unwrap_or_else(|| DEFAULT_DESCRIPTION.to_string()),
        Settings {
            consumption_limit: request.consumption_limit,
            model_privacy: request.model_privacy,
            limit_period: request.limit_period,
            expires_at: request.expires_at,
            ip_allowlist: request.ip_allowlist,
        },
    )?;
    new.wallet_address = Some(address.to_string());
    precheck(&new)?;

    // Used once: a second request with the same token (even a concurrent one) fails here.
    if !state
        .store
        .consume_once_token(&claims.nonce, claims.expires_at)
        .await?
    {
        return Err(refused(
            &state,
            ip,
            "web3_token_used",
            "this token was used already; get a new one with GET api_keys/generate_web3_key"
                .to_string(),
        ));
    }
    let workspace = state.store.default_workspace().await?;
    let caller = Caller {
        workspace_id: workspace.id,
        actor: format!("web3:{address}"),
        source: ip.map(|ip| ip.to_string()),
        // The wallet acts for itself: the request may set a budget on its own key (only a
        // restriction); the key kind was forced to inference above.
        role: CallerRole::Admin,
        reach: Reach::Own,
    };
    let created = state.keys.create(&caller, new).await?;
    Ok(Json(Succeeded::new(CreatedApiKey::new(&created))))
}
