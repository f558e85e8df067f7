//! The ACL view: cached access decisions for fanout nodes.
//!
//! Decisions come from the local directory store ([`AclView::new`]) or
//! from policy nodes over the bus ([`AclView::remote`]).
//!
//! Decisions are cached in a bounded moka cache keyed by (domain, policy
//! epoch, watcher, target, question). The epoch of a domain is bumped by
//! every change that can widen or narrow access, inside the same commit,
//! and announced on `presence.v1.acl.<domain>`. The view applies those
//! events to its local epochs; a lookup uses the local epoch, so once an
//! event is applied, every entry cached before it is unreachable and the
//! next lookup evaluates afresh. Evaluations are keyed by the epoch read
//! *before* they ran, so an evaluation racing with a change can never be
//! cached under the newer epoch. Hence: after a change event is applied,
//! no cached answer is more permissive than a fresh evaluation.

use crate::service::{Question, evaluate};
use futures_util::StreamExt;
use presence_bus::{BusSubscription, SharedBus, subjects};
use presence_core::{ApiError, ApiResult, DomainId, UserId};
use presence_directory::Store;
use presence_proto::v1;
use prost::Message;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

type Key = (Arc<str>, u64, Arc<str>, Arc<str>, bool);

/// What [`AclView::run`] consumes: ACL events and reconnections.
pub struct AclFeed {
    sub: BusSubscription,
    reconnects: tokio::sync::watch::Receiver<u64>,
}

/// A cached decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cached {
    allowed: bool,
    rule: i32,
    caller_id_visible: bool,
}

/// Cached access decisions kept correct by ACL events.
#[derive(Clone)]
pub struct AclView {
    inner: Arc<Inner>,
}

/// Where decisions come from on a cache miss.
enum Source {
    /// The directory store of this process.
    Local(Arc<Store>),
    /// Policy nodes over the bus (request/reply).
    Remote { bus: SharedBus, timeout: Duration },
}

struct Inner {
    source: Source,
    cache: moka::sync::Cache<Key, Cached>,
    epochs: RwLock<HashMap<String, u64>>,
    applied: tokio::sync::watch::Sender<u64>,
}

impl AclView {
    /// Returns a view evaluating against `store`, caching at most
    /// `capacity` decisions.
    pub fn new(store: Arc<Store>, capacity: u64) -> Self {
        Self::with_source(Source::Local(store), capacity)
    }

    /// Returns a view that asks policy nodes over `bus` on cache misses
    /// (for fanout processes without the directory store).
    pub fn remote(bus: SharedBus, capacity: u64, timeout: Duration) -> Self {
        Self::with_source(Source::Remote { bus, timeout }, capacity)
    }

    fn with_source(source: Source, capacity: u64) -> Self {
        let (applied, _) = tokio::sync::watch::channel(0);
        Self {
            inner: Arc::new(Inner {
                source,
                cache: moka::sync::Cache::builder().max_capacity(capacity).build(),
                epochs: RwLock::new(HashMap::new()),
                applied,
            }),
        }
    }

    /// Returns the local epoch of a domain, if the view knows it.
    pub fn epoch(&self, d: &DomainId) -> Option<u64> {
        self.read_epochs().get(d.as_str()).copied()
    }

    /// Raises the local epoch of a domain to at least `epoch`. Raising
    /// only makes older entries unreachable, so it is always safe.
    fn raise(&self, d: &str, epoch: u64) {
        let mut map = match self.inner.epochs.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let e = map.entry(d.to_owned()).or_insert(epoch);
        *e = (*e).max(epoch);
    }

    fn read_epochs(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, u64>> {
        match self.inner.epochs.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Applies an ACL event: the domain's epoch moves up to the event's.
    pub fn apply(&self, ev: &v1::AclEvent) {
        self.raise(&ev.domain, ev.epoch);
        metrics::counter!("presence_acl_events_total").increment(1);
        self.inner.applied.send_modify(|n| *n += 1);
    }

    /// Answers `q` for one watcher and many targets, from the cache where
    /// possible. Unknown targets are denied with rule `OTHER_DOMAIN`; an
    /// unknown watcher is `NotFound`; with a remote source and no policy
    /// node answering, `Unavailable`. Decisions are cached under the epoch
    /// the evaluation read before it ran.
    pub async fn check(
        &self,
        d: &DomainId,
        watcher: &UserId,
        targets: &[String],
        q: Question,
    ) -> ApiResult<Vec<v1::Decision>> {
        let dk: Arc<str> = Arc::from(d.as_str());
        let wk: Arc<str> = Arc::from(watcher.as_str());
        let see = q == Question::See;
        let mut out: Vec<Option<v1::Decision>> = vec![None; targets.len()];
        let mut misses: Vec<usize> = Vec::new();
        match self.epoch(d) {
            Some(epoch) => {
                for (i, t) in targets.iter().enumerate() {
                    let key = (dk.clone(), epoch, wk.clone(), Arc::from(t.as_str()), see);
                    match self.inner.cache.get(&key) {
                        Some(c) => {
                            out[i] = Some(v1::Decision {
                                target: t.clone(),
                                allowed: c.allowed,
                                rule: c.rule,
                                caller_id_visible: c.caller_id_visible,
                            })
                        }
                        None => misses.push(i),
                    }
                }
            }
            None => misses.extend(0..targets.len()),
        }
        metrics::counter!("presence_acl_cache_hits_total")
            .increment((targets.len() - misses.len()) as u64);
        if !misses.is_empty() {
            metrics::counter!("presence_acl_cache_misses_total").increment(misses.len() as u64);
            let wanted: Vec<String> = misses.iter().map(|i| targets[*i].clone()).collect();
            let (epoch, fresh) = match &self.inner.source {
                Source::Local(store) => evaluate(store, d, watcher, &wanted, q)?,
                Source::Remote { bus, timeout } => {
                    crate::remote::ask(bus, d, watcher, &wanted, q, *timeout).await?
                }
            };
            self.raise(d.as_str(), epoch);
            for (i, dec) in misses.into_iter().zip(fresh) {
                let key = (
                    dk.clone(),
                    epoch,
                    wk.clone(),
                    Arc::from(dec.target.as_str()),
                    see,
                );
                self.inner.cache.insert(
                    key,
                    Cached {
                        allowed: dec.allowed,
                        rule: dec.rule,
                        caller_id_visible: dec.caller_id_visible,
                    },
                );
                out[i] = Some(dec);
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// Returns the targets `sel` names for `watcher` (see
    /// [`crate::service::resolve_selector`]), from the store or from a
    /// policy node.
    pub async fn resolve(
        &self,
        d: &DomainId,
        watcher: &UserId,
        sel: &presence_proto::v1::watch_request::Selector,
        max: usize,
    ) -> ApiResult<Vec<String>> {
        let list = match &self.inner.source {
            Source::Local(store) => {
                let (store, d, w, sel) = (store.clone(), d.clone(), watcher.clone(), sel.clone());
                tokio::task::spawn_blocking(move || {
                    crate::service::resolve_selector(&store, &d, &w, &sel, max)
                })
                .await
                .map_err(|e| ApiError::Internal(format!("resolve task failed: {e}")))??
            }
            Source::Remote { bus, timeout } => {
                crate::remote::resolve(bus, d, watcher, sel, *timeout).await?
            }
        };
        if list.len() > max {
            return Err(ApiError::ResourceExhausted(format!(
                "{} targets, at most {max}",
                list.len()
            )));
        }
        Ok(list)
    }

    /// Returns whether `user` exists in `d`. Cached like any decision (a
    /// user sees itself exactly while it exists; deleting it moves the
    /// domain's epoch).
    pub async fn user_exists(&self, d: &DomainId, user: &UserId) -> ApiResult<bool> {
        match self
            .check(d, user, &[user.to_string()], Question::See)
            .await
        {
            Ok(v) => Ok(v.first().is_some_and(|x| x.allowed)),
            Err(ApiError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Returns a receiver that changes whenever an ACL event is applied
    /// (live streams re-check their targets then).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.applied.subscribe()
    }

    /// Returns the number of cached decisions (approximate).
    pub fn cached_entries(&self) -> u64 {
        self.inner.cache.run_pending_tasks();
        self.inner.cache.entry_count()
    }

    /// Waits until the view has applied an event bringing domain `d` to
    /// at least `epoch`, or the timeout passes. Returns whether it did.
    pub async fn wait_for_epoch(&self, d: &DomainId, epoch: u64, timeout: Duration) -> bool {
        let mut rx = self.inner.applied.subscribe();
        let wait = async {
            loop {
                if self
                    .read_epochs()
                    .get(d.as_str())
                    .is_some_and(|e| *e >= epoch)
                {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
            && self
                .read_epochs()
                .get(d.as_str())
                .is_some_and(|e| *e >= epoch)
    }

    /// Subscribes to the ACL events of every domain and to the bus's
    /// reconnections; pass the result to [`AclView::run`]. Subscribing
    /// first means no event published after this returns can be missed.
    pub async fn subscribe(bus: &SharedBus) -> ApiResult<AclFeed> {
        Ok(AclFeed {
            sub: bus.subscribe(subjects::acl_all()).await?,
            reconnects: bus.reconnects(),
        })
    }

    /// Forgets every cached decision and every local epoch, then wakes
    /// live streams to re-check: used when ACL events may have been lost
    /// (reconnection, slow consumer).
    pub fn reset(&self) {
        self.inner.cache.invalidate_all();
        match self.inner.epochs.write() {
            Ok(mut g) => g.clear(),
            Err(p) => p.into_inner().clear(),
        }
        metrics::counter!("presence_acl_resets_total").increment(1);
        self.inner.applied.send_modify(|n| *n += 1);
    }

    /// Applies ACL events from `sub` until `shutdown` or the end of the
    /// subscription.
    pub async fn run(self, feed: AclFeed, shutdown: CancellationToken) {
        let AclFeed {
            mut sub,
            mut reconnects,
        } = feed;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = reconnects.changed() => {
                    if r.is_ok() {
                        tracing::info!("bus reconnected: acl cache reset");
                        self.reset();
                    }
                }
                m = sub.next() => match m {
                    None => return,
                    Some(m) => match v1::AclEvent::decode(m.payload) {
                        Ok(ev) => self.apply(&ev),
                        Err(e) => tracing::warn!(error = %e, subject = %m.subject, "malformed acl event"),
                    },
                },
            }
        }
    }
}
