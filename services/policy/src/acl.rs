//! The ACL view: cached access decisions for fanout nodes.
//!
//! Decisions come from the local directory store ([`AclView::new`]) or
//! from policy nodes over the bus ([`AclView::remote`]).
//!
//! Decisions are cached in a bounded moka cache with one entry per
//! (domain, watcher, question): a table of that watcher's decisions under
//! one policy epoch, replaced (copy on write) when misses are added. A
//! check of many targets, the common case (a stream subscribing, or every
//! stream of a domain re-checking after an ACL event), costs one moka
//! lookup plus one hash lookup per target. moka's key is a 64-bit
//! fingerprint of (domain, watcher, question) under a per-process random
//! hash key, and the table keeps that tuple itself: a table that does not
//! match exactly is a miss, so a fingerprint collision can cost a
//! re-evaluation but never hand one user's answers to another. Capacity
//! counts decisions (a table weighs its size plus one).
//!
//! The epoch of a domain is bumped by every change that can widen or
//! narrow access, inside the same commit,
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
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The decisions cached for one watcher and question under one epoch,
/// with the exact (domain, watcher, question) they answer.
struct Table {
    domain: Box<str>,
    watcher: Box<str>,
    see: bool,
    epoch: u64,
    decisions: HashMap<Box<str>, CachedDecision>,
}

impl Table {
    fn answers(&self, d: &str, w: &str, see: bool) -> bool {
        self.see == see && *self.watcher == *w && *self.domain == *d
    }

    /// moka's weight: the number of decisions, plus one for the table.
    fn weight(&self) -> u32 {
        u32::try_from(self.decisions.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1)
    }
}

/// moka's hasher for keys that already are random fingerprints: it
/// passes them through instead of hashing them again.
#[derive(Clone, Copy, Default)]
struct Prehashed;

/// The hasher of [`Prehashed`].
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

impl BuildHasher for Prehashed {
    type Hasher = PassThrough;
    fn build_hasher(&self) -> PassThrough {
        PassThrough::default()
    }
}

/// What [`AclView::run`] consumes: ACL events and reconnections.
pub struct AclFeed {
    sub: BusSubscription,
    reconnects: tokio::sync::watch::Receiver<u64>,
}

/// A decision as the cache keeps it (see [`AclView::cached`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedDecision {
    /// Whether the watcher may see (or pick up) the target.
    pub allowed: bool,
    /// The deciding rule (`v1::Rule` as i32).
    pub rule: i32,
    /// Whether caller identity may be shown with the target's calls.
    pub caller_id_visible: bool,
}

impl CachedDecision {
    fn of(d: &v1::Decision) -> Self {
        Self {
            allowed: d.allowed,
            rule: d.rule,
            caller_id_visible: d.caller_id_visible,
        }
    }

    fn decision(self, target: &str) -> v1::Decision {
        v1::Decision {
            target: target.to_owned(),
            allowed: self.allowed,
            rule: self.rule,
            caller_id_visible: self.caller_id_visible,
        }
    }
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
    cache: moka::sync::Cache<u64, Arc<Table>, Prehashed>,
    fingerprints: std::hash::RandomState,
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
                cache: moka::sync::Cache::builder()
                    .max_capacity(capacity)
                    .weigher(|_, t: &Arc<Table>| t.weight())
                    .build_with_hasher(Prehashed),
                fingerprints: std::hash::RandomState::new(),
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

    fn fingerprint(&self, d: &str, w: &str, see: bool) -> u64 {
        let mut h = self.inner.fingerprints.build_hasher();
        d.hash(&mut h);
        w.hash(&mut h);
        see.hash(&mut h);
        h.finish()
    }

    /// Returns the table cached for (d, w, see) if it is of `epoch`.
    fn table(&self, d: &str, w: &str, see: bool, epoch: u64) -> Option<Arc<Table>> {
        let t = self.inner.cache.get(&self.fingerprint(d, w, see))?;
        (t.epoch == epoch && t.answers(d, w, see)).then_some(t)
    }

    /// Returns the cached answer to `q` for `watcher` and `target` under
    /// the domain's current local epoch, without evaluating or
    /// allocating; `None` when it is not cached (then use
    /// [`AclView::check`]).
    pub fn cached(
        &self,
        d: &DomainId,
        watcher: &UserId,
        target: &str,
        q: Question,
    ) -> Option<CachedDecision> {
        let epoch = self.epoch(d)?;
        let t = self.table(d.as_str(), watcher.as_str(), q == Question::See, epoch)?;
        t.decisions.get(target).copied()
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
        let decided = self.decide(d, watcher, targets, q).await?;
        Ok(targets
            .iter()
            .zip(decided)
            .map(|(t, c)| c.decision(t))
            .collect())
    }

    /// Like [`AclView::check`], but returns the decisions in the order of
    /// `targets` without building reply messages: a batch of hits costs
    /// one cache lookup plus one hash lookup per target.
    pub async fn decide<T: AsRef<str> + Sync>(
        &self,
        d: &DomainId,
        watcher: &UserId,
        targets: &[T],
        q: Question,
    ) -> ApiResult<Vec<CachedDecision>> {
        let see = q == Question::See;
        let table = self
            .epoch(d)
            .and_then(|e| self.table(d.as_str(), watcher.as_str(), see, e));
        let mut out: Vec<Option<CachedDecision>> = Vec::with_capacity(targets.len());
        let mut misses: Vec<usize> = Vec::new();
        for (i, t) in targets.iter().enumerate() {
            let hit = table
                .as_ref()
                .and_then(|tb| tb.decisions.get(t.as_ref()).copied());
            if hit.is_none() {
                misses.push(i);
            }
            out.push(hit);
        }
        metrics::counter!("presence_acl_cache_hits_total")
            .increment((targets.len() - misses.len()) as u64);
        if !misses.is_empty() {
            self.fill(d, watcher, targets, q, table, &misses, &mut out)
                .await?;
        }
        Ok(out
            .into_iter()
            .map(|c| {
                c.unwrap_or(CachedDecision {
                    allowed: false,
                    rule: v1::Rule::Unspecified as i32,
                    caller_id_visible: false,
                })
            })
            .collect())
    }

    /// Evaluates the `misses` (indexes into `targets`), stores them in
    /// `out` and caches them in a new table for the watcher.
    #[allow(clippy::too_many_arguments)]
    async fn fill<T: AsRef<str> + Sync>(
        &self,
        d: &DomainId,
        watcher: &UserId,
        targets: &[T],
        q: Question,
        table: Option<Arc<Table>>,
        misses: &[usize],
        out: &mut [Option<CachedDecision>],
    ) -> ApiResult<()> {
        metrics::counter!("presence_acl_cache_misses_total").increment(misses.len() as u64);
        let see = q == Question::See;
        let wanted: Vec<String> = misses
            .iter()
            .map(|i| targets[*i].as_ref().to_owned())
            .collect();
        let (epoch, fresh) = match &self.inner.source {
            Source::Local(store) => evaluate(store, d, watcher, &wanted, q)?,
            Source::Remote { bus, timeout } => {
                // Never an answer older than the newest change seen here.
                let min_epoch = self.epoch(d).unwrap_or(0);
                crate::remote::ask(bus, d, watcher, &wanted, q, min_epoch, *timeout).await?
            }
        };
        self.raise(d.as_str(), epoch);
        // Keep what the table already knew only if it is of the epoch the
        // evaluation read; a table of another epoch is dropped whole.
        let mut decisions = match table {
            Some(tb) if tb.epoch == epoch => tb.decisions.clone(),
            _ => HashMap::with_capacity(fresh.len()),
        };
        if fresh.len() != misses.len()
            || misses
                .iter()
                .zip(&fresh)
                .any(|(i, dec)| dec.target != targets[*i].as_ref())
        {
            return Err(ApiError::Internal(
                "policy answered for other targets than asked".into(),
            ));
        }
        for (i, dec) in misses.iter().zip(fresh) {
            let c = CachedDecision::of(&dec);
            decisions.insert(targets[*i].as_ref().into(), c);
            out[*i] = Some(c);
        }
        let key = self.fingerprint(d.as_str(), watcher.as_str(), see);
        self.inner.cache.insert(
            key,
            Arc::new(Table {
                domain: d.as_str().into(),
                watcher: watcher.as_str().into(),
                see,
                epoch,
                decisions,
            }),
        );
        Ok(())
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

    /// Returns the number of cached decisions (approximate: tables of
    /// past epochs count until they are replaced or evicted).
    pub fn cached_entries(&self) -> u64 {
        self.inner.cache.run_pending_tasks();
        self.inner
            .cache
            .weighted_size()
            .saturating_sub(self.inner.cache.entry_count())
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn table(d: &str, w: &str, epoch: u64, target: &str) -> Arc<Table> {
        let mut decisions = HashMap::new();
        decisions.insert(
            target.into(),
            CachedDecision {
                allowed: true,
                rule: 1,
                caller_id_visible: true,
            },
        );
        Arc::new(Table {
            domain: d.into(),
            watcher: w.into(),
            see: true,
            epoch,
            decisions,
        })
    }

    /// A table found under another watcher's fingerprint (a collision) or
    /// of another epoch is a miss, never an answer.
    #[test]
    fn colliding_or_stale_tables_are_misses() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let view = AclView::new(store, 100);
        let d = DomainId::parse("acme").unwrap();
        let carol = UserId::parse("carol").unwrap();
        view.raise("acme", 7);
        let key = view.fingerprint("acme", "carol", true);

        // Alice's table stored where carol's belongs.
        view.inner
            .cache
            .insert(key, table("acme", "alice", 7, "bob"));
        assert_eq!(view.cached(&d, &carol, "bob", Question::See), None);
        // Carol's own table, but of an older epoch.
        view.inner
            .cache
            .insert(key, table("acme", "carol", 6, "bob"));
        assert_eq!(view.cached(&d, &carol, "bob", Question::See), None);
        // Carol's table of the current epoch answers, for See only.
        view.inner
            .cache
            .insert(key, table("acme", "carol", 7, "bob"));
        assert!(
            view.cached(&d, &carol, "bob", Question::See)
                .is_some_and(|c| c.allowed)
        );
        assert_eq!(view.cached(&d, &carol, "bob", Question::Pickup), None);
    }
}
