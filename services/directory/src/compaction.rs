//! Compaction of the replicated directory log behind snapshots.
//!
//! Every node with a replicated store runs [`crate::replica::Replica::run_snapshots`]:
//! at each interval, if the log has grown by at least `every` entries
//! past the newest published snapshot, the node tries to take the
//! deployment's snapshot lease (a KV `create` on a bucket whose entries
//! expire after the interval: at most one node snapshots per interval,
//! and a lease is never updated or deleted, which nats-server 2.9 does
//! not make safe on replicated buckets). The winner exports its store at
//! its applied sequence S ([`crate::snapshot`]), uploads the file to the
//! object store bucket `PRESENCE_DIRECTORY_SNAPSHOTS` as
//! `snapshot-{S}`, records it in the bucket's `catalog` object (the
//! newest [`KEEP`] snapshots), deletes the ones that fell out, and purges
//! the log below the oldest one kept. The log therefore always holds
//! every entry after each retained snapshot: a node whose newest download
//! is damaged falls back to the older one.
//!
//! A node whose store is behind the start of the log (an empty data dir,
//! or a node down for longer than two snapshots) loads the newest usable
//! snapshot before it applies the tail ([`crate::replica::Replica::open`]).

use crate::snapshot::{self, SnapshotInfo};
use async_nats::jetstream::{self, kv, object_store};
use presence_core::{ApiError, ApiResult};
use prost::Message;
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// The object store bucket that holds the snapshots and their catalog.
pub const SNAPSHOTS_BUCKET: &str = "PRESENCE_DIRECTORY_SNAPSHOTS";

/// The KV bucket whose one key is the snapshot lease.
pub const LEASE_BUCKET: &str = "PRESENCE_DIRECTORY_SNAPSHOT_LEASE";

/// The KV bucket where each node reports the last log entry it applied
/// (key: node id), so that compaction never purges entries a live node
/// still needs.
pub const NODES_BUCKET: &str = "PRESENCE_DIRECTORY_NODES";

/// How long a node's report counts after it was written: a node silent
/// for longer no longer holds compaction back (it loads a snapshot when
/// it comes back).
pub const NODE_TTL: Duration = Duration::from_secs(30);

/// How many snapshots the catalog keeps (the log is purged below the
/// oldest).
pub const KEEP: usize = 2;

/// Name of the catalog object.
const CATALOG: &str = "catalog";

/// Name of the lease key.
const LEASE_KEY: &str = "snapshot";

/// One published snapshot.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CatalogEntry {
    /// Object name in [`SNAPSHOTS_BUCKET`].
    #[prost(string, tag = "1")]
    pub name: String,
    /// The last log entry it includes.
    #[prost(uint64, tag = "2")]
    pub log_sequence: u64,
    /// The store's commit sequence at the snapshot.
    #[prost(uint64, tag = "3")]
    pub store_sequence: u64,
    /// Hex SHA-256 of the file (as [`snapshot::verify`] computes it).
    #[prost(string, tag = "4")]
    pub sha256: String,
    /// Size in bytes.
    #[prost(uint64, tag = "5")]
    pub bytes: u64,
    /// Number of records.
    #[prost(uint64, tag = "6")]
    pub records: u64,
    /// When it was published, milliseconds since the Unix epoch.
    #[prost(uint64, tag = "7")]
    pub created_unix_ms: u64,
    /// The node that took it.
    #[prost(string, tag = "8")]
    pub node: String,
}

/// The retained snapshots, oldest first.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Catalog {
    /// Oldest first.
    #[prost(message, repeated, tag = "1")]
    pub snapshots: Vec<CatalogEntry>,
}

impl Catalog {
    /// The newest snapshot's log sequence (0 when there is none).
    pub fn newest_sequence(&self) -> u64 {
        self.snapshots.last().map_or(0, |s| s.log_sequence)
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::Unavailable(format!("{what}: {e}"))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The deployment's snapshot buckets.
#[derive(Clone)]
pub struct Snapshots {
    js: jetstream::Context,
    objects: object_store::ObjectStore,
    leases: kv::Store,
    nodes: kv::Store,
}

impl Snapshots {
    /// Opens (or creates) the buckets, with `replicas` replicas and a
    /// lease that expires after `lease_ttl`.
    pub async fn open(
        js: &jetstream::Context,
        replicas: usize,
        lease_ttl: Duration,
    ) -> ApiResult<Self> {
        let objects = match js.get_object_store(SNAPSHOTS_BUCKET).await {
            Ok(o) => o,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: SNAPSHOTS_BUCKET.into(),
                    description: Some("presence directory snapshots".into()),
                    num_replicas: replicas.max(1),
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| unavailable(&format!("bucket {SNAPSHOTS_BUCKET}"), e))?,
        };
        let leases = presence_bus::buckets::kv_bucket(
            js,
            LEASE_BUCKET,
            lease_ttl.max(Duration::from_secs(1)),
            replicas,
        )
        .await?;
        let nodes = presence_bus::buckets::kv_bucket(js, NODES_BUCKET, NODE_TTL, replicas).await?;
        Ok(Self {
            js: js.clone(),
            objects,
            leases,
            nodes,
        })
    }

    /// Reads the catalog (empty when nothing was published yet).
    pub async fn catalog(&self) -> ApiResult<Catalog> {
        let mut obj = match self.objects.get(CATALOG).await {
            Ok(o) => o,
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => {
                return Ok(Catalog::default());
            }
            Err(e) => return Err(unavailable("snapshot catalog", e)),
        };
        let mut buf = Vec::new();
        obj.read_to_end(&mut buf)
            .await
            .map_err(|e| unavailable("snapshot catalog", e))?;
        Catalog::decode(buf.as_slice())
            .map_err(|e| ApiError::Internal(format!("snapshot catalog is malformed: {e}")))
    }

    /// Downloads `entry` to `path` and checks it against the catalog.
    pub async fn download(&self, entry: &CatalogEntry, path: &Path) -> ApiResult<SnapshotInfo> {
        let mut obj = self
            .objects
            .get(&entry.name)
            .await
            .map_err(|e| unavailable(&format!("snapshot {}", entry.name), e))?;
        let mut file = tokio::fs::File::create(path)
            .await
            .map_err(|e| ApiError::Internal(format!("create {}: {e}", path.display())))?;
        tokio::io::copy(&mut obj, &mut file)
            .await
            .map_err(|e| unavailable(&format!("snapshot {}", entry.name), e))?;
        file.sync_all()
            .await
            .map_err(|e| ApiError::Internal(format!("sync {}: {e}", path.display())))?;
        drop(file);
        let p = path.to_owned();
        let info = tokio::task::spawn_blocking(move || snapshot::verify(&p))
            .await
            .map_err(|e| ApiError::Internal(format!("verify snapshot: {e}")))??;
        if info.sha256 != entry.sha256 || info.log_sequence != entry.log_sequence {
            return Err(ApiError::Internal(format!(
                "snapshot {} does not match its catalog entry (log entry {} sha256 {}, \
                 catalog says {} and {})",
                entry.name, info.log_sequence, info.sha256, entry.log_sequence, entry.sha256
            )));
        }
        Ok(info)
    }

    /// Reports that `node` has applied the log up to `applied` (nothing
    /// for a nameless reader such as a backup).
    pub async fn report(&self, node: &str, applied: u64) -> ApiResult<()> {
        if node.is_empty() {
            return Ok(());
        }
        self.nodes
            .put(node, bytes::Bytes::from(applied.to_string()))
            .await
            .map(|_| ())
            .map_err(|e| unavailable("directory node report", e))
    }

    /// Withdraws `node`'s report: it stops (gracefully) and no longer
    /// holds compaction back.
    pub async fn withdraw(&self, node: &str) {
        if node.is_empty() {
            return;
        }
        if let Err(e) = self.nodes.delete(node).await {
            tracing::debug!(error = %e, "directory node report not withdrawn");
        }
    }

    /// The least log entry applied by the nodes that reported within
    /// [`NODE_TTL`] (`None`: no report), read with
    /// [`presence_bus::buckets::kv_entries`] (from the stream's leader: a
    /// replica catching up could miss a report and let a purge pass that
    /// node).
    pub async fn least_applied(&self) -> ApiResult<Option<u64>> {
        let mut least: Option<u64> = None;
        for (node, value) in presence_bus::buckets::kv_entries(&self.js, NODES_BUCKET).await? {
            let Some(applied) = std::str::from_utf8(&value)
                .ok()
                .and_then(|t| t.parse::<u64>().ok())
            else {
                continue;
            };
            tracing::debug!(%node, applied, "directory node report");
            least = Some(least.map_or(applied, |l| l.min(applied)));
        }
        tracing::debug!(?least, "directory nodes' least applied entry");
        Ok(least)
    }

    /// Tries to take the snapshot lease for `node`: true if this node
    /// may snapshot now.
    pub async fn take_lease(&self, node: &str) -> ApiResult<bool> {
        match self
            .leases
            .create(LEASE_KEY, bytes::Bytes::from(node.to_owned()))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(unavailable("snapshot lease", e)),
        }
    }

    /// Uploads the snapshot file at `path` (described by `info`), records
    /// it in the catalog, deletes snapshots that fell out of it and
    /// returns the new catalog.
    pub async fn publish(
        &self,
        path: &Path,
        info: &SnapshotInfo,
        node: &str,
    ) -> ApiResult<Catalog> {
        self.publish_into(path, info, node, false).await
    }

    /// [`Snapshots::publish`], forgetting every earlier snapshot when
    /// `replace` (a restore starts a new log).
    async fn publish_into(
        &self,
        path: &Path,
        info: &SnapshotInfo,
        node: &str,
        replace: bool,
    ) -> ApiResult<Catalog> {
        let name = format!("snapshot-{:020}", info.log_sequence);
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| ApiError::Internal(format!("open {}: {e}", path.display())))?;
        self.objects
            .put(name.as_str(), &mut file)
            .await
            .map_err(|e| unavailable(&format!("upload snapshot {name}"), e))?;
        let mut catalog = self.catalog().await?;
        if replace {
            for old in std::mem::take(&mut catalog.snapshots) {
                if old.name != name {
                    catalog.snapshots.push(CatalogEntry {
                        // Sorted first, so dropped (and deleted) below.
                        log_sequence: 0,
                        ..old
                    });
                }
            }
        }
        catalog.snapshots.retain(|s| s.name != name);
        catalog.snapshots.push(CatalogEntry {
            name,
            log_sequence: info.log_sequence,
            store_sequence: info.store_sequence,
            sha256: info.sha256.clone(),
            bytes: info.bytes,
            records: info.records,
            created_unix_ms: now_ms(),
            node: node.to_owned(),
        });
        catalog.snapshots.sort_by_key(|s| s.log_sequence);
        let keep = if replace { 1 } else { KEEP };
        let dropped: Vec<CatalogEntry> = if catalog.snapshots.len() > keep {
            let n = catalog.snapshots.len() - keep;
            catalog.snapshots.drain(..n).collect()
        } else {
            Vec::new()
        };
        let bytes = catalog.encode_to_vec();
        self.objects
            .put(CATALOG, &mut bytes.as_slice())
            .await
            .map_err(|e| unavailable("snapshot catalog", e))?;
        for d in dropped {
            if let Err(e) = self.objects.delete(&d.name).await {
                tracing::warn!(snapshot = %d.name, error = %e, "old snapshot not deleted");
            }
        }
        Ok(catalog)
    }
}

/// Reads the whole replicated directory through NATS into a throwaway
/// store under `work_dir` (newest snapshot plus the log's tail, as a
/// joining node does) and writes it to `out` as a backup file.
pub async fn backup(
    client: async_nats::Client,
    out: &Path,
    work_dir: &Path,
    replicas: usize,
) -> ApiResult<SnapshotInfo> {
    let dir = work_dir.join("backup-store");
    let _ = std::fs::remove_dir_all(&dir);
    let store = std::sync::Arc::new(crate::store::Store::open_unsynced(&dir)?);
    let replica = crate::replica::Replica::open(
        client,
        store.clone(),
        std::sync::Arc::new(presence_bus::InProcessBus::new(64)),
        crate::replica::ReplicaConfig {
            replicas,
            work_dir: work_dir.to_owned(),
            snapshot_every: 0,
            ..Default::default()
        },
    )
    .await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let applier = tokio::spawn(replica.clone().run(shutdown.clone()));
    let caught_up = replica.catch_up(Duration::from_secs(600)).await;
    shutdown.cancel();
    let _ = applier.await;
    drop(replica);
    caught_up?;
    let out = out.to_owned();
    let info = tokio::task::spawn_blocking(move || store.export_snapshot(&out))
        .await
        .map_err(|e| ApiError::Internal(format!("backup: {e}")))?;
    let _ = std::fs::remove_dir_all(&dir);
    info
}

/// Restores the backup at `path` into a deployment whose directory log
/// is empty (no node has written to it): publishes it as the log's only
/// snapshot, appends the entry that marks the restore, and compacts the
/// log behind it, so every node that starts (with an empty data dir)
/// loads it. Returns what was restored (its log sequence is 1).
pub async fn restore(
    client: async_nats::Client,
    path: &Path,
    work_dir: &Path,
    replicas: usize,
    node: &str,
) -> ApiResult<SnapshotInfo> {
    let js = jetstream::new(client);
    js.get_or_create_stream(crate::replica::stream_config(replicas))
        .await
        .map_err(|e| unavailable(crate::replica::STREAM, e))?;
    let mut stream = js
        .get_stream(crate::replica::STREAM)
        .await
        .map_err(|e| unavailable(crate::replica::STREAM, e))?;
    let last = stream
        .info()
        .await
        .map_err(|e| unavailable(crate::replica::STREAM, e))?
        .state
        .last_sequence;
    if last > 0 {
        return Err(ApiError::FailedPrecondition(format!(
            "the deployment's directory log already holds {last} entries: a backup is restored \
             into a fresh deployment only (delete stream {} and bucket {SNAPSHOTS_BUCKET} to \
             start over)",
            crate::replica::STREAM
        )));
    }
    // Rewrite the backup as the first entry of the new log, without the
    // old log's transaction outcomes.
    let dir = work_dir.join("restore-store");
    let file = work_dir.join("restore.snapshot");
    let _ = std::fs::remove_dir_all(&dir);
    let (d, f, p) = (dir.clone(), file.clone(), path.to_owned());
    let info = tokio::task::spawn_blocking(move || {
        let store = crate::store::Store::open_unsynced(&d)?;
        store.import_snapshot(
            &p,
            crate::snapshot::ImportOptions {
                log_sequence: Some(1),
                drop_outcomes: true,
            },
        )?;
        store.export_snapshot(&f)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("restore: {e}")))?;
    let _ = std::fs::remove_dir_all(&dir);
    let info = info?;
    let snapshots = Snapshots::open(&js, replicas, Duration::from_secs(60)).await?;
    let published = snapshots.publish_into(&file, &info, node, true).await;
    let _ = std::fs::remove_file(&file);
    published?;
    let marker = crate::store::LogEntry {
        tx_id: format!("restore:{}", info.sha256),
        restored: info.sha256.clone(),
        ..Default::default()
    };
    let msg = jetstream::message::PublishMessage::build()
        .payload(marker.encode_to_vec().into())
        .message_id(marker.tx_id.as_str())
        .expected_last_sequence(0);
    let ack = js
        .send_publish(presence_bus::subjects::directory_log(), msg)
        .await
        .map_err(|e| unavailable("directory log", e))?
        .await
        .map_err(|e| {
            ApiError::FailedPrecondition(format!(
                "the directory log was written to during the restore ({e}): restore into a \
                 fresh deployment whose nodes are not running"
            ))
        })?;
    if ack.sequence != 1 {
        return Err(ApiError::FailedPrecondition(format!(
            "the restore entry landed at {} instead of 1: the log was written to during the \
             restore",
            ack.sequence
        )));
    }
    stream
        .purge()
        .sequence(2)
        .await
        .map_err(|e| unavailable(&format!("compact stream {}", crate::replica::STREAM), e))?;
    Ok(info)
}
