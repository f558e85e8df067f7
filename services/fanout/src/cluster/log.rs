//! The input log: the node's one reader of `PRESENCE_INGEST`, which
//! hands each entry's events to the tasks of their shards if this node
//! owns them, and the owner's application of a logged event (quota,
//! validation, state machine, verdict) with the entry's time as "now"
//! (when it was admitted, or else when it reached the log).
//!
//! An entry is an [`v1::IngestBatch`] on `presence.v1.admitted`: the
//! events one node admitted together (see `admission`). Entries written
//! before batches existed (one `DeviceEvent` on
//! `presence.v1.in.<domain>.<user>`, verdict headers) are still read, so
//! a log that spans an upgrade replays whole.

use crate::convert::reject_reason;
use crate::ingest::{applied, check_event, ingest_subject, rejected, same_user};
use crate::quota::{IngestQuota, over_ingest_quota};
use crate::shard::{Shard, shard_index};
use presence_core::presence::Reject;
use presence_core::{DomainId, UserId};
use presence_proto::v1::{self, RejectReason};
use prost::Message;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use super::*;
use async_nats::jetstream::{self};
use presence_bus::log_reader::LogReader;
use presence_bus::trace::{self, TraceParent};

/// Header naming where the owner sends its verdict (entries before
/// batches).
const REPLY_HEADER: &str = "Presence-Reply";
/// Header carrying the token of a verdict (entries before batches).
const TOKEN_HEADER: &str = "Presence-Token";

/// One event of the input log, as its shard's owner applies it.
pub(super) struct Logged {
    domain: DomainId,
    user: UserId,
    /// The `DeviceEvent` as published (decoded by the owner).
    event: Bytes,
    /// Where the owner sends its verdict, with its token.
    verdict: Option<(String, u64)>,
    /// Whether the shard's owner admitted it from NATS (with the domain's
    /// quota share): else the owner applies the share here, on the log's
    /// clock.
    admitted: bool,
    /// Appended again at a takeover: a stale sequence is the copy the old
    /// owner appended, not a rejection.
    takeover: bool,
    /// The trace it is part of (read while propagation is on).
    trace: Option<TraceParent>,
}

/// The events of one log entry that belong to one shard, in log order.
pub(super) struct Entry {
    /// The entry's sequence in the log.
    pub seq: u64,
    /// When the entry was admitted (`admitted_ms`), else when it reached
    /// the log (ms since the epoch): "now" for
    /// every event in it, on the first owner and on any replay.
    pub now_ms: i64,
    /// This shard's events of the entry.
    pub events: Vec<Logged>,
}

/// What a log entry holds, read once for every shard.
struct Parsed {
    seq: u64,
    now_ms: i64,
    events: Vec<Logged>,
    /// Items whose ids do not parse (only a writer that bypasses
    /// admission puts them there).
    malformed: usize,
}

/// How many of a batch's items parse into events and how many name no
/// valid user (for the randomized tests).
#[cfg(test)]
pub(crate) fn batch_events_count(items: Vec<v1::IngestItem>) -> (usize, usize) {
    let (events, malformed) = batch_events(items);
    (events.len(), malformed)
}

/// The events of a batch's items, and how many items name no valid user.
fn batch_events(items: Vec<v1::IngestItem>) -> (Vec<Logged>, usize) {
    let mut events = Vec::with_capacity(items.len());
    let mut malformed = 0;
    for item in items {
        let (Ok(domain), Ok(user)) = (DomainId::parse(&item.domain), UserId::parse(&item.user))
        else {
            malformed += 1;
            continue;
        };
        let verdict = (!item.reply.is_empty()).then_some((item.reply, item.token));
        events.push(Logged {
            domain,
            user,
            event: item.event.into(),
            admitted: verdict.is_none(),
            verdict,
            takeover: item.takeover,
            trace: trace::from_header(Some(&item.traceparent)),
        });
    }
    (events, malformed)
}

/// Reads one log entry (None: no sequence, not a stream message).
fn parse(m: &jetstream::Message, fallback_now: i64) -> Option<Parsed> {
    let info = m.info().ok()?;
    let seq = info.stream_sequence;
    let now_ms =
        i64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(fallback_now);
    let mut out = Parsed {
        seq,
        now_ms,
        events: Vec::new(),
        malformed: 0,
    };
    if m.subject.as_str() == subjects::admitted() {
        match v1::IngestBatch::decode(m.payload.clone()) {
            Ok(b) => {
                if b.admitted_ms > 0 {
                    out.now_ms = b.admitted_ms;
                }
                (out.events, out.malformed) = batch_events(b.items);
            }
            Err(_) => out.malformed += 1,
        }
        return Some(out);
    }
    // An entry of the format before batches: one event, verdict headers.
    let Some((domain, user)) = ingest_subject(&m.subject) else {
        out.malformed += 1;
        return Some(out);
    };
    let header = |name: &str| {
        m.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    let token = header(TOKEN_HEADER).and_then(|t| t.parse::<u64>().ok());
    out.events.push(Logged {
        domain,
        user,
        event: m.payload.clone(),
        verdict: header(REPLY_HEADER).zip(token),
        admitted: false,
        takeover: false,
        trace: None,
    });
    Some(out)
}

impl Cluster {
    /// Returns this shard's events of log entry `m` (None: not an entry).
    pub(super) fn entry_for(&self, m: &jetstream::Message, n: usize, now: i64) -> Option<Entry> {
        let p = parse(m, now)?;
        let events = p
            .events
            .into_iter()
            .filter(|e| shard_index(&e.domain, &e.user, self.shards) == n)
            .collect();
        Some(Entry {
            seq: p.seq,
            now_ms: p.now_ms,
            events,
        })
    }

    /// The node's log reader: reads `PRESENCE_INGEST` once and hands each
    /// entry's events to the tasks of their shards if this node owns
    /// them. Starts at the log's end (a shard catches up on its own when
    /// acquired) and, after a reconnection, resumes after the last entry
    /// it handed out.
    pub(super) async fn read_log(self: Arc<Self>, shutdown: CancellationToken) {
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

    pub(super) async fn hand_out(&self, m: jetstream::Message) {
        let Some(p) = parse(&m, self.params.clock.now_ms()) else {
            return;
        };
        let seq = p.seq;
        for (inbox, entry) in self.split(p) {
            // Waits while the shard catches up (bounded inbox).
            let _ = inbox.send(entry).await;
        }
        self.position.fetch_max(seq, Ordering::Release);
    }

    /// Hands an entry this node just appended (`seq`, acknowledged) to
    /// the tasks of its owned shards without waiting for the log reader
    /// to read it back — one nats-server hop less between a device and
    /// its watchers. Only when the reader has handed out every entry
    /// before it (so it queues behind them, in log order) and only where
    /// the shard's inbox has room; the reader hands it out again later,
    /// and the owner skips what it already applied (`seq` ≤ covered).
    pub(super) fn hand_out_appended(&self, seq: u64, batch: v1::IngestBatch) {
        if self.position.load(Ordering::Acquire) + 1 < seq {
            metrics::counter!("presence_fanout_log_handed_early_total", "outcome" => "behind")
                .increment(1);
            return;
        }
        let (events, malformed) = batch_events(batch.items);
        let p = Parsed {
            seq,
            now_ms: batch.admitted_ms,
            events,
            malformed: 0,
        };
        debug_assert_eq!(malformed, 0, "admission appends valid ids only");
        for (inbox, entry) in self.split(p) {
            let outcome = match inbox.try_send(entry) {
                Ok(()) => "early",
                Err(_) => "full",
            };
            metrics::counter!("presence_fanout_log_handed_early_total", "outcome" => outcome)
                .increment(1);
        }
    }

    /// Splits a parsed entry by shard, for the shards this node owns.
    fn split(&self, p: Parsed) -> Vec<(mpsc::Sender<Entry>, Entry)> {
        let mut by_shard: HashMap<usize, Vec<Logged>> = HashMap::new();
        for e in p.events {
            by_shard
                .entry(shard_index(&e.domain, &e.user, self.shards))
                .or_default()
                .push(e);
        }
        let owned = lock(&self.owned);
        // Counted once, by the owner of shard 0.
        if p.malformed > 0 && owned.contains_key(&0) {
            for _ in 0..p.malformed {
                rejected(RejectReason::Malformed, "malformed input log entry");
            }
        }
        by_shard
            .into_iter()
            .filter_map(|(n, events)| {
                let entry = Entry {
                    seq: p.seq,
                    now_ms: p.now_ms,
                    events,
                };
                Some((owned.get(&n)?.inbox.clone(), entry))
            })
            .collect()
    }

    /// Applies one shard's events of a log entry (validated here: the log
    /// holds raw ingest) with the entry's time (see [`Entry::now_ms`]) as
    /// "now", and sends the verdicts where the events ask.
    pub(super) async fn apply_entry(
        &self,
        shard: &mut Shard,
        quota: &mut IngestQuota,
        entry: Entry,
        replay: bool,
    ) {
        let now = entry.now_ms;
        if replay {
            // Expire what was due before this entry, as the previous
            // owner did.
            shard.expire_until(now).await;
        } else if !entry.events.is_empty() {
            // How long the entry waited between its append to the log and
            // its owner applying it.
            let lag_ms = shard.clock.now_ms().saturating_sub(now).max(0);
            metrics::histogram!("presence_fanout_ingest_lag_seconds").record(lag_ms as f64 / 1e3);
        }
        for e in entry.events {
            // A replay is not traced again: the first owner's work is.
            let trace = if replay { None } else { e.trace };
            let Some(result) = self.apply_logged(shard, quota, &e, now, trace).await else {
                continue;
            };
            if let Some((reply, token)) = e.verdict {
                let r = v1::ShardResult {
                    token,
                    result: Some(result),
                };
                if let Err(e) = self.client.publish(reply, r.encode_to_vec().into()).await {
                    tracing::debug!(error = %e, "verdict not sent");
                }
            }
        }
    }

    /// Applies one logged event; None for the old owner's copy of an
    /// event appended again at a takeover (neither applied nor counted).
    async fn apply_logged(
        &self,
        shard: &mut Shard,
        quota: &mut IngestQuota,
        e: &Logged,
        now: i64,
        trace: Option<TraceParent>,
    ) -> Option<v1::PublishResult> {
        let (d, u) = (&e.domain, &e.user);
        // The domain's quota before any other work, on the log's clock (a
        // replay admits what the first owner admitted), unless the owner
        // admitted it from NATS with the same share already.
        if !e.admitted && !quota.admit(d, now) {
            return Some(rejected(RejectReason::RateLimited, over_ingest_quota(d)));
        }
        let mut ev = match v1::DeviceEvent::decode(e.event.clone()) {
            Ok(ev) => ev,
            Err(err) => {
                return Some(rejected(
                    RejectReason::Malformed,
                    format!("undecodable payload: {err}"),
                ));
            }
        };
        if let Err(r) = same_user(d, u, &mut ev) {
            return Some(r);
        }
        Some(match check_event(&self.params.acl, d, u, &ev).await {
            Err(r) => r,
            Ok(ev) => match shard.apply((d.clone(), u.clone()), &ev, now, trace).await {
                Ok(changed) => applied(changed),
                Err(r) if r.reason == Reject::StaleSequence && e.takeover => {
                    metrics::counter!("presence_fanout_takeover_duplicates_total").increment(1);
                    return None;
                }
                Err(r) => rejected(reject_reason(r.reason), r.detail),
            },
        })
    }
}
