//! An owned shard's task: restore the snapshot, replay the log after it,
//! go live in a new term, then apply handed-out events, answer reads,
//! expire and snapshot until the lease is lost or handed off.

use crate::quota::IngestQuota;
use crate::shard::{Shard, sleep_until_opt};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use presence_bus::subjects;
use presence_core::{ApiError, ApiResult};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::log::Entry;
use super::placement::{lease_key, term_floor};
use super::snapshot::{Snapshot, encode_snapshot, write_snapshot};
use super::*;
use async_nats::jetstream::kv;
use presence_bus::log_reader::LogReader;

impl Cluster {
    /// Runs an owned shard: restore the snapshot, replay the log after it,
    /// then apply the events the reader hands out, answer reads, expire
    /// and snapshot until cancelled.
    pub(super) async fn own(
        &self,
        n: usize,
        term: u64,
        mut inbox: mpsc::Receiver<Entry>,
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
        let mut shard = Shard::new(
            n,
            p.limits,
            p.rate,
            p.bus.clone(),
            p.clock,
            Some(p.edge.clone()),
        );
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
                        let Some(entry) = self.entry_for(&m, n, shard.clock.now_ms()) else {
                            continue;
                        };
                        let seq = entry.seq;
                        if seq > covered {
                            replayed += entry.events.len() as u64;
                            self.apply_entry(&mut shard, &mut quota, entry, true).await;
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
                    Some(entry) => {
                        let seq = entry.seq;
                        if seq > covered {
                            self.apply_entry(&mut shard, &mut quota, entry, false).await;
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
    pub(super) fn watermark(&self, covered: u64, inbox: &mpsc::Receiver<Entry>) -> u64 {
        let position = self.position.load(Ordering::Acquire);
        if inbox.is_empty() {
            covered.max(position)
        } else {
            covered
        }
    }
}
