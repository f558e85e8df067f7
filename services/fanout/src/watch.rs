//! Watch streams.
//!
//! The [`Hub`] is the edge of a node: one subscription per watched
//! target (`presence.v1.out.<domain>.<user>`) feeds the mailboxes of the
//! local streams that watch it. A [`Mailbox`] keeps at most one pending state per
//! target (latest version wins), so a stream that stops reading costs
//! memory bounded by its number of targets and never slows a shard, the
//! hub or another stream. Each stream task sends a snapshot, then drains
//! its mailbox, re-checks access whenever an ACL event is applied
//! (`revoked` / `granted`), and sends heartbeats.

use crate::convert::redact;
use crate::service::Fanout;
use presence_bus::{SharedBus, subjects};
use presence_core::{ApiError, ApiResult, DomainId, UserId};
use presence_policy::{AclView, Question};
use presence_proto::v1::{self, watch_event::Event as E};
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

type Key = (String, String);

/// Local streams watching one target: (stream id, its mailbox).
type Watchers = Vec<(u64, Arc<Mailbox>)>;

/// Pending states of one stream: at most one per target.
#[derive(Default)]
pub struct Mailbox {
    pending: Mutex<HashMap<String, v1::PresenceState>>,
    notify: Notify,
}

impl Mailbox {
    /// Stores `s`, replacing an older pending state of the same target.
    /// Returns whether an older state was coalesced away.
    pub fn put(&self, s: v1::PresenceState) -> bool {
        let mut p = match self.pending.lock() {
            Ok(g) => g,
            Err(e) => e.into_inner(),
        };
        // Replaced in place when a state of the target is pending: no key
        // is allocated on the hot path.
        let coalesced = match p.get_mut(&s.user) {
            Some(old) if old.version >= s.version => return false,
            Some(old) => {
                *old = s;
                true
            }
            None => {
                p.insert(s.user.clone(), s);
                false
            }
        };
        drop(p);
        self.notify.notify_one();
        coalesced
    }

    /// Takes everything pending.
    pub fn take(&self) -> Vec<v1::PresenceState> {
        let mut p = match self.pending.lock() {
            Ok(g) => g,
            Err(e) => e.into_inner(),
        };
        p.drain().map(|(_, v)| v).collect()
    }

    /// Returns how many states are pending.
    pub fn len(&self) -> usize {
        match self.pending.lock() {
            Ok(g) => g.len(),
            Err(e) => e.into_inner().len(),
        }
    }

    /// Returns whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The local edge: which streams watch which targets. Each watched
/// target has one bus subscription to its aggregated subject
/// (`presence.v1.out.<domain>.<user>`) while at least one local stream
/// watches it, so a node receives only the changes its watchers need and
/// NATS routes interest across the cluster.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

/// One watched target: its local watchers and its subscription.
struct Topic {
    watchers: Watchers,
    /// Stops the target's subscription task.
    cancel: CancellationToken,
    /// Becomes true once the subscription is active.
    ready: tokio::sync::watch::Receiver<bool>,
}

struct HubInner {
    interest: std::sync::RwLock<HashMap<Key, Topic>>,
    next_id: AtomicU64,
    resync: tokio::sync::watch::Sender<u64>,
    bus: SharedBus,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

/// What [`Hub::run`] consumes: the bus's reconnections.
pub struct HubFeed {
    reconnects: tokio::sync::watch::Receiver<u64>,
}

/// Unregisters a stream's interest when dropped; the last watcher of a
/// target ends its subscription.
pub struct Registration {
    hub: Hub,
    id: u64,
    // The stream's own target list, shared rather than copied into
    // (domain, target) keys: per-stream memory.
    domain: String,
    targets: Arc<[String]>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = match self.hub.inner.interest.write() {
            Ok(g) => g,
            Err(e) => e.into_inner(),
        };
        for target in self.targets.iter() {
            let k: Key = (self.domain.clone(), target.clone());
            if let Some(t) = map.get_mut(&k) {
                t.watchers.retain(|(id, _)| *id != self.id);
                if t.watchers.is_empty() {
                    t.cancel.cancel();
                    map.remove(&k);
                }
            }
        }
    }
}

impl Hub {
    /// Returns a hub subscribing on `bus`; its subscription tasks are
    /// tracked by `tracker` and end with `shutdown`.
    pub fn new(bus: SharedBus, shutdown: CancellationToken, tracker: TaskTracker) -> Self {
        Self {
            inner: Arc::new(HubInner {
                interest: std::sync::RwLock::new(HashMap::new()),
                next_id: AtomicU64::new(0),
                resync: tokio::sync::watch::channel(0).0,
                bus,
                shutdown,
                tracker,
            }),
        }
    }

    /// Registers `mailbox` for `targets` of `domain` and returns once
    /// every target's subscription is active, so a state read afterwards
    /// cannot miss a change published in between.
    pub async fn register(
        &self,
        domain: &str,
        targets: Arc<[String]>,
        mailbox: Arc<Mailbox>,
    ) -> ApiResult<Registration> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut waits = Vec::new();
        let mut fresh = Vec::new();
        {
            let mut map = match self.inner.interest.write() {
                Ok(g) => g,
                Err(e) => e.into_inner(),
            };
            for t in targets.iter() {
                let k: Key = (domain.to_owned(), t.clone());
                match map.entry(k) {
                    std::collections::hash_map::Entry::Occupied(mut e) => {
                        e.get_mut().watchers.push((id, mailbox.clone()));
                        waits.push(e.get().ready.clone());
                    }
                    std::collections::hash_map::Entry::Vacant(e) => {
                        let (ready_tx, ready) = tokio::sync::watch::channel(false);
                        let cancel = self.inner.shutdown.child_token();
                        fresh.push((e.key().clone(), ready_tx, cancel.clone()));
                        e.insert(Topic {
                            watchers: vec![(id, mailbox.clone())],
                            cancel,
                            ready: ready.clone(),
                        });
                        waits.push(ready);
                    }
                }
            }
        }
        // From here on, dropping the registration cleans up.
        let reg = Registration {
            hub: self.clone(),
            id,
            domain: domain.to_owned(),
            targets,
        };
        for ((d, u), ready_tx, cancel) in fresh {
            let mut sub = self
                .inner
                .bus
                .subscribe(subjects::presence_out_str(&d, &u))
                .await?;
            ready_tx.send_replace(true);
            let hub = self.clone();
            let key: Key = (d, u);
            self.inner.tracker.spawn(async move {
                // Keeps the readiness sender alive with the subscription.
                let _ready = ready_tx;
                while let Some(m) = presence_bus::next_or_shutdown(&mut sub, &cancel).await {
                    match v1::PresenceState::decode(m.payload) {
                        Ok(s) if s.domain == key.0 && s.user == key.1 => hub.deliver(&key, s),
                        Ok(s) => tracing::warn!(
                            domain = %s.domain,
                            user = %s.user,
                            "state on another user's subject dropped"
                        ),
                        Err(e) => tracing::warn!(error = %e, "undecodable presence state"),
                    }
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

    /// Returns how many targets have a subscription on this node.
    pub fn subscribed_targets(&self) -> usize {
        match self.inner.interest.read() {
            Ok(g) => g.len(),
            Err(e) => e.into_inner().len(),
        }
    }

    /// Delivers `s`, the state of `key`'s user, to every local mailbox
    /// watching it (the subscription task knows its key: no allocation).
    fn deliver(&self, key: &Key, s: v1::PresenceState) {
        let map = match self.inner.interest.read() {
            Ok(g) => g,
            Err(e) => e.into_inner(),
        };
        let Some(topic) = map.get(key) else {
            return;
        };
        let mut coalesced = 0;
        if let Some(((_, last), rest)) = topic.watchers.split_last() {
            for (_, mb) in rest {
                coalesced += u64::from(mb.put(s.clone()));
            }
            // The last watcher takes the state itself: one clone less.
            coalesced += u64::from(last.put(s));
        }
        drop(map);
        if coalesced > 0 {
            metrics::counter!("presence_fanout_coalesced_total").increment(coalesced);
        }
    }

    /// Returns the feed of [`Hub::run`]: the bus's reconnections.
    pub fn subscribe(bus: &SharedBus) -> HubFeed {
        HubFeed {
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
    pub async fn run(self, feed: HubFeed, shutdown: CancellationToken) {
        let HubFeed { mut reconnects } = feed;
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

/// What a stream's channel carries towards the transport. Boxed, so the
/// channel's preallocated slots cost 16 bytes each rather than the size
/// of a full state (memory per idle stream).
pub type WatchItem = Result<Box<v1::WatchEvent>, tonic::Status>;

/// Limits of watch streams.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// Most targets in one stream.
    pub max_targets: usize,
    /// Most concurrent streams per principal.
    pub max_streams_per_principal: usize,
    /// Heartbeat interval when the client asks for none.
    pub heartbeat: Duration,
    /// Events buffered towards the gRPC transport per stream.
    pub send_buffer: usize,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            max_targets: 5000,
            max_streams_per_principal: 100,
            heartbeat: Duration::from_secs(30),
            send_buffer: 64,
        }
    }
}

/// Counts open streams per principal; a slot is freed when dropped.
#[derive(Clone, Default)]
pub struct StreamSlots {
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// One open stream's slot.
pub struct Slot {
    slots: StreamSlots,
    key: String,
}

impl StreamSlots {
    /// Takes a slot for `principal`, or ResourceExhausted past `max`.
    pub fn take(&self, principal: &str, max: usize) -> ApiResult<Slot> {
        let mut m = match self.open.lock() {
            Ok(g) => g,
            Err(e) => e.into_inner(),
        };
        let n = m.entry(principal.to_owned()).or_insert(0);
        if *n >= max {
            return Err(ApiError::ResourceExhausted(format!(
                "{principal} already has {max} open watch streams"
            )));
        }
        *n += 1;
        metrics::gauge!("presence_fanout_open_streams").increment(1.0);
        Ok(Slot {
            slots: self.clone(),
            key: principal.to_owned(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = match self.slots.open.lock() {
            Ok(g) => g,
            Err(e) => e.into_inner(),
        };
        if let Some(n) = m.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.key);
            }
        }
        metrics::gauge!("presence_fanout_open_streams").decrement(1.0);
    }
}

/// Everything a stream task needs.
pub struct StreamSpec {
    /// Domain.
    pub domain: DomainId,
    /// The watcher.
    pub watcher: UserId,
    /// Resolved targets, in the order they were asked.
    pub targets: Arc<[String]>,
    /// Versions the client already has.
    pub known: HashMap<String, u64>,
    /// Heartbeat interval.
    pub heartbeat: Duration,
}

fn access(target: &str, reason: &str) -> v1::AccessChange {
    v1::AccessChange {
        target: target.into(),
        reason: reason.into(),
    }
}

/// Runs one stream: snapshot, then updates, access changes and
/// heartbeats, until the client goes away or `shutdown`.
pub async fn run_stream(
    fanout: Fanout,
    acl: AclView,
    hub: Hub,
    mut spec: StreamSpec,
    tx: mpsc::Sender<WatchItem>,
    shutdown: CancellationToken,
    _slot: Slot,
) {
    let send = |e: E| {
        let tx = tx.clone();
        async move {
            tx.send(Ok(Box::new(v1::WatchEvent { event: Some(e) })))
                .await
                .is_ok()
        }
    };
    let mailbox = Arc::new(Mailbox::default());
    // Register before the snapshot so no change falls between the two.
    let _reg = match hub
        .register(spec.domain.as_str(), spec.targets.clone(), mailbox.clone())
        .await
    {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.send(Err(presence_proto::status::to_status(e))).await;
            return;
        }
    };
    let mut changes = acl.changes();
    let mut resyncs = hub.resyncs();
    // The domain's policy epoch read before the current decisions were
    // made (decisions reflect at least that epoch).
    let mut seen_epoch: Option<u64> = acl.epoch(&spec.domain);
    // Taken, not copied: the stream lives long and keeps only this.
    let mut last_sent: HashMap<String, u64> = std::mem::take(&mut spec.known);
    // caller id visibility per allowed target; absent = denied.
    let mut allowed: HashMap<String, bool> = HashMap::new();
    let decisions = match acl
        .decide(&spec.domain, &spec.watcher, &spec.targets, Question::See)
        .await
    {
        Ok(d) => d,
        Err(e) => {
            let _ = tx.send(Err(presence_proto::status::to_status(e))).await;
            return;
        }
    };
    let mut denied_set: HashSet<String> = HashSet::new();
    for (target, dec) in spec.targets.iter().zip(&decisions) {
        if dec.allowed {
            allowed.insert(target.clone(), dec.caller_id_visible);
        } else if denied_set.insert(target.clone())
            && !send(E::Denied(access(target, "not permitted"))).await
        {
            return;
        }
    }
    let snapshot: Vec<String> = spec
        .targets
        .iter()
        .filter(|t| allowed.contains_key(*t))
        .cloned()
        .collect();
    match fanout.states(&spec.domain, &snapshot).await {
        Ok(states) => {
            for (t, a) in snapshot.iter().zip(states) {
                let v = a.version;
                if last_sent.get(t).is_some_and(|k| *k >= v) {
                    continue; // resume: the client has it already
                }
                let caller_id = allowed.get(t).copied().unwrap_or(false);
                if !send(E::State(redact(a, caller_id))).await {
                    return;
                }
                last_sent.insert(t.clone(), v);
            }
        }
        Err(e) => {
            let _ = tx.send(Err(presence_proto::status::to_status(e))).await;
            return;
        }
    }
    if !send(E::SnapshotDone(v1::SnapshotDone {})).await {
        return;
    }
    // Metric handles looked up once, not per delivery.
    let delivered = metrics::counter!("presence_fanout_delivered_total");
    let delivery_lag = metrics::histogram!("presence_fanout_delivery_lag_seconds");
    let mut heartbeat = tokio::time::interval(spec.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tx.closed() => return,
            _ = mailbox.notify.notified() => {
                for s in mailbox.take() {
                    let Some(caller_id) = allowed.get(&s.user).copied() else { continue };
                    if last_sent.get(&s.user).is_some_and(|v| *v >= s.version) {
                        continue;
                    }
                    match last_sent.get_mut(&s.user) {
                        Some(v) => *v = s.version,
                        None => {
                            last_sent.insert(s.user.clone(), s.version);
                        }
                    }
                    delivered.increment(1);
                    // From the state's change at its owner to its hand-off
                    // to this stream's transport.
                    let lag_ms = presence_auth::token::now_ms().saturating_sub(s.updated_at_ms).max(0);
                    delivery_lag.record(lag_ms as f64 / 1e3);
                    if !send(E::State(redact(s, caller_id))).await {
                        return;
                    }
                }
            }
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
                // Events of other domains do not concern this stream; a
                // reset (epoch forgotten) always does.
                let epoch = acl.epoch(&spec.domain);
                if epoch.is_some() && epoch == seen_epoch {
                    continue;
                }
                let decisions = match acl.decide(&spec.domain, &spec.watcher, &spec.targets, Question::See).await {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = tx.send(Err(presence_proto::status::to_status(e))).await;
                        return;
                    }
                };
                // The epoch read before the check: an event applied while
                // it ran triggers another check.
                seen_epoch = epoch;
                let mut granted = Vec::new();
                for (target, dec) in spec.targets.iter().zip(decisions) {
                    let was = allowed.contains_key(target);
                    if was && !dec.allowed {
                        allowed.remove(target);
                        last_sent.remove(target);
                        if !send(E::Revoked(access(target, "access revoked"))).await {
                            return;
                        }
                    } else if !was && dec.allowed {
                        allowed.insert(target.clone(), dec.caller_id_visible);
                        granted.push(target.clone());
                    } else if dec.allowed {
                        // Caller-id visibility may have changed.
                        if let Some(v) = allowed.get_mut(target) {
                            *v = dec.caller_id_visible;
                        }
                    }
                }
                if !granted.is_empty() {
                    let states = match fanout.states(&spec.domain, &granted).await {
                        Ok(s) => s,
                        Err(_) => continue,
                    };
                    for (t, a) in granted.iter().zip(states) {
                        if !send(E::Granted(access(t, "access granted"))).await {
                            return;
                        }
                        let caller_id = allowed.get(t).copied().unwrap_or(false);
                        last_sent.insert(t.clone(), a.version);
                        if !send(E::State(redact(a, caller_id))).await {
                            return;
                        }
                    }
                }
            }
            r = resyncs.changed() => {
                if r.is_err() {
                    return;
                }
                // Changes may have been lost: re-read every permitted
                // target and send what is newer than what was sent.
                let targets: Vec<String> = spec.targets.iter().filter(|t| allowed.contains_key(*t)).cloned().collect();
                let Ok(states) = fanout.states(&spec.domain, &targets).await else { continue };
                for (t, a) in targets.iter().zip(states) {
                    if last_sent.get(t).is_some_and(|v| *v >= a.version) {
                        continue;
                    }
                    last_sent.insert(t.clone(), a.version);
                    let caller_id = allowed.get(t).copied().unwrap_or(false);
                    if !send(E::State(redact(a, caller_id))).await {
                        return;
                    }
                }
            }
            _ = heartbeat.tick() => {
                if !send(E::Heartbeat(v1::Heartbeat { at_ms: presence_auth::token::now_ms() })).await {
                    return;
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

    #[test]
    fn test_mailbox_keeps_one_latest_state_per_target() {
        let mb = Mailbox::default();
        for v in 1..=10_000 {
            mb.put(state("a", v));
            mb.put(state("b", v));
        }
        assert!(
            !mb.put(state("a", 3)),
            "an older version never replaces a newer one"
        );
        assert_eq!(mb.len(), 2, "memory bounded by the number of targets");
        let mut got: Vec<(String, u64)> =
            mb.take().into_iter().map(|s| (s.user, s.version)).collect();
        got.sort();
        assert_eq!(
            got,
            vec![("a".to_string(), 10_000), ("b".to_string(), 10_000)]
        );
        assert!(mb.is_empty());
    }

    #[tokio::test]
    async fn test_hub_subscribes_per_target_and_unsubscribes_with_the_last_watcher() {
        let bus: SharedBus = Arc::new(presence_bus::InProcessBus::new(64));
        let shutdown = CancellationToken::new();
        let hub = Hub::new(bus.clone(), shutdown.clone(), TaskTracker::new());
        let m1 = Arc::new(Mailbox::default());
        let m2 = Arc::new(Mailbox::default());
        let r1 = hub
            .register("acme", vec!["a".into(), "b".into()].into(), m1.clone())
            .await
            .unwrap();
        let r2 = hub
            .register("acme", vec!["b".into()].into(), m2.clone())
            .await
            .unwrap();
        assert_eq!(hub.subscribed_targets(), 2, "one subscription per target");
        for (user, v) in [("a", 1), ("b", 1), ("c", 1)] {
            let s = state(user, v);
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
        drop(r1);
        assert_eq!(hub.subscribed_targets(), 1, "a lost its last watcher");
        drop(r2);
        assert_eq!(hub.subscribed_targets(), 0);
        shutdown.cancel();
    }

    #[test]
    fn test_stream_slots_are_limited_and_freed() {
        let slots = StreamSlots::default();
        let a = slots.take("user acme/1", 2);
        let b = slots.take("user acme/1", 2);
        assert!(a.is_ok() && b.is_ok());
        assert!(matches!(
            slots.take("user acme/1", 2),
            Err(ApiError::ResourceExhausted(_))
        ));
        assert!(slots.take("user acme/2", 2).is_ok());
        drop(a);
        assert!(slots.take("user acme/1", 2).is_ok());
    }
}
