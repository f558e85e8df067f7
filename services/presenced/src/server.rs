//! Assembly of the presenced server: storage, bus, services, health,
//! reflection, authentication, graceful shutdown. Never binds a port or
//! installs a signal handler itself: `run` takes a bound listener and a
//! cancellation token.

use crate::config::Config;
use anyhow::Context;
use presence_auth::token::Subject;
use presence_auth::{AuthInterceptor, TokenSigner};
use presence_bus::nats::NatsConfig;
use presence_bus::{InProcessBus, NatsBus, SharedBus};
use presence_directory::replica::{Replica, ReplicaConfig};
use presence_directory::store::keys;
use presence_directory::{
    AuthGrpc, Directory, DirectoryConfig, DirectoryGrpc, Store, StoreValidator,
};
use presence_fanout::{Fanout, FanoutConfig, FanoutGrpc};
use presence_policy::{AclView, Policy, PolicyConfig, PolicyGrpc};
use presence_proto::presence_server::presence_service_server::PresenceServiceServer;
use presence_proto::v1::auth_service_server::AuthServiceServer;
use presence_proto::v1::directory_service_server::DirectoryServiceServer;
use presence_proto::v1::policy_service_server::PolicyServiceServer;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

/// File name of the bootstrap administrator token inside the data dir.
pub const BOOTSTRAP_TOKEN_FILE: &str = "bootstrap-admin.token";

/// Lifetime of the bootstrap administrator token.
const BOOTSTRAP_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// gRPC service names served, for health.
const SERVICES: &[(&str, &str)] = &[
    ("presence.v1.DirectoryService", "directory"),
    ("presence.v1.AuthService", "directory"),
    ("presence.v1.PolicyService", "policy"),
    ("presence.v1.PresenceService", "fanout"),
];

/// A built server, ready to run on a listener.
pub struct Server {
    cfg: Config,
    bus: SharedBus,
    /// The NATS connection, when there is one (JetStream for fanout).
    nats: Option<async_nats::Client>,
    directory: Directory,
    policy: Policy,
    interceptor: AuthInterceptor,
    bootstrap_token: Option<PathBuf>,
    /// TLS of the gRPC port, when configured.
    tls: Option<Arc<crate::tls::ServerTls>>,
    /// The replicated directory log, on nodes with the directory or
    /// policy role over NATS.
    replica: Option<Replica>,
    /// Where this node's applier announces applied changes (what the
    /// local ACL view follows when the directory is replicated).
    local_bus: SharedBus,
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

/// Reads the signing key, creating `<data_dir>/auth.key` on first start.
pub fn load_or_create_key(cfg: &Config) -> anyhow::Result<TokenSigner> {
    let path = cfg.key_path();
    if !path.exists() {
        if !cfg.auth_key_file.is_empty() {
            anyhow::bail!("auth_key_file {} does not exist", path.display());
        }
        let hex: String = TokenSigner::generate_key()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        write_private(&path, hex.as_bytes())
            .with_context(|| format!("create {}", path.display()))?;
        tracing::info!(path = %path.display(), "created token signing key");
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let text = text.trim();
    let key = (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .with_context(|| format!("{} is not hex", path.display()))?;
    TokenSigner::new(key).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Returns a token for the deployment-wide administrator service.
pub fn admin_token(signer: &TokenSigner, name: &str, ttl: Duration) -> String {
    signer
        .issue(
            Subject::Service {
                name: name.to_owned(),
                domains: vec!["*".into()],
                rights: vec![presence_auth::rights::ALL.into()],
                incs: Vec::new(),
            },
            ttl.as_millis() as i64,
        )
        .0
}

impl Server {
    /// Opens storage, connects the bus and builds the services.
    pub async fn build(mut cfg: Config) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("create data dir {}", cfg.data_dir.display()))?;
        let tls = match cfg.grpc_tls() {
            Some(files) => Some(crate::tls::ServerTls::load(files).context("tls")?),
            None => {
                if cfg.listen_addr().is_ok_and(|a| !a.ip().is_loopback()) {
                    tracing::warn!(listen = %cfg.listen, "PLAINTEXT gRPC on a non-loopback address \
                        (allow_plaintext = true): tokens and passwords cross the network in the clear \
                        unless a TLS-terminating proxy or a private network protects this port");
                }
                None
            }
        };
        if !cfg.nats_url.is_empty() {
            // A stable identity across restarts (kept in the data dir).
            cfg.node_id = cfg.node_id().context("node id")?;
        }
        let signer = load_or_create_key(&cfg)?;
        let (bus, nats): (SharedBus, _) = if cfg.nats_url.is_empty() {
            (Arc::new(InProcessBus::new(cfg.bus_capacity)), None)
        } else {
            let nc = NatsConfig {
                url: cfg.nats_url.clone(),
                subscription_capacity: cfg.bus_capacity,
                connection_name: format!("presenced {}", cfg.roles.join(",")),
                connect_timeout: Duration::from_secs(5),
                security: cfg.nats_security(),
            };
            let nb = NatsBus::connect(&nc).await?;
            let client = nb.client().clone();
            crate::deployment::require_jetstream(&client, Duration::from_secs(5)).await?;
            crate::deployment::check_settings(
                &client,
                &crate::deployment::Settings::of(&cfg, &signer),
                cfg.jetstream_replicas,
            )
            .await?;
            (Arc::new(nb), Some(client))
        };
        let store_dir = cfg.data_dir.join("directory");
        let store = tokio::task::spawn_blocking(move || Store::open(&store_dir))
            .await?
            .map_err(|e| anyhow::anyhow!("open directory store: {e}"))?;
        let store = Arc::new(store);
        let local_bus: SharedBus = Arc::new(InProcessBus::new(cfg.bus_capacity));
        // Every node over NATS replicates the directory, whatever its
        // roles: it checks every token (user and phone sessions,
        // revocations, signing keys, domain incarnations) against current
        // data, never on a token's claims alone.
        // Before anything reads the store: it may load a snapshot.
        let replica = match &nats {
            Some(client) => {
                if store.log_sequence().map_err(|e| anyhow::anyhow!("{e}"))? == 0
                    && store.sequence().map_err(|e| anyhow::anyhow!("{e}"))? > 0
                {
                    anyhow::bail!(
                        "{} holds a directory written without the replicated log (an embedded \
                         broker's): a node on NATS keeps its directory in JetStream. Start it \
                         with an empty data dir; to move this directory into the deployment, \
                         `presenced backup` it and `presenced restore` the file into the \
                         deployment (docs/deployment.md#backup-and-restore)",
                        cfg.data_dir.display()
                    );
                }
                let max_entry = client.server_info().max_payload.saturating_sub(4096);
                let work_dir = cfg.data_dir.join("snapshots");
                std::fs::create_dir_all(&work_dir)
                    .with_context(|| format!("create {}", work_dir.display()))?;
                let r = Replica::open(
                    client.clone(),
                    store.clone(),
                    local_bus.clone(),
                    ReplicaConfig {
                        replicas: cfg.jetstream_replicas,
                        max_entry,
                        work_dir,
                        snapshot_every: cfg.directory_snapshot_every,
                        snapshot_interval: Duration::from_millis(
                            cfg.directory_snapshot_interval_ms,
                        ),
                        node: cfg.node_id.clone(),
                        // Testing only: see ReplicaConfig.
                        crash_after_appends: std::env::var("PRESENCE_TEST_CRASH_AFTER_LOG_APPENDS")
                            .ok()
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0),
                    },
                )
                .await
                .map_err(|e| anyhow::anyhow!("replicated directory: {e}"))?;
                Some(r)
            }
            _ => None,
        };
        let dcfg = DirectoryConfig {
            session_ttl: Duration::from_secs(cfg.session_ttl_secs),
            welcome_ttl: Duration::from_secs(cfg.welcome_ttl_secs),
            hash_concurrency: cfg.password_hash_concurrency,
            hash_queue: cfg.password_hash_queue,
            login_throttle: presence_directory::throttle::ThrottleConfig {
                free_per_account: cfg.login_free_failures_per_account,
                free_per_address: cfg.login_free_failures_per_address,
                window: Duration::from_secs(cfg.login_failure_window_secs),
                max_delay: Duration::from_secs(cfg.login_max_delay_secs),
            },
            ..DirectoryConfig::default()
        };
        let directory = Directory::new(store.clone(), bus.clone(), signer.clone(), dcfg)
            .map_err(|e| anyhow::anyhow!("directory: {e}"))?;
        // The policy keeps its records in the directory store: its
        // cascades must run whatever roles this process serves.
        let policy = Policy::new(directory.clone(), PolicyConfig::default());
        let validator = StoreValidator::new(store.clone());
        let interceptor = AuthInterceptor::required(signer.clone(), Arc::new(validator));
        if let Some(r) = &replica {
            directory
                .set_replica(r.clone())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let bootstrap_token = bootstrap(&cfg, &store, &signer)?;
        Ok(Self {
            replica,
            local_bus,
            cfg,
            bus,
            nats,
            directory,
            policy,
            interceptor,
            bootstrap_token,
            tls,
        })
    }

    /// Returns the path of the bootstrap admin token if this start
    /// created it.
    pub fn bootstrap_token_path(&self) -> Option<&Path> {
        self.bootstrap_token.as_deref()
    }

    /// Returns the directory (for embedding and tests).
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// Serves gRPC on `listener` until `shutdown` is cancelled, then
    /// reports NOT_SERVING, stops accepting, drains for the grace period
    /// and returns.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let addr = listener.local_addr()?;
        // Background work, tied to the shutdown token and awaited below.
        let tasks = tokio_util::task::TaskTracker::new();
        if let Some(replica) = &self.replica {
            tasks.spawn(tracing::Instrument::instrument(
                replica.clone().run(shutdown.clone()),
                tracing::info_span!("directory_applier"),
            ));
            catch_up(replica, &shutdown).await?;
            tasks.spawn(tracing::Instrument::instrument(
                replica.clone().run_snapshots(shutdown.clone()),
                tracing::info_span!("directory_snapshots"),
            ));
            // A node whose applier stopped must not go on serving stale
            // answers: it stops, with an error, so that its supervisor
            // restarts it (and it loads a snapshot if it must).
            let (r, stop) = (replica.clone(), shutdown.clone());
            tasks.spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    why = r.stopped() => {
                        tracing::error!(%why, "directory applier stopped; shutting down");
                        stop.cancel();
                    }
                }
            });
        }
        if self.cfg.has_role("directory") {
            tasks.spawn(tracing::Instrument::instrument(
                maintain(
                    self.directory.clone(),
                    Duration::from_secs(self.cfg.maintenance_interval_secs),
                    Duration::from_secs(self.cfg.audit_retention_days * 86_400),
                    shutdown.clone(),
                ),
                tracing::info_span!("maintenance"),
            ));
        }
        let (reporter, health) = tonic_health::server::health_reporter();
        let serving = self.cfg.has_role("directory");
        let policy_role = self.cfg.has_role("policy");
        for (s, role) in SERVICES {
            let status = if self.cfg.has_role(role) {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status(*s, status).await;
        }
        reporter
            .set_service_status("", ServingStatus::Serving)
            .await;
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(presence_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let mut router = tonic::transport::Server::builder()
            // Each call's span, in the caller's trace (while traces are
            // exported).
            .trace_fn(crate::telemetry::request_span)
            // Bounds a request that sends headers and never its message
            // (the timeout covers a call until its answer starts, so live
            // Watch streams are not cut).
            .timeout(Duration::from_secs(self.cfg.request_timeout_secs))
            // Dead peers are found by pings, not only by TCP.
            .http2_keepalive_interval(Some(Duration::from_secs(60)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .layer(tower::util::MapResponseLayer::new(
                oversized_is_resource_exhausted,
            ))
            .layer(crate::idempotency::IdempotencyLayer)
            .layer(crate::consistency::ConsistencyLayer::new(
                self.replica.clone(),
            ))
            .add_service(health)
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?)
            .add_optional_service(serving.then(|| {
                DirectoryServiceServer::with_interceptor(
                    DirectoryGrpc(self.directory.clone()),
                    self.interceptor.clone(),
                )
            }));
        let auth_interceptor = {
            // Login and AcceptWelcome need no token; the other AuthService
            // calls check for the principal themselves.
            let i = self.interceptor.clone();
            AuthInterceptor::optional_from(i)
        };
        router = router.add_optional_service(serving.then(|| {
            AuthServiceServer::with_interceptor(AuthGrpc(self.directory.clone()), auth_interceptor)
        }));
        router = router.add_optional_service(policy_role.then(|| {
            PolicyServiceServer::with_interceptor(
                PolicyGrpc(self.policy.clone()),
                self.interceptor.clone(),
            )
        }));
        if policy_role {
            let sub = presence_policy::remote::subscribe(&self.bus)
                .await
                .map_err(|e| anyhow::anyhow!("policy responder: {e}"))?;
            let fut = presence_policy::remote::serve_checks(
                self.policy.store().clone(),
                self.bus.clone(),
                sub,
                shutdown.clone(),
            );
            tasks.spawn(tracing::Instrument::instrument(
                fut,
                tracing::info_span!("policy_responder"),
            ));
        }
        let fanout_role = self.cfg.has_role("fanout");
        let fanout = if fanout_role {
            // Without the policy role, decisions come from policy nodes
            // over NATS (config validation requires nats_url then).
            let acl = if policy_role {
                AclView::new(self.policy.store().clone(), self.cfg.acl_cache_capacity)
            } else {
                AclView::remote(
                    self.bus.clone(),
                    self.cfg.acl_cache_capacity,
                    Duration::from_secs(5),
                )
            };
            // A replicated store: follow changes as this node applies
            // them, never ahead of its store (the NATS copy of an event
            // can arrive before the entry is applied here).
            let acl_bus = match (&self.replica, policy_role) {
                (Some(_), true) => &self.local_bus,
                _ => &self.bus,
            };
            let acl_sub = AclView::subscribe(acl_bus)
                .await
                .map_err(|e| anyhow::anyhow!("acl view: {e}"))?;
            tasks.spawn(tracing::Instrument::instrument(
                acl.clone().run(acl_sub, shutdown.clone()),
                tracing::info_span!("acl_view"),
            ));
            let fanout = match &self.nats {
                // Over NATS, shards are owned across fanout nodes.
                Some(client) => Fanout::start_cluster(
                    self.fanout_config(),
                    acl,
                    self.bus.clone(),
                    client.clone(),
                    &shutdown,
                    &tasks,
                )
                .await
                .map_err(|e| anyhow::anyhow!("fanout cluster: {e}"))?,
                None => Fanout::start(
                    self.fanout_config(),
                    acl,
                    self.bus.clone(),
                    &shutdown,
                    &tasks,
                ),
            };
            let edge_sub = presence_fanout::edge::Edge::subscribe(&self.bus);
            tasks.spawn(tracing::Instrument::instrument(
                fanout.edge().run(edge_sub, shutdown.clone()),
                tracing::info_span!("edge"),
            ));
            // Clustered, ingest admits events into the input log.
            let ingest = fanout
                .subscribe_ingest(&self.bus)
                .await
                .map_err(|e| anyhow::anyhow!("ingest: {e}"))?;
            tasks.spawn(tracing::Instrument::instrument(
                fanout.clone().run_ingest(ingest, shutdown.clone()),
                tracing::info_span!("ingest"),
            ));
            Some(fanout)
        } else {
            None
        };
        router = router.add_optional_service(fanout.map(|f| {
            PresenceServiceServer::with_interceptor(FanoutGrpc(f), self.interceptor.clone())
        }));
        // Every subscription above is registered with the server before
        // the first request can be served.
        self.bus
            .flush()
            .await
            .map_err(|e| anyhow::anyhow!("bus flush: {e}"))?;
        if !self.cfg.ready_file.is_empty() {
            // Written then renamed, so a reader never sees half an address.
            let tmp = format!("{}.tmp", self.cfg.ready_file);
            std::fs::write(&tmp, addr.to_string())
                .and_then(|()| std::fs::rename(&tmp, &self.cfg.ready_file))
                .with_context(|| format!("write ready file {}", self.cfg.ready_file))?;
        }
        tracing::info!(%addr, tls = self.tls.is_some(), bus = self.bus.kind(), roles = %self.cfg.roles.join(","), "serving");
        tasks.close();
        let grace = Duration::from_secs(self.cfg.shutdown_grace_secs);
        let stop = shutdown.clone();
        let reporter2 = reporter.clone();
        // Connections are admitted (slot, preface within a deadline) before
        // the gRPC server sees them; TCP_NODELAY is set there: a stream's
        // small state messages must leave at once (with Nagle's algorithm
        // against the peer's delayed ACK they waited up to 40 ms).
        let accept_stop = shutdown.child_token();
        let accepting = tokio_util::task::TaskTracker::new();
        tasks.spawn(crate::tls::watch(
            self.tls.clone(),
            Duration::from_secs(self.cfg.tls_reload_secs),
            shutdown.clone(),
        ));
        let incoming = crate::incoming::admit(
            listener,
            crate::incoming::AdmissionConfig {
                max_connections: self.cfg.max_connections,
                handshake_timeout: Duration::from_millis(self.cfg.handshake_timeout_ms),
            },
            self.tls.clone(),
            accept_stop.clone(),
            &accepting,
        );
        let serve = router.serve_with_incoming_shutdown(incoming, async move {
            stop.cancelled().await;
            tracing::info!("shutting down: not serving, draining");
            for s in SERVICES.iter().map(|(s, _)| *s).chain([""]) {
                reporter2
                    .set_service_status(s, ServingStatus::NotServing)
                    .await;
            }
        });
        tokio::pin!(serve);
        tokio::select! {
            r = &mut serve => r.context("grpc server")?,
            _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(grace_secs = grace.as_secs(), "grace period over; dropping remaining connections");
            }
        }
        shutdown.cancel();
        accepting.close();
        if tokio::time::timeout(grace, accepting.wait()).await.is_err() {
            tracing::warn!("connection handshakes did not stop within the grace period");
        }
        if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
            tracing::warn!("background tasks did not stop within the grace period");
        }
        // Bounded: with the NATS server gone the flush would wait for a
        // reconnection forever and the process would never exit.
        match tokio::time::timeout(grace, self.bus.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "bus flush at shutdown failed"),
            Err(_) => tracing::warn!("bus flush at shutdown timed out (NATS unreachable?)"),
        }
        tracing::info!("stopped");
        if let Some(why) = self.replica.as_ref().and_then(Replica::broken) {
            anyhow::bail!("replicated directory: {why}");
        }
        Ok(())
    }
}

impl Server {
    fn fanout_config(&self) -> FanoutConfig {
        let c = &self.cfg;
        let mut f = FanoutConfig {
            shards: c.shards,
            ..FanoutConfig::default()
        };
        f.limits.ring_timeout_ms = (c.ring_timeout_secs * 1000) as i64;
        f.watch.max_targets = c.watch_max_targets;
        f.watch.max_streams_per_principal = c.max_streams_per_principal;
        f.watch.heartbeat = Duration::from_secs(c.heartbeat_secs);
        f.device_rate = presence_fanout::shard::RateLimit {
            per_second: c.device_rate_per_second,
            burst: c.device_rate_burst,
        };
        f.domain_quota = presence_fanout::quota::DomainQuota {
            events: (c.domain_events_per_second > 0).then_some(presence_fanout::shard::RateLimit {
                per_second: c.domain_events_per_second,
                burst: c.domain_events_burst,
            }),
            max_streams: c.max_streams_per_domain,
        };
        f.ingest_backlog = c.ingest_backlog_events;
        f.cluster = presence_fanout::cluster::ClusterConfig {
            node_id: c.node_id.clone(),
            lease_ttl: Duration::from_millis(c.lease_ttl_ms),
            snapshot_interval: Duration::from_millis(c.snapshot_interval_ms),
            input_max_age: Duration::from_secs(c.shard_log_max_age_secs),
            replicas: c.jetstream_replicas,
            request_timeout: Duration::from_secs(5),
            standby_events: c.ingest_standby_events,
        };
        f
    }
}

/// Purges audit events past their retention and revocations of expired
/// tokens every `interval` (first right after start) until `shutdown`.
async fn maintain(
    directory: Directory,
    interval: Duration,
    retention: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = presence_auth::token::now_ms();
        let purge = directory.purge_expired(now, retention);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = purge => match r {
                Ok((events, revoked)) => {
                    metrics::counter!("presence_purged_total", "what" => "audit_events").increment(events as u64);
                    metrics::counter!("presence_purged_total", "what" => "revocations").increment(revoked as u64);
                }
                Err(e) => tracing::warn!(error = %e, "purge of expired records failed; next try in one interval"),
            },
        }
    }
}

/// Waits until this node has applied the whole directory log (as it was
/// when asked), logging progress; fails when the applier cannot go on.
async fn catch_up(replica: &Replica, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let from = replica.applied();
    loop {
        if shutdown.is_cancelled() {
            anyhow::bail!("shut down while catching up with the directory log");
        }
        if let Some(why) = replica.broken() {
            anyhow::bail!("replicated directory: {why}");
        }
        match replica.catch_up(Duration::from_secs(10)).await {
            Ok(last) => {
                tracing::info!(from, to = last, "directory log caught up");
                return Ok(());
            }
            Err(e) => {
                tracing::info!(applied = replica.applied(), error = %e, "catching up with the directory log");
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// Answers a request message over the size limit with
/// `RESOURCE_EXHAUSTED`, as the gRPC status codes specify and docs/api.md
/// documents (tonic's decoder answers `OUT_OF_RANGE`).
fn oversized_is_resource_exhausted(
    mut resp: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let h = resp.headers_mut();
    let oversized = h.get("grpc-status").is_some_and(|v| v == "11")
        && h.get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|m| {
                m.contains("decoded%20message%20length%20too%20large")
                    || m.contains("decoded message length too large")
            });
    if oversized {
        h.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    resp
}

/// On the first start of a data dir, writes a deployment-wide admin token
/// to `<data_dir>/bootstrap-admin.token` (mode 0600) and remembers that
/// it did, so that deleting the file does not make a new one appear.
fn bootstrap(cfg: &Config, store: &Store, signer: &TokenSigner) -> anyhow::Result<Option<PathBuf>> {
    let marker = keys::key(keys::META, &["bootstrapped"]);
    if store
        .get_raw(&marker)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .is_some()
    {
        return Ok(None);
    }
    let path = cfg.data_dir.join(BOOTSTRAP_TOKEN_FILE);
    let token = admin_token(signer, "bootstrap-admin", BOOTSTRAP_TTL);
    if path.exists() {
        std::fs::remove_file(&path).with_context(|| format!("replace {}", path.display()))?;
    }
    write_private(&path, format!("{token}\n").as_bytes())
        .with_context(|| format!("write {}", path.display()))?;
    // The node's own fact, never replicated.
    store
        .put_local(&marker, b"1")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!(path = %path.display(), "bootstrap admin token written; use it with presencectl --token-file");
    Ok(Some(path))
}
