//! The `switchboard` command: parse the command line, load the config, set up
//! logging, bind every socket, then hand over to `app::run`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use switchboard::app::{self, Listeners};
use switchboard::config::{Config, LogFormat};
use switchboard::tls::{self, CertOrigin};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Room signaling, STUN and TURN for WebRTC in one binary.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file.
    #[arg(long, short, global = true, default_value = "config.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Run,
    /// Validate the configuration and print it with defaults filled in and secrets masked.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => {
            println!("# {}: valid", cli.config.display());
            print!("{}", config.to_masked_toml());
            ExitCode::SUCCESS
        }
        Command::Run => {
            init_tracing(&config);
            match run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}

#[tokio::main]
async fn run(config: Config) -> anyhow::Result<()> {
    let material = tls::load(&config).context("setting up TLS")?;
    match &material.origin {
        CertOrigin::Configured(path) => {
            info!(cert = %path.display(), fingerprint = %material.fingerprint, "using configured certificate")
        }
        CertOrigin::Generated(path) => {
            info!(cert = %path.display(), fingerprint = %material.fingerprint, "generated self-signed certificate")
        }
        CertOrigin::Reused(path) => {
            info!(cert = %path.display(), fingerprint = %material.fingerprint, "reusing self-signed certificate")
        }
    }
    let listeners = Listeners::bind(&config)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone()));
    app::run(config, listeners, material, shutdown).await
}

/// SIGINT or SIGTERM starts a graceful shutdown; a second one exits at once.
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => info!(signal = "SIGTERM", "shutdown requested"),
        _ = int.recv() => info!(signal = "SIGINT", "shutdown requested"),
    }
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    warn!("second signal, exiting now");
    std::process::exit(130);
}
