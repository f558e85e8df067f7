//! Admission in front of the input log. Tenants publish device events on
//! `presence.v1.in.<domain>.<user>`; every fanout node subscribes to all
//! of them, and the node that owns a user's shard admits its events:
//!
//! 1. It refuses what cannot be an event (a subject that names no user, a
//!    payload over [`MAX_EVENT_BYTES`]) and what is over its domain's
//!    ingest quota (the shard's `1/shards` share of it), before anything
//!    is stored: a tenant's flood costs the cluster one core NATS
//!    delivery per node and one hash lookup per refused event, and never
//!    reaches JetStream.
//! 2. It appends what it admitted to `PRESENCE_INGEST` as one
//!    [`v1::IngestBatch`] entry on `presence.v1.admitted`. One append is
//!    in flight per node; every event received meanwhile goes into the
//!    next entry (up to [`MAX_BATCH_EVENTS`] / [`MAX_BATCH_BYTES`]), so
//!    JetStream stores and delivers one message per batch, not per event,
//!    and a lone event is appended at once. A failed append is retried
//!    under the same `Nats-Msg-Id` (JetStream keeps one copy) until the
//!    request timeout. One admitter per shard and one append in flight
//!    keep each user's events in the order NATS delivered them.
//! 3. It answers a publisher that asked (NATS request) once the entry is
//!    stored, in JetStream's own acknowledgment shape
//!    (`{"stream":"PRESENCE_INGEST","seq":N}`), or with
//!    `{"error":{"code":400|429|503,"description":…}}` when the event was
//!    refused or could not be stored.
//!
//! **While a shard changes owner** nobody admits its events, so every
//! node keeps the events of shards it does not own for a while (the
//! *standby* buffer: `2 ×` the lease TTL, at most `standby_events`).
//! A node that acquires a shard first appends that shard's standby
//! events, then admits live. What the old owner had appended already
//! comes twice; the state machine refuses the second copy as a stale
//! per-device sequence, so nothing is applied twice and nothing that
//! arrived during a takeover is lost (unless the buffer overflowed:
//! `presence_fanout_standby_dropped_total`). A node giving a shard up
//! stops admitting it and waits until everything it admitted is stored
//! before it lets the lease go.

use crate::fair::Inlet;
use crate::ingest::{ingest_span, ingest_subject, rejected};
use crate::quota::{IngestQuota, over_ingest_quota};
use crate::shard::shard_index;
use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use presence_bus::trace::TraceParent;
use presence_bus::{BusMessage, subjects};
use presence_core::{DomainId, UserId};
use presence_proto::v1::{self, RejectReason};
use prost::Message;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Cluster, INGEST_STREAM};

/// Largest event payload admitted (a `DeviceEvent` is a few hundred
/// bytes).
pub const MAX_EVENT_BYTES: usize = 16 * 1024;
/// Most events in one log entry.
pub const MAX_BATCH_EVENTS: usize = 1000;
/// Most event bytes in one log entry (well under NATS's default 1 MiB
/// message limit).
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

/// What the ownership loop tells the admission task.
pub(super) enum Control {
    /// This node owns shard `n` now: append its standby events, then
    /// admit it.
    Acquired(usize),
    /// Stop admitting shard `n`; answered once everything admitted so
    /// far is stored.
    Released(usize, oneshot::Sender<()>),
}

/// An entry being filled, with who asked for an answer.
#[derive(Default)]
struct Pending {
    batch: v1::IngestBatch,
    bytes: usize,
    replies: Vec<String>,
}

impl Pending {
    fn is_full(&self) -> bool {
        self.batch.items.len() >= MAX_BATCH_EVENTS || self.bytes >= MAX_BATCH_BYTES
    }
}

/// An event of a shard this node does not own, kept for a takeover.
struct Standby {
    at: Instant,
    shard: usize,
    domain: DomainId,
    user: UserId,
    payload: Bytes,
    reply: Option<String>,
    trace: Option<TraceParent>,
}

/// The admission task's state.
struct Admission {
    /// The shards this node admits, each with its share of every
    /// domain's quota.
    live: HashMap<usize, IngestQuota>,
    standby: VecDeque<Standby>,
    /// Entries waiting for their append, oldest first (more than one
    /// only when a takeover appends a large standby buffer).
    pending: VecDeque<Pending>,
}

impl Admission {
    fn room(&self) -> bool {
        self.pending.len() <= 1 && self.pending.back().is_none_or(|p| !p.is_full())
    }

    fn push(
        &mut self,
        d: &DomainId,
        u: &UserId,
        payload: &Bytes,
        reply: Option<String>,
        takeover: bool,
        trace: Option<TraceParent>,
    ) {
        if self.pending.back().is_none_or(Pending::is_full) {
            self.pending.push_back(Pending::default());
        }
        let Some(p) = self.pending.back_mut() else {
            return;
        };
        p.bytes += payload.len();
        p.batch.items.push(v1::IngestItem {
            domain: d.to_string(),
            user: u.to_string(),
            event: payload.to_vec(),
            reply: String::new(),
            token: 0,
            takeover,
            traceparent: trace.map(|t| t.header()).unwrap_or_default(),
        });
        if let Some(r) = reply {
            p.replies.push(r);
        }
    }
}

/// JetStream's error shape, for a publisher that asked.
fn refusal(code: u16, description: &str) -> Bytes {
    serde_json::json!({ "error": { "code": code, "description": description } })
        .to_string()
        .into()
}

/// An entry's append: where it was stored, who asked, the entry.
struct Appended {
    stored: Result<u64, String>,
    replies: Vec<String>,
    batch: v1::IngestBatch,
}

type Append<'a> = BoxFuture<'a, Appended>;

impl Cluster {
    /// Consumes the ingest subjects until `shutdown`: admits the events of
    /// the shards this node owns, keeps the others on standby, and
    /// appends in batches. What was admitted before the shutdown is still
    /// appended.
    pub(crate) async fn run_admission(
        self: Arc<Self>,
        mut inlet: Inlet,
        shutdown: CancellationToken,
    ) {
        let Some(mut control) = super::lock(&self.admission_control).take() else {
            tracing::warn!("ingest admission already running");
            return;
        };
        self.admission_running.store(true, Ordering::Release);
        let mut st = Admission {
            live: HashMap::new(),
            standby: VecDeque::new(),
            pending: VecDeque::new(),
        };
        // Shards acquired before this task started.
        for n in self.owned_shards() {
            self.start_admitting(&mut st, n);
        }
        let mut in_flight: Option<Append<'_>> = None;
        loop {
            let room = st.room();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                c = control.recv() => match c {
                    Some(Control::Acquired(n)) => self.start_admitting(&mut st, n),
                    Some(Control::Released(n, done)) => {
                        st.live.remove(&n);
                        self.flush(&mut st, &mut in_flight).await;
                        let _ = done.send(());
                    }
                    None => break,
                },
                r = async {
                    match in_flight.as_mut() {
                        Some(f) => f.await,
                        None => std::future::pending().await,
                    }
                } => {
                    in_flight = None;
                    self.appended(r).await;
                }
                // Without room, what arrives meanwhile waits in the fair
                // backlog, not in the subscription's FIFO.
                m = async {
                    if room {
                        inlet.next().await.map(Some)
                    } else {
                        inlet.receive().await.then_some(None)
                    }
                } => match m {
                    Some(Some(m)) => self.take(&mut st, m).await,
                    Some(None) => {}
                    None => break,
                },
            }
            // Everything already received goes into the same entry.
            while st.room() {
                match inlet.next().now_or_never() {
                    Some(Some(m)) => self.take(&mut st, m).await,
                    _ => break,
                }
            }
            for (d, r) in inlet.take_shed() {
                let detail = format!("ingest backlog full: domain {d} has the longest backlog");
                self.reply(r, refusal(429, &detail)).await;
            }
            if in_flight.is_none()
                && let Some(p) = st.pending.pop_front()
            {
                in_flight = Some(Box::pin(self.append_pending(p)));
            }
        }
        self.admission_running.store(false, Ordering::Release);
        self.flush(&mut st, &mut in_flight).await;
    }

    /// Waits for the append in flight, then appends every pending entry.
    async fn flush(&self, st: &mut Admission, in_flight: &mut Option<Append<'_>>) {
        if let Some(f) = in_flight.take() {
            let a = f.await;
            self.appended(a).await;
        }
        while let Some(p) = st.pending.pop_front() {
            let a = self.append_pending(p).await;
            self.appended(a).await;
        }
    }

    /// Starts admitting shard `n`: its standby events first, in the order
    /// they arrived.
    fn start_admitting(&self, st: &mut Admission, n: usize) {
        if st.live.contains_key(&n) {
            return;
        }
        let mut quota = IngestQuota::new(self.params.domain_rate);
        let now = self.params.clock.now_ms();
        let mut kept = VecDeque::with_capacity(st.standby.len());
        let mut taken = 0usize;
        for s in std::mem::take(&mut st.standby) {
            if s.shard != n {
                kept.push_back(s);
                continue;
            }
            taken += 1;
            metrics::counter!("presence_fanout_events_in_total").increment(1);
            if quota.admit(&s.domain, now) {
                let trace = s
                    .trace
                    .and_then(|t| ingest_span(&subjects::ingest(&s.domain, &s.user), Some(t)));
                st.push(&s.domain, &s.user, &s.payload, s.reply, true, trace);
            } else {
                rejected(RejectReason::RateLimited, over_ingest_quota(&s.domain));
            }
        }
        st.standby = kept;
        metrics::gauge!("presence_fanout_standby_events").set(st.standby.len() as f64);
        if taken > 0 {
            tracing::info!(
                shard = n,
                events = taken,
                "standby events appended at takeover"
            );
        }
        st.live.insert(n, quota);
    }

    /// Admits one received event, keeps it on standby, or refuses it (and
    /// answers a publisher that asked).
    async fn take(&self, st: &mut Admission, m: BusMessage) {
        let Some((d, u)) = ingest_subject(&m.subject) else {
            // Counted and answered once, by the owner of shard 0.
            if st.live.contains_key(&0) {
                metrics::counter!("presence_fanout_events_in_total").increment(1);
                let detail = format!("bad subject {}", m.subject);
                rejected(RejectReason::Malformed, detail.as_str());
                if let Some(r) = m.reply {
                    self.reply(r, refusal(400, &detail)).await;
                }
            }
            return;
        };
        let n = shard_index(&d, &u, self.shards);
        let Some(quota) = st.live.get_mut(&n) else {
            self.keep_on_standby(st, n, d, u, m);
            return;
        };
        metrics::counter!("presence_fanout_events_in_total").increment(1);
        let refused = if m.payload.len() > MAX_EVENT_BYTES {
            let detail = format!(
                "event of {} bytes, at most {MAX_EVENT_BYTES}",
                m.payload.len()
            );
            rejected(RejectReason::Malformed, detail.as_str());
            refusal(400, &detail)
        } else if !quota.admit(&d, self.params.clock.now_ms()) {
            let detail = over_ingest_quota(&d);
            rejected(RejectReason::RateLimited, detail.as_str());
            refusal(429, &detail)
        } else {
            let trace = ingest_span(&m.subject, m.trace);
            st.push(&d, &u, &m.payload, m.reply, false, trace);
            return;
        };
        if let Some(r) = m.reply {
            self.reply(r, refused).await;
        }
    }

    fn keep_on_standby(&self, st: &mut Admission, n: usize, d: DomainId, u: UserId, m: BusMessage) {
        if m.payload.len() > MAX_EVENT_BYTES || self.cfg.standby_events == 0 {
            return;
        }
        let now = Instant::now();
        let window = self.cfg.lease_ttl * 2;
        while st
            .standby
            .front()
            .is_some_and(|s| now.duration_since(s.at) > window)
        {
            st.standby.pop_front();
        }
        while st.standby.len() >= self.cfg.standby_events {
            st.standby.pop_front();
            metrics::counter!("presence_fanout_standby_dropped_total").increment(1);
        }
        st.standby.push_back(Standby {
            at: now,
            shard: n,
            domain: d,
            user: u,
            payload: m.payload,
            reply: m.reply,
            trace: m.trace,
        });
        metrics::gauge!("presence_fanout_standby_events").set(st.standby.len() as f64);
    }

    /// Appends an entry, stamped with the time it was admitted ("now"
    /// for its events, live and on replay).
    async fn append_pending(&self, mut p: Pending) -> Appended {
        p.batch.admitted_ms = self.params.clock.now_ms();
        Appended {
            stored: self.append(&p.batch).await,
            replies: p.replies,
            batch: p.batch,
        }
    }

    /// Hands a stored entry to this node's shard owners at once and
    /// answers its publishers.
    async fn appended(&self, a: Appended) {
        if let Ok(seq) = a.stored {
            self.hand_out_appended(seq, a.batch);
        }
        self.answer(a.stored, a.replies).await;
    }

    /// Answers the publishers of one appended entry.
    async fn answer(&self, stored: Result<u64, String>, replies: Vec<String>) {
        if let Err(e) = &stored {
            tracing::warn!(error = %e, "admitted events not stored in the input log");
        }
        if replies.is_empty() {
            return;
        }
        let answer: Bytes = match stored {
            Ok(seq) => serde_json::json!({ "stream": INGEST_STREAM, "seq": seq })
                .to_string()
                .into(),
            Err(e) => refusal(503, &format!("not stored in the input log: {e}")),
        };
        for r in replies {
            self.reply(r, answer.clone()).await;
        }
    }

    async fn reply(&self, to: String, answer: Bytes) {
        if let Err(e) = self.client.publish(to, answer).await {
            tracing::debug!(error = %e, "ingest answer not sent");
        }
    }

    /// Tells the admission task that this node owns shard `n`.
    pub(super) fn admit_shard(&self, n: usize) {
        if let Err(e) = self.admission.try_send(Control::Acquired(n)) {
            tracing::debug!(shard = n, error = %e, "admission not told of an acquired shard");
        }
    }

    /// Stops admitting shard `n` and waits (at most the request timeout)
    /// until what was admitted is stored, so the next owner's appends
    /// come after this node's.
    pub(super) async fn stop_admitting(&self, n: usize) {
        if !self.admission_running.load(Ordering::Acquire) {
            return;
        }
        let (done, stored) = oneshot::channel();
        if self.admission.try_send(Control::Released(n, done)).is_err() {
            return;
        }
        if tokio::time::timeout(self.cfg.request_timeout, stored)
            .await
            .is_err()
        {
            tracing::warn!(
                shard = n,
                "admitted events not stored before the shard was given up"
            );
        }
    }

    /// Appends one entry to the input log and returns its sequence. A
    /// failed append is retried under the same `Nats-Msg-Id` (JetStream
    /// keeps one copy) until the request timeout.
    pub(super) async fn append(&self, batch: &v1::IngestBatch) -> Result<u64, String> {
        let id = format!(
            "{}-{:x}-{}",
            self.cfg.node_id,
            self.boot,
            self.appends.fetch_add(1, Ordering::Relaxed)
        );
        let payload: Bytes = batch.encode_to_vec().into();
        let deadline = Instant::now() + self.cfg.request_timeout;
        let mut backoff = Duration::from_millis(20);
        loop {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
            let r = match self
                .js
                .publish_with_headers(subjects::admitted(), headers, payload.clone())
                .await
            {
                Ok(ack) => ack.await.map(|a| a.sequence).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match r {
                Ok(seq) => return Ok(seq),
                Err(e) if Instant::now() + backoff < deadline => {
                    tracing::debug!(error = %e, "input log append failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The channel between the ownership loop and the admission task.
pub(super) fn control_channel(shards: usize) -> (mpsc::Sender<Control>, mpsc::Receiver<Control>) {
    // One message per shard and step at most; the task reads them
    // between events.
    mpsc::channel(shards.max(1) * 2 + 16)
}
