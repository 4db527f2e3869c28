//! The `keygate` binary: parse the command line, load the configuration, dispatch.

use clap::Parser;

use keygate::{
    app::{self, App},
    cli::{self, Cli, Command},
    config::Config,
    keys::bootstrap::Bootstrap,
    telemetry,
};

/// mimalloc returns freed memory to the OS promptly (argon2's 19 MiB blocks, bursts of
/// buffers) where glibc's malloc keeps it, and allocates faster on the request path.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("keygate: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = Config::load(cli.config.as_deref())?;
    telemetry::init(config.log_format);
    match cli.command {
        Command::Serve { listen } => {
            if let Some(listen) = listen {
                config.listen = listen;
            }
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
        Command::Keys(command) => cli::run_keys(&config, command).await,
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
