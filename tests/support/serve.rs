//! The real `keygate` binary: a CLI command run to completion ([`run_cli`]) and
//! `keygate serve` as a child process ([`spawn_serve`]), on a [`TestDb`] and its config
//! file, with a clean environment and its output captured.

use std::{
    path::Path,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    task::JoinHandle,
};

use super::{
    app::{PRICED_INPUT, PRICED_MODEL, PRICED_OUTPUT},
    db::TestDb,
    upstream::MockUpstream,
};

/// The `[[upstreams]]` entry of [`crate::support::app::mock_upstream`] as TOML: the mock
/// serving every model.
pub fn upstream_toml(mock: &MockUpstream) -> String {
    format!(
        "\n[[upstreams]]\nname = \"mock\"\nbase_url = \"{}\"\nmodels = [\"*\"]\n",
        mock.base_url
    )
}

/// What the in-process proxy tests run with, as TOML for `keygate serve`: the failed-attempt
/// limit raised, the mock as the upstream, `gpt-4o-mini` priced (the timeouts stay at their
/// defaults).
pub fn proxy_toml(mock: &MockUpstream) -> String {
    format!(
        "\n[keys]\nfailed_auth_per_minute = 100000\n{}\n[[models]]\nname = \"{PRICED_MODEL}\"\ninput_usd_per_mtok = {PRICED_INPUT}\noutput_usd_per_mtok = {PRICED_OUTPUT}\n",
        upstream_toml(mock)
    )
}

/// `keygate` with a clean environment: no inherited `DATABASE_URL`, `REDIS_URL`,
/// `KEYGATE_*` or provider key (`OPENAI_API_KEY`, `ANTHROPIC_API_KEY` and their base URLs), no colours, working
/// directory `cwd`.
pub fn keygate(cwd: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keygate"));
    command
        .current_dir(cwd)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("RUST_LOG")
        // A developer's own provider key must not make the binary serve that provider in
        // tests that configure no upstream (the first run, src/config.rs `PROVIDERS`).
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("ANTHROPIC_BASE_URL")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (name, _) in std::env::vars() {
        if name.starts_with("KEYGATE_") {
            command.env_remove(name);
        }
    }
    command
}

pub struct CliOutput {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `keygate --config <db's config file> <args>` to completion.
pub async fn run_cli(db: &TestDb, args: &[&str]) -> CliOutput {
    let config = db.config_file();
    let mut command = keygate(db.dir.path());
    command.arg("--config").arg(&config).args(args);
    run(command).await
}

pub async fn run(mut command: Command) -> CliOutput {
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("keygate finished within 60 s")
        .expect("keygate runs");
    CliOutput {
        success: output.status.success(),
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A running `keygate serve` whose stdout and stderr are captured in full.
pub struct ServeProcess {
    child: Child,
    pub address: String,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

fn capture(
    stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    into: Arc<Mutex<String>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut text = into.lock().unwrap_or_else(|p| p.into_inner());
            text.push_str(&line);
            text.push('\n');
        }
    })
}

/// Removes ANSI colour sequences (in case the log writer colours its output anyway).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Starts `keygate --config <db's config> serve --listen 127.0.0.1:0` with `envs` and
/// waits until it logs its address.
pub async fn spawn_serve(db: &TestDb, envs: &[(&str, &str)]) -> ServeProcess {
    spawn_serve_with(db, "", envs).await
}

/// [`spawn_serve`] with `toml` added to the config file (after `database_url`).
pub async fn spawn_serve_with(db: &TestDb, toml: &str, envs: &[(&str, &str)]) -> ServeProcess {
    let config = db.config_file();
    if !toml.is_empty() {
        let mut text = std::fs::read_to_string(&config).expect("read config file");
        text.push_str(toml);
        std::fs::write(&config, text).expect("write config file");
    }
    let mut command = keygate(db.dir.path());
    command
        .arg("--config")
        .arg(&config)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in envs {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("keygate serve starts");
    let stdout = Arc::new(Mutex::new(String::new()));
    let stderr = Arc::new(Mutex::new(String::new()));
    let readers = vec![
        capture(child.stdout.take().expect("piped stdout"), stdout.clone()),
        capture(child.stderr.take().expect("piped stderr"), stderr.clone()),
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    let address = loop {
        let text = strip_ansi(&stderr.lock().unwrap_or_else(|p| p.into_inner()));
        if let Some(addr) = text
            .lines()
            .filter(|l| l.contains("keygate listening"))
            .find_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    .map(str::to_string)
            })
        {
            break format!("http://{addr}");
        }
        if let Ok(Some(status)) = child.try_wait() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            panic!(
                "keygate serve exited ({status}) before listening:\n{}",
                stderr.lock().unwrap_or_else(|p| p.into_inner())
            );
        }
        assert!(
            Instant::now() < deadline,
            "keygate serve did not start within 60 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    ServeProcess {
        child,
        address,
        stdout,
        stderr,
        readers,
    }
}

impl ServeProcess {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends `signal` (`TERM`, `KILL`, …) to the server.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("keygate is running");
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// Waits (30 s at most) for the process to end; returns its exit code (`None`: killed
    /// by a signal).
    pub async fn exit(&mut self) -> Option<i32> {
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("keygate exited within 30 s")
            .expect("wait for keygate");
        status.code()
    }

    /// What the server has written to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops the server (SIGTERM, then SIGKILL after 10 s) and returns (stdout, stderr).
    pub async fn stop(mut self) -> (String, String) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        for reader in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        }
        let stdout = self
            .stdout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let stderr = self
            .stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (stdout, stderr)
    }
}
