//! The CLI's admin commands on the real binary (issue 15 §3): `keys update|rotate|usage`,
//! `workspaces …`, `members …`, `audit list`, `rate-limit-events list`, each with `--json`
//! and the API's rules, locally (actor `cli`) and through a running server (`--url` with
//! `KEYGATE_ADMIN_KEY`).

use std::process::Stdio;

use keygate::keys::Token;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::helpers::{both_backends, keygate, run_cli, spawn_app, Backend, CliOutput, TestDb};

both_backends!(
    workspaces_and_members_from_the_cli,
    keys_update_rotate_and_usage_from_the_cli,
    audit_and_refusals_from_the_cli,
    the_cli_acts_through_a_server_with_url,
);

fn json(output: &CliOutput) -> Value {
    assert!(output.success, "command failed: {}", output.stderr);
    assert_eq!(
        output.stdout.trim_end().lines().count(),
        1,
        "{:?}",
        output.stdout
    );
    serde_json::from_str(output.stdout.trim_end()).unwrap()
}

/// Runs `keygate --config <db> <args>` with `stdin` written to its standard input, and
/// `envs` set.
async fn run_with(db: &TestDb, args: &[&str], stdin: &str, envs: &[(&str, &str)]) -> CliOutput {
    let mut command = keygate(db.dir.path());
    command
        .arg("--config")
        .arg(db.config_file())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in envs {
        command.env(name, value);
    }
    let mut child = command.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let output = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    CliOutput {
        success: output.status.success(),
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn workspaces_and_members_from_the_cli(backend: Backend) {
    // Arrange
    let db = TestDb::new(backend).await;

    // Act + Assert: create (default cap 10), show, update, list.
    let ws = json(
        &run_cli(
            &db,
            &[
                "workspaces",
                "create",
                "--name",
                "acme",
                "--credits-usd",
                "12.5",
                "--json",
            ],
        )
        .await,
    );
    assert_eq!(ws["name"], "acme");
    assert_eq!(ws["key_cap"], 10);
    assert_eq!(ws["credits_usd"].as_f64(), Some(12.5));
    let shown = json(&run_cli(&db, &["workspaces", "show", "acme", "--json"]).await);
    assert_eq!(shown["id"], ws["id"]);
    assert_eq!(shown["live_keys"], 0);
    let updated = json(
        &run_cli(
            &db,
            &[
                "workspaces",
                "update",
                "acme",
                "--key-cap",
                "3",
                "--name",
                "acme2",
                "--json",
            ],
        )
        .await,
    );
    assert_eq!(updated["key_cap"], 3);
    assert_eq!(updated["name"], "acme2");
    let list = json(&run_cli(&db, &["workspaces", "list", "--json"]).await);
    assert_eq!(list.as_array().unwrap().len(), 2);
    let text = run_cli(&db, &["workspaces", "list"]).await;
    assert!(
        text.success && text.stdout.contains("acme2"),
        "{}",
        text.stderr
    );

    // A webhook URL to a private address is refused, naming the field.
    let refused = run_cli(
        &db,
        &[
            "workspaces",
            "update",
            "acme2",
            "--webhook-url",
            "http://127.0.0.1/x",
        ],
    )
    .await;
    assert!(!refused.success);
    assert!(refused.stderr.contains("webhook_url"), "{}", refused.stderr);

    // Members: the password comes from stdin, never an argument; never printed.
    let password = "a long enough password";
    let member = json(
        &run_with(
            &db,
            &[
                "members",
                "add",
                "--workspace",
                "acme2",
                "--username",
                "Alice",
                "--role",
                "owner",
                "--password-stdin",
                "--json",
            ],
            &format!("{password}\n"),
            &[],
        )
        .await,
    );
    assert_eq!(member["username"], "alice");
    assert_eq!(member["role"], "owner");
    let short = run_with(
        &db,
        &[
            "members",
            "add",
            "--workspace",
            "acme2",
            "--username",
            "bob",
            "--role",
            "member",
            "--password-stdin",
        ],
        "short\n",
        &[],
    )
    .await;
    assert!(
        !short.success && short.stderr.contains("password"),
        "{}",
        short.stderr
    );
    // Without stdin or a terminal there is no password to read: a message, not a hang.
    let no_tty = run_cli(
        &db,
        &[
            "members",
            "add",
            "--workspace",
            "acme2",
            "--username",
            "bob",
            "--role",
            "member",
        ],
    )
    .await;
    assert!(
        !no_tty.success && no_tty.stderr.contains("--password-stdin"),
        "{}",
        no_tty.stderr
    );
    let members = json(&run_cli(&db, &["members", "list", "--workspace", "acme2", "--json"]).await);
    assert_eq!(members.as_array().unwrap().len(), 1);
    assert!(!members.to_string().contains("argon2"));
    // The last owner stays, on the CLI too.
    let demote = run_cli(
        &db,
        &[
            "members",
            "update",
            "alice",
            "--workspace",
            "acme2",
            "--role",
            "admin",
        ],
    )
    .await;
    assert!(
        !demote.success && demote.stderr.contains("last owner"),
        "{}",
        demote.stderr
    );
    let new_password = run_with(
        &db,
        &[
            "members",
            "update",
            "alice",
            "--workspace",
            "acme2",
            "--password-stdin",
            "--json",
        ],
        "another long password",
        &[],
    )
    .await;
    assert!(new_password.success, "{}", new_password.stderr);
    let store = keygate::store::connect(&db.url).await.unwrap();
    let ws_id = ws["id"].as_str().unwrap().parse().unwrap();
    let stored = store.find_member(ws_id, "alice").await.unwrap();
    assert!(stored.password_hash.starts_with("$argon2id$"));
    let remove = run_cli(&db, &["members", "remove", "alice", "--workspace", "acme2"]).await;
    assert!(
        !remove.success && remove.stderr.contains("last owner"),
        "{}",
        remove.stderr
    );

    // Delete: refused while a key is live, then done.
    let key = json(
        &run_cli(
            &db,
            &[
                "keys",
                "create",
                "--name",
                "k",
                "--workspace",
                "acme2",
                "--json",
            ],
        )
        .await,
    );
    assert_eq!(key["workspace_id"], ws["id"]);
    let busy = run_cli(&db, &["workspaces", "delete", "acme2"]).await;
    assert!(
        !busy.success && busy.stderr.contains("live keys"),
        "{}",
        busy.stderr
    );
    let revoke = run_cli(&db, &["keys", "revoke", key["id"].as_str().unwrap()]).await;
    assert!(revoke.success, "{}", revoke.stderr);
    let deleted = run_cli(&db, &["workspaces", "delete", "acme2"]).await;
    assert!(deleted.success, "{}", deleted.stderr);
    let default = run_cli(&db, &["workspaces", "delete", "default"]).await;
    assert!(
        !default.success && default.stderr.contains("default"),
        "{}",
        default.stderr
    );
    let events = json(
        &run_cli(
            &db,
            &[
                "audit",
                "list",
                "--workspace",
                ws["id"].as_str().unwrap(),
                "--json",
            ],
        )
        .await,
    );
    let text = events.to_string();
    assert!(!text.contains(password) && !text.contains("$argon2"));
    assert_eq!(events["data"][0]["action"], "workspace.delete");
    assert_eq!(events["data"][0]["actor"], "cli");
}

async fn keys_update_rotate_and_usage_from_the_cli(backend: Backend) {
    // Arrange
    let db = TestDb::new(backend).await;
    let key = json(&run_cli(&db, &["keys", "create", "--name", "k", "--json"]).await);
    let id = key["id"].as_str().unwrap();

    // Act + Assert: update.
    let updated = json(
        &run_cli(
            &db,
            &[
                "keys",
                "update",
                id,
                "--name",
                "renamed",
                "--rpm",
                "5",
                "--budget-usd",
                "2",
                "--json",
            ],
        )
        .await,
    );
    assert_eq!(updated["name"], "renamed");
    assert_eq!(updated["limits"]["rpm"], 5);
    assert_eq!(updated["budget"]["limit_usd"].as_f64(), Some(2.0));
    let cleared = json(
        &run_cli(
            &db,
            &["keys", "update", id, "--no-limits", "--no-budget", "--json"],
        )
        .await,
    );
    assert_eq!(cleared["limits"]["rpm"], Value::Null);
    assert_eq!(cleared["budget"], Value::Null);

    // Rotate: the new secret alone on stdout.
    let rotated = run_cli(&db, &["keys", "rotate", id]).await;
    assert!(rotated.success, "{}", rotated.stderr);
    let secret = rotated.stdout.trim_end();
    Token::parse(secret).expect("one well-formed key");
    assert_ne!(secret, key["secret"].as_str().unwrap());
    assert!(rotated.stderr.contains("only once"));
    let rotated = json(
        &run_cli(
            &db,
            &["keys", "rotate", id, "--grace-seconds", "60", "--json"],
        )
        .await,
    );
    assert!(rotated["secret"].is_string());

    // Usage: an empty range answers an empty list.
    let usage = json(
        &run_cli(
            &db,
            &["keys", "usage", id, "--granularity", "day", "--json"],
        )
        .await,
    );
    assert_eq!(usage["data"], serde_json::json!([]));
    let bad = run_cli(
        &db,
        &[
            "keys",
            "usage",
            id,
            "--from",
            "2030-01-01T00:00:00Z",
            "--to",
            "2020-01-01T00:00:00Z",
        ],
    )
    .await;
    assert!(
        !bad.success && bad.stderr.contains("from"),
        "{}",
        bad.stderr
    );
}

async fn audit_and_refusals_from_the_cli(backend: Backend) {
    // Arrange
    let db = TestDb::new(backend).await;
    let key = json(&run_cli(&db, &["keys", "create", "--name", "k", "--json"]).await);

    // Act
    let audit = json(&run_cli(&db, &["audit", "list", "--action", "key.create", "--json"]).await);
    let events = json(&run_cli(&db, &["rate-limit-events", "list", "--json"]).await);

    // Assert
    assert_eq!(audit["total"], 1);
    assert_eq!(
        audit["data"][0]["target"],
        format!("key:{}", key["id"].as_str().unwrap())
    );
    assert_eq!(audit["data"][0]["actor"], "cli");
    assert_eq!(events["total"], 0);
    assert_eq!(events["data"], serde_json::json!([]));
    let text = run_cli(&db, &["audit", "list"]).await;
    assert!(
        text.success && text.stdout.contains("key.create"),
        "{}",
        text.stderr
    );
    let bad = run_cli(&db, &["audit", "list", "--limit", "501"]).await;
    assert!(
        !bad.success && bad.stderr.contains("limit"),
        "{}",
        bad.stderr
    );
}

async fn the_cli_acts_through_a_server_with_url(backend: Backend) {
    // Arrange: a running server; the CLI with its URL and the bootstrap key.
    let app = spawn_app(backend).await;
    let env = [("KEYGATE_ADMIN_KEY", app.admin_key.as_str())];
    let url = app.address.as_str();

    // Act + Assert: the same commands through the API, acting as the key.
    let ws = json(
        &run_with(
            &app.db,
            &[
                "workspaces",
                "create",
                "--name",
                "remote",
                "--url",
                url,
                "--json",
            ],
            "",
            &env,
        )
        .await,
    );
    assert_eq!(ws["key_cap"], 10);
    let member = json(
        &run_with(
            &app.db,
            &[
                "members",
                "add",
                "--workspace",
                "remote",
                "--username",
                "ann",
                "--role",
                "admin",
                "--password-stdin",
                "--url",
                url,
                "--json",
            ],
            "a long enough password",
            &env,
        )
        .await,
    );
    assert_eq!(member["username"], "ann");
    let key = json(
        &run_with(
            &app.db,
            &[
                "keys",
                "create",
                "--name",
                "rk",
                "--workspace",
                "remote",
                "--url",
                url,
                "--json",
            ],
            "",
            &env,
        )
        .await,
    );
    assert_eq!(key["workspace_id"], ws["id"]);
    assert_eq!(key["created_by"], format!("key:{}", app.admin_key_id));
    let listed = json(
        &run_with(
            &app.db,
            &[
                "keys",
                "list",
                "--workspace",
                "remote",
                "--url",
                url,
                "--json",
            ],
            "",
            &env,
        )
        .await,
    );
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let audit = json(
        &run_with(
            &app.db,
            &[
                "audit",
                "list",
                "--workspace",
                "remote",
                "--url",
                url,
                "--json",
            ],
            "",
            &env,
        )
        .await,
    );
    assert_eq!(audit["data"][0]["action"], "key.create");
    assert_eq!(audit["data"][0]["source_ip"], "127.0.0.1");
    // The server's refusals come back with their code.
    let refused = run_with(
        &app.db,
        &["workspaces", "delete", "remote", "--url", url],
        "",
        &env,
    )
    .await;
    assert!(!refused.success);
    assert!(
        refused.stderr.contains("409") && refused.stderr.contains("workspace_has_keys"),
        "{}",
        refused.stderr
    );
    // Without a key, or with a wrong one, a clear message.
    let missing = run_cli(&app.db, &["workspaces", "list", "--url", url]).await;
    assert!(
        !missing.success && missing.stderr.contains("KEYGATE_ADMIN_KEY"),
        "{}",
        missing.stderr
    );
    let wrong = run_with(
        &app.db,
        &["workspaces", "list", "--url", url],
        "",
        &[("KEYGATE_ADMIN_KEY", Token::generate().expose())],
    )
    .await;
    assert!(
        !wrong.success && wrong.stderr.contains("401"),
        "{}",
        wrong.stderr
    );
}
