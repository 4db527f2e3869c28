//! The Web3 flow with real secp256k1 signatures: a token, a signed proof, an inference key
//! for the signer; bad proofs and admin keys refused, off by default, the address
//! allowlist, failed proofs counted as failed authentications.

use chrono::{Duration, Utc};
use k256::ecdsa::SigningKey;
use keygate::web3::{personal_sign_digest, Address, TokenSigner};
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::{json, Value};

use super::{assert_venice_error, keys_of, set, venice, YearAhead, KEYS, WEB3};
use crate::helpers::{id_of, json_of, spawn_app, spawn_app_with, Backend, TestApp};
use crate::support::backends::backend_tests;

backend_tests! {
    both: [
        web3_flow_creates_an_inference_key_for_the_signer,
        web3_refuses_bad_proofs_and_admin_keys,
        web3_is_off_by_default_and_honours_the_address_allowlist,
        web3_failed_proofs_count_as_failed_authentications,
    ],
}

const WEB3_SECRET: &str = "a test secret that is long enough for web3";

fn signing_key() -> (SigningKey, Address) {
    let key = SigningKey::random(&mut rand::rngs::OsRng);
    let address = Address::of_key(key.verifying_key());
    (key, address)
}

/// `personal_sign` of `message`: `0x` + r ‖ s ‖ v (v = 27/28).
fn personal_sign(key: &SigningKey, message: &str) -> String {
    let digest = personal_sign_digest(message.as_bytes());
    let (signature, recovery) = key.sign_prehash_recoverable(&digest).unwrap();
    let mut bytes = signature.to_vec();
    bytes.push(27 + recovery.to_byte());
    format!("0x{}", hex::encode(bytes))
}

async fn spawn_web3_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |config| {
        config.web3.enabled = true;
        config.web3.token_secret = Some(SecretString::from(WEB3_SECRET.to_string()));
    })
    .await
}

async fn web3_token(app: &TestApp) -> String {
    let response = app.req_anon(Method::GET, WEB3).send().await.unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"]["token"].as_str().unwrap().to_string()
}

async fn web3_post(app: &TestApp, body: &Value) -> (StatusCode, Value) {
    let response = app
        .req_anon(Method::POST, WEB3)
        .json(body)
        .send()
        .await
        .unwrap();
    json_of(response).await
}

async fn web3_flow_creates_an_inference_key_for_the_signer(backend: Backend) {
    let app = spawn_web3_app(backend).await;
    let (wallet, address) = signing_key();

    // The token needs no API key; the SDK sends its Bearer key anyway, which is ignored.
    let response = app
        .req_as("kg_whatever", Method::GET, WEB3)
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["success"], true);
    let token = body["data"]["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("kgw3."), "{token}");

    let year = Utc::now().year_ahead();
    let (status, body) = web3_post(
        &app,
        &json!({
            "apiKeyType": "INFERENCE",
            "address": address.to_string().to_lowercase(),
            "signature": personal_sign(&wallet, &token),
            "token": token,
            "description": "Web3 API Key",
            "consumptionLimit": {"usd": 1.5},
            "limitPeriod": "MONTH",
            "expiresAt": format!("{year}-01-01"),
            "modelPrivacy": "PRIVATE_ONLY"
        }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(keys_of(&body), set(&["success", "data"]));
    assert_eq!(body["success"], true);
    let created = &body["data"];
    assert_eq!(created["apiKeyType"], "INFERENCE");
    assert_eq!(created["description"], "Web3 API Key");
    assert_eq!(
        created["consumptionLimit"],
        json!({"usd": 1.5, "diem": null, "vcu": null})
    );
    assert_eq!(created["limitPeriod"], "MONTH");
    assert_eq!(created["expiresAt"], format!("{year}-01-01T00:00:00.000Z"));
    let secret = created["apiKey"].as_str().unwrap();

    // An ordinary inference key of the default workspace, made by the wallet.
    let (_, native) = json_of(app.get(&format!("/admin/v1/keys/{}", id_of(created))).await).await;
    assert_eq!(native["kind"], "inference");
    assert_eq!(native["workspace_id"], app.workspace_id.to_string());
    assert_eq!(native["wallet_address"], address.to_string(), "EIP-55 form");
    assert_eq!(native["created_by"], format!("web3:{address}"));
    assert_eq!(
        native["budget"],
        json!({"limit_usd": 1.5, "period": "month"})
    );
    let (status, limits) = venice(
        &app,
        secret,
        Method::GET,
        "/api/v1/api_keys/rate_limits",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{limits}");
    assert_eq!(limits["data"]["balances"]["USD"], 1.5);
    let audit = app.audit_events(app.workspace_id).await;
    assert!(audit
        .iter()
        .any(|e| e.action == "key.create" && e.actor == format!("web3:{address}")));

    // Another instance sharing `web3.token_secret` accepts this gateway's tokens.
    let signer = TokenSigner::from_secret(WEB3_SECRET.as_bytes());
    let (forged_here, _) = signer.issue(Utc::now(), std::time::Duration::from_secs(60));
    let (status, body) = web3_post(
        &app,
        &json!({"apiKeyType": "INFERENCE", "address": address.to_string(), "signature": personal_sign(&wallet, &forged_here), "token": forged_here}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"]["description"], "Web3 API Key",
        "the default description"
    );
}

async fn web3_refuses_bad_proofs_and_admin_keys(backend: Backend) {
    let app = spawn_web3_app(backend).await;
    let (wallet, address) = signing_key();
    let (other_wallet, _) = signing_key();
    let request = |token: &str, signature: String| json!({"apiKeyType": "INFERENCE", "address": address.to_string(), "signature": signature, "token": token});

    // Signed by another wallet: 401.
    let token = web3_token(&app).await;
    let (status, body) =
        web3_post(&app, &request(&token, personal_sign(&other_wallet, &token))).await;
    assert_venice_error(status, &body, StatusCode::UNAUTHORIZED);
    assert_eq!(body["code"], "INVALID_SIGNATURE");
    // A signature of another message: 401.
    let (status, body) = web3_post(
        &app,
        &request(&token, personal_sign(&wallet, "something else")),
    )
    .await;
    assert_venice_error(status, &body, StatusCode::UNAUTHORIZED);
    // Malformed signatures: 401 too (the proof failed), never 500.
    for bad in [
        "",
        "0x",
        "0x1234",
        &"ab".repeat(65),
        &format!("0x{}", "00".repeat(65)),
    ] {
        let (status, body) = web3_post(&app, &request(&token, bad.to_string())).await;
        assert_venice_error(status, &body, StatusCode::UNAUTHORIZED);
    }
    // A token this gateway did not issue, a tampered one, an expired one: 401.
    let signer = TokenSigner::from_secret(WEB3_SECRET.as_bytes());
    let (expired, _) = signer.issue(
        Utc::now() - Duration::hours(1),
        std::time::Duration::from_secs(60),
    );
    let (foreign, _) = TokenSigner::random().issue(Utc::now(), std::time::Duration::from_secs(60));
    // The MAC's last hex digit changed (to another digit, whatever it was).
    let last = if token.ends_with('0') { '1' } else { '0' };
    let tampered = format!("{}{last}", &token[..token.len() - 1]);
    assert_ne!(tampered, token);
    for bad in [
        expired.as_str(),
        foreign.as_str(),
        tampered.as_str(),
        "",
        "eyJhbGciOi.x.y",
    ] {
        let (status, body) = web3_post(&app, &request(bad, personal_sign(&wallet, bad))).await;
        assert_venice_error(status, &body, StatusCode::UNAUTHORIZED);
        assert_eq!(body["code"], "INVALID_WEB3_TOKEN", "{bad}: {body}");
    }
    let (_, body) = web3_post(&app, &request(&expired, personal_sign(&wallet, &expired))).await;
    assert!(
        body["error"].as_str().unwrap().contains("expired"),
        "{body}"
    );

    // ADMIN is refused before anything is checked or used: 403.
    let mut admin = request(&token, personal_sign(&wallet, &token));
    admin["apiKeyType"] = json!("ADMIN");
    let (status, body) = web3_post(&app, &admin).await;
    assert_venice_error(status, &body, StatusCode::FORBIDDEN);

    // A bad body: 400 naming the field (the token stays unused).
    for (field, value) in [
        ("address", json!("0x123")),
        ("expiresAt", json!("never")),
        ("ipAllowlist", json!(["x"])),
    ] {
        let mut body = request(&token, personal_sign(&wallet, &token));
        body[field] = value;
        let (status, answer) = web3_post(&app, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {answer}");
    }

    // The right signer: accepted once; the same token again: 401.
    let good = request(&token, personal_sign(&wallet, &token));
    let (status, body) = web3_post(&app, &good).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = web3_post(&app, &good).await;
    assert_venice_error(status, &body, StatusCode::UNAUTHORIZED);
    assert_eq!(body["code"], "WEB3_TOKEN_USED");

    // Nothing else was created: the bootstrap key and the one Web3 key.
    let (_, list) = venice(&app, &app.admin_key, Method::GET, KEYS, None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2, "{list}");
}

async fn web3_is_off_by_default_and_honours_the_address_allowlist(backend: Backend) {
    // Off: both routes 403, without touching anything.
    let app = spawn_app(backend).await;
    let (status, body) = web3_post(
        &app,
        &json!({"apiKeyType": "INFERENCE", "address": "0x0", "signature": "0x", "token": "t"}),
    )
    .await;
    assert_venice_error(status, &body, StatusCode::FORBIDDEN);
    assert_eq!(body["code"], "WEB3_DISABLED");
    let response = app
        .req_anon(Method::POST, WEB3)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_venice_error(status, &body, StatusCode::FORBIDDEN);
    drop(app);

    // On, with an allowlist: a proven but unlisted wallet gets 403; a listed one its key.
    let (listed_wallet, listed) = signing_key();
    let (unlisted_wallet, unlisted) = signing_key();
    let app = spawn_app_with(backend, |config| {
        config.web3.enabled = true;
        config.web3.allowed_addresses = vec![listed.to_string().to_uppercase().replace("0X", "0x")];
    })
    .await;
    let token = web3_token(&app).await;
    let (status, body) = web3_post(
        &app,
        &json!({"apiKeyType": "INFERENCE", "address": unlisted.to_string(), "signature": personal_sign(&unlisted_wallet, &token), "token": token}),
    )
    .await;
    assert_venice_error(status, &body, StatusCode::FORBIDDEN);
    assert_eq!(body["code"], "WEB3_ADDRESS_NOT_ALLOWED");
    // Per-process token key (no `token_secret` configured) works on this instance.
    let token = web3_token(&app).await;
    let (status, body) = web3_post(
        &app,
        &json!({"apiKeyType": "INFERENCE", "address": listed.to_string(), "signature": personal_sign(&listed_wallet, &token), "token": token}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The OpenAPI document lists the Venice routes.
    let (_, doc) = json_of(
        app.req_anon(Method::GET, "/openapi.json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    for path in [
        "/api/v1/api_keys",
        "/api/v1/api_keys/{id}",
        "/api/v1/api_keys/rate_limits",
        "/api/v1/api_keys/rate_limits/log",
        "/api/v1/api_keys/generate_web3_key",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from /openapi.json"
        );
    }
    assert_eq!(
        doc["paths"]["/api/v1/api_keys"]["get"]["tags"],
        json!(["venice"])
    );
}

async fn web3_failed_proofs_count_as_failed_authentications(backend: Backend) {
    let app = spawn_app_with(backend, |config| {
        config.web3.enabled = true;
        config.keys.failed_auth_per_minute = 3;
    })
    .await;
    let (wallet, address) = signing_key();
    let (stranger, _) = signing_key();
    let token = web3_token(&app).await;
    let forged = json!({"apiKeyType": "INFERENCE", "address": address.to_string(), "signature": personal_sign(&stranger, &token), "token": token});
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let (status, body) = web3_post(&app, &forged).await;
        assert!(body["error"].is_string(), "{body}");
        statuses.push(status);
    }
    assert_eq!(
        &statuses[..3],
        &[StatusCode::UNAUTHORIZED; 3],
        "{statuses:?}"
    );
    assert_eq!(statuses[4], StatusCode::TOO_MANY_REQUESTS, "{statuses:?}");
    // While blocked, even a good proof from the address waits (and the token stays unused).
    let response = app
        .req_anon(Method::POST, WEB3)
        .json(&json!({"apiKeyType": "INFERENCE", "address": address.to_string(), "signature": personal_sign(&wallet, &token), "token": token}))
        .send()
        .await
        .unwrap();
    assert!(response.headers().contains_key("retry-after"));
    let (status, body) = json_of(response).await;
    assert_venice_error(status, &body, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["code"], "TOO_MANY_AUTH_ATTEMPTS");
}
