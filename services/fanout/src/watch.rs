//! Watch streams.
//!
//! The [`Hub`] is the edge of a node: one subscription to
//! `presence.v1.out.>` feeds the mailboxes of the local streams that
//! watch each target. A [`Mailbox`] keeps at most one pending state per
//! target (latest version wins), so a stream that stops reading costs
//! memory bounded by its number of targets and never slows a shard, the
//! hub or another stream. Each stream task sends a snapshot, then drains
//! its mailbox, re-checks access whenever an ACL event is applied
//! (`revoked` / `granted`), and sends heartbeats.

use crate::convert::state_to_proto;
use crate::service::Fanout;
use futures_util::StreamExt;
use presence_bus::{BusSubscription, SharedBus, subjects};
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
        let coalesced = match p.get(&s.user) {
            Some(old) if old.version >= s.version => return false,
            Some(_) => true,
            None => false,
        };
        p.insert(s.user.clone(), s);
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

/// The local edge: which streams watch which targets.
#[derive(Clone, Default)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    interest: std::sync::RwLock<HashMap<Key, Watchers>>,
    next_id: AtomicU64,
    resync: tokio::sync::watch::Sender<u64>,
}

impl Default for HubInner {
    fn default() -> Self {
        Self {
            interest: std::sync::RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            resync: tokio::sync::watch::channel(0).0,
        }
    }
}

/// What [`Hub::run`] consumes: presence changes and reconnections.
pub struct HubFeed {
    sub: BusSubscription,
    reconnects: tokio::sync::watch::Receiver<u64>,
}

/// Unregisters a stream's interest when dropped.
pub struct Registration {
    hub: Hub,
    id: u64,
    keys: Vec<Key>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = match self.hub.inner.interest.write() {
            Ok(g) => g,
            Err(e) => e.into_inner(),
        };
        for k in &self.keys {
            if let Some(v) = map.get_mut(k) {
                v.retain(|(id, _)| *id != self.id);
                if v.is_empty() {
                    map.remove(k);
                }
            }
        }
    }
}

impl Hub {
    /// Registers `mailbox` for `targets` of `domain`.
    pub fn register(
        &self,
        domain: &str,
        targets: &[String],
        mailbox: Arc<Mailbox>,
    ) -> Registration {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let keys: Vec<Key> = targets
            .iter()
            .map(|t| (domain.to_owned(), t.clone()))
            .collect();
        let mut map = match self.inner.interest.write() {
            Ok(g) => g,
            Err(e) => e.into_inner(),
        };
        for k in &keys {
            map.entry(k.clone())
                .or_default()
                .push((id, mailbox.clone()));
        }
        Registration {
            hub: self.clone(),
            id,
            keys,
        }
    }

    /// Delivers a state to every local mailbox watching its user.
    pub fn dispatch(&self, s: v1::PresenceState) {
        let map = match self.inner.interest.read() {
            Ok(g) => g,
            Err(e) => e.into_inner(),
        };
        let Some(boxes) = map.get(&(s.domain.clone(), s.user.clone())) else {
            return;
        };
        for (_, mb) in boxes {
            if mb.put(s.clone()) {
                metrics::counter!("presence_fanout_coalesced_total").increment(1);
            }
        }
    }

    /// Subscribes to every presence change (`presence.v1.out.>`) and to
    /// the bus's reconnections.
    pub async fn subscribe(bus: &SharedBus) -> ApiResult<HubFeed> {
        Ok(HubFeed {
            sub: bus.subscribe(format!("{}.out.>", subjects::PREFIX)).await?,
            reconnects: bus.reconnects(),
        })
    }

    /// Returns a receiver that changes when streams must re-read the
    /// states of their targets (changes may have been lost).
    pub fn resyncs(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.resync.subscribe()
    }

    /// Feeds mailboxes until `shutdown`; after a reconnection, tells
    /// every stream to resynchronize.
    pub async fn run(self, feed: HubFeed, shutdown: CancellationToken) {
        let HubFeed {
            mut sub,
            mut reconnects,
        } = feed;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = reconnects.changed() => {
                    if r.is_ok() {
                        tracing::info!("bus reconnected: streams resynchronize");
                        self.inner.resync.send_modify(|n| *n += 1);
                    }
                }
                m = sub.next() => match m {
                    None => return,
                    Some(m) => match v1::PresenceState::decode(m.payload) {
                        Ok(s) => self.dispatch(s),
                        Err(e) => tracing::warn!(error = %e, "undecodable presence state"),
                    },
                },
            }
        }
    }
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
    pub targets: Vec<String>,
    /// Versions the client already has.
    pub known: HashMap<String, u64>,
    /// Heartbeat interval.
    pub heartbeat: Duration,
}

fn redact(mut s: v1::PresenceState, caller_id: bool) -> v1::PresenceState {
    if !caller_id {
        for c in &mut s.calls {
            c.remote_number.clear();
            c.remote_name.clear();
        }
    }
    s
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
    spec: StreamSpec,
    tx: mpsc::Sender<Result<v1::WatchEvent, tonic::Status>>,
    shutdown: CancellationToken,
    _slot: Slot,
) {
    let send = |e: E| {
        let tx = tx.clone();
        async move { tx.send(Ok(v1::WatchEvent { event: Some(e) })).await.is_ok() }
    };
    let mailbox = Arc::new(Mailbox::default());
    // Register before the snapshot so no change falls between the two.
    let _reg = hub.register(spec.domain.as_str(), &spec.targets, mailbox.clone());
    let mut changes = acl.changes();
    let mut resyncs = hub.resyncs();
    // The domain's policy epoch read before the current decisions were
    // made (decisions reflect at least that epoch).
    let mut seen_epoch: Option<u64> = acl.epoch(&spec.domain);
    let mut last_sent: HashMap<String, u64> = spec.known.clone();
    // caller id visibility per allowed target; absent = denied.
    let mut allowed: HashMap<String, bool> = HashMap::new();
    let decisions = match acl
        .check(&spec.domain, &spec.watcher, &spec.targets, Question::See)
        .await
    {
        Ok(d) => d,
        Err(e) => {
            let _ = tx.send(Err(presence_proto::status::to_status(e))).await;
            return;
        }
    };
    let mut denied_set: HashSet<String> = HashSet::new();
    for dec in &decisions {
        if dec.allowed {
            allowed.insert(dec.target.clone(), dec.caller_id_visible);
        } else if denied_set.insert(dec.target.clone())
            && !send(E::Denied(access(&dec.target, "not permitted"))).await
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
                if !send(E::State(state_to_proto(
                    spec.domain.as_str(),
                    t,
                    &a,
                    caller_id,
                )))
                .await
                {
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
                    last_sent.insert(s.user.clone(), s.version);
                    metrics::counter!("presence_fanout_delivered_total").increment(1);
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
                let decisions = match acl.check(&spec.domain, &spec.watcher, &spec.targets, Question::See).await {
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
                for dec in decisions {
                    let was = allowed.contains_key(&dec.target);
                    if was && !dec.allowed {
                        allowed.remove(&dec.target);
                        last_sent.remove(&dec.target);
                        if !send(E::Revoked(access(&dec.target, "access revoked"))).await {
                            return;
                        }
                    } else if !was && dec.allowed {
                        allowed.insert(dec.target.clone(), dec.caller_id_visible);
                        granted.push(dec.target.clone());
                    } else if dec.allowed {
                        // Caller-id visibility may have changed.
                        allowed.insert(dec.target.clone(), dec.caller_id_visible);
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
                        if !send(E::State(state_to_proto(spec.domain.as_str(), t, &a, caller_id))).await {
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
                    if !send(E::State(state_to_proto(spec.domain.as_str(), t, &a, caller_id))).await {
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

    #[test]
    fn test_hub_dispatches_to_interested_mailboxes_only() {
        let hub = Hub::default();
        let m1 = Arc::new(Mailbox::default());
        let m2 = Arc::new(Mailbox::default());
        let r1 = hub.register("acme", &["a".into(), "b".into()], m1.clone());
        let _r2 = hub.register("acme", &["b".into()], m2.clone());
        hub.dispatch(state("a", 1));
        hub.dispatch(state("b", 1));
        hub.dispatch(state("c", 1));
        assert_eq!((m1.len(), m2.len()), (2, 1));
        drop(r1);
        m1.take();
        hub.dispatch(state("a", 2));
        assert!(m1.is_empty(), "unregistered on drop");
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
