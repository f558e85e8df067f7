//! presenced: starts the presence broker (`presenced`), issues tokens
//! offline with the deployment's signing key (`presenced token issue`),
//! or backs up and restores the directory (`presenced backup`,
//! `presenced restore`).

use clap::{Args, Parser, Subcommand};
use presence_presenced::config::{Config, ConfigError, Overrides};
use presence_presenced::server::{Server, admin_token, load_or_create_key};
use presence_presenced::telemetry::Telemetry;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(name = "presenced", version, about = "The presence broker server")]
struct Cli {
    /// TOML configuration file.
    #[arg(long, env = "PRESENCE_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:50051].
    #[arg(long, global = true)]
    listen: Option<String>,
    /// Data directory (sled, signing key, bootstrap token) [default: ./data].
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// NATS URL; without it the bus is in-process.
    #[arg(long, global = true)]
    nats_url: Option<String>,
    /// Comma-separated roles: directory,policy,fanout [default: all].
    #[arg(long, value_delimiter = ',')]
    roles: Option<Vec<String>>,
    /// Prometheus metrics address; "" disables [default: 127.0.0.1:9464].
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Log format: text or json.
    #[arg(long)]
    log_format: Option<String>,
    /// Write the bound gRPC address to this file once serving.
    #[arg(long)]
    ready_file: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Token operations with the signing key of the data directory.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Writes the whole directory (users, credentials, policy, …) to a
    /// checked file: from the data dir of a stopped embedded broker, or
    /// through NATS from a running deployment (with --nats-url).
    Backup(BackupArgs),
    /// Loads a backup into an empty data dir (embedded) or into a fresh
    /// deployment's empty directory log (with --nats-url).
    Restore(RestoreArgs),
}

#[derive(Args, Debug)]
struct BackupArgs {
    /// File to write (replaced atomically).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args, Debug)]
struct RestoreArgs {
    /// Backup file to load.
    #[arg(long)]
    from: PathBuf,
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Prints a new service token signed with the deployment key.
    Issue(IssueArgs),
}

#[derive(Args, Debug)]
struct IssueArgs {
    /// Service name (shown in logs).
    #[arg(long, default_value = "operator")]
    service: String,
    /// Domain the rights apply to; repeat, or "*" for every domain.
    #[arg(long = "domain", required_unless_present = "admin")]
    domains: Vec<String>,
    /// Right to grant (directory.read, directory.write, presence.publish, …); repeat.
    #[arg(long = "right", required_unless_present = "admin")]
    rights: Vec<String>,
    /// A deployment-wide administrator token (every right, every domain).
    #[arg(long)]
    admin: bool,
    /// Lifetime in seconds [default: one year].
    #[arg(long, default_value_t = 365 * 24 * 3600)]
    ttl_secs: u64,
}

fn overrides(cli: &Cli) -> Overrides {
    Overrides {
        listen: cli.listen.clone(),
        data_dir: cli.data_dir.clone(),
        nats_url: cli.nats_url.clone(),
        roles: cli.roles.clone(),
        metrics_listen: cli.metrics_listen.clone(),
        log_format: cli.log_format.clone(),
        ready_file: cli.ready_file.clone(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match Config::load(cli.config.as_deref(), &overrides(&cli)) {
        Ok(c) => c,
        Err(ConfigError(m)) => {
            eprintln!("presenced: invalid configuration: {m}");
            return ExitCode::from(64);
        }
    };
    if let Some(Command::Token(TokenCommand::Issue(args))) = &cli.command {
        return issue(&cfg, args);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("presenced: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match &cli.command {
        Some(Command::Backup(a)) => {
            return report(
                "backup",
                &a.out,
                rt.block_on(presence_presenced::backup::backup(&cfg, &a.out)),
            );
        }
        Some(Command::Restore(a)) => {
            return report(
                "restore",
                &a.from,
                rt.block_on(presence_presenced::backup::restore(&cfg, &a.from)),
            );
        }
        _ => {}
    }
    let result = rt.block_on(run(cfg));
    // Blocking tasks still running (a store call stuck on I/O) must not
    // keep a stopping process alive.
    rt.shutdown_timeout(Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A node configured unlike its deployment: a configuration error.
        Err(e) if e.is::<presence_presenced::deployment::Mismatch>() => {
            eprintln!("presenced: invalid configuration: {e:#}");
            ExitCode::from(64)
        }
        Err(e) => {
            eprintln!("presenced: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints what a backup or restore did, or why it failed.
fn report(
    what: &str,
    file: &std::path::Path,
    r: anyhow::Result<presence_directory::snapshot::SnapshotInfo>,
) -> ExitCode {
    match r {
        Ok(i) => {
            println!(
                "{what} {}: {} records, {} bytes, directory log entry {}, sha256 {}",
                file.display(),
                i.records,
                i.bytes,
                i.log_sequence,
                i.sha256
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("presenced: {what}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn issue(cfg: &Config, args: &IssueArgs) -> ExitCode {
    let signer = match load_or_create_key(cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("presenced: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let ttl = Duration::from_secs(args.ttl_secs);
    let token = if args.admin {
        admin_token(&signer, &args.service, ttl)
    } else {
        match presence_auth::DomainSet::parse(&args.domains)
            .and_then(|d| presence_auth::principal::parse_rights(&args.rights).map(|_| d))
        {
            Err(e) => {
                eprintln!("presenced: {e}");
                return ExitCode::from(64);
            }
            // A token for named domains is bound to each domain's
            // incarnation, which only the running directory knows.
            Ok(presence_auth::DomainSet::Some(_)) => {
                eprintln!(
                    "presenced: tokens for named domains are bound to the domains' \
                     incarnations: issue them through a running server \
                     (presencectl token issue); offline issuance takes --domain '*' or --admin"
                );
                return ExitCode::from(64);
            }
            Ok(presence_auth::DomainSet::All) => {}
        }
        signer
            .issue(
                presence_auth::token::Subject::Service {
                    name: args.service.clone(),
                    domains: vec!["*".into()],
                    rights: args.rights.clone(),
                    incs: Vec::new(),
                },
                ttl.as_millis() as i64,
            )
            .0
    };
    println!("{token}");
    ExitCode::SUCCESS
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    let telemetry = Telemetry::init(cfg.log_format == "json", &cfg.node_id)?;
    let shutdown = CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    if !cfg.metrics_listen.is_empty() {
        let addr: std::net::SocketAddr = cfg.metrics_listen.parse()?;
        let (recorder, exporter) = metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .build()
            .map_err(|e| {
                anyhow::anyhow!(
                    "metrics_listen {addr}: {e} (set metrics_listen / --metrics-listen / \
                     PRESENCE_METRICS_LISTEN to a free address, or to \"\" to serve no metrics)"
                )
            })?;
        metrics::set_global_recorder(recorder)?;
        let stop = shutdown.clone();
        tracker.spawn(async move {
            tokio::select! {
                r = exporter => if let Err(e) = r { tracing::error!(error = ?e, "metrics endpoint failed") },
                _ = stop.cancelled() => {}
            }
        });
        tracing::info!(%addr, "metrics on /metrics");
    }
    match presence_presenced::incoming::raise_fd_limit() {
        Ok(n) => tracing::info!(limit = ?n, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open files limit"),
    }
    let addr = cfg.listen_addr()?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "listen {addr}: {e} (set listen / --listen / PRESENCE_LISTEN to a free address)"
        )
    })?;
    let server = Server::build(cfg).await?;
    let stop = shutdown.clone();
    // Also ends when the server stops on its own (an applier that cannot
    // go on), so the process exits instead of waiting for a signal.
    tracker.spawn(async move {
        tokio::select! {
            _ = wait_for_signal() => stop.cancel(),
            _ = stop.cancelled() => {}
        }
    });
    let result = server.run(listener, shutdown.clone()).await;
    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
    telemetry.shutdown();
    result
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("signal received");
}
