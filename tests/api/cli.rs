//! The real `keygate` binary's commands (DESIGN §9): `migrate`, `keys create|list|show|
//! revoke|generate`, `health` (the container health check), `--help` everywhere. Output contracts: machine-readable output on
//! stdout (`--json`: one JSON object), everything else on stderr.

// Test bodies are plain async fns (not `#[test]`s), which `allow-unwrap-in-tests` does not cover.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use keygate::keys::Token;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{keygate, keys_in, run, run_cli, spawn_app, Backend, CliOutput, TestDb};
use crate::support::backends::backend_tests;

backend_tests! {
    both: [
        migrate_prepares_an_empty_database,
        the_test_suites_variables_are_not_configuration,
        keys_create_json_prints_one_object_with_id_and_secret,
        keys_create_without_json_prints_only_the_secret,
        keys_list_show_and_revoke,
        keys_create_and_update_set_and_clear_fit_max_tokens,
        cli_keys_work_against_a_running_server,
        cli_refuses_bad_input_with_a_message,
    ],
}

fn parse_json(output: &CliOutput) -> Value {
    assert!(output.success, "command failed: {}", output.stderr);
    assert_eq!(
        output.stdout.trim_end().lines().count(),
        1,
        "--json prints one line: {:?}",
        output.stdout
    );
    serde_json::from_str(output.stdout.trim_end())
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", output.stdout))
}

async fn create_json(db: &TestDb, args: &[&str]) -> Value {
    let mut all = vec!["keys", "create"];
    all.extend_from_slice(args);
    all.push("--json");
    parse_json(&run_cli(db, &all).await)
}

#[tokio::test]
async fn help_works_on_every_command() {
    let dir = tempfile::tempdir().unwrap();
    for command in [
        &[][..],
        &["serve"][..],
        &["migrate"][..],
        &["keys"][..],
        &["keys", "create"][..],
        &["keys", "list"][..],
        &["keys", "show"][..],
        &["keys", "revoke"][..],
        &["keys", "generate"][..],
        &["health"][..],
        &["keys", "update"][..],
        &["keys", "rotate"][..],
        &["keys", "usage"][..],
        &["workspaces", "create"][..],
        &["workspaces", "list"][..],
        &["workspaces", "show"][..],
        &["workspaces", "update"][..],
        &["workspaces", "delete"][..],
        &["members", "add"][..],
        &["members", "list"][..],
        &["members", "update"][..],
        &["members", "remove"][..],
        &["audit", "list"][..],
        &["rate-limit-events", "list"][..],
    ] {
        // Arrange
        let mut cmd = keygate(dir.path());
        cmd.args(command).arg("--help");

        // Act
        let output = run(cmd).await;

        // Assert
        assert!(
            output.success,
            "keygate {command:?} --help failed: {}",
            output.stderr
        );
        assert!(
            output.stdout.contains("Usage"),
            "keygate {command:?} --help: {}",
            output.stdout
        );
    }
    // `--help` touched no database.
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
}

#[tokio::test]
async fn keys_generate_prints_a_fresh_valid_key() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();

    // Act
    let mut first = keygate(dir.path());
    first.args(["keys", "generate"]);
    let first = run(first).await;
    let mut second = keygate(dir.path());
    second.args(["keys", "generate"]);
    let second = run(second).await;

    // Assert
    for output in [&first, &second] {
        assert!(output.success, "{}", output.stderr);
        assert_eq!(output.stdout.lines().count(), 1);
        Token::parse(output.stdout.trim_end()).expect("a well-formed key");
    }
    assert_ne!(first.stdout, second.stdout);
}

#[tokio::test]
async fn without_config_the_store_is_keygate_db_in_the_working_directory() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = keygate(dir.path());
    cmd.arg("migrate");

    // Act
    let output = run(cmd).await;

    // Assert
    assert!(output.success, "{}", output.stderr);
    assert!(dir.path().join("keygate.db").exists());
}

async fn migrate_prepares_an_empty_database(backend: Backend) {
    // Arrange
    let db = TestDb::new(backend).await;

    // Act: twice; the second run finds nothing to do.
    let first = run_cli(&db, &["migrate"]).await;
    let second = run_cli(&db, &["migrate"]).await;

    // Assert
    for output in [&first, &second] {
        assert!(output.success, "migrate failed: {}", output.stderr);
        assert!(output.stdout.is_empty(), "{:?}", output.stdout);
    }
    let store = keygate::store::connect(&db.url).await.unwrap();
    assert!(store.migrations_applied().await.unwrap());
    assert_eq!(store.default_workspace().await.unwrap().name, "default");
    assert_eq!(store.count_live_admin_keys().await.unwrap(), 0);
}

/// The test suite's own variables (`KEYGATE_TEST_PG_URL`, `KEYGATE_TEST_VENV`…) share
/// keygate's prefix; they are not configuration, so they must not stop start-up as an
/// unknown key would.
async fn the_test_suites_variables_are_not_configuration(backend: Backend) {
    // Arrange
    let db = TestDb::new(backend).await;
    let mut command = keygate(db.dir.path());
    command
        .arg("--config")
        .arg(db.config_file())
        .arg("migrate")
        .env("KEYGATE_TEST_VENV", "/nowhere")
        .env("KEYGATE_TEST_OUTAGE_SECS", "3");

    // Act
    let output = run(command).await;

    // Assert
    assert!(output.success, "migrate failed: {}", output.stderr);
}

async fn keys_create_json_prints_one_object_with_id_and_secret(backend: Backend) {
    // Arrange
    let db = TestDb::new(backend).await;

    // Act
    let output = run_cli(
        &db,
        &[
            "keys",
            "create",
            "--name",
            "x",
            "--kind",
            "admin",
            "--rpm",
            "60",
            "--tpd",
            "1000",
            "--budget-usd",
            "12.50",
            "--budget-period",
            "day",
            "--expires-at",
            "2099-01-01T00:00:00Z",
            "--json",
        ],
    )
    .await;

    // Assert
    let key = parse_json(&output);
    let secret = key["secret"].as_str().expect("`secret` in the object");
    let token = Token::parse(secret).expect("a well-formed key");
    uuid::Uuid::parse_str(key["id"].as_str().expect("`id` in the object")).unwrap();
    assert_eq!(key["name"], "x");
    assert_eq!(key["kind"], "admin");
    assert_eq!(key["status"], "active");
    assert_eq!(key["created_by"], "cli");
    assert_eq!(key["limits"]["rpm"], 60);
    assert_eq!(key["limits"]["tpd"], 1000);
    assert_eq!(key["budget"]["limit_usd"].as_f64(), Some(12.5));
    assert_eq!(key["budget"]["period"], "day");
    assert!(key["expires_at"]
        .as_str()
        .unwrap()
        .starts_with("2099-01-01T00:00:00"));
    assert_eq!(key["last6"], &secret[secret.len() - 6..]);
    assert!(key["partial_key"]
        .as_str()
        .unwrap()
        .starts_with(&format!("kg_{}…", token.lookup_id())));
    assert!(
        !output.stderr.contains(secret),
        "the secret is printed twice"
    );

    // The key is stored: the store finds it by its lookup id.
    let store = keygate::store::connect(&db.url).await.unwrap();
    let (_, stored) = store.find_secret(token.lookup_id()).await.unwrap().unwrap();
    assert_eq!(stored.id.to_string(), key["id"].as_str().unwrap());
}

async fn keys_create_without_json_prints_only_the_secret(backend: Backend) {
    // Arrange
    let db = TestDb::new(backend).await;

    // Act
    let output = run_cli(&db, &["keys", "create", "--name", "plain"]).await;

    // Assert
    assert!(output.success, "{}", output.stderr);
    assert!(output.stdout.ends_with('\n'));
    let secret = output.stdout.trim_end_matches('\n');
    assert!(
        !secret.contains('\n'),
        "more than the secret: {:?}",
        output.stdout
    );
    Token::parse(secret).expect("stdout is exactly one well-formed key");
    assert!(
        !output.stderr.contains(secret),
        "the secret is printed twice"
    );
    assert!(keys_in(&output.stderr).is_empty());
    assert!(
        output.stderr.contains("only once"),
        "stderr explains the secret is shown once: {}",
        output.stderr
    );
}

async fn keys_list_show_and_revoke(backend: Backend) {
    // Arrange
    let db = TestDb::new(backend).await;
    let first = create_json(&db, &["--name", "first"]).await;
    let second = create_json(&db, &["--name", "second", "--kind", "admin"]).await;
    let (first_id, second_id) = (
        first["id"].as_str().unwrap().to_string(),
        second["id"].as_str().unwrap().to_string(),
    );

    // Act + Assert: list
    let list = run_cli(&db, &["keys", "list", "--json"]).await;
    let listed = parse_json(&list);
    let ids: Vec<&str> = listed
        .as_array()
        .expect("an array of keys")
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [first_id.as_str(), second_id.as_str()]);
    for key in listed.as_array().unwrap() {
        assert!(key.get("secret").is_none(), "list shows a secret: {key}");
        assert!(key.get("partial_key").is_some());
    }
    assert!(keys_in(&list.stdout).is_empty());
    let text = run_cli(&db, &["keys", "list"]).await;
    assert!(text.success, "{}", text.stderr);
    assert_eq!(text.stdout.lines().count(), 2, "{}", text.stdout);
    assert!(text.stdout.contains(&first_id) && text.stdout.contains("second"));

    // show
    let show = run_cli(&db, &["keys", "show", &second_id, "--json"]).await;
    let shown = parse_json(&show);
    assert_eq!(shown["id"], second_id.as_str());
    assert_eq!(shown["name"], "second");
    assert_eq!(shown["kind"], "admin");
    assert!(shown.get("secret").is_none(), "show shows the secret");
    let mut expected = second.clone();
    expected.as_object_mut().unwrap().remove("secret");
    assert_eq!(shown, expected, "show differs from what create printed");
    let text = run_cli(&db, &["keys", "show", &second_id]).await;
    assert!(
        text.success && text.stdout.contains(&second_id),
        "{}",
        text.stderr
    );

    // revoke
    let revoke = run_cli(&db, &["keys", "revoke", &first_id]).await;
    assert!(revoke.success, "{}", revoke.stderr);
    assert!(revoke.stderr.contains(&first_id), "{}", revoke.stderr);
    let gone = run_cli(&db, &["keys", "show", &first_id, "--json"]).await;
    assert!(!gone.success, "a revoked key is still shown");
    assert!(gone.stdout.is_empty());
    assert!(gone.stderr.contains(&first_id), "{}", gone.stderr);
    let again = run_cli(&db, &["keys", "revoke", &first_id]).await;
    assert!(!again.success, "revoking twice succeeded");
    let listed = parse_json(&run_cli(&db, &["keys", "list", "--json"]).await);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["id"], second_id.as_str());
    // The default workspace keeps an active admin key (tests/api/last_admin_key.rs), so
    // another one comes first.
    create_json(&db, &["--name", "keeper", "--kind", "admin"]).await;
    let revoked = parse_json(&run_cli(&db, &["keys", "revoke", &second_id, "--json"]).await);
    assert_eq!(revoked["status"], "revoked");
    assert!(revoked.get("secret").is_none());
}

async fn keys_create_and_update_set_and_clear_fit_max_tokens(backend: Backend) {
    // Arrange
    let db = TestDb::new(backend).await;
    let plain = create_json(&db, &["--name", "plain"]).await;
    let fitting = create_json(&db, &["--name", "fitting", "--fit-max-tokens"]).await;
    let id = fitting["id"].as_str().unwrap().to_string();
    let show = |id: String| {
        let db = &db;
        async move { parse_json(&run_cli(db, &["keys", "show", &id, "--json"]).await) }
    };

    // Act + Assert
    assert_eq!(plain["fit_max_tokens"], false);
    assert_eq!(fitting["fit_max_tokens"], true);
    assert_eq!(show(id.clone()).await["fit_max_tokens"], true);
    let off = run_cli(
        &db,
        &["keys", "update", &id, "--no-fit-max-tokens", "--json"],
    )
    .await;
    assert_eq!(parse_json(&off)["fit_max_tokens"], false);
    assert_eq!(show(id.clone()).await["fit_max_tokens"], false);
    let on = run_cli(&db, &["keys", "update", &id, "--fit-max-tokens", "--json"]).await;
    assert_eq!(parse_json(&on)["fit_max_tokens"], true);
    let text = run_cli(&db, &["keys", "show", &id]).await;
    assert!(text.stdout.contains("fit_max_tokens"), "{}", text.stdout);
    let both = run_cli(
        &db,
        &[
            "keys",
            "update",
            &id,
            "--fit-max-tokens",
            "--no-fit-max-tokens",
        ],
    )
    .await;
    assert!(!both.success, "contradictory flags were accepted");
    assert!(
        both.stderr.contains("--no-fit-max-tokens"),
        "{}",
        both.stderr
    );
}

async fn cli_keys_work_against_a_running_server(backend: Backend) {
    // Arrange: a server and the CLI on one database.
    let app = spawn_app(backend).await;
    let created = create_json(&app.db, &["--name", "from cli", "--kind", "admin"]).await;
    let (id, secret) = (
        created["id"].as_str().unwrap().to_string(),
        created["secret"].as_str().unwrap().to_string(),
    );

    // Act + Assert: the server accepts it and lists it.
    assert_eq!(app.admin_status_of(&secret).await, StatusCode::OK);
    let (_, list) = crate::helpers::json_of(app.get("/admin/v1/keys").await).await;
    assert!(list.to_string().contains(&id));
    let events = app.audit_events(app.workspace_id).await;
    assert!(events
        .iter()
        .any(|e| e.action == "key.create" && e.actor == "cli" && e.target == format!("key:{id}")));

    // Revoked by another process, it stops working within the cache TTL (1 s).
    let revoke = run_cli(&app.db, &["keys", "revoke", &id]).await;
    assert!(revoke.success, "{}", revoke.stderr);
    let revoked_at = Instant::now();
    loop {
        let status = app.admin_status_of(&secret).await;
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert_eq!(status, StatusCode::OK);
        assert!(
            revoked_at.elapsed() < Duration::from_millis(2500),
            "a key revoked by the CLI still works after the cache TTL"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn cli_refuses_bad_input_with_a_message(backend: Backend) {
    // Arrange
    let db = TestDb::new(backend).await;
    let cases: &[(&[&str], &str)] = &[
        (&["keys", "create"], "--name"),
        (&["keys", "create", "--name", "x", "--kind", "root"], "root"),
        (&["keys", "create", "--name", "x", "--rpm", "-1"], "-1"),
        (&["keys", "create", "--name", "x", "--rpm", "ten"], "--rpm"),
        (
            &["keys", "create", "--name", "x", "--expires-at", "soon"],
            "--expires-at",
        ),
        (
            &["keys", "create", "--name", "x", "--budget-usd", "lots"],
            "--budget-usd",
        ),
        (&["keys", "create", "--name", "", "--json"], "name"),
        (
            &["keys", "create", "--name", "x", "--workspace", "nope"],
            "nope",
        ),
        (&["keys", "show", "not-a-uuid"], "not-a-uuid"),
        (
            &["keys", "revoke", "00000000-0000-0000-0000-000000000000"],
            "00000000-0000-0000-0000-000000000000",
        ),
        (&["keys", "frobnicate"], "frobnicate"),
    ];

    for (args, names) in cases {
        // Act
        let output = run_cli(&db, args).await;
        // Assert
        assert!(!output.success, "keygate {args:?} succeeded");
        assert_ne!(
            output.code,
            Some(101),
            "keygate {args:?} panicked: {}",
            output.stderr
        );
        assert!(output.stdout.is_empty(), "{args:?}: {}", output.stdout);
        assert!(
            output.stderr.contains(names),
            "keygate {args:?}: the error does not name `{names}`: {}",
            output.stderr
        );
    }

    // A config file that does not exist is named.
    let mut cmd = keygate(db.dir.path());
    cmd.args(["--config", "/nonexistent/keygate.toml", "migrate"]);
    let output = run(cmd).await;
    assert!(!output.success);
    assert!(
        output.stderr.contains("/nonexistent/keygate.toml"),
        "{}",
        output.stderr
    );
}

/// Runs `keygate health <args>` in an empty directory.
async fn health(args: &[&str]) -> CliOutput {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = keygate(dir.path());
    cmd.arg("health").args(args);
    run(cmd).await
}

#[tokio::test]
async fn health_exits_0_when_the_gateway_answers_2xx_and_1_otherwise() {
    // Arrange
    let app = spawn_app(Backend::Sqlite).await;
    let url = |path: &str| format!("{}{path}", app.address);

    // Act
    let healthz = health(&["--url", &url("/healthz")]).await;
    let readyz = health(&["--url", &url("/readyz")]).await;
    // Any non-2xx is unhealthy; this one is 401 (no key given).
    let refused = health(&["--url", &url("/admin/v1/keys")]).await;

    // Assert: 0 is "healthy" and 1 "unhealthy" to Docker's HEALTHCHECK (2 is reserved).
    for output in [&healthz, &readyz] {
        assert_eq!(output.code, Some(0), "{}", output.stderr);
        assert!(output.stdout.is_empty(), "{:?}", output.stdout);
    }
    assert_eq!(refused.code, Some(1), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("answered 401"),
        "{}",
        refused.stderr
    );
}

#[tokio::test]
async fn health_reads_no_configuration() {
    // Arrange: a configuration that stops every other command.
    let app = spawn_app(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = keygate(dir.path());
    cmd.env("KEYGATE_LISTEN", "not an address")
        .env("DATABASE_URL", "mysql://nowhere")
        .args(["--config", "/nonexistent/keygate.toml", "health", "--url"])
        .arg(format!("{}/healthz", app.address));

    // Act
    let output = run(cmd).await;

    // Assert
    assert_eq!(output.code, Some(0), "{}", output.stderr);
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
}

#[tokio::test]
async fn health_exits_1_within_its_timeout_when_nothing_answers() {
    // Arrange: a closed port, and a listener that accepts but never answers.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_url = format!("http://{}/healthz", closed.local_addr().unwrap());
    drop(closed);
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}/healthz", silent.local_addr().unwrap());
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });

    // Act
    let refused = health(&["--url", &closed_url]).await;
    let started = Instant::now();
    let hung = health(&["--url", &silent_url, "--timeout-secs", "0.5"]).await;
    let waited = started.elapsed();

    // Assert
    assert_eq!(refused.code, Some(1), "{}", refused.stderr);
    assert!(refused.stderr.contains(&closed_url), "{}", refused.stderr);
    assert_eq!(hung.code, Some(1), "{}", hung.stderr);
    assert!(hung.stderr.contains("no answer within"), "{}", hung.stderr);
    assert!(waited < Duration::from_secs(5), "took {waited:?}");
    holder.abort();
}

#[tokio::test]
async fn health_refuses_bad_arguments_with_a_message() {
    for (args, names) in [
        (&["--url", "https://127.0.0.1:8080/healthz"][..], "https"),
        (&["--url", "not a url"][..], "--url"),
        (&["--timeout-secs", "0"][..], "--timeout-secs"),
        (&["--timeout-secs=-1"][..], "--timeout-secs"),
        (&["--timeout-secs", "soon"][..], "--timeout-secs"),
    ] {
        // Act
        let output = health(args).await;

        // Assert
        assert!(!output.success, "keygate health {args:?} succeeded");
        assert_ne!(
            output.code,
            Some(101),
            "{args:?} panicked: {}",
            output.stderr
        );
        assert!(
            output.stderr.contains(names),
            "keygate health {args:?}: the error does not name `{names}`: {}",
            output.stderr
        );
    }
}
