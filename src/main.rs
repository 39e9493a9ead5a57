//! The `switchboard` command: parse the command line, load the config, set up
//! logging, bind every socket, then hand over to `app::run`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use switchboard::app::{self, Listeners};
use switchboard::config::{Config, LogFormat};
use switchboard::tls;
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
    CheckConfig {
        /// Print nothing when the configuration is valid (for ExecStartPre).
        #[arg(long)]
        quiet: bool,
    },
    /// Print ICE servers with a TURN credential scoped to a room, as JSON
    /// (`{"iceServers": [...], "ttl": S}`), for scripts and app backends.
    Credentials {
        /// The room the credential is for.
        #[arg(long)]
        room: String,
        /// Lifetime in seconds (60-86400); default turn.credential_ttl_s.
        #[arg(long)]
        ttl: Option<u64>,
        /// Host name in the URLs; default turn.public_host, else this machine's name.
        #[arg(long)]
        host: Option<String>,
    },
    /// Print a join token for a room, signed with a key of [tokens] (for scripts and tests;
    /// an application's backend signs its own with any JWT library).
    Token {
        /// The room: its name, or a prefix followed by * ("clinic-*"; "*" for any room).
        #[arg(long)]
        room: String,
        /// The peer's identity, shown to the others as its name.
        #[arg(long)]
        sub: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// The room's capacity for this join, in place of the server's (1-1000).
        #[arg(long)]
        capacity: Option<u32>,
        /// The TURN allocations the room may hold, in place of turn.max_allocations_per_room
        /// (1-10000).
        #[arg(long)]
        allocations: Option<u32>,
        /// The messages per second the room may relay, all members together, in place of
        /// signaling.room_messages_per_s (1-100000).
        #[arg(long)]
        messages_per_s: Option<u32>,
        /// The holder may put others out of the room.
        #[arg(long)]
        kick: bool,
        /// The holder may only receive media.
        #[arg(long)]
        no_publish: bool,
        /// The id of the key to sign with (tokens.keys[].id); default the first HMAC key.
        #[arg(long)]
        key: Option<String>,
        /// Sign with this private key (PEM, PKCS#8: Ed25519 or P-256) instead, under --key's id.
        #[arg(long)]
        private_key: Option<PathBuf>,
    },
    /// Check the config and the server running with it (certificate, every listener, the
    /// relay address, a relay self-test) and print a report; exit 1 when a check fails.
    Doctor,
    /// Drain the server running with this config, for a rolling upgrade: it takes no new
    /// sockets, joins or allocations (/readyz says 503), lets its calls run until they end or
    /// server.drain_timeout_s, then exits. Asks its admin API; SIGUSR1 does the same.
    Drain,
    /// Convert a coturn turnserver.conf into a Switchboard config (printed to stdout;
    /// a warning on stderr for every option that cannot be carried over).
    ImportCoturn {
        /// coturn's configuration file, e.g. /etc/turnserver.conf.
        file: PathBuf,
    },
    /// A NAT lab in network namespaces (needs root): a server, clients behind NAT.
    Lab {
        #[command(subcommand)]
        command: LabCommand,
    },
}

#[derive(Subcommand)]
enum LabCommand {
    /// Build the lab and start Switchboard in it (tears down an earlier one first).
    Up {
        /// Prefix of the lab's namespaces.
        #[arg(long, default_value = "sb")]
        name: String,
        /// NAT of client c1's router: symmetric or cone.
        #[arg(long, default_value = "symmetric")]
        nat1: switchboard::lab::Nat,
        /// NAT of client c2's router: symmetric or cone.
        #[arg(long, default_value = "symmetric")]
        nat2: switchboard::lab::Nat,
        /// How many Switchboard instances (1 to 9); more than one share rooms through a
        /// redis-server started in the lab (needs Debian's redis-server).
        #[arg(long, default_value_t = 1)]
        instances: usize,
    },
    /// Stop everything in the lab and delete its namespaces.
    Down {
        #[arg(long, default_value = "sb")]
        name: String,
    },
    /// Say whether the lab is up.
    Status {
        #[arg(long, default_value = "sb")]
        name: String,
    },
    /// Run a command in a node of the lab (srv, srv2, ..., c1, c2, c3, r1, r2, r3).
    Exec {
        #[arg(long, default_value = "sb")]
        name: String,
        node: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Lab { command }) => return lab(command),
        Some(Command::ImportCoturn { file }) => return import_coturn(&file),
        _ => {}
    }
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) if matches!(cli.command, Some(Command::Doctor)) => {
            println!("[FAIL] config: {e}\n1 checks: 0 ok, 0 warnings, 1 failed");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Lab { .. } | Command::ImportCoturn { .. } => unreachable!("handled above"),
        Command::Credentials { room, ttl, host } => match credentials(&config, &room, ttl, host) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Token {
            room,
            sub,
            ttl,
            capacity,
            allocations,
            messages_per_s,
            kick,
            no_publish,
            key,
            private_key,
        } => {
            let claims = switchboard::tokens::Claims {
                room,
                sub,
                exp: switchboard::clock::unix_now() + ttl,
                nbf: None,
                aud: config
                    .tokens
                    .audience
                    .clone()
                    .map(switchboard::tokens::Audience::One),
                capacity,
                allocations,
                messages_per_s,
                publish: no_publish.then_some(false),
                kick: kick.then_some(true),
            };
            match token(&config, &claims, key.as_deref(), private_key.as_deref()) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Drain => match drain(&config) {
            Ok(answer) => {
                println!("{answer}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Doctor => {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let report = runtime.block_on(switchboard::doctor::run(&config, &cli.config));
            print!("{}", report.render());
            if report.failed() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::CheckConfig { quiet } => {
            if !quiet {
                println!("# {}: valid", cli.config.display());
                print!("{}", config.to_masked_toml());
            }
            ExitCode::SUCCESS
        }
        Command::Run => {
            init_tracing(&config);
            match run(config, cli.config) {
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

fn import_coturn(file: &std::path::Path) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let imported = switchboard::coturn::import(&text);
    print!("{}", imported.toml);
    for w in &imported.warnings {
        eprintln!("warning: {}: {w}", file.display());
    }
    ExitCode::SUCCESS
}

fn credentials(
    config: &Config,
    room: &str,
    ttl: Option<u64>,
    host: Option<String>,
) -> anyhow::Result<String> {
    use switchboard::model::RoomId;
    use switchboard::turn::ice::TurnOffer;
    anyhow::ensure!(
        config.turn.enabled,
        "TURN is disabled in this config (turn.enabled)"
    );
    let room = RoomId::parse(room).map_err(|m| anyhow::anyhow!("--room: {m}"))?;
    let ttl = ttl.unwrap_or(config.turn.credential_ttl_s);
    let max = switchboard::http::ice_api::MAX_TTL_S;
    anyhow::ensure!(
        (60..=max).contains(&ttl),
        "--ttl: expected 60 to {max} seconds, got {ttl}"
    );
    let secret = match config.turn.secrets.first() {
        Some(s) => s.clone(),
        None => switchboard::secrets::load_or_generate(
            &config.server.state_dir,
            switchboard::secrets::TURN_SECRET_FILE,
        )?,
    };
    let host = host.unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut servers = switchboard::turn::ice::configured(config);
    servers.extend(TurnOffer::from_config(config, secret).room_ice_servers(now, ttl, &room, &host));
    Ok(serde_json::to_string_pretty(
        &serde_json::json!({"iceServers": servers, "ttl": ttl}),
    )?)
}

fn token(
    config: &Config,
    claims: &switchboard::tokens::Claims,
    key: Option<&str>,
    private_key: Option<&std::path::Path>,
) -> anyhow::Result<String> {
    use switchboard::tokens::{MAX_ALLOCATIONS, MAX_CAPACITY, MAX_MESSAGES_PER_S, Signer};
    let exact = claims.room.strip_suffix('*').unwrap_or(&claims.room);
    anyhow::ensure!(
        exact.is_empty() || switchboard::model::RoomId::parse(exact).is_ok(),
        "--room: expected a room name ([A-Za-z0-9_-], 1-64) or a prefix followed by *, got {:?}",
        claims.room
    );
    if let Some(sub) = &claims.sub {
        switchboard::model::check_name(sub).map_err(|m| anyhow::anyhow!("--sub: {m}"))?;
    }
    for (flag, claim, max) in [
        ("--capacity", claims.capacity, MAX_CAPACITY),
        ("--allocations", claims.allocations, MAX_ALLOCATIONS),
        (
            "--messages-per-s",
            claims.messages_per_s,
            MAX_MESSAGES_PER_S,
        ),
    ] {
        if let Some(n) = claim {
            anyhow::ensure!(
                (1..=max).contains(&n),
                "{flag}: expected 1 to {max}, got {n}"
            );
        }
    }
    let signer = if let Some(path) = private_key {
        let kid = key.ok_or_else(|| {
            anyhow::anyhow!("--private-key needs --key ID: the id of its public key in [tokens]")
        })?;
        let pem = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read --private-key {}: {e}", path.display()))?;
        Signer::from_private_pem(kid, &pem)
            .map_err(|m| anyhow::anyhow!("--private-key {}: {m}", path.display()))?
    } else {
        let keys = &config.tokens.keys;
        let chosen = match key {
            Some(id) => keys.iter().find(|k| k.id == id).ok_or_else(|| {
                anyhow::anyhow!("--key: no key {id:?} in [tokens] of this config")
            })?,
            None => keys.iter().find(|k| k.secret.is_some()).ok_or_else(|| {
                anyhow::anyhow!(
                    "this config has no HMAC key in [tokens] to sign with: add a [[tokens.keys]] \
                     entry with id and secret, or pass --private-key FILE --key ID"
                )
            })?,
        };
        chosen.signer().map_err(|m| anyhow::anyhow!("--key: {m}"))?
    };
    Ok(signer.mint(claims))
}

fn lab(command: LabCommand) -> ExitCode {
    use switchboard::lab::{self, LabSpec};
    let result = match command {
        LabCommand::Up {
            name,
            nat1,
            nat2,
            instances,
        } => lab_up(LabSpec {
            dir: PathBuf::from(format!("/run/switchboard-lab/{name}")),
            name,
            nat: [nat1, nat2],
            binary: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("switchboard")),
            server_toml: String::new(),
            instances,
        }),
        LabCommand::Down { name } => lab::down(&name)
            .map(|()| println!("lab {name} is down"))
            .map_err(Into::into),
        LabCommand::Status { name } => {
            println!("{}", lab::status(&name));
            Ok(())
        }
        LabCommand::Exec {
            name,
            node,
            command,
        } => {
            use std::os::unix::process::CommandExt;
            let err = std::process::Command::new("ip")
                .args(["netns", "exec", &format!("{name}-{node}")])
                .args(&command)
                .exec();
            Err(anyhow::anyhow!(
                "cannot run {:?} in {name}-{node}: {err}",
                command
            ))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Builds the lab while watching for SIGINT/SIGTERM: on a signal, what was built is torn down.
fn lab_up(spec: switchboard::lab::LabSpec) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (mut term, mut int) = (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        );
        let name = spec.name.clone();
        let mut build = tokio::task::spawn_blocking(move || switchboard::lab::Lab::up(spec));
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            done = &mut build => {
                let lab = done??;
                let description = lab.describe();
                // Detach first: a closed stdout (`lab up | head`) must not tear the lab down.
                lab.detach();
                let _ = writeln!(std::io::stdout(), "{description}");
                return Ok(());
            }
        }
        // Let the build finish its current step, then remove everything it made.
        let built = build.await?;
        drop(built);
        switchboard::lab::down(&name)?;
        anyhow::bail!("interrupted: lab {name} was torn down")
    })
}

fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    // A failed log write must not become a panic: by default tracing-subscriber reports it
    // with eprintln!, which panics when stderr is gone too (a dead log pipe), and every
    // task that logs (the signal watcher among them) would die.
    let builder = tracing_subscriber::fmt()
        .log_internal_errors(false)
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

/// Asks the admin API of the server running with `config` to drain; its answer.
fn drain(config: &Config) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let addr = *config.admin.listen.first().context(
        "admin.listen is empty: no admin API to ask (send SIGUSR1 to the process instead)",
    )?;
    let addr = switchboard::doctor::reachable(addr);
    let token = match &config.admin.token {
        Some(token) => token.expose().to_owned(),
        None => {
            let path = config
                .server
                .state_dir
                .join(switchboard::secrets::ADMIN_TOKEN_FILE);
            std::fs::read_to_string(&path)
                .with_context(|| {
                    format!(
                        "reading the admin token {} (server.state_dir)",
                        path.display()
                    )
                })?
                .trim()
                .to_owned()
        }
    };
    let timeout = std::time::Duration::from_secs(5);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout).with_context(|| {
        format!("connecting to the admin listener {addr} (admin.listen): is switchboard running with this config?")
    })?;
    stream.set_read_timeout(Some(timeout))?;
    write!(
        stream,
        "POST /api/v1/drain HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    anyhow::ensure!(
        status == "200",
        "the admin API answered {status}: {}",
        body.trim()
    );
    Ok(body.trim().to_owned())
}

#[tokio::main]
async fn run(config: Config, path: PathBuf) -> anyhow::Result<()> {
    let (material, loaded) = tls::load(&config).context("setting up TLS")?;
    let (what, cert) = loaded.describe();
    info!(cert = %cert.display(), fingerprint = %loaded.fingerprint, "{what}");
    let listeners = Listeners::bind(&config)?;
    let shutdown = CancellationToken::new();
    let (reload_tx, reloads) = tokio::sync::mpsc::channel(1);
    // Installed before anything is served: an early SIGHUP must not kill the process.
    let signals = Signals::install().context("installing signal handlers")?;
    let drain = CancellationToken::new();
    tokio::spawn(watch_signals(
        signals,
        shutdown.clone(),
        drain.clone(),
        path,
        reload_tx,
    ));
    app::run(config, listeners, material, shutdown, reloads, drain).await
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
        })
    }
}

/// SIGHUP re-reads the config file and hands it to the server (a file that does not load is
/// refused with the reason, and the running configuration stays). SIGINT or SIGTERM starts
/// a graceful shutdown; a second one exits at once. SIGUSR1 starts a drain (see `drain`).
async fn watch_signals(
    signals: Signals,
    shutdown: CancellationToken,
    drain: CancellationToken,
    path: PathBuf,
    reloads: tokio::sync::mpsc::Sender<Config>,
) {
    let Signals {
        mut term,
        mut int,
        mut hup,
        mut usr1,
    } = signals;
    let signal = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = usr1.recv() => {
                info!("SIGUSR1: draining");
                drain.cancel();
            }
            _ = hup.recv() => {
                info!(config = %path.display(), "SIGHUP: reloading the configuration");
                match Config::load(&path) {
                    Ok(config) => {
                        let _ = reloads.send(config).await;
                    }
                    Err(e) => tracing::error!(error = %e, "configuration reload refused, the running configuration stays"),
                }
            }
        }
    };
    shutdown.cancel();
    info!(signal, "shutdown requested");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    warn!("second signal, exiting now");
    std::process::exit(130);
}
