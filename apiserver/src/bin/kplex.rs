//! The `kplex` command.

use clap::{Parser, Subcommand};
use kplex_apiserver::storage_config::StorageArgs;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(
    name = "kplex",
    version,
    about = "Many virtual Kubernetes clusters from one API server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Opens storage and serves until SIGTERM or Ctrl-C.
    Serve {
        #[command(flatten)]
        storage: StorageArgs,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { storage } => {
            let store = match storage.open().await {
                Ok(store) => store,
                Err(e) => {
                    tracing::error!(error = %e, "cannot open storage");
                    return std::process::ExitCode::FAILURE;
                }
            };
            match store.current_revision().await {
                Ok(rev) => {
                    tracing::info!(revision = %rev, data_dir = %storage.data_dir.display(), "kplex storage ready")
                }
                Err(e) => {
                    tracing::error!(error = %e, "storage does not answer");
                    return std::process::ExitCode::FAILURE;
                }
            }
            wait_for_shutdown().await;
            tracing::info!("shutting down");
            std::process::ExitCode::SUCCESS
        }
    }
}

async fn wait_for_shutdown() {
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
