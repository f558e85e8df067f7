//! Shard actors: each owns the presence state of the users that hash to
//! it, applies their events one at a time, expires what timed out at the
//! exact deadline, and publishes every changed aggregate on
//! `presence.v1.out.<domain>.<user>`. A shard never waits on a watcher:
//! it only publishes on the bus.

use crate::convert::state_to_proto;
use crate::quota::Buckets;
use presence_bus::trace::{self, TraceParent};
use presence_bus::{SharedBus, subjects};
use presence_core::presence::{Aggregate, Event, Limits, Reject, Rejection, UserPresence};
use presence_core::{ApiError, ApiResult, DomainId, UserId};
use prost::Message;
use std::collections::{BTreeSet, HashMap};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A user of a domain.
pub type UserKey = (DomainId, UserId);

/// Publish rate allowed per device: a token bucket.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    /// Sustained events per second.
    pub per_second: u32,
    /// Events allowed in a burst.
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            per_second: 50,
            burst: 200,
        }
    }
}

/// Wall-clock milliseconds derived from tokio's clock, so that tests
/// with paused time control expiry.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base_ms: i64,
    base: Instant,
}

impl Clock {
    /// Returns a clock starting at the current wall time.
    pub fn new() -> Self {
        Self {
            base_ms: presence_auth::token::now_ms(),
            base: Instant::now(),
        }
    }

    /// Returns the current time in unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.base_ms + self.base.elapsed().as_millis() as i64
    }

    /// Returns the tokio instant of a unix-millisecond time.
    pub fn instant_of(&self, ms: i64) -> Instant {
        let d = (ms - self.base_ms).max(0) as u64;
        self.base + std::time::Duration::from_millis(d)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

enum Command {
    Apply {
        key: UserKey,
        event: Event,
        trace: Option<TraceParent>,
        reply: oneshot::Sender<Result<bool, Rejection>>,
    },
    Get {
        keys: Vec<UserKey>,
        reply: oneshot::Sender<Vec<Aggregate>>,
    },
}

/// The handle of a shard actor.
#[derive(Clone)]
pub struct ShardHandle {
    tx: mpsc::Sender<Command>,
}

fn gone() -> ApiError {
    ApiError::Unavailable("shard stopped".into())
}

impl ShardHandle {
    /// Applies an event; waits for room when the inbox is full
    /// (backpressure on the publisher, never on watchers).
    pub async fn apply(&self, key: UserKey, event: Event) -> ApiResult<Result<bool, Rejection>> {
        self.apply_traced(key, event, None).await
    }

    /// [`ShardHandle::apply`] of an event that is part of trace `trace`.
    pub async fn apply_traced(
        &self,
        key: UserKey,
        event: Event,
        trace: Option<TraceParent>,
    ) -> ApiResult<Result<bool, Rejection>> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Apply {
                key,
                event,
                trace,
                reply,
            })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }

    /// Returns the current aggregates (offline at version 0 for users
    /// without state).
    pub async fn get(&self, keys: Vec<UserKey>) -> ApiResult<Vec<Aggregate>> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Get { keys, reply })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }
}

/// One user's state in a shard snapshot.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct SnapUser {
    pub domain: String,
    pub user: String,
    pub state: UserPresence,
}

/// The state of one shard: its users, their expiry deadlines and the
/// per-device rate buckets. Driven by a local actor ([`spawn`]) or, in
/// distributed mode, by the task of the node owning the shard.
pub(crate) struct Shard {
    id: usize,
    rate: RateLimit,
    /// Per user, per device: keyed in two levels so that a known device
    /// costs no allocation.
    buckets: HashMap<UserKey, Buckets<String>>,
    users: HashMap<UserKey, UserPresence>,
    deadlines: BTreeSet<(i64, UserKey)>,
    deadline_of: HashMap<UserKey, i64>,
    limits: Limits,
    bus: SharedBus,
    pub(crate) clock: Clock,
    /// Version new users start from (a new owner's term, see
    /// [`Shard::raise_all`]).
    floor: u64,
    /// Whether changes are published (not while replaying a log).
    pub(crate) publishing: bool,
    /// This node's edge, fed every published change directly.
    edge: Option<crate::edge::Edge>,
}

impl Shard {
    pub(crate) fn new(
        id: usize,
        limits: Limits,
        rate: RateLimit,
        bus: SharedBus,
        clock: Clock,
        edge: Option<crate::edge::Edge>,
    ) -> Self {
        Self {
            edge,
            id,
            rate,
            buckets: HashMap::new(),
            users: HashMap::new(),
            deadlines: BTreeSet::new(),
            deadline_of: HashMap::new(),
            limits,
            bus,
            clock,
            floor: 0,
            publishing: true,
        }
    }

    fn reschedule(&mut self, key: &UserKey) {
        if let Some(old) = self.deadline_of.remove(key) {
            self.deadlines.remove(&(old, key.clone()));
        }
        if let Some(u) = self.users.get(key)
            && let Some(t) = u.next_deadline(&self.limits)
        {
            self.deadlines.insert((t, key.clone()));
            self.deadline_of.insert(key.clone(), t);
        }
    }

    /// Publishes `key`'s state, as part of trace `trace` (the span that
    /// changed it) if any.
    async fn publish(&self, key: &UserKey, trace: Option<TraceParent>) {
        if !self.publishing {
            return;
        }
        let Some(u) = self.users.get(key) else { return };
        let state = state_to_proto(key.0.as_str(), key.1.as_str(), u.aggregate(), true);
        let subject = subjects::presence_out(&key.0, &key.1);
        let payload: bytes::Bytes = state.encode_to_vec().into();
        // This node's watchers first, without the bus's round trip.
        if let Some(edge) = &self.edge {
            edge.deliver_local(state, payload.clone(), trace);
        }
        if let Err(e) = self.bus.publish_traced(subject, payload, trace).await {
            tracing::warn!(shard = self.id, error = %e, "presence change not published");
        }
    }

    /// Takes a token from the device's bucket.
    fn admit(&mut self, key: &UserKey, device: &str, now: i64) -> bool {
        let rate = self.rate;
        let b = match self.buckets.get_mut(key) {
            Some(b) => b,
            None => self
                .buckets
                .entry(key.clone())
                .or_insert_with(|| Buckets::new(rate)),
        };
        b.admit(device, || device.to_owned(), now)
    }

    /// Expires everything due at `now`; returns whether anything changed.
    pub(crate) async fn expire_until(&mut self, now: i64) -> bool {
        let mut any = false;
        while let Some((t, key)) = self.deadlines.first().cloned() {
            if t > now {
                break;
            }
            self.deadlines.remove(&(t, key.clone()));
            self.deadline_of.remove(&key);
            let changed = match self.users.get_mut(&key) {
                Some(u) => u.expire(now, &self.limits),
                None => false,
            };
            if changed {
                any = true;
                metrics::counter!("presence_fanout_expired_total").increment(1);
                self.publish(&key, None).await;
            }
            self.reschedule(&key);
        }
        any
    }

    /// Returns when the next expiry is due.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines
            .first()
            .map(|(t, _)| self.clock.instant_of(*t))
    }

    /// Applies one event at `now` (unix ms); publishes the new aggregate
    /// when it changed. An event that is part of a trace (`parent`) gets
    /// a `presence.apply` span there, and its change carries it on.
    pub(crate) async fn apply(
        &mut self,
        key: UserKey,
        event: &Event,
        now: i64,
        parent: Option<TraceParent>,
    ) -> Result<bool, Rejection> {
        let span = trace::child(parent, || {
            tracing::info_span!(
                "presence.apply",
                otel.kind = "consumer",
                shard = self.id,
                domain = %key.0,
                user = %key.1,
                device = %event.device,
                outcome = tracing::field::Empty,
            )
        });
        let r = self
            .apply_inner(key, event, now, span.as_ref().and_then(TraceParent::of))
            .await;
        if let Some(span) = span {
            match &r {
                Ok(true) => span.record("outcome", "changed"),
                Ok(false) => span.record("outcome", "unchanged"),
                Err(r) => span.record("outcome", tracing::field::debug(r.reason)),
            };
        }
        r
    }

    async fn apply_inner(
        &mut self,
        key: UserKey,
        event: &Event,
        now: i64,
        trace: Option<TraceParent>,
    ) -> Result<bool, Rejection> {
        if !self.admit(&key, &event.device, now) {
            return Err(Rejection::new(
                Reject::TooMany,
                format!(
                    "device {} is over its rate of {} events/s (burst {})",
                    event.device, self.rate.per_second, self.rate.burst
                ),
            ));
        }
        let floor = self.floor;
        let u = self
            .users
            .entry(key.clone())
            .or_insert_with(|| UserPresence::new(floor));
        let r = u.apply_explained(event, now, &self.limits);
        if matches!(r, Ok(true)) {
            self.publish(&key, trace).await;
        }
        self.reschedule(&key);
        r
    }

    /// Returns the current aggregates (offline at version 0 for users
    /// without state).
    pub(crate) fn get(&self, keys: &[UserKey]) -> Vec<Aggregate> {
        keys.iter()
            .map(|k| {
                self.users
                    .get(k)
                    .map(|u| u.aggregate().clone())
                    .unwrap_or_else(|| UserPresence::new(0).aggregate().clone())
            })
            .collect()
    }

    /// Returns every user's state, for a snapshot.
    pub(crate) fn export(&self) -> Vec<SnapUser> {
        self.users
            .iter()
            .map(|((d, u), p)| SnapUser {
                domain: d.to_string(),
                user: u.to_string(),
                state: p.clone(),
            })
            .collect()
    }

    /// Loads users from a snapshot (entries with invalid ids are
    /// skipped).
    pub(crate) fn restore(&mut self, users: Vec<SnapUser>) {
        for s in users {
            let (Ok(d), Ok(u)) = (DomainId::parse(&s.domain), UserId::parse(&s.user)) else {
                tracing::warn!(shard = self.id, domain = %s.domain, user = %s.user, "invalid user in snapshot skipped");
                continue;
            };
            let key = (d, u);
            self.users.insert(key.clone(), s.state);
            self.reschedule(&key);
        }
    }

    /// Starts a new term: every version moves to at least `floor` (above
    /// any version an earlier owner published), new users start there,
    /// and every user's state is published.
    pub(crate) async fn raise_all(&mut self, floor: u64) {
        self.floor = floor;
        let keys: Vec<UserKey> = self.users.keys().cloned().collect();
        for k in keys {
            if let Some(u) = self.users.get_mut(&k) {
                u.raise_version(floor);
            }
            self.publish(&k, None).await;
        }
    }

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Apply {
                key,
                event,
                trace,
                reply,
            } => {
                let now = self.clock.now_ms();
                let r = self.apply(key, &event, now, trace).await;
                let _ = reply.send(r);
            }
            Command::Get { keys, reply } => {
                let _ = reply.send(self.get(&keys));
            }
        }
    }
}

/// Starts a shard actor; it stops when `shutdown` fires.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    id: usize,
    inbox: usize,
    limits: Limits,
    rate: RateLimit,
    bus: SharedBus,
    clock: Clock,
    edge: Option<crate::edge::Edge>,
    shutdown: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) -> ShardHandle {
    let (tx, mut rx) = mpsc::channel(inbox.max(1));
    let mut shard = Shard::new(id, limits, rate, bus, clock, edge);
    let span = tracing::info_span!("shard", id);
    tracker.spawn(tracing::Instrument::instrument(
        async move {
            loop {
                let next = shard.next_deadline();
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    cmd = rx.recv() => match cmd {
                        Some(c) => shard.handle(c).await,
                        None => break,
                    },
                    _ = sleep_until_opt(next) => {
                        let now = shard.clock.now_ms();
                        shard.expire_until(now).await;
                    }
                }
            }
        },
        span,
    ));
    ShardHandle { tx }
}

/// Sleeps until `at`, or forever without a deadline.
pub(crate) async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending::<()>().await,
    }
}

/// Returns the shard of a user: FNV-1a of `domain \0 user`, modulo the
/// shard count (stable across processes and versions).
pub fn shard_index(d: &DomainId, u: &UserId, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in d.as_str().bytes().chain([0u8]).chain(u.as_str().bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as usize
}
