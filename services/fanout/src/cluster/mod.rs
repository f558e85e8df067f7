//! Distributed shard ownership over NATS JetStream.
//!
//! A deployment has a fixed number of shards; a user belongs to shard
//! `shard_index(domain, user) mod S` on every node. Each shard is owned by
//! exactly one live fanout node at a time:
//!
//! - **Membership**: every node heartbeats its id into the KV bucket
//!   `presence_fanout_nodes` (entries expire after the lease TTL).
//! - **Placement**: rendezvous hashing over the live nodes names each
//!   shard's preferred node, so a joining or leaving node moves only its
//!   share of shards.
//! - **Leases**: the owner holds key `s<n>` in the KV bucket
//!   `presence_shard_leases` (entries expire after the lease TTL), taken
//!   with `create` (fails if held) and renewed with `update` at the
//!   revision it holds (fails if anyone else wrote). A node that cannot
//!   renew stops the shard at once, before its lease can expire and be
//!   taken. The revision of the `create` is the owner's **term**.
//! - **Admission**: tenants publish on `presence.v1.in.<domain>.<user>`;
//!   the nodes consume it in a queue group, refuse what is malformed or
//!   over its domain's quota, and append the rest in batches (see
//!   `admission`), so a flood never reaches JetStream.
//! - **Input log**: the JetStream stream `PRESENCE_INGEST`
//!   (`presence.v1.admitted`) holds the admitted batches in order (a gRPC
//!   `Publish` appends its events as one batch too, with where to send
//!   the verdicts). Each node reads it once and hands every event to the
//!   task of the shard it belongs to, if it owns that shard. Events wait
//!   in the stream while a shard changes owner, so none is lost.
//! - **Snapshots**: the owner writes its users' full state and the last
//!   log sequence it has covered to key `s<n>` of the KV bucket
//!   `presence_shard_states` (every snapshot interval when something
//!   changed, and at hand-off), at the revision it last wrote, so a stale
//!   owner cannot overwrite a newer snapshot.
//! - **Takeover**: a new owner loads the snapshot, replays its shard's
//!   events from the log after it (with each event's time of arrival in
//!   the log as "now", so the state is the same), then
//!   raises every version to at least `term << 32` and publishes every
//!   user: versions stay strictly increasing across owners, and watchers
//!   converge to the true state.
//! - **Reads**: the owner answers `presence.v1.shard.<n>.get`; edges retry
//!   while a shard has no owner.
//!
//! This module runs the node's control loop (membership heartbeat,
//! placement decisions every step); the rest is split by concern:
//! `admission` (the ingest subjects into the input log), `placement`
//! (rendezvous hashing, leases, terms), `log` (the input log's reader
//! and the application of a logged event), `owner` (an
//! owned shard's task: restore, replay, live loop), `snapshot` (shard
//! snapshots) and `routing` (appends with verdicts and reads, from any
//! node to the owners).

mod admission;
mod log;
#[cfg(test)]
pub(crate) use log::batch_events_count as batch_events_for_tests;
mod owner;
mod placement;
mod routing;
mod snapshot;

use placement::{lease_key, preferred};

use crate::shard::RateLimit;
use bytes::Bytes;
use presence_bus::{SharedBus, subjects};
use presence_core::presence::Limits;
use presence_core::{ApiError, ApiResult};
use presence_proto::v1;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::lease::{CasBucket, CasError};
use async_nats::jetstream::{self, kv, stream};

/// KV bucket of live fanout nodes.
pub const NODES_BUCKET: &str = "presence_fanout_nodes";
/// KV bucket of shard leases.
pub const LEASES_BUCKET: &str = "presence_shard_leases";
/// KV bucket of shard snapshots.
pub const STATES_BUCKET: &str = "presence_shard_states";
/// JetStream stream capturing the ingest subjects.
pub const INGEST_STREAM: &str = "PRESENCE_INGEST";
/// Log entries queued per owned shard before the node's reader waits.
const SHARD_INBOX: usize = 4096;

/// Settings of distributed shard ownership.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node's id: unique in the deployment, `[A-Za-z0-9_-]`.
    pub node_id: String,
    /// How long a lease (and a node's heartbeat) lives without renewal;
    /// renewals happen every third of it. The first node to create the
    /// buckets sets it for the deployment.
    pub lease_ttl: Duration,
    /// How often an owner snapshots a shard that changed.
    pub snapshot_interval: Duration,
    /// How long events stay in the input log.
    pub input_max_age: Duration,
    /// Replicas of the JetStream buckets and stream (1 for a single
    /// nats-server, 3 for a three-node NATS cluster).
    pub replicas: usize,
    /// How long an entry node waits for an owner's verdict or a read.
    pub request_timeout: Duration,
    /// Most events of shards this node does not own kept for a takeover
    /// (see `admission`); 0 keeps none.
    pub standby_events: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_id: String::new(),
            lease_ttl: Duration::from_secs(10),
            snapshot_interval: Duration::from_secs(1),
            input_max_age: Duration::from_secs(3600),
            replicas: 1,
            request_timeout: Duration::from_secs(5),
            standby_events: 100_000,
        }
    }
}

/// Returns whether `id` is a usable node id.
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What a shard task needs to build its state.
#[derive(Clone)]
pub(crate) struct ShardParams {
    pub limits: Limits,
    pub rate: RateLimit,
    /// This shard's share of each domain's ingest quota.
    pub domain_rate: Option<RateLimit>,
    pub bus: SharedBus,
    pub clock: crate::shard::Clock,
    pub acl: presence_policy::AclView,
    /// This node's edge (an owner feeds it its changes directly).
    pub edge: crate::edge::Edge,
}

/// A shard this node owns.
struct Owned {
    /// Lease revision last written.
    revision: u64,
    /// When the lease was last written.
    renewed_at: tokio::time::Instant,
    /// Stops the shard's task.
    cancel: CancellationToken,
    /// Whether the stop is a hand-off (write a final snapshot).
    graceful: Arc<AtomicBool>,
    /// Cancelled by the task when it has ended.
    stopped: CancellationToken,
    /// Where the node's log reader hands this shard's events.
    inbox: mpsc::Sender<log::Entry>,
}

/// Shard ownership and routing of one fanout node.
pub struct Cluster {
    client: async_nats::Client,
    js: jetstream::Context,
    nodes: kv::Store,
    /// Shard leases: every write is a compare-and-set safe on replicated
    /// buckets of nats-server 2.9 (see [`crate::lease`]).
    leases: CasBucket,
    states: kv::Store,
    ingest: stream::Stream,
    /// Sequence of the last log message the reader handed out.
    position: AtomicU64,
    cfg: ClusterConfig,
    shards: usize,
    params: ShardParams,
    owned: Mutex<HashMap<usize, Owned>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<v1::PublishResult>>>,
    next_token: AtomicU64,
    /// Distinguishes this process's log appends from an earlier run's
    /// (in their `Nats-Msg-Id`).
    boot: u64,
    /// Log appends made, for their `Nats-Msg-Id`.
    appends: AtomicU64,
    /// Tells the admission task which shards to admit.
    admission: mpsc::Sender<admission::Control>,
    /// The admission task's end of it, until the task starts.
    admission_control: Mutex<Option<mpsc::Receiver<admission::Control>>>,
    /// Whether the admission task runs (a release waits for it).
    admission_running: AtomicBool,
    results: String,
    tracker: TaskTracker,
}

/// Returns `Unavailable("<what>: <e>")`.
pub(crate) fn unavailable(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::Unavailable(format!("{what}: {e}"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(e) => e.into_inner(),
    }
}

/// Opens KV bucket `name`, creating it if needed (see
/// [`presence_bus::buckets::kv_bucket`]).
pub use presence_bus::buckets::kv_bucket as bucket;
impl Cluster {
    /// Connects the JetStream objects (creating them if needed), starts
    /// the verdict listener and the ownership loop (tracked by `tracker`,
    /// stopped by `shutdown`, which hands every owned shard off).
    pub(crate) async fn start(
        client: async_nats::Client,
        cfg: ClusterConfig,
        shards: usize,
        params: ShardParams,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
    ) -> ApiResult<Arc<Self>> {
        if !valid_node_id(&cfg.node_id) {
            return Err(ApiError::invalid(format!(
                "node id {:?} must be 1-64 letters, digits, '-' or '_'",
                cfg.node_id
            )));
        }
        let js = jetstream::new(client.clone());
        let replicas = cfg.replicas.max(1);
        // Retried: a node started while a NATS server restarts waits for
        // its JetStream instead of failing.
        let (nodes, states, ingest) =
            presence_bus::buckets::retry_unavailable("fanout streams and buckets", || async {
                let nodes = bucket(&js, NODES_BUCKET, cfg.lease_ttl, replicas).await?;
                bucket(&js, LEASES_BUCKET, cfg.lease_ttl, replicas).await?;
                let states = bucket(&js, STATES_BUCKET, Duration::ZERO, replicas).await?;
                let config = stream::Config {
                    name: INGEST_STREAM.into(),
                    subjects: vec![subjects::admitted()],
                    max_age: cfg.input_max_age,
                    storage: stream::StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                };
                let mut ingest = js
                    .get_or_create_stream(config.clone())
                    .await
                    .map_err(|e| unavailable("stream PRESENCE_INGEST", e))?;
                // A log created before admission captured the ingest
                // subjects themselves: it now holds admitted batches only
                // (its older entries are still read).
                if ingest.cached_info().config.subjects != config.subjects {
                    let mut updated = ingest.cached_info().config.clone();
                    updated.subjects = config.subjects.clone();
                    js.update_stream(updated)
                        .await
                        .map_err(|e| unavailable("update stream PRESENCE_INGEST", e))?;
                    ingest = js
                        .get_stream(INGEST_STREAM)
                        .await
                        .map_err(|e| unavailable("stream PRESENCE_INGEST", e))?;
                }
                Ok((nodes, states, ingest))
            })
            .await?;
        let leases = CasBucket::new(js.clone(), LEASES_BUCKET);
        let results = subjects::node_results(&cfg.node_id);
        let verdicts = client
            .subscribe(results.clone())
            .await
            .map_err(|e| unavailable("subscribe to verdicts", e))?;
        let (admission, admission_control) = admission::control_channel(shards);
        let cluster = Arc::new(Self {
            client,
            js,
            nodes,
            leases,
            states,
            ingest,
            position: AtomicU64::new(0),
            cfg,
            shards: shards.max(1),
            params,
            owned: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(1),
            boot: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or_default(),
            appends: AtomicU64::new(0),
            admission,
            admission_control: Mutex::new(Some(admission_control)),
            admission_running: AtomicBool::new(false),
            results,
            tracker: tracker.clone(),
        });
        tracker.spawn(cluster.clone().route_verdicts(verdicts, shutdown.clone()));
        tracker.spawn(tracing::Instrument::instrument(
            cluster.clone().read_log(shutdown.clone()),
            tracing::info_span!("ingest_log"),
        ));
        tracker.spawn(tracing::Instrument::instrument(
            cluster.clone().run(shutdown.clone()),
            tracing::info_span!("shard_ownership", node = %cluster.cfg.node_id),
        ));
        Ok(cluster)
    }

    /// Returns the shards this node owns now.
    pub fn owned_shards(&self) -> Vec<usize> {
        let mut v: Vec<usize> = lock(&self.owned).keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// The ownership loop: heartbeat, renew, release, acquire, every
    /// third of the lease TTL; at shutdown, hands every shard off.
    async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.cfg.lease_ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.step().await {
                tracing::warn!(error = %e, "shard ownership step failed");
            }
        }
        let owned: Vec<usize> = self.owned_shards();
        for n in owned {
            self.release(n, true).await;
        }
        if let Err(e) = self.nodes.delete(&self.cfg.node_id).await {
            tracing::debug!(error = %e, "node heartbeat not removed");
        }
    }

    async fn step(self: &Arc<Self>) -> ApiResult<()> {
        let me = self.cfg.node_id.clone();
        self.nodes
            .put(&me, Bytes::from(me.clone()))
            .await
            .map_err(|e| unavailable("node heartbeat", e))?;
        let mut live = self.live_nodes().await?;
        live.sort();
        metrics::gauge!("presence_fanout_cluster_nodes").set(live.len() as f64);
        for n in 0..self.shards {
            let mine = preferred(&live, n) == Some(me.as_str());
            let held = {
                let owned = lock(&self.owned);
                owned
                    .get(&n)
                    .map(|o| (o.revision, o.renewed_at, o.stopped.is_cancelled()))
            };
            match held {
                Some((_, _, true)) => {
                    // The task ended on its own (error or fenced).
                    self.release(n, false).await;
                }
                Some((_, _, false)) if !mine => self.release(n, true).await,
                Some((rev, renewed_at, false)) => {
                    match self
                        .leases
                        .cas(&lease_key(n), Some(Bytes::from(me.clone())), Some(rev))
                        .await
                    {
                        Ok(r) => {
                            if let Some(o) = lock(&self.owned).get_mut(&n) {
                                o.revision = r;
                                o.renewed_at = tokio::time::Instant::now();
                            }
                        }
                        Err(CasError::Lost) => {
                            tracing::warn!(shard = n, "lease taken by another node; shard stopped");
                            self.stop(n, false).await;
                        }
                        // A transient failure (e.g. NATS restarting): keep
                        // the shard while the lease surely has not expired.
                        Err(e) if renewed_at.elapsed() < self.cfg.lease_ttl * 2 / 3 => {
                            tracing::info!(shard = n, error = %e, "lease renewal failed; retrying");
                        }
                        Err(e) => {
                            tracing::warn!(shard = n, error = %e, "lease not renewed in time; shard stopped");
                            self.stop(n, false).await;
                        }
                    }
                }
                None if mine => {
                    if let Some(rev) = self.try_lease(n, &me).await {
                        self.acquire(n, rev);
                    }
                }
                None => {}
            }
        }
        metrics::gauge!("presence_fanout_owned_shards").set(lock(&self.owned).len() as f64);
        Ok(())
    }
}
