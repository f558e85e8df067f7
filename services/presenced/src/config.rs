//! Configuration of presenced: defaults, an optional TOML file,
//! `PRESENCE_*` environment variables and command-line flags, in that
//! order of precedence (flags win). Everything is validated before
//! anything binds.

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Roles a presenced process can take.
pub const ROLES: &[&str] = &["directory", "policy", "fanout"];

/// The complete, validated configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC listen address.
    pub listen: String,
    /// PEM certificate chain served on the gRPC port (empty: plaintext).
    pub tls_cert_file: String,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: String,
    /// PEM CA certificates that client certificates must chain to
    /// (mTLS); empty: clients are not asked for one.
    pub tls_client_ca_file: String,
    /// With `tls_client_ca_file`: `required` (a client without a valid
    /// certificate cannot connect) or `optional` (one it shows must be
    /// valid).
    pub tls_client_auth: String,
    /// How often the TLS files are read again (a changed certificate is
    /// used for new connections; also on SIGHUP), seconds.
    pub tls_reload_secs: u64,
    /// Serve plaintext gRPC on a non-loopback `listen` address (behind a
    /// TLS-terminating proxy or a private network); without it such a
    /// configuration is refused.
    pub allow_plaintext: bool,
    /// Directory for sled data, the signing key and the bootstrap token.
    pub data_dir: PathBuf,
    /// NATS server URL(s); empty means the in-process bus.
    pub nats_url: String,
    /// PEM file of the CA the NATS servers' certificates chain to (empty:
    /// the system's roots); setting it requires TLS.
    pub nats_tls_ca_file: String,
    /// PEM client certificate for NATS servers that verify clients.
    pub nats_tls_cert_file: String,
    /// PEM private key of `nats_tls_cert_file`.
    pub nats_tls_key_file: String,
    /// NATS credentials file (user JWT and seed, as `nsc` writes it).
    pub nats_creds_file: String,
    /// File holding the nkey seed of this node's NATS user.
    pub nats_nkey_file: String,
    /// Roles of this process (a list, or one comma-separated string as
    /// `PRESENCE_ROLES=directory,policy` gives it).
    #[serde(deserialize_with = "comma_list")]
    pub roles: Vec<String>,
    /// Prometheus metrics listen address; empty disables the endpoint.
    pub metrics_listen: String,
    /// Log format: `text` or `json`.
    pub log_format: String,
    /// Signing key file; empty means `<data_dir>/auth.key` (created on
    /// first start). Every node of a deployment needs the same key.
    pub auth_key_file: String,
    /// Lifetime of a user session token, seconds.
    pub session_ttl_secs: u64,
    /// Default lifetime of a welcome token, seconds.
    pub welcome_ttl_secs: u64,
    /// Messages buffered per bus subscription before drops.
    pub bus_capacity: usize,
    /// Seconds to drain in-flight work at shutdown.
    pub shutdown_grace_secs: u64,
    /// Write the bound gRPC address to this file once serving (readiness
    /// signal for scripts and tests); empty disables.
    pub ready_file: String,
    /// Number of fanout shard actors.
    pub shards: usize,
    /// A ringing call without news expires after this many seconds.
    pub ring_timeout_secs: u64,
    /// Most targets in one watch stream.
    pub watch_max_targets: usize,
    /// Most open watch streams per principal.
    pub max_streams_per_principal: usize,
    /// Default heartbeat interval of watch streams, seconds.
    pub heartbeat_secs: u64,
    /// Sustained events per second allowed per device.
    pub device_rate_per_second: u32,
    /// Burst of events allowed per device.
    pub device_rate_burst: u32,
    /// Events per second accepted per domain (0: no limit).
    pub domain_events_per_second: u32,
    /// Burst of events accepted per domain.
    pub domain_events_burst: u32,
    /// Most open watch streams per domain on one node.
    pub max_streams_per_domain: usize,
    /// Most access decisions cached by the ACL view.
    pub acl_cache_capacity: u64,
    /// This node's id in a fanout cluster (`[A-Za-z0-9_-]`, unique);
    /// empty means `<hostname>-<pid>`.
    pub node_id: String,
    /// Shard lease lifetime in a fanout cluster, milliseconds: a dead
    /// node's shards move after at most about 1.3 times this.
    pub lease_ttl_ms: u64,
    /// How often a shard owner snapshots changed state, milliseconds.
    pub snapshot_interval_ms: u64,
    /// How long validated events stay in the shard input log, seconds.
    pub shard_log_max_age_secs: u64,
    /// In a fanout cluster, how many events of shards this node does not
    /// own it keeps (for at most twice the lease TTL) so that a node
    /// taking a shard over loses none that arrived meanwhile; 0 keeps
    /// none.
    pub ingest_standby_events: usize,
    /// Device events received from NATS and not yet taken, queued per
    /// domain and taken round-robin; when full, the domain with the
    /// longest backlog sheds its newest event.
    pub ingest_backlog_events: usize,
    /// A directory snapshot is published (and the directory log
    /// compacted behind the older retained one) once the log has grown by
    /// this many entries; 0: this node never publishes one.
    pub directory_snapshot_every: u64,
    /// How often a node checks whether a directory snapshot is due,
    /// milliseconds; at most one node of the deployment publishes one per
    /// interval.
    pub directory_snapshot_interval_ms: u64,
    /// Replicas of the JetStream buckets and stream (1 for one
    /// nats-server; 3 for a three-node NATS cluster).
    pub jetstream_replicas: usize,
    /// gRPC connections open at once; more are closed when accepted.
    pub max_connections: usize,
    /// Time a new connection has to send the HTTP/2 preface, ms.
    pub handshake_timeout_ms: u64,
    /// Time a request has to arrive and be answered (for Watch: until
    /// the stream starts), seconds; a client's shorter `grpc-timeout`
    /// wins.
    pub request_timeout_secs: u64,
    /// Password hashes computed at once (logins, password changes).
    pub password_hash_concurrency: usize,
    /// Password hashes waiting for a slot; beyond, `ResourceExhausted`.
    pub password_hash_queue: usize,
    /// Failed logins per account (domain and user as given, existing or
    /// not) before each further attempt waits 1 s, 2 s, 4 s… after the
    /// previous failure; 0: accounts are not throttled.
    pub login_free_failures_per_account: u32,
    /// Failed logins per source address (IPv4, or IPv6 /64) before
    /// attempts from it are delayed the same way; 0: not throttled.
    pub login_free_failures_per_address: u32,
    /// Failed logins older than this are forgotten, seconds.
    pub login_failure_window_secs: u64,
    /// Longest delay between two attempts once throttled, seconds.
    pub login_max_delay_secs: u64,
    /// Audit events older than this are deleted, days.
    pub audit_retention_days: u64,
    /// How often a directory node purges old audit events and the
    /// revocations of expired tokens, seconds.
    pub maintenance_interval_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".into(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            tls_client_ca_file: String::new(),
            tls_client_auth: "required".into(),
            tls_reload_secs: 60,
            allow_plaintext: false,
            data_dir: PathBuf::from("./data"),
            nats_url: String::new(),
            nats_tls_ca_file: String::new(),
            nats_tls_cert_file: String::new(),
            nats_tls_key_file: String::new(),
            nats_creds_file: String::new(),
            nats_nkey_file: String::new(),
            roles: ROLES.iter().map(|s| s.to_string()).collect(),
            metrics_listen: "127.0.0.1:9464".into(),
            log_format: "text".into(),
            auth_key_file: String::new(),
            session_ttl_secs: 12 * 3600,
            welcome_ttl_secs: 72 * 3600,
            bus_capacity: 4096,
            shutdown_grace_secs: 10,
            ready_file: String::new(),
            shards: 8,
            ring_timeout_secs: 120,
            watch_max_targets: 5000,
            max_streams_per_principal: 100,
            heartbeat_secs: 30,
            device_rate_per_second: 50,
            device_rate_burst: 200,
            domain_events_per_second: 20_000,
            domain_events_burst: 40_000,
            max_streams_per_domain: 20_000,
            acl_cache_capacity: 1_000_000,
            node_id: String::new(),
            lease_ttl_ms: 10_000,
            snapshot_interval_ms: 1_000,
            shard_log_max_age_secs: 3600,
            ingest_standby_events: 100_000,
            ingest_backlog_events: 65_536,
            directory_snapshot_every: 10_000,
            directory_snapshot_interval_ms: 60_000,
            jetstream_replicas: 1,
            max_connections: 10_000,
            handshake_timeout_ms: 5_000,
            request_timeout_secs: 30,
            password_hash_concurrency: presence_directory::service::default_hash_concurrency(),
            password_hash_queue: 32,
            login_free_failures_per_account: 5,
            login_free_failures_per_address: 50,
            login_failure_window_secs: 900,
            login_max_delay_secs: 300,
            audit_retention_days: 365,
            maintenance_interval_secs: 3600,
        }
    }
}

/// Config keys that may come from `PRESENCE_<KEY>` environment variables.
pub const ENV_KEYS: &[&str] = &[
    "listen",
    "tls_cert_file",
    "tls_key_file",
    "tls_client_ca_file",
    "tls_client_auth",
    "tls_reload_secs",
    "allow_plaintext",
    "data_dir",
    "nats_url",
    "nats_tls_ca_file",
    "nats_tls_cert_file",
    "nats_tls_key_file",
    "nats_creds_file",
    "nats_nkey_file",
    "roles",
    "metrics_listen",
    "log_format",
    "auth_key_file",
    "session_ttl_secs",
    "welcome_ttl_secs",
    "bus_capacity",
    "shutdown_grace_secs",
    "ready_file",
    "shards",
    "ring_timeout_secs",
    "watch_max_targets",
    "max_streams_per_principal",
    "heartbeat_secs",
    "device_rate_per_second",
    "device_rate_burst",
    "domain_events_per_second",
    "domain_events_burst",
    "max_streams_per_domain",
    "acl_cache_capacity",
    "node_id",
    "lease_ttl_ms",
    "snapshot_interval_ms",
    "shard_log_max_age_secs",
    "ingest_standby_events",
    "ingest_backlog_events",
    "directory_snapshot_every",
    "directory_snapshot_interval_ms",
    "jetstream_replicas",
    "max_connections",
    "handshake_timeout_ms",
    "request_timeout_secs",
    "password_hash_concurrency",
    "password_hash_queue",
    "login_free_failures_per_account",
    "login_free_failures_per_address",
    "login_failure_window_secs",
    "login_max_delay_secs",
    "audit_retention_days",
    "maintenance_interval_secs",
];

/// A list of names given as a list or as one comma-separated string.
fn comma_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum List {
        One(String),
        Many(Vec<String>),
    }
    Ok(match <List as serde::Deserialize>::deserialize(d)? {
        List::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        List::Many(v) => v,
    })
}

/// Values given as command-line flags; unset ones do not override.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    /// `--listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// `--data-dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// `--nats-url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_url: Option<String>,
    /// `--roles`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
    /// `--metrics-listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    /// `--log-format`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
    /// `--ready-file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_file: Option<String>,
}

/// A configuration error (exit code 64).
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Merges defaults, the TOML file (if any), `PRESENCE_*` environment
    /// variables and `flags`, then validates.
    pub fn load(file: Option<&std::path::Path>, flags: &Overrides) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    f.display()
                )));
            }
            fig = fig.merge(Toml::file(f));
        }
        fig = fig.merge(Env::prefixed("PRESENCE_").only(ENV_KEYS));
        fig = fig.merge(Serialized::defaults(flags));
        let cfg: Config = fig.extract().map_err(|e| ConfigError(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let listen = self.listen_addr()?;
        self.validate_tls(listen)?;
        if !self.metrics_listen.is_empty() {
            self.metrics_listen.parse::<SocketAddr>().map_err(|_| {
                ConfigError(format!(
                    "metrics_listen {:?} is not host:port",
                    self.metrics_listen
                ))
            })?;
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError("data_dir must be set".into()));
        }
        if self.roles.is_empty() {
            return Err(ConfigError("roles must name at least one role".into()));
        }
        for r in &self.roles {
            if !ROLES.contains(&r.as_str()) {
                return Err(ConfigError(format!(
                    "unknown role {r:?}: expected {}",
                    ROLES.join(", ")
                )));
            }
        }
        if !self.nats_url.is_empty() {
            presence_bus::nats::parse_servers(&self.nats_url).map_err(|e| {
                ConfigError(format!(
                    "nats_url {:?} is not a list of NATS URLs: {e}",
                    presence_bus::nats::redact(&self.nats_url)
                ))
            })?;
        }
        let files = [
            ("nats_tls_ca_file", &self.nats_tls_ca_file),
            ("nats_tls_cert_file", &self.nats_tls_cert_file),
            ("nats_tls_key_file", &self.nats_tls_key_file),
            ("nats_creds_file", &self.nats_creds_file),
            ("nats_nkey_file", &self.nats_nkey_file),
        ];
        for (name, f) in files {
            if f.is_empty() {
                continue;
            }
            if self.nats_url.is_empty() {
                return Err(ConfigError(format!("{name} is set but nats_url is not")));
            }
            if !std::path::Path::new(f).is_file() {
                return Err(ConfigError(format!("{name} {f:?} is not a readable file")));
            }
        }
        if self.nats_tls_cert_file.is_empty() != self.nats_tls_key_file.is_empty() {
            return Err(ConfigError(
                "nats_tls_cert_file and nats_tls_key_file go together".into(),
            ));
        }
        if !self.nats_creds_file.is_empty() && !self.nats_nkey_file.is_empty() {
            return Err(ConfigError(
                "set nats_creds_file or nats_nkey_file, not both".into(),
            ));
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(ConfigError(format!(
                "log_format {:?}: expected text or json",
                self.log_format
            )));
        }
        if self.session_ttl_secs < 60 {
            return Err(ConfigError("session_ttl_secs must be at least 60".into()));
        }
        if self.welcome_ttl_secs < 60 {
            return Err(ConfigError("welcome_ttl_secs must be at least 60".into()));
        }
        if self.bus_capacity == 0 || self.bus_capacity > 1 << 20 {
            return Err(ConfigError("bus_capacity must be 1..=1048576".into()));
        }
        if !self.node_id.is_empty() && !presence_fanout::cluster::valid_node_id(&self.node_id) {
            return Err(ConfigError(format!(
                "node_id {:?} must be 1-64 letters, digits, '-' or '_'",
                self.node_id
            )));
        }
        if self.has_role("fanout") && !self.has_role("policy") && self.nats_url.is_empty() {
            return Err(ConfigError(
                "a fanout node without the policy role asks policy nodes over NATS: set nats_url"
                    .into(),
            ));
        }
        let ranges: [(&str, u64, u64, u64); 30] = [
            ("shards", self.shards as u64, 1, 4096),
            ("ring_timeout_secs", self.ring_timeout_secs, 5, 3600),
            (
                "watch_max_targets",
                self.watch_max_targets as u64,
                1,
                100_000,
            ),
            (
                "max_streams_per_principal",
                self.max_streams_per_principal as u64,
                1,
                1_000_000,
            ),
            ("heartbeat_secs", self.heartbeat_secs, 1, 3600),
            (
                "device_rate_per_second",
                u64::from(self.device_rate_per_second),
                1,
                1_000_000,
            ),
            (
                "device_rate_burst",
                u64::from(self.device_rate_burst),
                1,
                1_000_000,
            ),
            (
                "domain_events_per_second",
                u64::from(self.domain_events_per_second),
                0,
                100_000_000,
            ),
            (
                "domain_events_burst",
                u64::from(self.domain_events_burst),
                1,
                100_000_000,
            ),
            (
                "max_streams_per_domain",
                self.max_streams_per_domain as u64,
                1,
                100_000_000,
            ),
            ("acl_cache_capacity", self.acl_cache_capacity, 1, 1 << 32),
            ("lease_ttl_ms", self.lease_ttl_ms, 300, 600_000),
            (
                "snapshot_interval_ms",
                self.snapshot_interval_ms,
                10,
                600_000,
            ),
            (
                "shard_log_max_age_secs",
                self.shard_log_max_age_secs,
                60,
                30 * 86_400,
            ),
            (
                "ingest_standby_events",
                self.ingest_standby_events as u64,
                0,
                10_000_000,
            ),
            (
                "ingest_backlog_events",
                self.ingest_backlog_events as u64,
                1,
                10_000_000,
            ),
            (
                "directory_snapshot_every",
                self.directory_snapshot_every,
                0,
                100_000_000,
            ),
            (
                "directory_snapshot_interval_ms",
                self.directory_snapshot_interval_ms,
                100,
                86_400_000,
            ),
            ("jetstream_replicas", self.jetstream_replicas as u64, 1, 5),
            ("max_connections", self.max_connections as u64, 1, 1_000_000),
            (
                "handshake_timeout_ms",
                self.handshake_timeout_ms,
                100,
                600_000,
            ),
            ("request_timeout_secs", self.request_timeout_secs, 1, 3600),
            (
                "password_hash_concurrency",
                self.password_hash_concurrency as u64,
                1,
                256,
            ),
            (
                "password_hash_queue",
                self.password_hash_queue as u64,
                0,
                100_000,
            ),
            (
                "login_free_failures_per_account",
                u64::from(self.login_free_failures_per_account),
                0,
                1000,
            ),
            (
                "login_free_failures_per_address",
                u64::from(self.login_free_failures_per_address),
                0,
                1_000_000,
            ),
            (
                "login_failure_window_secs",
                self.login_failure_window_secs,
                1,
                7 * 86_400,
            ),
            ("login_max_delay_secs", self.login_max_delay_secs, 1, 86_400),
            ("audit_retention_days", self.audit_retention_days, 1, 36_500),
            (
                "maintenance_interval_secs",
                self.maintenance_interval_secs,
                10,
                86_400,
            ),
        ];
        for (name, v, lo, hi) in ranges {
            if v < lo || v > hi {
                return Err(ConfigError(format!("{name} must be {lo}..={hi}, got {v}")));
            }
        }
        Ok(())
    }

    fn validate_tls(&self, listen: SocketAddr) -> Result<(), ConfigError> {
        let files = [
            ("tls_cert_file", &self.tls_cert_file),
            ("tls_key_file", &self.tls_key_file),
            ("tls_client_ca_file", &self.tls_client_ca_file),
        ];
        for (name, f) in files {
            if !f.is_empty() && !std::path::Path::new(f).is_file() {
                return Err(ConfigError(format!("{name} {f:?} is not a readable file")));
            }
        }
        if self.tls_cert_file.is_empty() != self.tls_key_file.is_empty() {
            return Err(ConfigError(
                "tls_cert_file and tls_key_file go together".into(),
            ));
        }
        if !self.tls_client_ca_file.is_empty() && self.tls_cert_file.is_empty() {
            return Err(ConfigError(
                "tls_client_ca_file (mTLS) needs tls_cert_file and tls_key_file".into(),
            ));
        }
        if !matches!(self.tls_client_auth.as_str(), "required" | "optional") {
            return Err(ConfigError(format!(
                "tls_client_auth {:?}: expected required or optional",
                self.tls_client_auth
            )));
        }
        if !(1..=86_400).contains(&self.tls_reload_secs) {
            return Err(ConfigError(format!(
                "tls_reload_secs must be 1..=86400, got {}",
                self.tls_reload_secs
            )));
        }
        if self.tls_cert_file.is_empty() && !listen.ip().is_loopback() && !self.allow_plaintext {
            return Err(ConfigError(format!(
                "listen {listen} is reachable from other hosts but TLS is off: set tls_cert_file \
                 and tls_key_file, or allow_plaintext = true when a TLS-terminating proxy or a \
                 private network protects the port (docs/security.md#tls-on-grpc)"
            )));
        }
        Ok(())
    }

    /// The TLS files of the gRPC port, when TLS is on.
    pub fn grpc_tls(&self) -> Option<crate::tls::TlsFiles> {
        (!self.tls_cert_file.is_empty()).then(|| crate::tls::TlsFiles {
            cert: PathBuf::from(&self.tls_cert_file),
            key: PathBuf::from(&self.tls_key_file),
            client_ca: (!self.tls_client_ca_file.is_empty())
                .then(|| PathBuf::from(&self.tls_client_ca_file)),
            client_cert_required: self.tls_client_auth == "required",
        })
    }

    /// Returns the node id: the configured one, else the one kept in
    /// `<data_dir>/node-id`, else a new `<hostname>-<random>` written
    /// there. A restarted node thus keeps its identity and takes its own
    /// shard leases back at once instead of waiting for them to expire.
    pub fn node_id(&self) -> std::io::Result<String> {
        if !self.node_id.is_empty() {
            return Ok(self.node_id.clone());
        }
        let path = self.data_dir.join("node-id");
        if let Ok(id) = std::fs::read_to_string(&path) {
            let id = id.trim();
            if presence_fanout::cluster::valid_node_id(id) {
                return Ok(id.to_owned());
            }
        }
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "node".into());
        let host: String = host
            .trim()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        let host = if host.is_empty() { "node".into() } else { host };
        let suffix: String = presence_auth::token::random_bytes(4)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let id = format!("{host}-{suffix}");
        std::fs::create_dir_all(&self.data_dir)?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{id}\n"))?;
        std::fs::rename(&tmp, &path)?;
        Ok(id)
    }

    /// The TLS and credential files of the NATS connection.
    pub fn nats_security(&self) -> presence_bus::nats::NatsSecurity {
        let path = |s: &str| (!s.is_empty()).then(|| PathBuf::from(s));
        presence_bus::nats::NatsSecurity {
            ca_file: path(&self.nats_tls_ca_file),
            cert_file: path(&self.nats_tls_cert_file),
            key_file: path(&self.nats_tls_key_file),
            creds_file: path(&self.nats_creds_file),
            nkey_file: path(&self.nats_nkey_file),
        }
    }

    /// Returns the parsed listen address.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen
            .parse()
            .map_err(|_| ConfigError(format!("listen {:?} is not host:port", self.listen)))
    }

    /// Returns whether this process has `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Returns the signing key path.
    pub fn key_path(&self) -> PathBuf {
        if self.auth_key_file.is_empty() {
            self.data_dir.join("auth.key")
        } else {
            PathBuf::from(&self.auth_key_file)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_defaults_are_valid() {
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn test_bad_values_are_refused() {
        let bad = [
            Config {
                listen: "nowhere".into(),
                ..Config::default()
            },
            Config {
                roles: vec!["router".into()],
                ..Config::default()
            },
            Config {
                roles: vec![],
                ..Config::default()
            },
            Config {
                log_format: "xml".into(),
                ..Config::default()
            },
            Config {
                metrics_listen: "x".into(),
                ..Config::default()
            },
            Config {
                bus_capacity: 0,
                ..Config::default()
            },
            Config {
                session_ttl_secs: 1,
                ..Config::default()
            },
            Config {
                shards: 0,
                ..Config::default()
            },
            Config {
                ring_timeout_secs: 1,
                ..Config::default()
            },
            Config {
                device_rate_burst: 0,
                ..Config::default()
            },
            Config {
                domain_events_burst: 0,
                ..Config::default()
            },
            Config {
                max_streams_per_domain: 0,
                ..Config::default()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }

    #[test]
    fn test_plaintext_beyond_loopback_needs_tls_or_an_explicit_flag() {
        let open = Config {
            listen: "0.0.0.0:50051".into(),
            ..Config::default()
        };
        let err = open.validate().err().map(|e| e.0).unwrap_or_default();
        assert!(
            err.contains("TLS is off") && err.contains("allow_plaintext"),
            "{err}"
        );
        let v6 = Config {
            listen: "[::]:50051".into(),
            ..Config::default()
        };
        assert!(v6.validate().is_err());
        let allowed = Config {
            allow_plaintext: true,
            ..open.clone()
        };
        assert!(allowed.validate().is_ok());
        let lo6 = Config {
            listen: "[::1]:50051".into(),
            ..Config::default()
        };
        assert!(lo6.validate().is_ok());
    }

    #[test]
    fn test_tls_files_are_checked() {
        let pki = presence_testkit::pki::Pki::new();
        let s = |p: &std::path::Path| p.display().to_string();
        let tls = Config {
            listen: "0.0.0.0:50051".into(),
            tls_cert_file: s(&pki.server_cert),
            tls_key_file: s(&pki.server_key),
            ..Config::default()
        };
        assert!(tls.validate().is_ok(), "TLS beyond loopback");
        let cases = [
            (
                Config {
                    tls_key_file: String::new(),
                    ..tls.clone()
                },
                "go together",
            ),
            (
                Config {
                    tls_cert_file: s(&pki.dir().join("missing.pem")),
                    ..tls.clone()
                },
                "missing.pem",
            ),
            (
                Config {
                    tls_client_auth: "maybe".into(),
                    ..tls.clone()
                },
                "tls_client_auth",
            ),
            (
                Config {
                    tls_reload_secs: 0,
                    ..tls.clone()
                },
                "tls_reload_secs",
            ),
            (
                Config {
                    tls_client_ca_file: s(&pki.ca),
                    tls_cert_file: String::new(),
                    tls_key_file: String::new(),
                    ..Config::default()
                },
                "needs tls_cert_file",
            ),
        ];
        for (c, want) in cases {
            let err = c.validate().err().map(|e| e.0).unwrap_or_default();
            assert!(err.contains(want), "{want}: {err}");
        }
        let mtls = Config {
            tls_client_ca_file: s(&pki.ca),
            ..tls
        };
        let files = mtls.grpc_tls().unwrap_or_else(|| panic!("tls files"));
        assert!(files.client_cert_required);
        assert_eq!(files.client_ca.as_deref(), Some(pki.ca.as_path()));
    }

    #[test]
    fn test_file_then_flags() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let f = dir.path().join("p.toml");
        std::fs::write(
            &f,
            "listen = \"127.0.0.1:6000\"\nroles = [\"directory\"]\nbus_capacity = 10\n",
        )?;
        let flags = Overrides {
            listen: Some("127.0.0.1:7000".into()),
            ..Overrides::default()
        };
        let c = Config::load(Some(&f), &flags)?;
        assert_eq!(c.listen, "127.0.0.1:7000");
        assert_eq!(c.roles, vec!["directory".to_string()]);
        assert_eq!(c.bus_capacity, 10);
        // One comma-separated string, as PRESENCE_ROLES gives it.
        std::fs::write(&f, "roles = \"policy, fanout\"\n")?;
        let c = Config::load(Some(&f), &Overrides::default())?;
        assert_eq!(c.roles, vec!["policy".to_string(), "fanout".to_string()]);
        std::fs::write(&f, "listen = \"127.0.0.1:6000\"\nbogus = 1\n")?;
        assert!(Config::load(Some(&f), &Overrides::default()).is_err());
        assert!(
            Config::load(
                Some(&dir.path().join("missing.toml")),
                &Overrides::default()
            )
            .is_err()
        );
        Ok(())
    }
}
