//! The `keygate` binary: parse the command line, load the configuration, dispatch.

use clap::Parser;

use keygate::{
    app::{self, App},
    cli::{self, Cli, Command},
    config::{Config, UpstreamSource, PROVIDERS},
    keys::bootstrap::Bootstrap,
    telemetry,
};

/// mimalloc returns freed memory to the OS promptly (argon2's 7 MiB blocks, bursts of
/// buffers) where glibc's malloc keeps it, and allocates faster on the request path.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    disable_transparent_huge_pages();
    let cli = Cli::parse();
    let result = if let Command::Health(args) = &cli.command {
        // Before the configuration: a health check answers the same whatever the config
        // file and environment of the process that runs it, and never touches the store.
        runtime(1)
            .map_err(anyhow::Error::from)
            .and_then(|runtime| runtime.block_on(cli::health(args)))
    } else {
        Config::load(cli.config.as_deref())
            .map_err(anyhow::Error::from)
            .and_then(|config| {
                let runtime = runtime(config.worker_threads())?;
                runtime.block_on(run(cli, config))
            })
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("keygate: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Keeps the kernel from backing keygate's heap with 2 MiB pages. With transparent huge
/// pages on (`madvise` mode and mimalloc asking for them, or `always` mode), any 2 MiB
/// heap region touched at all becomes resident whole, so a gateway with a few MiB of live
/// data grows by tens of MiB. This covers every mode from here on; mimalloc's `no_thp`
/// feature (Cargo.toml) keeps it from asking for huge pages for the arena it reserves
/// before `main`. Huge pages would buy nothing here: the hot data fits in the caches.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours. A
    // kernel without it (before 3.15) returns an error, and the heap simply stays as the
    // kernel's settings make it.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// On one CPU, tokio's single-threaded scheduler: the work-stealing one keeps its
/// cross-thread queues, atomics and wake-ups even with one worker, and cost a third of
/// the proxy's throughput in benchmarks (docs/performance.md). argon2 and other blocking
/// work still run on the blocking pool either way.
fn runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if worker_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(worker_threads);
        builder
    };
    builder.enable_all().build()
}

async fn run(cli: Cli, mut config: Config) -> anyhow::Result<()> {
    telemetry::init(config.log_format);
    match cli.command {
        Command::Serve { listen } => {
            if let Some(listen) = listen {
                config.listen = listen;
            }
            let source = config.upstreams_from_environment(|var| std::env::var(var).ok());
            announce_upstreams(&source, &config);
            config.validate()?;
            let app = App::build(config).await?;
            announce_bootstrap(&app.bootstrap);
            app.run(app::shutdown_signal()).await?;
            Ok(())
        }
        Command::Migrate => {
            let store = app::open_store(&config).await?;
            tracing::info!(store = store.backend(), "migrations applied");
            Ok(())
        }
        command @ (Command::Keys(_)
        | Command::Workspaces(_)
        | Command::Members(_)
        | Command::Audit(_)
        | Command::RateLimitEvents(_)) => cli::run(&config, command).await,
        Command::Health(args) => cli::health(&args).await,
    }
}

/// Says where the upstreams come from when the configuration names none (the first run).
fn announce_upstreams(source: &UpstreamSource, config: &Config) {
    match source {
        UpstreamSource::Configured => {}
        UpstreamSource::Environment(providers) => {
            for provider in providers {
                let base_url = config
                    .upstreams
                    .iter()
                    .find(|u| u.name == provider.name)
                    .map_or(provider.base_url, |u| u.base_url.as_str());
                tracing::info!(
                    provider = provider.name,
                    credential = provider.key_env,
                    base_url,
                    "no [[upstreams]] configured: serving every model from {} with the key in {} (configure [[upstreams]] to choose)",
                    provider.name,
                    provider.key_env
                );
            }
        }
        UpstreamSource::Nothing => {
            let vars: Vec<&str> = PROVIDERS.iter().map(|p| p.key_env).collect();
            tracing::warn!(
                "no [[upstreams]] configured and no provider key ({}) in the environment: nothing can be proxied; every model is \"not found\"",
                vars.join(", ")
            );
        }
    }
}

/// Shows a generated bootstrap key once, on stderr, so it is not mixed into logs
/// collected from stdout and is clearly marked for the operator.
fn announce_bootstrap(bootstrap: &Bootstrap) {
    match bootstrap {
        Bootstrap::Generated(token) => {
            eprintln!();
            eprintln!("================================================================");
            eprintln!(" keygate: no admin key existed, so one was created.");
            eprintln!(" It is shown ONCE and cannot be recovered; store it now:");
            eprintln!();
            eprintln!("   {}", token.expose());
            eprintln!();
            eprintln!(" Use it as `Authorization: Bearer <key>` on /admin/v1.");
            eprintln!("================================================================");
            eprintln!();
        }
        Bootstrap::Installed => {
            tracing::info!("installed the bootstrap admin key from KEYGATE_BOOTSTRAP_ADMIN_KEY")
        }
        Bootstrap::NotNeeded => {}
    }
}
