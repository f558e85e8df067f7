//! Shard snapshots in the KV bucket `presence_shard_states`: a shard's
//! users and the last log sequence they cover, written beside the
//! shard's loop at the revision last written.

use crate::shard::{Shard, SnapUser};
use bytes::Bytes;
use presence_core::{ApiError, ApiResult};

use super::*;
use async_nats::jetstream::kv;

/// Largest snapshot written (NATS' default max payload is 1 MiB).
pub(super) const MAX_SNAPSHOT: usize = 1000 * 1024;

/// A shard's persisted state.
#[derive(serde::Serialize, serde::Deserialize, Default)]
pub(super) struct Snapshot {
    /// Last input-log sequence applied.
    pub(super) seq: u64,
    /// Term of the owner that wrote it.
    pub(super) term: u64,
    pub(super) users: Vec<SnapUser>,
}

impl Cluster {
    /// Writes the shard's snapshot at the revision this owner last wrote
    /// (fencing a stale owner); returns the new revision.
    pub(super) async fn snapshot(
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
pub(super) fn encode_snapshot(
    shard: &Shard,
    key: &str,
    seq: u64,
    term: u64,
) -> ApiResult<Option<Bytes>> {
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
pub(super) async fn write_snapshot(
    states: kv::Store,
    key: String,
    bytes: Bytes,
    rev: u64,
) -> ApiResult<u64> {
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
