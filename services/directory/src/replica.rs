//! The replicated directory: a JetStream stream as the write-ahead log of
//! every directory, auth and policy transaction, applied in order by every
//! node to its own sled store.
//!
//! A write runs its transaction against the node's local store without
//! committing ([`Store::prepare`]); the [`LogEntry`] it yields (what it
//! read, by digest, and what it writes) is published on
//! `presence.v1.log.directory` with a `Nats-Msg-Id` derived from the
//! request, retried with the same id while the stream elects a leader.
//! Every node's applier ([`Replica::run`]) reads the stream in order and
//! applies each entry with [`Store::apply_entry`]: an entry whose reads
//! are unchanged at its place in the log is applied, otherwise it is a
//! conflict and changes nothing — on every node alike, because the check
//! only looks at the store that the log before it produced. The writer
//! waits until its own applier has reached the entry, then answers with
//! the recorded outcome (and runs the transaction again on a conflict).
//!
//! Nothing here relies on per-subject compare-and-set, which is unsafe on
//! replicated streams of nats-server before 2.9.21: the order of the log
//! is the only arbiter.

use crate::compaction::{Catalog, Snapshots};
use crate::snapshot::ImportOptions;
use crate::store::{Applied, LogEntry, Outbox, Store};
use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use presence_bus::log_reader::LogReader;
use presence_bus::{SharedBus, subjects};
use presence_core::{ApiError, ApiResult};
use prost::Message;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Name of the JetStream stream that holds the log.
pub const STREAM: &str = "PRESENCE_DIRECTORY";

/// How long a publish keeps being retried (with the same message id)
/// before the write is answered `Unavailable`: longer than a stream
/// leader election (4–9 s), well inside the duplicate window.
const APPEND_FOR: Duration = Duration::from_secs(20);

/// How often an idle applier checks that the log still continues from
/// where it is.
const LOG_START_CHECK: Duration = Duration::from_secs(2);

/// How many checks in a row must see the log start past a node that
/// makes no progress before it stops.
const GAP_CONFIRMATIONS: u32 = 3;

/// The duplicate window of the stream: a retry with the same message id
/// within it is recognized by the server.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Settings of the replicated log.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// Replicas of the stream (3 on a 3-server cluster).
    pub replicas: usize,
    /// Largest encoded entry, in bytes (the NATS server's `max_payload`,
    /// 1 MiB by default); a larger transaction is refused.
    pub max_entry: usize,
    /// Where snapshots are written and downloaded (on the data dir's
    /// file system: a snapshot is as large as the store).
    pub work_dir: PathBuf,
    /// A snapshot is published once the log has grown by this many
    /// entries past the newest one (0: this node never publishes one).
    pub snapshot_every: u64,
    /// How often a node checks whether a snapshot is due; also the
    /// lease's lifetime, so at most one node snapshots per interval.
    pub snapshot_interval: Duration,
    /// This node's name, recorded with the snapshots it publishes.
    pub node: String,
    /// Testing only (0: off): the process exits, as if killed, right
    /// after the log acknowledged this many appends and before the write
    /// is applied or answered — the crash a client's retry must survive.
    pub crash_after_appends: u64,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        Self {
            replicas: 1,
            max_entry: 1024 * 1024,
            work_dir: std::env::temp_dir(),
            snapshot_every: 10_000,
            snapshot_interval: Duration::from_secs(60),
            node: String::new(),
            crash_after_appends: 0,
        }
    }
}

/// A node's handle on the replicated log.
#[derive(Clone)]
pub struct Replica {
    inner: Arc<Inner>,
}

struct Inner {
    js: jetstream::Context,
    stream: stream::Stream,
    store: Arc<Store>,
    snapshots: Snapshots,
    cfg: ReplicaConfig,
    /// The last log sequence this node applied.
    applied: watch::Sender<u64>,
    /// Appends acknowledged (for [`ReplicaConfig::crash_after_appends`]).
    appends: std::sync::atomic::AtomicU64,
    /// Set when the applier cannot go on (the log no longer holds the
    /// entries after this node's store): the node must not serve.
    broken: watch::Sender<Option<String>>,
    /// Where the applier publishes what each applied entry announces, so
    /// that in-process consumers (the ACL view) see a change only once
    /// this node's store holds it.
    local: SharedBus,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::Unavailable(format!("{what}: {e}"))
}

/// The log stream's configuration.
pub(crate) fn stream_config(replicas: usize) -> stream::Config {
    stream::Config {
        name: STREAM.into(),
        subjects: vec![subjects::directory_log()],
        storage: stream::StorageType::File,
        num_replicas: replicas.max(1),
        duplicate_window: DUPLICATE_WINDOW,
        allow_direct: true,
        ..Default::default()
    }
}

/// Loads into `store` the newest published snapshot that the log
/// (starting at `first`) continues, falling back to older ones when a
/// download is damaged.
async fn load_snapshot(
    snapshots: &Snapshots,
    store: &Arc<Store>,
    cfg: &ReplicaConfig,
    first: u64,
    applied: u64,
) -> ApiResult<u64> {
    let catalog = snapshots.catalog().await?;
    let path = cfg.work_dir.join("directory-snapshot.download");
    let mut last_error = None;
    for entry in catalog.snapshots.iter().rev() {
        if entry.log_sequence + 1 < first {
            continue;
        }
        tracing::info!(
            snapshot = %entry.name,
            log_sequence = entry.log_sequence,
            bytes = entry.bytes,
            applied,
            "loading the directory from a snapshot"
        );
        let loaded = async {
            snapshots.download(entry, &path).await?;
            let (store, p) = (store.clone(), path.clone());
            tokio::task::spawn_blocking(move || store.import_snapshot(&p, ImportOptions::default()))
                .await
                .map_err(|e| ApiError::Internal(format!("snapshot load: {e}")))?
        }
        .await;
        let _ = std::fs::remove_file(&path);
        match loaded {
            Ok(info) => {
                metrics::counter!("presence_directory_snapshots_loaded_total").increment(1);
                return Ok(info.log_sequence);
            }
            Err(e) => {
                tracing::warn!(snapshot = %entry.name, error = %e, "snapshot not loaded");
                last_error = Some(e);
            }
        }
    }
    Err(ApiError::FailedPrecondition(format!(
        "stream {STREAM} starts at entry {first} but this store has applied only {applied}, \
         and no published snapshot bridges the gap ({} in {}{}); restore a backup",
        catalog.snapshots.len(),
        crate::compaction::SNAPSHOTS_BUCKET,
        last_error
            .map(|e| format!(", last error: {e}"))
            .unwrap_or_default()
    )))
}

/// The sequence to purge the directory log below, keeping every entry
/// after the oldest retained snapshot and every entry a reporting node
/// still has to apply (`least`); None when nothing would go: a purge up
/// to a sequence at or below the log's start (`first`) is never sent.
/// nats-server 2.9 removed the whole stream for one (a joining node that
/// had applied nothing yet held compaction at 0, and the purge up to
/// sequence 1 left the log empty behind every node).
pub fn purge_below(oldest_snapshot: u64, least: Option<u64>, first: u64) -> Option<u64> {
    let keep_from = least.map_or(oldest_snapshot, |l| oldest_snapshot.min(l));
    (keep_from >= first).then_some(keep_from + 1)
}

impl Replica {
    /// Opens (or creates) the log stream and the snapshot buckets for
    /// `store`. A store behind the start of the log (empty, or down for
    /// longer than the retained snapshots cover) first loads the newest
    /// snapshot that the log continues. Fails when the store holds
    /// entries the stream does not (a store of another deployment, or of
    /// a stream that was deleted) or when no snapshot bridges the gap.
    pub async fn open(
        client: async_nats::Client,
        store: Arc<Store>,
        local: SharedBus,
        cfg: ReplicaConfig,
    ) -> ApiResult<Self> {
        let js = jetstream::new(client);
        // Retried: a node started while a NATS server restarts waits for
        // its JetStream instead of failing.
        let (stream, snapshots) =
            presence_bus::buckets::retry_unavailable("directory log and buckets", || async {
                js.get_or_create_stream(stream_config(cfg.replicas))
                    .await
                    .map_err(|e| unavailable(&format!("stream {STREAM}"), e))?;
                let stream = js
                    .get_stream(STREAM)
                    .await
                    .map_err(|e| unavailable(&format!("stream {STREAM}"), e))?;
                let snapshots = Snapshots::open(&js, cfg.replicas, cfg.snapshot_interval).await?;
                Ok((stream, snapshots))
            })
            .await?;
        // Hold compaction back at this node's position before reading
        // where the log starts: a purge between that read and the
        // node's first periodic report would pass a joining node that
        // found no snapshot to load (seen: "directory log jumps from 0 to
        // 46"). The position is reported again once the node caught up.
        if let Err(e) = snapshots.report(&cfg.node, store.log_sequence()?).await {
            tracing::debug!(error = %e, "directory position not reported before catch-up");
        }
        // The log may be compacted while a snapshot loads: look again.
        let mut attempts = 0;
        let applied = loop {
            let state = presence_bus::buckets::retry_unavailable("directory log", || {
                let mut s = stream.clone();
                async move {
                    s.info()
                        .await
                        .map(|i| i.state.clone())
                        .map_err(|e| unavailable(&format!("stream {STREAM}"), e))
                }
            })
            .await?;
            let (first, last) = (state.first_sequence, state.last_sequence);
            let applied = store.log_sequence()?;
            let behind = applied < last && first > applied + 1;
            if !store.import_pending()? && !behind {
                if applied > last && attempts < 3 {
                    // Perhaps a lagging server's answer: ask again.
                    attempts += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                if applied > last {
                    return Err(ApiError::FailedPrecondition(format!(
                        "the directory store has applied log entry {applied} but stream \
                         {STREAM} ends at {last}: this data dir belongs to another deployment \
                         (or the stream was deleted); start with an empty data dir or restore \
                         a backup"
                    )));
                }
                break applied;
            }
            attempts += 1;
            if attempts > 3 {
                return Err(ApiError::Unavailable(format!(
                    "stream {STREAM} was compacted past every snapshot this node loaded \
                     (it starts at {first}); try again"
                )));
            }
            if let Err(e) = load_snapshot(&snapshots, &store, &cfg, first, applied).await {
                // During an election a server catching up can report a
                // later start than the log has: look again before giving up.
                if attempts >= 3 {
                    return Err(e);
                }
                tracing::info!(error = %e, "no snapshot loaded yet; reading the log's start again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        };
        let (applied, _) = watch::channel(applied);
        let (broken, _) = watch::channel(None);
        Ok(Self {
            inner: Arc::new(Inner {
                js,
                stream,
                store,
                snapshots,
                cfg,
                appends: std::sync::atomic::AtomicU64::new(0),
                applied,
                broken,
                local,
            }),
        })
    }

    /// Returns the last log sequence this node applied.
    pub fn applied(&self) -> u64 {
        *self.inner.applied.borrow()
    }

    /// Returns why the applier stopped, if it did.
    pub fn broken(&self) -> Option<String> {
        self.inner.broken.borrow().clone()
    }

    /// Resolves when the applier stops for good, with the reason.
    pub async fn stopped(&self) -> String {
        let mut rx = self.inner.broken.subscribe();
        loop {
            if let Some(why) = rx.borrow_and_update().clone() {
                return why;
            }
            if rx.changed().await.is_err() {
                return "directory applier gone".into();
            }
        }
    }

    /// Publishes `entry` with message id `msg_id` and returns its log
    /// sequence, and whether the log already held an entry with that id
    /// (then the sequence is the original's). Retried with the same id
    /// (so stored once) while the stream has no leader, for up to 20 s;
    /// then `Unavailable`.
    pub async fn append(&self, entry: &LogEntry, msg_id: &str) -> ApiResult<(u64, bool)> {
        let payload = entry.encode_to_vec();
        if payload.len() > self.inner.cfg.max_entry {
            return Err(ApiError::ResourceExhausted(format!(
                "the change is {} bytes in the directory log, at most {}; split it \
                 (for example delete users before their domain)",
                payload.len(),
                self.inner.cfg.max_entry
            )));
        }
        let payload = bytes::Bytes::from(payload);
        let deadline = tokio::time::Instant::now() + APPEND_FOR;
        let mut pause = Duration::from_millis(50);
        loop {
            let msg = jetstream::message::PublishMessage::build()
                .payload(payload.clone())
                .message_id(msg_id);
            let ack = match self
                .inner
                .js
                .send_publish(subjects::directory_log(), msg)
                .await
            {
                Ok(f) => f.await,
                Err(e) => Err(e),
            };
            let err = match ack {
                Ok(a) => {
                    self.crash_point();
                    return Ok((a.sequence, a.duplicate));
                }
                Err(e) => e,
            };
            let retry = matches!(
                err.kind(),
                PublishErrorKind::TimedOut
                    | PublishErrorKind::StreamNotFound
                    | PublishErrorKind::BrokenPipe
                    | PublishErrorKind::Other
            );
            if !retry || tokio::time::Instant::now() + pause > deadline {
                metrics::counter!("presence_directory_log_append_failures_total").increment(1);
                return Err(unavailable("directory log", err));
            }
            tracing::debug!(error = %err, "directory log append retried");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// Exits the process if the testing crash point is reached.
    fn crash_point(&self) {
        let at = self.inner.cfg.crash_after_appends;
        if at == 0 {
            return;
        }
        let n = self
            .inner
            .appends
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        if n >= at {
            eprintln!("presenced: crash point reached after {n} directory log appends");
            std::process::exit(137);
        }
    }

    /// Waits until this node has applied log sequence `seq`.
    pub async fn wait_applied(&self, seq: u64, timeout: Duration) -> ApiResult<()> {
        let mut rx = self.inner.applied.subscribe();
        let mut broken = self.inner.broken.subscribe();
        let wait = async {
            loop {
                if *rx.borrow_and_update() >= seq {
                    return Ok(());
                }
                if let Some(why) = broken.borrow_and_update().clone() {
                    return Err(ApiError::Unavailable(why));
                }
                tokio::select! {
                    r = rx.changed() => if r.is_err() {
                        return Err(ApiError::Unavailable("directory applier stopped".into()));
                    },
                    _ = broken.changed() => {}
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r,
            Err(_) => Err(ApiError::Unavailable(format!(
                "this node has not applied directory log entry {seq} yet (at {})",
                self.applied()
            ))),
        }
    }

    /// Returns the last sequence of the log, as its leader knows it.
    pub async fn last_sequence(&self) -> ApiResult<u64> {
        let mut s = self.inner.stream.clone();
        let info = s
            .info()
            .await
            .map_err(|e| unavailable(&format!("stream {STREAM}"), e))?;
        Ok(info.state.last_sequence)
    }

    /// Waits until this node has applied everything the log held when
    /// called.
    pub async fn catch_up(&self, timeout: Duration) -> ApiResult<u64> {
        let last = self.last_sequence().await?;
        self.wait_applied(last, timeout).await?;
        // Report the new position at once: the report made when the node
        // opened (0 for a joining node) would otherwise hold compaction
        // back until the next periodic one, and for the report's whole
        // lifetime if the node died before it.
        let report = self
            .inner
            .snapshots
            .report(&self.inner.cfg.node, self.applied());
        match tokio::time::timeout(LOG_START_CHECK, report).await {
            Ok(Err(e)) => tracing::debug!(error = %e, "directory node report failed"),
            Err(_) => tracing::debug!("directory node report timed out"),
            Ok(Ok(())) => {}
        }
        Ok(last)
    }

    /// Applies the log in order until `shutdown`: each entry in one
    /// durable sled batch, then what it announces on the local bus.
    /// Meanwhile reports this node's position (so that compaction waits
    /// for it) and stops if the log no longer continues from it.
    pub async fn run(self, shutdown: CancellationToken) {
        tokio::select! {
            _ = self.apply_log(&shutdown) => {}
            _ = self.watch_position(&shutdown) => {}
        }
        if shutdown.is_cancelled() {
            let stop = self.inner.snapshots.withdraw(&self.inner.cfg.node);
            let _ = tokio::time::timeout(Duration::from_secs(2), stop).await;
        }
    }

    /// Every [`LOG_START_CHECK`]: reports where this node is and checks
    /// that the log still continues from there (idle, a purge past this
    /// node or a restore under it would go unnoticed until the next
    /// entry). Returns when the node cannot go on, or at shutdown.
    async fn watch_position(&self, shutdown: &CancellationToken) {
        let mut check = tokio::time::interval(LOG_START_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The applied position at which the log was first seen starting
        // after it, and how many checks in a row saw so.
        let mut suspect: Option<u64> = None;
        let mut confirmations = 0u32;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = check.tick() => {}
            }
            // Each step bounded: a request to a dying server must not stop
            // the reports (compaction would then go by a stale position).
            let applied = self.applied();
            let report = self.inner.snapshots.report(&self.inner.cfg.node, applied);
            match tokio::time::timeout(LOG_START_CHECK, report).await {
                Ok(Ok(())) => tracing::debug!(applied, "directory position reported"),
                Ok(Err(e)) => tracing::debug!(error = %e, "directory node report failed"),
                Err(_) => tracing::debug!("directory node report timed out"),
            }
            // One stream-info answer is not enough: during an election a
            // server that is catching up can answer with its own, later
            // start. The node stops only when successive checks agree and
            // it made no progress between them.
            let past = tokio::time::timeout(LOG_START_CHECK, self.compacted_past()).await;
            let past = match past {
                Ok(Some(why)) if suspect == Some(applied) => {
                    confirmations += 1;
                    (confirmations >= GAP_CONFIRMATIONS).then_some(why)
                }
                Ok(Some(_)) => {
                    suspect = Some(applied);
                    confirmations = 1;
                    None
                }
                _ => {
                    suspect = None;
                    confirmations = 0;
                    None
                }
            };
            if let Some(why) = past {
                tracing::error!("{why}");
                self.inner.broken.send_replace(Some(why));
                return;
            }
        }
    }

    /// The applier proper (its reads are never cancelled midway but at
    /// shutdown: a dropped read could skip an entry).
    async fn apply_log(&self, shutdown: &CancellationToken) {
        let mut log = LogReader::new(
            self.inner.stream.clone(),
            self.inner.cfg.replicas,
            Some(self.applied()),
        );
        let mut pause = Duration::from_millis(50);
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = log.next() => m,
            };
            let msg = match next {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "directory log read failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            pause = Duration::from_millis(50);
            let seq = match msg.info() {
                Ok(i) => i.stream_sequence,
                Err(e) => {
                    tracing::warn!(error = %e, "directory log message without info");
                    log.reopen();
                    continue;
                }
            };
            let expected = self.applied() + 1;
            if seq != expected {
                // A consumer asked to start at a purged sequence starts
                // at the first one left: never apply across a gap.
                let why = format!(
                    "directory log jumps from {} to {seq}: the entries between were removed; \
                     this node must be restarted with an empty data dir",
                    expected - 1
                );
                tracing::error!("{why}");
                self.inner.broken.send_replace(Some(why));
                return;
            }
            let entry = match LogEntry::decode(msg.payload.clone()) {
                Ok(e) => e,
                Err(e) => {
                    let why = format!("directory log entry {seq} is malformed: {e}");
                    tracing::error!("{why}");
                    self.inner.broken.send_replace(Some(why));
                    return;
                }
            };
            let store = self.inner.store.clone();
            let applied = tokio::task::spawn_blocking(move || {
                store.apply_entry(&entry, seq).map(|a| (a, entry))
            })
            .await;
            match applied {
                Ok(Ok((a, _))) => {
                    self.inner.applied.send_replace(seq);
                    metrics::gauge!("presence_directory_log_applied").set(seq as f64);
                    if let Applied::Committed(outbox) = a {
                        self.announce(outbox).await;
                    } else if matches!(a, Applied::Conflict) {
                        metrics::counter!("presence_directory_log_conflicts_total").increment(1);
                    }
                }
                Ok(Err(e)) => {
                    let why = format!("directory log entry {seq} could not be applied: {e}");
                    tracing::error!("{why}");
                    self.inner.broken.send_replace(Some(why));
                    return;
                }
                Err(e) => {
                    let why = format!("directory applier failed: {e}");
                    tracing::error!("{why}");
                    self.inner.broken.send_replace(Some(why));
                    return;
                }
            }
        }
    }

    /// Why this node cannot go on, if the log now starts after the entry
    /// it needs next.
    async fn compacted_past(&self) -> Option<String> {
        let mut s = self.inner.stream.clone();
        let info = s.info().await.ok()?;
        let applied = self.applied();
        (info.state.first_sequence > applied + 1).then(|| {
            format!(
                "directory log starts at {} but this node has applied only {applied}: it was \
                 compacted past this node (or a backup was restored under it); restart it",
                info.state.first_sequence
            )
        })
    }

    /// Publishes a snapshot whenever one is due (see [`crate::compaction`])
    /// and this node holds the lease, until `shutdown`.
    pub async fn run_snapshots(self, shutdown: CancellationToken) {
        if self.inner.cfg.snapshot_every == 0 {
            return;
        }
        let mut tick = tokio::time::interval(self.inner.cfg.snapshot_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if self.broken().is_some() {
                return;
            }
            match self.snapshot_if_due().await {
                Ok(Some(c)) => tracing::info!(
                    log_sequence = c.newest_sequence(),
                    retained = c.snapshots.len(),
                    "directory snapshot published"
                ),
                Ok(None) => {}
                Err(e) => {
                    metrics::counter!("presence_directory_snapshot_failures_total").increment(1);
                    tracing::warn!(error = %e, "directory snapshot failed");
                }
            }
        }
    }

    /// Publishes a snapshot of this node's store if the log has grown
    /// enough since the newest one and this node wins the lease, then
    /// compacts the log below the oldest retained snapshot. Returns the
    /// new catalog when it published.
    pub async fn snapshot_if_due(&self) -> ApiResult<Option<Catalog>> {
        let cfg = &self.inner.cfg;
        let catalog = self.inner.snapshots.catalog().await?;
        if self.applied() < catalog.newest_sequence() + cfg.snapshot_every.max(1) {
            return Ok(None);
        }
        if !self.inner.snapshots.take_lease(&cfg.node).await? {
            return Ok(None);
        }
        let path = cfg.work_dir.join("directory-snapshot.out");
        let (store, p) = (self.inner.store.clone(), path.clone());
        let info = tokio::task::spawn_blocking(move || store.export_snapshot(&p))
            .await
            .map_err(|e| ApiError::Internal(format!("snapshot export: {e}")))??;
        let published = self.inner.snapshots.publish(&path, &info, &cfg.node).await;
        let _ = std::fs::remove_file(&path);
        let catalog = published?;
        metrics::counter!("presence_directory_snapshots_published_total").increment(1);
        metrics::gauge!("presence_directory_snapshot_log_sequence").set(info.log_sequence as f64);
        if let Some(oldest) = catalog.snapshots.first() {
            // Never past what a live node still has to apply: a lagging
            // node keeps following the log instead of having to restart.
            let least = self.inner.snapshots.least_applied().await?;
            if let Some(least) = least
                && least < oldest.log_sequence
            {
                metrics::counter!("presence_directory_compaction_held_total").increment(1);
                tracing::info!(
                    least_applied = least,
                    snapshot = oldest.log_sequence,
                    "directory log compaction held back by a lagging node"
                );
            }
            let first = {
                let mut st = self.inner.stream.clone();
                st.info()
                    .await
                    .map_err(|e| unavailable(&format!("stream {STREAM}"), e))?
                    .state
                    .first_sequence
            };
            let Some(below) = purge_below(oldest.log_sequence, least, first) else {
                return Ok(Some(catalog));
            };
            self.inner
                .stream
                .purge()
                .sequence(below)
                .await
                .map_err(|e| unavailable(&format!("compact stream {STREAM}"), e))?;
            tracing::info!(
                below,
                oldest_snapshot = oldest.log_sequence,
                "directory log compacted"
            );
        }
        Ok(Some(catalog))
    }

    /// Publishes what an applied entry announces to in-process consumers.
    async fn announce(&self, outbox: Outbox) {
        for (subject, payload) in outbox.messages {
            if let Err(e) = self.inner.local.publish(subject, payload.into()).await {
                tracing::warn!(error = %e, "local announcement not delivered");
            }
        }
    }
}
