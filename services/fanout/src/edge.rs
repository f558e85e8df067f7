//! The edge of a node: per-target subscriptions, states encoded once,
//! and the mailboxes of the local streams.
//!
//! While at least one local stream watches a target, the [`Edge`] holds
//! one bus subscription to its aggregated subject
//! (`presence.v1.out.<domain>.<user>`), so a node receives only the
//! changes its watchers need and NATS routes interest across the
//! cluster. Each state that arrives is decoded once and becomes a
//! [`Shared`] state: the owner's encoding as it came (every field), plus
//! at most one more encoding with caller identity removed when the state
//! has any. Every stream that receives it gets a reference to those
//! bytes: nothing is cloned or encoded per watcher.
//!
//! A [`Mailbox`] keeps at most one pending state per target of its
//! stream (latest version wins), in a table indexed by the target's
//! position, so a stream that stops reading costs memory bounded by its
//! number of targets and never slows a shard, the edge or another
//! stream. Target names are interned: every stream watching a target
//! shares the edge's one copy of its name.

use crate::convert::redact;
use bytes::Bytes;
use presence_bus::trace::{self, TraceParent};
use presence_bus::{SharedBus, subjects};
use presence_core::{ApiError, ApiResult};
use presence_proto::frame::EventBytes;
use presence_proto::v1;
use prost::Message;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(e) => e.into_inner(),
    }
}

/// How many encodings the edge has made, by visibility class (tests and
/// metrics: a state is encoded once per class, whatever the number of
/// streams that receive it).
#[derive(Debug, Default)]
pub struct EncodeCounts {
    full: AtomicU64,
    redacted: AtomicU64,
}

impl EncodeCounts {
    /// Returns (states received with every field — the owner's bytes,
    /// reused as they are —, encodings with caller identity removed).
    pub fn get(&self) -> (u64, u64) {
        (
            self.full.load(Ordering::Relaxed),
            self.redacted.load(Ordering::Relaxed),
        )
    }
}

/// One state of one target as every local stream receives it.
#[derive(Debug)]
pub struct Shared {
    version: u64,
    updated_at_ms: i64,
    /// The state with every field, as its owner encoded it.
    full: Bytes,
    /// The state without caller identity; `None` when it has none to
    /// hide (then `full` is what everyone gets).
    redacted: Option<Bytes>,
}

impl Shared {
    /// Builds the shared state of `state`, whose encoding is `full`;
    /// encodes the redacted class only when the state has caller
    /// identity.
    pub fn new(state: v1::PresenceState, full: Bytes, counts: &EncodeCounts) -> Self {
        counts.full.fetch_add(1, Ordering::Relaxed);
        let hides = state
            .calls
            .iter()
            .any(|c| !c.remote_number.is_empty() || !c.remote_name.is_empty());
        let (version, updated_at_ms) = (state.version, state.updated_at_ms);
        let redacted = hides.then(|| {
            counts.redacted.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("presence_fanout_redacted_encodes_total").increment(1);
            Bytes::from(redact(state, false).encode_to_vec())
        });
        Self {
            version,
            updated_at_ms,
            full,
            redacted,
        }
    }

    /// Returns the target's version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Returns when the state last changed at its owner (unix ms).
    pub fn updated_at_ms(&self) -> i64 {
        self.updated_at_ms
    }

    /// Returns the state event for a watcher that may (or may not) see
    /// caller identity: shared bytes, no encoding.
    pub fn event(&self, caller_id: bool) -> EventBytes {
        match (&self.redacted, caller_id) {
            (Some(r), false) => EventBytes::state(r.clone()),
            _ => EventBytes::state(self.full.clone()),
        }
    }
}

/// Pending states of one stream: at most one per target, by the
/// target's position in the stream.
#[derive(Debug)]
pub struct Mailbox {
    targets: usize,
    pending: Mutex<Pending>,
    notify: Notify,
}

/// The table is allocated on the first delivery: an idle stream keeps
/// nothing per target here.
#[derive(Debug, Default)]
struct Pending {
    slots: Vec<Option<Arc<Shared>>>,
    /// Positions with a pending state, in arrival order.
    dirty: Vec<u32>,
}

impl Mailbox {
    /// Returns an empty mailbox of a stream with `targets` targets.
    pub fn new(targets: usize) -> Self {
        Self {
            targets,
            pending: Mutex::new(Pending::default()),
            notify: Notify::new(),
        }
    }

    /// Stores `s` for the target at position `i`, replacing an older
    /// pending state of it. Returns whether an older state was coalesced
    /// away.
    pub fn put(&self, i: u32, s: &Arc<Shared>) -> bool {
        let at = i as usize;
        if at >= self.targets {
            return false;
        }
        let mut p = lock(&self.pending);
        if p.slots.is_empty() {
            p.slots.resize(self.targets, None);
        }
        let coalesced = match &p.slots[at] {
            Some(old) if old.version >= s.version => return false,
            Some(_) => true,
            None => {
                p.dirty.push(i);
                false
            }
        };
        p.slots[at] = Some(s.clone());
        drop(p);
        self.notify.notify_one();
        coalesced
    }

    /// Moves everything pending to `out`, in arrival order.
    pub fn take(&self, out: &mut Vec<(u32, Arc<Shared>)>) {
        let mut p = lock(&self.pending);
        let dirty = std::mem::take(&mut p.dirty);
        out.reserve(dirty.len());
        for i in dirty {
            if let Some(s) = p.slots.get_mut(i as usize).and_then(Option::take) {
                out.push((i, s));
            }
        }
    }

    /// Waits until something may be pending.
    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    /// Returns how many states are pending.
    pub fn len(&self) -> usize {
        lock(&self.pending).dirty.len()
    }

    /// Returns whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One watched target: its local watchers and its subscription.
struct Topic {
    /// (mailbox, the target's position in that stream).
    watchers: Vec<(Arc<Mailbox>, u32)>,
    /// Stops the target's subscription task.
    cancel: CancellationToken,
    /// Becomes true once the subscription is active.
    ready: tokio::sync::watch::Receiver<bool>,
    /// The highest version handed to the watchers: a state that arrives
    /// twice (fed by a local owner, then its echo from NATS) or late is
    /// dropped before any work.
    last: AtomicU64,
}

/// Watched targets: domain → user → topic; the keys are the interned
/// names streams share.
type Topics = HashMap<Arc<str>, HashMap<Arc<str>, Topic>>;

/// The local edge (see the module documentation).
#[derive(Clone)]
pub struct Edge {
    inner: Arc<EdgeInner>,
}

struct EdgeInner {
    topics: RwLock<Topics>,
    resync: tokio::sync::watch::Sender<u64>,
    counts: EncodeCounts,
    bus: SharedBus,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

/// What [`Edge::run`] consumes: the bus's reconnections.
pub struct EdgeFeed {
    reconnects: tokio::sync::watch::Receiver<u64>,
}

/// A stream's interest in its targets; dropping it unregisters, and the
/// last watcher of a target ends its subscription.
pub struct Registration {
    edge: Edge,
    mailbox: Arc<Mailbox>,
    domain: Arc<str>,
    targets: Arc<[Arc<str>]>,
}

impl Registration {
    /// Returns the stream's targets (interned names), by position.
    pub fn targets(&self) -> &[Arc<str>] {
        &self.targets
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut topics = match self.edge.inner.topics.write() {
            Ok(g) => g,
            Err(e) => e.into_inner(),
        };
        let Some(users) = topics.get_mut(&*self.domain) else {
            return;
        };
        for target in self.targets.iter() {
            if let Some(t) = users.get_mut(&**target) {
                t.watchers.retain(|(mb, _)| !Arc::ptr_eq(mb, &self.mailbox));
                if t.watchers.is_empty() {
                    t.cancel.cancel();
                    users.remove(&**target);
                }
            }
        }
        if users.is_empty() {
            topics.remove(&*self.domain);
        }
    }
}

impl Edge {
    /// Returns an edge subscribing on `bus`; its subscription tasks are
    /// tracked by `tracker` and end with `shutdown`.
    pub fn new(bus: SharedBus, shutdown: CancellationToken, tracker: TaskTracker) -> Self {
        Self {
            inner: Arc::new(EdgeInner {
                topics: RwLock::new(HashMap::new()),
                resync: tokio::sync::watch::channel(0).0,
                counts: EncodeCounts::default(),
                bus,
                shutdown,
                tracker,
            }),
        }
    }

    /// Returns the encodings made so far.
    pub fn encodes(&self) -> &EncodeCounts {
        &self.inner.counts
    }

    /// Registers `mailbox` for `targets` of `domain` (distinct names; a
    /// target's position is its index) and returns once every target's
    /// subscription is active, so a state read afterwards cannot miss a
    /// change published in between.
    pub async fn register(
        &self,
        domain: &str,
        targets: &[String],
        mailbox: Arc<Mailbox>,
    ) -> ApiResult<Registration> {
        let mut waits = Vec::new();
        let mut fresh = Vec::new();
        let (domain_key, names) = {
            let mut topics = match self.inner.topics.write() {
                Ok(g) => g,
                Err(e) => e.into_inner(),
            };
            let domain_key: Arc<str> = match topics.get_key_value(domain) {
                Some((k, _)) => k.clone(),
                None => {
                    let k: Arc<str> = Arc::from(domain);
                    topics.insert(k.clone(), HashMap::new());
                    k
                }
            };
            let Some(users) = topics.get_mut(domain) else {
                return Err(ApiError::Internal("edge lost a domain".into()));
            };
            let mut names: Vec<Arc<str>> = Vec::with_capacity(targets.len());
            for (i, t) in targets.iter().enumerate() {
                let entry = (mailbox.clone(), i as u32);
                match users.get_mut(t.as_str()) {
                    Some(topic) => {
                        topic.watchers.push(entry);
                        waits.push(topic.ready.clone());
                    }
                    None => {
                        let (ready_tx, ready) = tokio::sync::watch::channel(false);
                        let cancel = self.inner.shutdown.child_token();
                        let name: Arc<str> = Arc::from(t.as_str());
                        fresh.push((name.clone(), ready_tx, cancel.clone()));
                        users.insert(
                            name,
                            Topic {
                                watchers: vec![entry],
                                cancel,
                                ready: ready.clone(),
                                last: AtomicU64::new(0),
                            },
                        );
                        waits.push(ready);
                    }
                }
                match users.get_key_value(t.as_str()) {
                    Some((k, _)) => names.push(k.clone()),
                    None => names.push(Arc::from(t.as_str())),
                }
            }
            (domain_key, names)
        };
        // From here on, dropping the registration cleans up.
        let reg = Registration {
            edge: self.clone(),
            mailbox,
            domain: domain_key.clone(),
            targets: names.into(),
        };
        for (user, ready_tx, cancel) in fresh {
            let mut sub = self
                .inner
                .bus
                .subscribe(subjects::presence_out_str(&domain_key, &user))
                .await?;
            ready_tx.send_replace(true);
            let edge = self.clone();
            let domain = domain_key.clone();
            self.inner.tracker.spawn(async move {
                // Keeps the readiness sender alive with the subscription.
                let _ready = ready_tx;
                while let Some(m) = presence_bus::next_or_shutdown(&mut sub, &cancel).await {
                    edge.receive(&domain, &user, m.payload, m.trace);
                }
            });
        }
        for mut w in waits {
            w.wait_for(|ready| *ready)
                .await
                .map_err(|_| ApiError::Unavailable("presence subscription failed".into()))?;
        }
        Ok(reg)
    }

    /// Decodes a state that arrived for `(domain, user)` once and hands it
    /// to every local mailbox watching it.
    fn receive(&self, domain: &str, user: &str, payload: Bytes, trace: Option<TraceParent>) {
        let state = match v1::PresenceState::decode(payload.clone()) {
            Ok(s) if s.domain == domain && s.user == user => s,
            Ok(s) => {
                tracing::warn!(
                    domain = %s.domain,
                    user = %s.user,
                    "state on another user's subject dropped"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "undecodable presence state");
                return;
            }
        };
        self.deliver_new(domain, user, state, payload, (trace, "bus"));
    }

    /// Hands a state published by a shard owner of this node to the
    /// local watchers at once, without the round trip through the bus
    /// (which still carries it to the other nodes; its echo here is
    /// dropped as already delivered).
    pub(crate) fn deliver_local(
        &self,
        state: v1::PresenceState,
        payload: Bytes,
        trace: Option<TraceParent>,
    ) {
        let (domain, user) = (state.domain.clone(), state.user.clone());
        self.deliver_new(&domain, &user, state, payload, (trace, "local"));
    }

    /// Delivers `state` unless a version at least as new was delivered
    /// for its target already (or nobody here watches it). A state that
    /// is part of a trace gets a `presence.deliver` span there, naming
    /// how it came (`via`: from this node's shard or over the bus) and
    /// how many of this node's watch streams it was handed to.
    fn deliver_new(
        &self,
        domain: &str,
        user: &str,
        state: v1::PresenceState,
        payload: Bytes,
        (parent, via): (Option<TraceParent>, &'static str),
    ) {
        let fresh = {
            let topics = match self.inner.topics.read() {
                Ok(g) => g,
                Err(e) => e.into_inner(),
            };
            topics
                .get(domain)
                .and_then(|u| u.get(user))
                .is_some_and(|t| t.last.fetch_max(state.version, Ordering::AcqRel) < state.version)
        };
        if !fresh {
            return;
        }
        let span = trace::child(parent, || {
            tracing::info_span!(
                "presence.deliver",
                otel.kind = "consumer",
                domain,
                user,
                version = state.version,
                via,
                watchers = tracing::field::Empty,
            )
        });
        let shared = Arc::new(Shared::new(state, payload, &self.inner.counts));
        let watchers = self.deliver(domain, user, &shared);
        if let Some(span) = span {
            span.record("watchers", watchers);
        }
    }

    /// Puts `s` into every local mailbox watching `(domain, user)`;
    /// returns how many.
    fn deliver(&self, domain: &str, user: &str, s: &Arc<Shared>) -> usize {
        let topics = match self.inner.topics.read() {
            Ok(g) => g,
            Err(e) => e.into_inner(),
        };
        let Some(topic) = topics.get(domain).and_then(|u| u.get(user)) else {
            return 0;
        };
        let watchers = topic.watchers.len();
        let mut coalesced = 0;
        for (mb, i) in &topic.watchers {
            coalesced += u64::from(mb.put(*i, s));
        }
        drop(topics);
        if coalesced > 0 {
            metrics::counter!("presence_fanout_coalesced_total").increment(coalesced);
        }
        watchers
    }

    /// Returns how many targets have a subscription on this node.
    pub fn subscribed_targets(&self) -> usize {
        let topics = match self.inner.topics.read() {
            Ok(g) => g,
            Err(e) => e.into_inner(),
        };
        topics.values().map(HashMap::len).sum()
    }

    /// Returns the feed of [`Edge::run`]: the bus's reconnections.
    pub fn subscribe(bus: &SharedBus) -> EdgeFeed {
        EdgeFeed {
            reconnects: bus.reconnects(),
        }
    }

    /// Returns a receiver that changes when streams must re-read the
    /// states of their targets (changes may have been lost).
    pub fn resyncs(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.resync.subscribe()
    }

    /// Tells every stream to resynchronize (after a reconnection, or
    /// when shards changed owner).
    pub fn resync(&self) {
        self.inner.resync.send_modify(|n| *n += 1);
    }

    /// Until `shutdown`: after a reconnection, tells every stream to
    /// resynchronize.
    pub async fn run(self, feed: EdgeFeed, shutdown: CancellationToken) {
        let EdgeFeed { mut reconnects } = feed;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = reconnects.changed() => {
                    if r.is_err() {
                        return;
                    }
                    tracing::info!("bus reconnected: streams resynchronize");
                    self.resync();
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn state(user: &str, version: u64) -> v1::PresenceState {
        v1::PresenceState {
            domain: "acme".into(),
            user: user.into(),
            version,
            ..Default::default()
        }
    }

    fn shared(user: &str, version: u64) -> Arc<Shared> {
        let s = state(user, version);
        let b = Bytes::from(s.encode_to_vec());
        Arc::new(Shared::new(s, b, &EncodeCounts::default()))
    }

    #[test]
    fn test_mailbox_keeps_one_latest_state_per_target() {
        let mb = Mailbox::new(2);
        for v in 1..=10_000 {
            mb.put(0, &shared("a", v));
            mb.put(1, &shared("b", v));
        }
        assert!(
            !mb.put(0, &shared("a", 3)),
            "an older version never replaces a newer one"
        );
        assert!(!mb.put(2, &shared("c", 1)), "no such position");
        assert_eq!(mb.len(), 2, "memory bounded by the number of targets");
        let mut got = Vec::new();
        mb.take(&mut got);
        let got: Vec<(u32, u64)> = got.iter().map(|(i, s)| (*i, s.version())).collect();
        assert_eq!(got, vec![(0, 10_000), (1, 10_000)]);
        assert!(mb.is_empty());
    }

    #[test]
    fn test_caller_identity_is_encoded_once_and_only_when_there_is_some() {
        let counts = EncodeCounts::default();
        let mut s = state("a", 1);
        let plain = Shared::new(s.clone(), s.encode_to_vec().into(), &counts);
        assert_eq!(counts.get(), (1, 0), "nothing to hide: no second encoding");
        assert_eq!(plain.event(false), plain.event(true));
        s.calls.push(v1::ActiveCall {
            call_id: "c1".into(),
            remote_number: "+4930123".into(),
            ..Default::default()
        });
        let full = Bytes::from(s.encode_to_vec());
        let with_call = Shared::new(s.clone(), full.clone(), &counts);
        assert_eq!(counts.get(), (2, 1));
        let hidden = presence_proto::frame::Frame::One(with_call.event(false))
            .to_event()
            .unwrap();
        let Some(v1::watch_event::Event::State(h)) = hidden.event else {
            panic!("{hidden:?}");
        };
        assert_eq!(h.calls[0].remote_number, "", "identity removed");
        assert_eq!(h.calls[0].call_id, "c1");
        assert_eq!(with_call.event(true), EventBytes::state(full));
    }

    #[tokio::test]
    async fn test_edge_subscribes_per_target_and_unsubscribes_with_the_last_watcher() {
        let bus: SharedBus = Arc::new(presence_bus::InProcessBus::new(64));
        let shutdown = CancellationToken::new();
        let edge = Edge::new(bus.clone(), shutdown.clone(), TaskTracker::new());
        let m1 = Arc::new(Mailbox::new(2));
        let m2 = Arc::new(Mailbox::new(1));
        let r1 = edge
            .register("acme", &["a".into(), "b".into()], m1.clone())
            .await
            .unwrap();
        let r2 = edge
            .register("acme", &["b".into()], m2.clone())
            .await
            .unwrap();
        assert_eq!(edge.subscribed_targets(), 2, "one subscription per target");
        assert!(
            Arc::ptr_eq(&r1.targets()[1], &r2.targets()[0]),
            "streams share one copy of a target's name"
        );
        for user in ["a", "b", "c"] {
            let s = state(user, 1);
            bus.publish(
                format!("presence.v1.out.acme.{user}"),
                s.encode_to_vec().into(),
            )
            .await
            .unwrap();
        }
        // The subscription tasks deliver asynchronously: wait for them.
        while m1.len() < 2 || m2.is_empty() {
            tokio::task::yield_now().await;
        }
        assert_eq!((m1.len(), m2.len()), (2, 1), "c is watched by nobody");
        assert_eq!(edge.encodes().get(), (2, 0), "a and b decoded once each");
        drop(r1);
        assert_eq!(edge.subscribed_targets(), 1, "a lost its last watcher");
        drop(r2);
        assert_eq!(edge.subscribed_targets(), 0);
        shutdown.cancel();
    }
}
