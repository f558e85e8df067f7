//! One watch stream: snapshot, then updates, access changes
//! (`denied` / `revoked` / `granted`) and heartbeats, one event per
//! message or — when the client asks for batching — every pending change
//! in one `batch` message.
//!
//! A stream is pulled by its transport, not pushed by a task of its own:
//! the transport asks for the next message when it can send one, and the
//! stream builds it from what is pending then. While a client does not
//! read, states coalesce in the stream's [`Mailbox`] (one per target) and
//! nothing else is buffered. The stream depends on three narrow things:
//! its [`Registration`] at the edge (mailbox and target names), the
//! [`AclView`] (decisions and the epochs that trigger re-checks) and a
//! [`StateSource`] (current states, for the snapshot, grants and
//! resynchronizations).
//!
//! Per target a stream keeps one entry (last version sent, what the
//! watcher may see) in a table by position; names live at the edge.

use crate::convert::redact;
use crate::edge::{Edge, Mailbox, Registration, Shared};
use crate::quota::Slot;
use presence_core::{ApiResult, DomainId, UserId};
use presence_policy::{AclView, Question};
use presence_proto::frame::{EventBytes, Frame, batch_element_len, batch_len_with};
use presence_proto::v1;
use prost::Message;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Where a stream reads current states.
pub trait StateSource: Send + Sync + 'static {
    /// Returns the full (unredacted) current states of `targets`, in
    /// order.
    fn states(
        &self,
        d: &DomainId,
        targets: Vec<String>,
    ) -> impl Future<Output = ApiResult<Vec<v1::PresenceState>>> + Send;
}

/// Limits of watch streams.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// Most targets in one stream.
    pub max_targets: usize,
    /// Most concurrent streams per principal.
    pub max_streams_per_principal: usize,
    /// Heartbeat interval when the client asks for none.
    pub heartbeat: Duration,
    /// Largest batch a client may ask for, in bytes.
    pub max_batch_bytes: usize,
    /// Most events in one batch a client may ask for.
    pub max_batch_events: usize,
    /// Longest linger a client may ask for.
    pub max_linger: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            max_targets: 5000,
            max_streams_per_principal: 100,
            heartbeat: Duration::from_secs(30),
            max_batch_bytes: 1024 * 1024,
            max_batch_events: 10_000,
            max_linger: Duration::from_secs(1),
        }
    }
}

/// Batch size when the client leaves it to the server.
const DEFAULT_BATCH_BYTES: usize = 64 * 1024;
/// Events per batch when the client leaves it to the server.
const DEFAULT_BATCH_EVENTS: usize = 1000;
/// Largest batch of a snapshot: the transport keeps a stream's encode
/// buffer at the largest message it ever sent, and an idle stream should
/// not pay for the size of its snapshot forever.
const SNAPSHOT_BATCH_BYTES: usize = 1024;

/// How a batched stream groups its changes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Batching {
    /// Largest batch in bytes (an event larger than this goes alone).
    pub max_bytes: usize,
    /// Most events in one batch.
    pub max_events: usize,
    /// How long to wait after a change for more.
    pub linger: Duration,
}

impl Batching {
    /// The batching a client asked for, within the server's limits.
    pub fn of(req: &v1::WatchBatching, cfg: &WatchConfig) -> Self {
        let pick = |asked: u32, default: usize, max: usize| {
            match asked {
                0 => default.min(max),
                n => (n as usize).min(max),
            }
            .max(1)
        };
        Self {
            max_bytes: pick(req.max_bytes, DEFAULT_BATCH_BYTES, cfg.max_batch_bytes),
            max_events: pick(req.max_events, DEFAULT_BATCH_EVENTS, cfg.max_batch_events),
            linger: Duration::from_millis(u64::from(req.linger_ms)).min(cfg.max_linger),
        }
    }
}

/// What a stream is asked for.
pub struct StreamSpec {
    /// Domain.
    pub domain: DomainId,
    /// The watcher.
    pub watcher: UserId,
    /// Resolved targets, in the order they were asked.
    pub targets: Vec<String>,
    /// Versions the client already has.
    pub known: HashMap<String, u64>,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Batched delivery, if asked for.
    pub batching: Option<Batching>,
}

/// What the watcher may see of one target.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Access {
    Denied,
    /// The state without caller identity.
    Redacted,
    /// Every field.
    Full,
}

impl Access {
    fn of(allowed: bool, caller_id_visible: bool) -> Self {
        match (allowed, caller_id_visible) {
            (false, _) => Access::Denied,
            (true, false) => Access::Redacted,
            (true, true) => Access::Full,
        }
    }
}

/// One target of a stream.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The last version sent (or known to the client).
    last_sent: u64,
    access: Access,
}

/// Marks an outbox event that concerns no single target's state.
const NO_TARGET: u32 = u32::MAX;

/// What a stream is doing.
enum Phase {
    /// Not yet registered (the first pull registers and snapshots).
    New {
        targets: Vec<String>,
        known: HashMap<String, u64>,
    },
    /// Sending updates.
    Live {
        reg: Registration,
        heartbeat: tokio::time::Interval,
    },
    /// Ended.
    Done,
}

/// Waits for the next heartbeat of a live stream.
async fn tick(phase: &mut Phase) {
    match phase {
        Phase::Live { heartbeat, .. } => {
            heartbeat.tick().await;
        }
        _ => std::future::pending().await,
    }
}

/// One watch stream (see the module documentation).
pub struct WatchStream<S> {
    source: S,
    acl: AclView,
    domain: DomainId,
    watcher: UserId,
    edge: Edge,
    mailbox: Arc<Mailbox>,
    table: Vec<Entry>,
    phase: Phase,
    heartbeat_every: Duration,
    batching: Option<Batching>,
    /// Events ready to send, with the position of the target whose state
    /// they carry ([`NO_TARGET`] otherwise). Filled only when empty, so
    /// it holds at most one state per target.
    outbox: VecDeque<(u32, EventBytes)>,
    /// Events of the snapshot still in the outbox (sent in small
    /// batches).
    snapshot_left: usize,
    changes: tokio::sync::watch::Receiver<u64>,
    resyncs: tokio::sync::watch::Receiver<u64>,
    /// The domain's policy epoch read before the current decisions were
    /// made (decisions reflect at least that epoch).
    seen_epoch: Option<u64>,
    shutdown: CancellationToken,
    _slot: Slot,
    delivered: metrics::Counter,
    delivery_lag: metrics::Histogram,
}

fn access(target: &str, reason: &str) -> v1::AccessChange {
    v1::AccessChange {
        target: target.into(),
        reason: reason.into(),
    }
}

/// Keeps the first occurrence of each target.
fn distinct(targets: Vec<String>) -> Vec<String> {
    let mut seen = HashSet::with_capacity(targets.len());
    targets
        .into_iter()
        .filter(|t| seen.insert(t.clone()))
        .collect()
}

/// Encodes a state read from the shards for one watcher (snapshot,
/// grant, resync: per stream by nature).
fn encode_for(state: v1::PresenceState, a: Access) -> EventBytes {
    EventBytes::state(redact(state, a == Access::Full).encode_to_vec().into())
}

impl<S: StateSource> WatchStream<S> {
    /// Returns a stream that registers and sends its snapshot when first
    /// pulled; `slot` is held until it ends.
    pub fn new(
        spec: StreamSpec,
        source: S,
        acl: AclView,
        edge: Edge,
        shutdown: CancellationToken,
        slot: Slot,
    ) -> Self {
        let targets = distinct(spec.targets);
        let n = targets.len();
        Self {
            source,
            changes: acl.changes(),
            resyncs: edge.resyncs(),
            acl,
            domain: spec.domain,
            watcher: spec.watcher,
            mailbox: Arc::new(Mailbox::new(n)),
            edge,
            table: vec![
                Entry {
                    last_sent: 0,
                    access: Access::Denied,
                };
                n
            ],
            phase: Phase::New {
                targets,
                known: spec.known,
            },
            heartbeat_every: spec.heartbeat,
            batching: spec.batching,
            outbox: VecDeque::new(),
            snapshot_left: 0,
            seen_epoch: None,
            shutdown,
            _slot: slot,
            delivered: metrics::counter!("presence_fanout_delivered_total"),
            delivery_lag: metrics::histogram!("presence_fanout_delivery_lag_seconds"),
        }
    }

    /// Returns the stream as the transport pulls it.
    pub fn into_stream(
        self,
    ) -> impl futures_util::Stream<Item = Result<Frame, tonic::Status>> + Send + 'static {
        futures_util::stream::unfold(self, |mut s| async move {
            let item = s.next().await?;
            Some((item, s))
        })
    }

    /// Returns the next message, `None` when the stream has ended.
    pub async fn next(&mut self) -> Option<Result<Frame, tonic::Status>> {
        match self.step().await {
            Ok(f) => f,
            Err(e) => {
                self.phase = Phase::Done;
                Some(Err(presence_proto::status::to_status(e)))
            }
        }
    }

    async fn step(&mut self) -> ApiResult<Option<Result<Frame, tonic::Status>>> {
        if matches!(self.phase, Phase::New { .. }) {
            // Boxed: the large futures of rare steps do not make every
            // idle stream's state bigger.
            Box::pin(self.start()).await?;
        }
        loop {
            if !matches!(self.phase, Phase::Live { .. }) {
                return Ok(None);
            }
            // An access change is applied before anything else is sent.
            match self.changes.has_changed() {
                Err(_) => {
                    self.phase = Phase::Done;
                    return Ok(None);
                }
                Ok(true) => {
                    self.changes.borrow_and_update();
                    self.recheck().await?;
                }
                Ok(false) => {}
            }
            if let Some(f) = self.pop_frame() {
                return Ok(Some(Ok(f)));
            }
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => {
                    self.phase = Phase::Done;
                    return Ok(None);
                }
                r = self.changes.changed() => {
                    if r.is_err() {
                        self.phase = Phase::Done;
                        return Ok(None);
                    }
                    self.recheck().await?;
                }
                r = self.resyncs.changed() => {
                    if r.is_err() {
                        self.phase = Phase::Done;
                        return Ok(None);
                    }
                    Box::pin(self.resync()).await;
                }
                _ = self.mailbox.notified() => {
                    if let Some(b) = self.batching
                        && !b.linger.is_zero()
                    {
                        tokio::select! {
                            _ = self.shutdown.cancelled() => {}
                            _ = tokio::time::sleep(b.linger) => {}
                        }
                    }
                    self.drain();
                }
                _ = tick(&mut self.phase) => {
                    let now = presence_auth::token::now_ms();
                    return Ok(Some(Ok(Frame::One(EventBytes::heartbeat(now)))));
                }
            }
        }
    }

    /// Registers at the edge, decides access and queues the snapshot.
    async fn start(&mut self) -> ApiResult<()> {
        let Phase::New { targets, known } = std::mem::replace(&mut self.phase, Phase::Done) else {
            return Ok(());
        };
        // Register before the snapshot so no change falls between the two.
        let reg = self
            .edge
            .register(self.domain.as_str(), &targets, self.mailbox.clone())
            .await?;
        self.seen_epoch = self.acl.epoch(&self.domain);
        let decisions = self
            .acl
            .decide(&self.domain, &self.watcher, reg.targets(), Question::See)
            .await?;
        let mut snapshot = Vec::new();
        for (i, (name, dec)) in reg.targets().iter().zip(&decisions).enumerate() {
            let e = &mut self.table[i];
            e.access = Access::of(dec.allowed, dec.caller_id_visible);
            let has = known.get(&**name).copied();
            e.last_sent = has.unwrap_or(0);
            if e.access == Access::Denied {
                self.outbox.push_back((
                    NO_TARGET,
                    EventBytes::denied(&access(name, "not permitted")),
                ));
            } else {
                snapshot.push((i, has));
            }
        }
        drop(known);
        let names: Vec<String> = snapshot
            .iter()
            .map(|(i, _)| reg.targets()[*i].to_string())
            .collect();
        let states = self.source.states(&self.domain, names).await?;
        for ((i, has), state) in snapshot.into_iter().zip(states) {
            let e = &mut self.table[i];
            if has.is_some_and(|v| v >= state.version) {
                continue; // resume: the client has it already
            }
            e.last_sent = state.version;
            self.outbox
                .push_back((i as u32, encode_for(state, e.access)));
        }
        drop(targets);
        self.outbox
            .push_back((NO_TARGET, EventBytes::snapshot_done()));
        self.snapshot_left = self.outbox.len();
        let mut heartbeat = tokio::time::interval(self.heartbeat_every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.reset();
        self.phase = Phase::Live { reg, heartbeat };
        Ok(())
    }

    fn targets(&self) -> &[Arc<str>] {
        match &self.phase {
            Phase::Live { reg, .. } => reg.targets(),
            _ => &[],
        }
    }

    /// Takes the next message from the outbox: one event, or as many as
    /// fit in a batch.
    fn pop_frame(&mut self) -> Option<Frame> {
        let frame = match self.batching {
            None => self.outbox.pop_front().map(|(_, e)| Frame::One(e)),
            Some(b) => {
                let max_bytes = if self.snapshot_left > 0 {
                    b.max_bytes.min(SNAPSHOT_BATCH_BYTES)
                } else {
                    b.max_bytes
                };
                let mut events = Vec::new();
                let mut body = 0;
                while let Some((_, e)) = self.outbox.front() {
                    if !events.is_empty()
                        && (events.len() >= b.max_events || batch_len_with(body, e) > max_bytes)
                    {
                        break;
                    }
                    body += batch_element_len(e);
                    if let Some((_, e)) = self.outbox.pop_front() {
                        events.push(e);
                    }
                }
                self.snapshot_left = self.snapshot_left.saturating_sub(events.len());
                (!events.is_empty()).then_some(Frame::Batch(events))
            }
        };
        if frame.is_some() && self.batching.is_none() {
            self.snapshot_left = self.snapshot_left.saturating_sub(1);
        }
        // An idle stream keeps no outbox capacity from its last burst.
        if self.outbox.is_empty() && self.outbox.capacity() > 8 {
            self.outbox = VecDeque::new();
        }
        frame
    }

    /// Moves the mailbox's states the watcher may see and does not have
    /// yet to the outbox.
    fn drain(&mut self) {
        let mut taken: Vec<(u32, Arc<Shared>)> = Vec::new();
        self.mailbox.take(&mut taken);
        let mut delivered = 0;
        let mut oldest = i64::MAX;
        for (i, s) in taken {
            let Some(e) = self.table.get_mut(i as usize) else {
                continue;
            };
            if e.access == Access::Denied || e.last_sent >= s.version() {
                continue;
            }
            e.last_sent = s.version();
            delivered += 1;
            oldest = oldest.min(s.updated_at_ms());
            self.outbox
                .push_back((i, s.event(e.access == Access::Full)));
        }
        if delivered > 0 {
            self.delivered.increment(delivered);
            // From the oldest state's change at its owner to its hand-off
            // to this stream's transport: one sample per hand-off, not per
            // state (recording is not free on this path).
            let lag_ms = presence_auth::token::now_ms().saturating_sub(oldest).max(0);
            self.delivery_lag.record(lag_ms as f64 / 1e3);
        }
    }

    /// Re-decides access after an ACL event of the stream's domain:
    /// `revoked` for targets no longer visible (their queued states are
    /// dropped), `granted` and the current state for newly visible ones.
    async fn recheck(&mut self) -> ApiResult<()> {
        Box::pin(self.recheck_inner()).await
    }

    async fn recheck_inner(&mut self) -> ApiResult<()> {
        // Events of other domains do not concern this stream; a reset
        // (epoch forgotten) always does.
        let epoch = self.acl.epoch(&self.domain);
        if epoch.is_some() && epoch == self.seen_epoch {
            return Ok(());
        }
        let decisions = self
            .acl
            .decide(&self.domain, &self.watcher, self.targets(), Question::See)
            .await?;
        // The epoch read before the check: an event applied while it ran
        // triggers another check.
        self.seen_epoch = epoch;
        let mut granted = Vec::new();
        for (i, dec) in decisions.iter().enumerate() {
            let Some(e) = self.table.get_mut(i) else {
                break;
            };
            let now = Access::of(dec.allowed, dec.caller_id_visible);
            match (e.access, now) {
                (Access::Denied, Access::Denied) => {}
                (_, Access::Denied) => {
                    e.access = Access::Denied;
                    e.last_sent = 0;
                    let at = i as u32;
                    self.outbox.retain(|(j, _)| *j != at);
                    let name = self.targets()[i].clone();
                    self.outbox.push_back((
                        NO_TARGET,
                        EventBytes::revoked(&access(&name, "access revoked")),
                    ));
                }
                (Access::Denied, _) => {
                    e.access = now;
                    granted.push(i);
                }
                // Caller-id visibility may have changed.
                _ => e.access = now,
            }
        }
        if granted.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = granted
            .iter()
            .map(|i| self.targets()[*i].to_string())
            .collect();
        let states = self.source.states(&self.domain, names.clone()).await?;
        for ((i, name), state) in granted.into_iter().zip(names).zip(states) {
            self.outbox.push_back((
                NO_TARGET,
                EventBytes::granted(&access(&name, "access granted")),
            ));
            let e = &mut self.table[i];
            e.last_sent = state.version;
            self.outbox
                .push_back((i as u32, encode_for(state, e.access)));
        }
        Ok(())
    }

    /// Changes may have been lost: re-reads every permitted target and
    /// queues what is newer than what was sent.
    async fn resync(&mut self) {
        let permitted: Vec<usize> = (0..self.table.len())
            .filter(|i| self.table[*i].access != Access::Denied)
            .collect();
        let names: Vec<String> = permitted
            .iter()
            .map(|i| self.targets()[*i].to_string())
            .collect();
        let states = match self.source.states(&self.domain, names).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "stream resync failed; updates continue");
                return;
            }
        };
        for (i, state) in permitted.into_iter().zip(states) {
            let e = &mut self.table[i];
            if e.access == Access::Denied || e.last_sent >= state.version {
                continue;
            }
            e.last_sent = state.version;
            self.outbox
                .push_back((i as u32, encode_for(state, e.access)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_batching_stays_within_server_limits() {
        let cfg = WatchConfig::default();
        let asked = v1::WatchBatching {
            max_bytes: 0,
            max_events: 50_000,
            linger_ms: 60_000,
        };
        let b = Batching::of(&asked, &cfg);
        assert_eq!(b.max_bytes, DEFAULT_BATCH_BYTES);
        assert_eq!(b.max_events, cfg.max_batch_events);
        assert_eq!(b.linger, cfg.max_linger);
        let tiny = Batching::of(
            &v1::WatchBatching {
                max_bytes: 1,
                max_events: 1,
                linger_ms: 0,
            },
            &cfg,
        );
        assert_eq!((tiny.max_bytes, tiny.max_events), (1, 1));
        assert!(tiny.linger.is_zero());
    }

    #[test]
    fn test_distinct_keeps_first_occurrences_in_order() {
        let got = distinct(vec![
            "b".into(),
            "a".into(),
            "b".into(),
            "c".into(),
            "a".into(),
        ]);
        assert_eq!(got, vec!["b", "a", "c"]);
    }
}
