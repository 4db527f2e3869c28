//! The first admin key (DESIGN §9), through the real binary: `keygate serve` installs
//! `KEYGATE_BOOTSTRAP_ADMIN_KEY` silently, or prints one generated key, clearly marked, on
//! stderr, once.

// Test bodies are plain async fns (not `#[test]`s), which `allow-unwrap-in-tests` does not cover.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use keygate::keys::Token;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{
    json_of, keygate, keys_in, run, run_cli, spawn_serve, Backend, ServeProcess, TestDb,
};
use crate::support::backends::backend_tests;

backend_tests! {
    both: [
        serve_installs_the_provided_key_and_prints_none,
        serve_prints_one_generated_key_once,
        serve_refuses_a_malformed_provided_key_without_echoing_it,
    ],
}

async fn list_keys(server: &ServeProcess, key: &str) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .get(server.url("/admin/v1/keys"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    json_of(response).await
}

async fn serve_installs_the_provided_key_and_prints_none(backend: Backend) {
    // Arrange
    let db = TestDb::new(backend).await;
    let provided = Token::generate().expose().to_string();
    let env = [("KEYGATE_BOOTSTRAP_ADMIN_KEY", provided.as_str())];

    // Act
    let server = spawn_serve(&db, &env).await;
    let (status, list) = list_keys(&server, &provided).await;
    let (stdout, stderr) = server.stop().await;

    // Assert
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["data"][0]["kind"], "admin");
    assert_eq!(list["data"][0]["name"], "bootstrap admin");
    assert_eq!(list["data"][0]["last6"], &provided[provided.len() - 6..]);
    for output in [&stdout, &stderr] {
        assert!(!output.contains(&provided), "the provided key is printed");
        assert!(keys_in(output).is_empty(), "a key is printed:\n{output}");
    }
    assert!(!stderr.contains("shown ONCE"), "{stderr}");

    // A restart with the same environment changes nothing and still prints nothing.
    let server = spawn_serve(&db, &env).await;
    let (status, list) = list_keys(&server, &provided).await;
    let (stdout, stderr) = server.stop().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["total"], 1, "the key was installed twice: {list}");
    assert!(keys_in(&stdout).is_empty() && keys_in(&stderr).is_empty());
}

async fn serve_prints_one_generated_key_once(backend: Backend) {
    // Arrange
    let db = TestDb::new(backend).await;

    // Act: first start on an empty database.
    let server = spawn_serve(&db, &[]).await;
    let banner = server.stderr_so_far();
    let printed = keys_in(&banner);
    assert_eq!(
        printed.len(),
        1,
        "expected exactly one key on stderr:\n{banner}"
    );
    let generated = printed[0].clone();
    let (status, list) = list_keys(&server, &generated).await;
    let (stdout, stderr) = server.stop().await;

    // Assert
    assert_eq!(
        status,
        StatusCode::OK,
        "the printed key does not work: {list}"
    );
    assert_eq!(list["data"][0]["kind"], "admin");
    assert_eq!(stderr.matches(generated.as_str()).count(), 1, "{stderr}");
    assert_eq!(keys_in(&stderr), std::slice::from_ref(&generated));
    assert!(
        stderr.contains("shown ONCE"),
        "the key is not marked:\n{stderr}"
    );
    let line = stderr.lines().find(|l| l.contains(&generated)).unwrap();
    assert_eq!(
        line.trim(),
        generated,
        "the key is not on a line of its own"
    );
    assert!(keys_in(&stdout).is_empty(), "a key on stdout:\n{stdout}");

    // A second start on the same database prints no key; the first still works.
    let server = spawn_serve(&db, &[]).await;
    let (status, list) = list_keys(&server, &generated).await;
    let (stdout, stderr) = server.stop().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["total"], 1, "a second admin key was created: {list}");
    assert!(
        keys_in(&stderr).is_empty(),
        "a key printed again:\n{stderr}"
    );
    assert!(!stderr.contains("shown ONCE"), "{stderr}");
    assert!(keys_in(&stdout).is_empty());
}

async fn serve_refuses_a_malformed_provided_key_without_echoing_it(backend: Backend) {
    // Arrange
    let db = TestDb::new(backend).await;
    let bad = "kg_thisisnotavalid_keygatekeyatallbutsecretish123456";
    let mut cmd = keygate(db.dir.path());
    cmd.arg("--config")
        .arg(db.config_file())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("KEYGATE_BOOTSTRAP_ADMIN_KEY", bad);

    // Act
    let output = run(cmd).await;

    // Assert
    assert!(
        !output.success,
        "serve started with a malformed bootstrap key"
    );
    assert_ne!(output.code, Some(101), "panicked: {}", output.stderr);
    assert!(
        output.stderr.contains("KEYGATE_BOOTSTRAP_ADMIN_KEY"),
        "{}",
        output.stderr
    );
    assert!(!output.stderr.contains(bad), "the bad key is echoed");
    assert!(!output.stdout.contains(bad));
}

/// Replicas of a fresh deployment (compose, Kubernetes) start together on one migrated,
/// empty PostgreSQL with the same provided key: every one must start, and the key be
/// installed once. (They used to race: all but one exited on a lookup-id conflict.)
#[tokio::test]
async fn replicas_starting_together_all_start_and_install_the_provided_key_once() {
    // Arrange
    let db = TestDb::new(Backend::Postgres).await;
    let migrated = run_cli(&db, &["migrate"]).await;
    assert!(migrated.success, "{}", migrated.stderr);
    let provided = Token::generate().expose().to_string();
    let env = [("KEYGATE_BOOTSTRAP_ADMIN_KEY", provided.as_str())];

    // Act: spawn_serve fails the test if a replica exits before listening.
    let replicas = futures::future::join_all((0..4).map(|_| spawn_serve(&db, &env))).await;

    // Assert
    for replica in &replicas {
        let (status, list) = list_keys(replica, &provided).await;
        assert_eq!(status, StatusCode::OK, "{list}");
        assert_eq!(list["total"], 1, "the key was installed twice: {list}");
    }
    for replica in replicas {
        let (stdout, stderr) = replica.stop().await;
        assert!(keys_in(&stdout).is_empty() && keys_in(&stderr).is_empty());
    }
}
