//! Limits that keep one tenant (or one device, or one principal) from
//! starving the others: token buckets for ingest rates, and counted
//! slots for open watch streams.
//!
//! - **Ingest per domain**: each domain may have at most
//!   `domain_events.per_second` events accepted per second (bursts up to
//!   `domain_events.burst`). The check runs before anything else is done
//!   with an event (before validation and the directory lookups), so a
//!   flooding domain's excess costs one hash lookup per event and is
//!   answered `REJECT_REASON_RATE_LIMITED` ("domain … over its ingest
//!   quota"). Each node has one bucket per domain on the wall clock for
//!   the events it receives (gRPC `Publish`, and NATS ingest when every
//!   shard is in this process). With shards owned across nodes, the
//!   owner of a shard admits the NATS-published events of its users with
//!   one bucket per domain of `1/shards` of the rate before they reach
//!   the input log (`cluster::admission`), and applies the same share to
//!   gRPC-published events on the log's clock (the time each event
//!   reached the input log), so a new owner replaying the log admits
//!   what the old one admitted; a gRPC `Publish` is first cut at its
//!   entry node before it reaches the log.
//! - **Streams per domain**: at most `max_streams_per_domain` open watch
//!   streams per domain on a node (`RESOURCE_EXHAUSTED`), on top of the
//!   limit per principal.
//!
//! Every refusal is counted in
//! `presence_fanout_quota_rejected_total{domain, quota}` (`quota` is
//! `ingest` or `streams`).

use crate::shard::RateLimit;
use presence_core::{ApiError, ApiResult, DomainId};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(e) => e.into_inner(),
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: i64,
}

/// Token buckets by key, all with the same rate.
#[derive(Debug)]
pub struct Buckets<K> {
    rate: RateLimit,
    map: HashMap<K, Bucket>,
}

impl<K: Hash + Eq> Buckets<K> {
    /// Returns empty buckets of `rate` (a bucket starts full).
    pub fn new(rate: RateLimit) -> Self {
        Self {
            rate,
            map: HashMap::new(),
        }
    }

    /// Takes a token from `key`'s bucket at `now_ms`; `make` builds the
    /// key when the bucket is new (no allocation for known keys).
    pub fn admit<Q>(&mut self, key: &Q, make: impl FnOnce() -> K, now_ms: i64) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let burst = f64::from(self.rate.burst.max(1));
        let rate = f64::from(self.rate.per_second) / 1000.0;
        let b = match self.map.get_mut(key) {
            Some(b) => b,
            None => self.map.entry(make()).or_insert(Bucket {
                tokens: burst,
                at_ms: now_ms,
            }),
        };
        b.tokens = (b.tokens + (now_ms - b.at_ms).max(0) as f64 * rate).min(burst);
        b.at_ms = b.at_ms.max(now_ms);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Per-domain limits.
#[derive(Debug, Clone, Copy)]
pub struct DomainQuota {
    /// Events accepted per domain (`None`: no limit).
    pub events: Option<RateLimit>,
    /// Open watch streams per domain on a node.
    pub max_streams: usize,
}

impl Default for DomainQuota {
    fn default() -> Self {
        Self {
            events: Some(RateLimit {
                per_second: 20_000,
                burst: 40_000,
            }),
            max_streams: 20_000,
        }
    }
}

impl DomainQuota {
    /// The share of the ingest rate one of `shards` shards enforces.
    pub fn per_shard(&self, shards: usize) -> Option<RateLimit> {
        let n = shards.max(1) as u32;
        self.events.map(|r| RateLimit {
            per_second: r.per_second.div_ceil(n).max(1),
            burst: r.burst.div_ceil(n).max(1),
        })
    }
}

/// Counts a refusal of `domain` by `quota`.
pub fn count_rejected(domain: &str, quota: &'static str) {
    metrics::counter!(
        "presence_fanout_quota_rejected_total",
        "domain" => domain.to_owned(),
        "quota" => quota
    )
    .increment(1);
}

/// The ingest quota of a set of domains: one bucket per domain.
#[derive(Debug)]
pub struct IngestQuota {
    buckets: Option<Buckets<DomainId>>,
}

impl IngestQuota {
    /// Returns the quota of `rate` per domain (`None`: no limit).
    pub fn new(rate: Option<RateLimit>) -> Self {
        Self {
            buckets: rate.map(Buckets::new),
        }
    }

    /// Takes one event of `d` at `now_ms`; false (counted) when `d` is
    /// over its quota.
    pub fn admit(&mut self, d: &DomainId, now_ms: i64) -> bool {
        let Some(b) = self.buckets.as_mut() else {
            return true;
        };
        let ok = b.admit(d, || d.clone(), now_ms);
        if !ok {
            count_rejected(d.as_str(), "ingest");
        }
        ok
    }
}

/// The detail of an event refused by its domain's ingest quota.
pub fn over_ingest_quota(d: &DomainId) -> String {
    format!("domain {d} over its ingest quota")
}

/// Counts open streams per principal and per domain; a slot is freed
/// when dropped.
#[derive(Clone, Default)]
pub struct StreamSlots {
    open: Arc<Mutex<Open>>,
}

#[derive(Default)]
struct Open {
    by_principal: HashMap<String, usize>,
    by_domain: HashMap<String, usize>,
}

/// One open stream's slot.
pub struct Slot {
    slots: StreamSlots,
    principal: String,
    domain: String,
}

impl StreamSlots {
    /// Takes a slot for `principal` in `domain`, or ResourceExhausted past
    /// `max_principal` streams of the principal or `max_domain` of the
    /// domain.
    pub fn take(
        &self,
        principal: &str,
        max_principal: usize,
        domain: &str,
        max_domain: usize,
    ) -> ApiResult<Slot> {
        let mut m = lock(&self.open);
        let p = m.by_principal.get(principal).copied().unwrap_or(0);
        if p >= max_principal {
            return Err(ApiError::ResourceExhausted(format!(
                "{principal} already has {max_principal} open watch streams"
            )));
        }
        let d = m.by_domain.get(domain).copied().unwrap_or(0);
        if d >= max_domain {
            drop(m);
            count_rejected(domain, "streams");
            return Err(ApiError::ResourceExhausted(format!(
                "domain {domain} already has {max_domain} open watch streams on this node"
            )));
        }
        *m.by_principal.entry(principal.to_owned()).or_insert(0) += 1;
        *m.by_domain.entry(domain.to_owned()).or_insert(0) += 1;
        metrics::gauge!("presence_fanout_open_streams").increment(1.0);
        Ok(Slot {
            slots: self.clone(),
            principal: principal.to_owned(),
            domain: domain.to_owned(),
        })
    }
}

fn release(map: &mut HashMap<String, usize>, key: &str) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = lock(&self.slots.open);
        release(&mut m.by_principal, &self.principal);
        release(&mut m.by_domain, &self.domain);
        drop(m);
        metrics::gauge!("presence_fanout_open_streams").decrement(1.0);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn test_stream_slots_are_limited_per_principal_and_domain_and_freed() {
        let slots = StreamSlots::default();
        let a = slots.take("user acme/1", 2, "acme", 3);
        let b = slots.take("user acme/1", 2, "acme", 3);
        assert!(a.is_ok() && b.is_ok());
        assert!(matches!(
            slots.take("user acme/1", 2, "acme", 3),
            Err(ApiError::ResourceExhausted(_))
        ));
        let c = slots.take("user acme/2", 2, "acme", 3).unwrap();
        let full = slots.take("user acme/3", 2, "acme", 3);
        assert!(
            matches!(&full, Err(ApiError::ResourceExhausted(m)) if m.contains("domain acme")),
            "the domain is full: {:?}",
            full.err()
        );
        assert!(
            slots.take("user globex/1", 2, "globex", 3).is_ok(),
            "another domain is not"
        );
        drop(a);
        drop(c);
        assert!(slots.take("user acme/1", 2, "acme", 3).is_ok());
        assert!(slots.take("user acme/3", 2, "acme", 3).is_ok());
    }

    #[test]
    fn test_ingest_quota_refills_with_time_and_is_per_domain() {
        let acme = DomainId::parse("acme").unwrap();
        let globex = DomainId::parse("globex").unwrap();
        let mut q = IngestQuota::new(Some(RateLimit {
            per_second: 10,
            burst: 5,
        }));
        let admitted = (0..20).filter(|_| q.admit(&acme, 1000)).count();
        assert_eq!(admitted, 5, "the burst, then nothing at the same instant");
        assert!(q.admit(&globex, 1000), "another domain has its own bucket");
        assert!(!q.admit(&acme, 1050), "half a token after 50 ms");
        assert!(q.admit(&acme, 1100), "one token after 100 ms at 10/s");
        assert!(!q.admit(&acme, 900), "time going back adds nothing");
        let mut none = IngestQuota::new(None);
        assert!((0..10_000).all(|_| none.admit(&acme, 0)));
    }

    #[test]
    fn test_per_shard_share_rounds_up() {
        let q = DomainQuota {
            events: Some(RateLimit {
                per_second: 1000,
                burst: 10,
            }),
            max_streams: 1,
        };
        let s = q.per_shard(64).unwrap();
        assert_eq!((s.per_second, s.burst), (16, 1));
    }
}
