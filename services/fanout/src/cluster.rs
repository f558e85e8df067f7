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
//! - **Input log**: the JetStream stream `PRESENCE_INGEST` captures the
//!   ingest subjects `presence.v1.in.<domain>.<user>` on the server, in
//!   the order they arrive (gRPC `Publish` appends there too, with reply
//!   headers). Each node reads it once and hands every event to the task
//!   of the shard it belongs to, if it owns that shard. Events wait in the
//!   stream while a shard changes owner, so none is lost, and one user's
//!   events keep their order whatever node they entered through.
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

use crate::convert::{reject_reason, state_to_proto};
use crate::ingest::{applied, check_event, ingest_target, rejected};
use crate::quota::{IngestQuota, over_ingest_quota};
use crate::shard::{RateLimit, Shard, SnapUser, UserKey, shard_index, sleep_until_opt};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use presence_bus::{SharedBus, subjects};
use presence_core::presence::Limits;
use presence_core::{ApiError, ApiResult, DomainId, UserId};
use presence_proto::v1::{self, RejectReason};
use prost::Message;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::lease::{CasBucket, CasError};
use async_nats::jetstream::{self, kv, stream};
use presence_bus::log_reader::LogReader;

/// KV bucket of live fanout nodes.
pub const NODES_BUCKET: &str = "presence_fanout_nodes";
/// KV bucket of shard leases.
pub const LEASES_BUCKET: &str = "presence_shard_leases";
/// KV bucket of shard snapshots.
pub const STATES_BUCKET: &str = "presence_shard_states";
/// JetStream stream capturing the ingest subjects.
pub const INGEST_STREAM: &str = "PRESENCE_INGEST";
/// Header naming where the owner sends its verdict.
const REPLY_HEADER: &str = "Presence-Reply";
/// Header carrying the token of a verdict.
const TOKEN_HEADER: &str = "Presence-Token";
/// Events queued per owned shard before the node's reader waits.
const SHARD_INBOX: usize = 4096;

/// Largest snapshot written (NATS' default max payload is 1 MiB).
const MAX_SNAPSHOT: usize = 1000 * 1024;

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
    inbox: mpsc::Sender<jetstream::Message>,
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

/// Rendezvous hashing: the live node with the highest hash of
/// (node, shard) is the shard's preferred owner.
fn preferred(live: &[String], shard: usize) -> Option<&str> {
    live.iter()
        .max_by_key(|node| {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in node.bytes().chain([0u8]).chain(shard.to_le_bytes()) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
            // FNV alone mixes the last bytes poorly: finish with a
            // splitmix64 round.
            h ^= h >> 30;
            h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
            h ^= h >> 27;
            h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
            h ^ (h >> 31)
        })
        .map(String::as_str)
}

fn lease_key(n: usize) -> String {
    format!("s{n}")
}

/// The first version of a term: above every version of earlier terms
/// (a term is a lease revision, far below 2^32).
fn term_floor(term: u64) -> u64 {
    term.min(u64::from(u32::MAX)) << 32
}

/// A shard's persisted state.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Snapshot {
    /// Last input-log sequence applied.
    seq: u64,
    /// Term of the owner that wrote it.
    term: u64,
    users: Vec<SnapUser>,
}

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
                let ingest = js
                    .get_or_create_stream(stream::Config {
                        name: INGEST_STREAM.into(),
                        subjects: vec![subjects::ingest_all()],
                        max_age: cfg.input_max_age,
                        storage: stream::StorageType::File,
                        num_replicas: replicas,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| unavailable("stream PRESENCE_INGEST", e))?;
                Ok((nodes, states, ingest))
            })
            .await?;
        let leases = CasBucket::new(js.clone(), LEASES_BUCKET);
        let results = subjects::node_results(&cfg.node_id);
        let verdicts = client
            .subscribe(results.clone())
            .await
            .map_err(|e| unavailable("subscribe to verdicts", e))?;
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

    async fn route_verdicts(
        self: Arc<Self>,
        mut sub: async_nats::Subscriber,
        shutdown: CancellationToken,
    ) {
        loop {
            let Some(m) = presence_bus::next_or_shutdown(&mut sub, &shutdown).await else {
                return;
            };
            let Ok(r) = v1::ShardResult::decode(m.payload) else {
                tracing::warn!("undecodable shard verdict");
                continue;
            };
            let waiter = lock(&self.pending).remove(&r.token);
            tracing::debug!(token = r.token, found = waiter.is_some(), "verdict");
            if let (Some(tx), Some(result)) = (waiter, r.result) {
                let _ = tx.send(result);
            }
        }
    }

    /// Appends validated events to their shards' logs and waits for the
    /// owners' verdicts (pipelined: all are appended before any verdict
    /// is awaited).
    pub(crate) async fn submit_and_wait(
        &self,
        events: Vec<(UserKey, v1::DeviceEvent)>,
    ) -> Vec<v1::PublishResult> {
        let mut waits = Vec::with_capacity(events.len());
        for ((d, u), e) in events {
            let token = self.next_token.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            lock(&self.pending).insert(token, tx);
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(REPLY_HEADER, self.results.as_str());
            headers.insert(TOKEN_HEADER, token.to_string().as_str());
            let ack = self
                .js
                .publish_with_headers(subjects::ingest(&d, &u), headers, e.encode_to_vec().into())
                .await;
            waits.push((token, ack, rx));
        }
        let mut out = Vec::with_capacity(waits.len());
        for (token, ack, rx) in waits {
            let stored = match ack {
                Ok(f) => f.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let result = match stored {
                Err(e) => {
                    lock(&self.pending).remove(&token);
                    rejected(
                        RejectReason::Unspecified,
                        format!("not stored in the ingest log: {e}"),
                    )
                }
                Ok(()) => match tokio::time::timeout(self.cfg.request_timeout, rx).await {
                    Ok(Ok(r)) => r,
                    _ => {
                        lock(&self.pending).remove(&token);
                        v1::PublishResult {
                            accepted: false,
                            reason: RejectReason::Unspecified as i32,
                            detail: "stored in the ingest log; the shard's owner has not \
                                     confirmed yet (it applies the event once it runs)"
                                .into(),
                        }
                    }
                },
            };
            out.push(result);
        }
        out
    }

    /// Reads the full (unredacted) states of `targets` from their owners,
    /// retrying while a shard has no owner (for up to twice the lease
    /// TTL).
    pub(crate) async fn states(
        &self,
        d: &DomainId,
        targets: &[String],
    ) -> ApiResult<Vec<v1::PresenceState>> {
        let mut by_shard: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, t) in targets.iter().enumerate() {
            let u = UserId::parse(t)?;
            by_shard
                .entry(shard_index(d, &u, self.shards))
                .or_default()
                .push(i);
        }
        let reads = by_shard.into_iter().map(|(n, idx)| async move {
            let req = v1::GetPresenceRequest {
                domain: d.to_string(),
                targets: idx.iter().map(|i| targets[*i].clone()).collect(),
            };
            let resp = self.read_shard(n, req).await?;
            if resp.states.len() != idx.len() {
                return Err(ApiError::Internal(format!(
                    "shard {n} answered {} states for {} targets",
                    resp.states.len(),
                    idx.len()
                )));
            }
            Ok::<_, ApiError>(idx.into_iter().zip(resp.states).collect::<Vec<_>>())
        });
        let mut out: Vec<Option<v1::PresenceState>> = vec![None; targets.len()];
        for part in futures_util::future::join_all(reads).await {
            for (i, s) in part? {
                out[i] = Some(s);
            }
        }
        out.into_iter()
            .map(|s| s.ok_or_else(|| ApiError::Internal("missing state".into())))
            .collect()
    }

    async fn read_shard(
        &self,
        n: usize,
        req: v1::GetPresenceRequest,
    ) -> ApiResult<v1::GetPresenceResponse> {
        let payload: Bytes = req.encode_to_vec().into();
        let deadline = tokio::time::Instant::now() + self.cfg.lease_ttl * 2;
        let mut backoff = Duration::from_millis(20);
        loop {
            let r = tokio::time::timeout(
                self.cfg.request_timeout,
                self.client.request(subjects::shard_get(n), payload.clone()),
            )
            .await;
            match r {
                Ok(Ok(m)) => {
                    return v1::GetPresenceResponse::decode(m.payload)
                        .map_err(|e| ApiError::Internal(format!("malformed shard read: {e}")));
                }
                Ok(Err(e)) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(shard = n, error = %e, "shard has no owner yet; retrying");
                }
                Ok(Err(e)) => return Err(unavailable(&format!("shard {n} has no owner"), e)),
                Err(_) => return Err(ApiError::Unavailable(format!("shard {n} read timed out"))),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
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

    /// Returns the ids of the nodes whose heartbeat is in the nodes
    /// bucket, without a consumer (KV `keys()` makes one, which a dead
    /// NATS server could hold): the bucket's subjects from the stream
    /// leader, then each one's last entry (a deleted heartbeat is a node
    /// that stopped).
    async fn live_nodes(&self) -> ApiResult<Vec<String>> {
        Ok(presence_bus::buckets::kv_entries(&self.js, NODES_BUCKET)
            .await?
            .into_iter()
            .map(|(node, _)| node)
            .collect())
    }

    /// Takes shard `n`'s lease: free, or still naming this node from an
    /// earlier run with the same node id (no task of ours runs it).
    async fn try_lease(&self, n: usize, me: &str) -> Option<u64> {
        let key = lease_key(n);
        let expected = match self.leases.latest(&key).await {
            Ok(None) => None,
            Ok(Some((rev, holder))) if holder.as_ref() == me.as_bytes() => Some(rev),
            Ok(Some(_)) => return None,
            Err(e) => {
                tracing::debug!(shard = n, error = %e, "lease not read");
                return None;
            }
        };
        match self
            .leases
            .cas(&key, Some(Bytes::from(me.to_owned())), expected)
            .await
        {
            Ok(rev) => Some(rev),
            Err(e) => {
                tracing::debug!(shard = n, error = %e, "lease not taken");
                None
            }
        }
    }

    /// Stops shard `n`'s task (with a final snapshot if `graceful`) and
    /// forgets it, without touching the lease.
    async fn stop(&self, n: usize, graceful: bool) -> Option<u64> {
        let o = lock(&self.owned).remove(&n)?;
        o.graceful.store(graceful, Ordering::SeqCst);
        o.cancel.cancel();
        if tokio::time::timeout(self.cfg.request_timeout, o.stopped.cancelled())
            .await
            .is_err()
        {
            tracing::warn!(shard = n, "shard task did not stop in time");
        }
        Some(o.revision)
    }

    /// Stops shard `n` and gives its lease back (if still ours), so the
    /// preferred node takes it at its next step.
    async fn release(&self, n: usize, graceful: bool) {
        if let Some(rev) = self.stop(n, graceful).await {
            if let Err(e) = self.leases.cas(&lease_key(n), None, Some(rev)).await {
                tracing::debug!(shard = n, error = %e, "lease not released (expired or taken)");
            }
            tracing::info!(shard = n, graceful, "shard released");
        }
    }

    fn acquire(self: &Arc<Self>, n: usize, term: u64) {
        let cancel = CancellationToken::new();
        let graceful = Arc::new(AtomicBool::new(false));
        let stopped = CancellationToken::new();
        let (inbox, rx) = mpsc::channel(SHARD_INBOX);
        // Registered before the task reads the log's end, so every later
        // event reaches the inbox.
        lock(&self.owned).insert(
            n,
            Owned {
                revision: term,
                renewed_at: tokio::time::Instant::now(),
                cancel: cancel.clone(),
                graceful: graceful.clone(),
                stopped: stopped.clone(),
                inbox,
            },
        );
        tracing::info!(shard = n, term, "shard acquired");
        metrics::counter!("presence_fanout_shard_takeovers_total").increment(1);
        let me = self.clone();
        self.tracker.spawn(tracing::Instrument::instrument(
            async move {
                if let Err(e) = me.own(n, term, rx, cancel, graceful).await {
                    tracing::warn!(shard = n, error = %e, "shard task ended");
                }
                stopped.cancel();
            },
            tracing::info_span!("owned_shard", shard = n, term),
        ));
    }

    /// Returns the shard of an ingest subject (None if malformed).
    fn shard_of(&self, subject: &str) -> Option<usize> {
        let mut parts = subject.split('.').skip(3);
        let d = DomainId::parse(parts.next()?).ok()?;
        let u = UserId::parse(parts.next()?).ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(shard_index(&d, &u, self.shards))
    }

    /// The node's log reader: reads `PRESENCE_INGEST` once and hands each
    /// event to the task of its shard if this node owns it. Starts at the
    /// log's end (a shard catches up on its own when acquired) and, after
    /// a reconnection, resumes after the last event it handed out.
    async fn read_log(self: Arc<Self>, shutdown: CancellationToken) {
        let mut reconnects = self.params.bus.reconnects();
        let from = match self.position.load(Ordering::Acquire) {
            0 => None,
            p => Some(p),
        };
        let mut log = LogReader::new(self.ingest.clone(), self.cfg.replicas, from);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = reconnects.changed() => {
                    if r.is_err() {
                        return;
                    }
                    // The server may have lost the consumer.
                    log.reopen();
                }
                m = log.next() => match m {
                    Ok(m) => self.hand_out(m).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "ingest log not readable; retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        }
                    }
                },
            }
        }
    }

    async fn hand_out(&self, m: jetstream::Message) {
        let Ok(seq) = m.info().map(|i| i.stream_sequence) else {
            return;
        };
        match self.shard_of(&m.subject) {
            Some(n) => {
                let inbox = lock(&self.owned).get(&n).map(|o| o.inbox.clone());
                if let Some(inbox) = inbox {
                    // Waits while the shard catches up (bounded inbox).
                    let _ = inbox.send(m).await;
                }
            }
            // Counted once, by the owner of shard 0.
            None if lock(&self.owned).contains_key(&0) => {
                rejected(
                    RejectReason::Malformed,
                    format!("bad subject {}", m.subject),
                );
            }
            None => {}
        }
        self.position.fetch_max(seq, Ordering::Release);
    }

    /// Runs an owned shard: restore the snapshot, replay the log after it,
    /// then apply the events the reader hands out, answer reads, expire
    /// and snapshot until cancelled.
    async fn own(
        &self,
        n: usize,
        term: u64,
        mut inbox: mpsc::Receiver<jetstream::Message>,
        cancel: CancellationToken,
        graceful: Arc<AtomicBool>,
    ) -> ApiResult<()> {
        let key = lease_key(n);
        let (snap, mut snap_rev) = match self
            .states
            .entry(key.clone())
            .await
            .map_err(|e| unavailable("read snapshot", e))?
        {
            Some(e) if e.operation == kv::Operation::Put => {
                let s: Snapshot = serde_json::from_slice(&e.value).map_err(|err| {
                    ApiError::Internal(format!("corrupt snapshot of {key}: {err}"))
                })?;
                (s, e.revision)
            }
            _ => (Snapshot::default(), 0),
        };
        let p = &self.params;
        let mut shard = Shard::new(n, p.limits, p.rate, p.bus.clone(), p.clock);
        let mut quota = IngestQuota::new(p.domain_rate);
        shard.publishing = false;
        // Every event of this shard up to `covered` is applied.
        let mut covered = snap.seq;
        shard.restore(snap.users);
        let end = self
            .ingest
            .get_info()
            .await
            .map_err(|e| unavailable("ingest log info", e))?
            .state
            .last_sequence;
        // Replay what the previous owner may not have snapshotted: this
        // shard's events between the snapshot and the log's end.
        let mut replayed = 0u64;
        let mut reconnects = self.params.bus.reconnects();
        if covered < end {
            let mut log = LogReader::new(self.ingest.clone(), self.cfg.replicas, Some(covered));
            while covered < end {
                let m = tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    r = reconnects.changed() => {
                        if r.is_err() {
                            return Err(ApiError::Unavailable("bus closed".into()));
                        }
                        log.reopen();
                        continue;
                    }
                    m = log.next() => m,
                };
                match m {
                    Ok(m) => {
                        let seq = m.info().map(|i| i.stream_sequence).unwrap_or(covered + 1);
                        if seq > covered && self.shard_of(&m.subject) == Some(n) {
                            self.apply_logged(&mut shard, &mut quota, &m, true).await;
                            replayed += 1;
                        }
                        covered = covered.max(seq);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "ingest log read failed; retrying");
                        tokio::select! {
                            _ = cancel.cancelled() => return Ok(()),
                            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        }
                    }
                }
            }
        }
        // Go live: a new term above every published version.
        shard.publishing = true;
        let now = shard.clock.now_ms();
        shard.expire_until(now).await;
        shard.raise_all(term_floor(term)).await;
        let mut gets = self
            .client
            .subscribe(subjects::shard_get(n))
            .await
            .map_err(|e| unavailable("shard reads", e))?;
        tracing::info!(shard = n, replayed, from = snap.seq, "shard live");
        snap_rev = self.snapshot(&shard, &key, covered, term, snap_rev).await?;
        let mut dirty = false;
        let mut tick = tokio::time::interval(self.cfg.snapshot_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The snapshot being written, if any: the shard keeps applying
        // events while JetStream acknowledges it (an inline write stalled
        // every event of the shard for the round trip). At most one is in
        // flight, so each write names the revision of the one before.
        let mut writing: Option<BoxFuture<'static, ApiResult<u64>>> = None;
        loop {
            let next = shard.next_deadline();
            tokio::select! {
                _ = cancel.cancelled() => {
                    if let Some(w) = writing.take() {
                        snap_rev = w.await?;
                    }
                    if graceful.load(Ordering::SeqCst) {
                        let upto = self.watermark(covered, &inbox);
                        self.snapshot(&shard, &key, upto, term, snap_rev).await?;
                    }
                    return Ok(());
                }
                r = async {
                    match writing.as_mut() {
                        Some(w) => w.await,
                        None => std::future::pending().await,
                    }
                } => {
                    writing = None;
                    snap_rev = r?;
                }
                m = inbox.recv() => match m {
                    Some(m) => {
                        let seq = m.info().map(|i| i.stream_sequence).unwrap_or(covered + 1);
                        if seq > covered {
                            self.apply_logged(&mut shard, &mut quota, &m, false).await;
                            covered = seq;
                            dirty = true;
                        }
                    }
                    None => return Err(ApiError::Unavailable("shard inbox closed".into())),
                },
                g = gets.next() => match g {
                    Some(g) => self.answer_read(&shard, g).await,
                    None => return Err(ApiError::Unavailable("shard reads ended".into())),
                },
                _ = tick.tick(), if dirty && writing.is_none() => {
                    let upto = self.watermark(covered, &inbox);
                    if let Some(bytes) = encode_snapshot(&shard, &key, upto, term)? {
                        writing = Some(Box::pin(write_snapshot(
                            self.states.clone(),
                            key.clone(),
                            bytes,
                            snap_rev,
                        )));
                    }
                    dirty = false;
                }
                _ = sleep_until_opt(next) => {
                    let now = shard.clock.now_ms();
                    if shard.expire_until(now).await {
                        dirty = true;
                    }
                }
            }
        }
    }

    /// The log sequence a snapshot covers: the reader's position when
    /// nothing is waiting in the inbox (every event of this shard up to it
    /// was handed out and applied), else the last applied one. A quiet
    /// shard's snapshot thus keeps up with the log, and a takeover
    /// replays little.
    fn watermark(&self, covered: u64, inbox: &mpsc::Receiver<jetstream::Message>) -> u64 {
        let position = self.position.load(Ordering::Acquire);
        if inbox.is_empty() {
            covered.max(position)
        } else {
            covered
        }
    }

    /// Applies one event of the log (validated here: the log holds raw
    /// ingest) with its arrival time in the log as "now", and sends the
    /// verdict where the headers ask.
    async fn apply_logged(
        &self,
        shard: &mut Shard,
        quota: &mut IngestQuota,
        m: &jetstream::Message,
        replay: bool,
    ) {
        let now = m
            .info()
            .map(|i| (i.published.unix_timestamp_nanos() / 1_000_000) as i64)
            .unwrap_or_else(|_| shard.clock.now_ms());
        let header = |name: &str| {
            m.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        let reply = header(REPLY_HEADER);
        let token = header(TOKEN_HEADER).and_then(|t| t.parse::<u64>().ok());
        if reply.is_none() {
            // Events published on NATS directly enter here.
            metrics::counter!("presence_fanout_events_in_total").increment(1);
        }
        if replay {
            // Expire what was due before this event, as the previous
            // owner did.
            shard.expire_until(now).await;
        } else {
            // How long the event waited between its append to the log and
            // its owner applying it.
            let lag_ms = shard.clock.now_ms().saturating_sub(now).max(0);
            metrics::histogram!("presence_fanout_ingest_lag_seconds").record(lag_ms as f64 / 1e3);
        }
        let result = match v1::DeviceEvent::decode(m.payload.clone()) {
            Err(e) => rejected(RejectReason::Malformed, format!("undecodable payload: {e}")),
            Ok(mut e) => match ingest_target(&m.subject, &mut e) {
                Err(r) => r,
                // The domain's quota before any other work, on the log's
                // clock (a replay admits what the first owner admitted).
                Ok((d, _)) if !quota.admit(&d, now) => {
                    rejected(RejectReason::RateLimited, over_ingest_quota(&d))
                }
                Ok((d, u)) => match check_event(&self.params.acl, &d, &u, &e).await {
                    Err(r) => r,
                    Ok(ev) => match shard.apply((d, u), &ev, now).await {
                        Ok(changed) => applied(changed),
                        Err(r) => rejected(reject_reason(r), format!("{r:?}")),
                    },
                },
            },
        };
        if let (Some(reply), Some(token)) = (reply, token) {
            let r = v1::ShardResult {
                token,
                result: Some(result),
            };
            if let Err(e) = self.client.publish(reply, r.encode_to_vec().into()).await {
                tracing::debug!(error = %e, "verdict not sent");
            }
        }
    }

    async fn answer_read(&self, shard: &Shard, m: async_nats::Message) {
        let Some(reply) = m.reply else { return };
        let resp = match v1::GetPresenceRequest::decode(m.payload) {
            Ok(req) => {
                let keys: Vec<(UserKey, String)> = req
                    .targets
                    .iter()
                    .filter_map(|t| {
                        Some((
                            (DomainId::parse(&req.domain).ok()?, UserId::parse(t).ok()?),
                            t.clone(),
                        ))
                    })
                    .collect();
                let ks: Vec<UserKey> = keys.iter().map(|(k, _)| k.clone()).collect();
                let states = shard
                    .get(&ks)
                    .iter()
                    .zip(&keys)
                    .map(|(a, (_, t))| state_to_proto(&req.domain, t, a, true))
                    .collect();
                v1::GetPresenceResponse {
                    states,
                    denied: Vec::new(),
                }
            }
            Err(_) => v1::GetPresenceResponse::default(),
        };
        if let Err(e) = self
            .client
            .publish(reply, resp.encode_to_vec().into())
            .await
        {
            tracing::debug!(error = %e, "shard read not answered");
        }
    }

    /// Writes the shard's snapshot at the revision this owner last wrote
    /// (fencing a stale owner); returns the new revision.
    async fn snapshot(
        &self,
        shard: &Shard,
        key: &str,
        seq: u64,
        term: u64,
        rev: u64,
    ) -> ApiResult<u64> {
        match encode_snapshot(shard, key, seq, term)? {
            Some(bytes) => write_snapshot(self.states.clone(), key.to_owned(), bytes, rev).await,
            None => Ok(rev),
        }
    }
}

/// Encodes a shard's snapshot; `None` (counted and logged) when it is
/// larger than NATS accepts, in which case the input log still covers it.
fn encode_snapshot(shard: &Shard, key: &str, seq: u64, term: u64) -> ApiResult<Option<Bytes>> {
    let snap = Snapshot {
        seq,
        term,
        users: shard.export(),
    };
    let bytes = serde_json::to_vec(&snap)
        .map_err(|e| ApiError::Internal(format!("encode snapshot: {e}")))?;
    if bytes.len() > MAX_SNAPSHOT {
        metrics::counter!("presence_fanout_snapshot_too_large_total").increment(1);
        tracing::error!(
            key,
            bytes = bytes.len(),
            "shard snapshot too large; use more shards (the input log still covers it)"
        );
        return Ok(None);
    }
    Ok(Some(bytes.into()))
}

/// Writes an encoded snapshot at revision `rev` (0: the key must not
/// exist); returns the new revision. Owns its arguments so that a shard
/// can keep applying events while the write is acknowledged.
///
/// The revision is a fence against a stale owner, but only a best-effort
/// one: `update(revision)` is per-subject compare-and-set, which
/// nats-server before 2.9.21 does not make safe on replicated buckets.
/// Correctness does not rest on it. Ownership itself is decided by the
/// stream-wide compare-and-set of [`crate::lease`], and a snapshot is
/// a pure function of the input log up to its `seq` (every owner applies
/// the same log in the same order), so a stale owner's late write can
/// only replace a snapshot by an older, still consistent one: the next
/// owner replays more of the log from it (kept `shard_log_max_age_secs`)
/// and reaches the same state.
async fn write_snapshot(states: kv::Store, key: String, bytes: Bytes, rev: u64) -> ApiResult<u64> {
    let r = if rev == 0 {
        states.create(&key, bytes).await.map_err(|e| e.to_string())
    } else {
        states
            .update(&key, bytes, rev)
            .await
            .map_err(|e| e.to_string())
    };
    metrics::counter!("presence_fanout_snapshots_total").increment(1);
    r.map_err(|e| ApiError::Unavailable(format!("snapshot of {key} not written: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_rendezvous_spreads_and_moves_only_the_leavers_share() {
        let three: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let two: Vec<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
        let mut count: HashMap<&str, usize> = HashMap::new();
        for n in 0..300 {
            let p3 = preferred(&three, n);
            *count.entry(p3.unwrap_or("")).or_default() += 1;
            if p3 != Some("c") {
                assert_eq!(preferred(&two, n), p3, "shard {n} moved without need");
            }
        }
        for node in ["a", "b", "c"] {
            let c = count.get(node).copied().unwrap_or(0);
            assert!(
                (60..=140).contains(&c),
                "{node} prefers {c} of 300: {count:?}"
            );
        }
        assert_eq!(preferred(&[], 1), None);
    }

    #[test]
    fn test_terms_order_versions() {
        assert!(term_floor(2) > term_floor(1) + 1_000_000);
        assert_eq!(term_floor(0), 0);
        assert!(valid_node_id("node-1_a"));
        assert!(!valid_node_id("node.1"));
        assert!(!valid_node_id(""));
    }
}
