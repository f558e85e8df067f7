//! Placement and leases: which live node should own each shard
//! (rendezvous hashing over the node registry) and the leases that make
//! one node the owner (taken with a create, renewed and released with the
//! stream-wide compare-and-set of [`crate::lease`]); a lease's revision
//! is the owner's term.

use bytes::Bytes;
use presence_core::ApiResult;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::*;

/// Rendezvous hashing: the live node with the highest hash of
/// (node, shard) is the shard's preferred owner.
pub(super) fn preferred(live: &[String], shard: usize) -> Option<&str> {
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

pub(super) fn lease_key(n: usize) -> String {
    format!("s{n}")
}

/// The first version of a term: above every version of earlier terms
/// (a term is a lease revision, far below 2^32).
pub(super) fn term_floor(term: u64) -> u64 {
    term.min(u64::from(u32::MAX)) << 32
}

impl Cluster {
    /// Returns the ids of the nodes whose heartbeat is in the nodes
    /// bucket, without a consumer (KV `keys()` makes one, which a dead
    /// NATS server could hold): the bucket's subjects from the stream
    /// leader, then each one's last entry (a deleted heartbeat is a node
    /// that stopped).
    pub(super) async fn live_nodes(&self) -> ApiResult<Vec<String>> {
        Ok(presence_bus::buckets::kv_entries(&self.js, NODES_BUCKET)
            .await?
            .into_iter()
            .map(|(node, _)| node)
            .collect())
    }

    /// Takes shard `n`'s lease: free, or still naming this node from an
    /// earlier run with the same node id (no task of ours runs it).
    pub(super) async fn try_lease(&self, n: usize, me: &str) -> Option<u64> {
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
    pub(super) async fn stop(&self, n: usize, graceful: bool) -> Option<u64> {
        if !lock(&self.owned).contains_key(&n) {
            return None;
        }
        // What this node admitted for the shard is stored before anyone
        // else may take it.
        self.stop_admitting(n).await;
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
    pub(super) async fn release(&self, n: usize, graceful: bool) {
        if let Some(rev) = self.stop(n, graceful).await {
            if let Err(e) = self.leases.cas(&lease_key(n), None, Some(rev)).await {
                tracing::debug!(shard = n, error = %e, "lease not released (expired or taken)");
            }
            tracing::info!(shard = n, graceful, "shard released");
        }
    }

    pub(super) fn acquire(self: &Arc<Self>, n: usize, term: u64) {
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
        self.admit_shard(n);
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
