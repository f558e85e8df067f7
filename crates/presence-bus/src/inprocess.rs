//! The in-process bus: the embedded default when no NATS URL is given.
//!
//! Each subscription has a bounded queue (capacity from config). A
//! publisher never waits: when a subscriber's queue is full the message
//! is dropped for that subscriber and counted in
//! `presence_bus_dropped_total`, exactly like a NATS slow consumer.

use crate::pattern::{matches, valid_pattern, valid_subject};
use crate::{Bus, BusError, BusFuture, BusMessage, BusSubscription};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

struct Sub {
    id: u64,
    group: Option<String>,
    tx: mpsc::Sender<BusMessage>,
}

/// Subscriptions indexed for delivery: literal subjects by hash (the
/// common case: one subscription per watched target), patterns with
/// wildcards in a list.
#[derive(Default)]
struct Subs {
    exact: HashMap<String, Vec<Sub>>,
    wild: Vec<(String, Sub)>,
}

struct Inner {
    reconnects: tokio::sync::watch::Sender<u64>,
    subs: Mutex<Subs>,
    capacity: usize,
    round_robin: AtomicU64,
    next_id: AtomicU64,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Subs> {
        match self.subs.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// Removes a subscription when its stream is dropped.
struct Unsubscribe {
    inner: std::sync::Weak<Inner>,
    id: u64,
    pattern: String,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let mut subs = inner.lock();
        if let Some(v) = subs.exact.get_mut(&self.pattern) {
            v.retain(|s| s.id != self.id);
            if v.is_empty() {
                subs.exact.remove(&self.pattern);
            }
        }
        subs.wild.retain(|(_, s)| s.id != self.id);
    }
}

/// A bus that lives inside one process.
#[derive(Clone)]
pub struct InProcessBus {
    inner: Arc<Inner>,
}

impl InProcessBus {
    /// Returns a bus whose subscriptions buffer at most `capacity`
    /// messages each.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                reconnects: tokio::sync::watch::channel(0).0,
                subs: Mutex::new(Subs::default()),
                capacity: capacity.max(1),
                round_robin: AtomicU64::new(0),
                next_id: AtomicU64::new(0),
            }),
        }
    }

    fn deliver(
        &self,
        subject: String,
        payload: Bytes,
        reply: Option<String>,
        trace: Option<crate::trace::TraceParent>,
    ) -> usize {
        let msg = BusMessage {
            subject,
            payload,
            reply,
            trace,
        };
        let mut delivered = 0usize;
        let mut dropped = 0u64;
        let subs = self.inner.lock();
        let matching = subs.exact.get(&msg.subject).into_iter().flatten().chain(
            subs.wild
                .iter()
                .filter(|(p, _)| matches(p, &msg.subject))
                .map(|(_, s)| s),
        );
        let mut send = |s: &Sub| {
            if s.tx.try_send(msg.clone()).is_err() {
                dropped += 1;
            } else {
                delivered += 1;
            }
        };
        let mut groups: Vec<(&str, Vec<&Sub>)> = Vec::new();
        for s in matching {
            match s.group.as_deref() {
                None => send(s),
                Some(g) => match groups.iter_mut().find(|(name, _)| *name == g) {
                    Some((_, members)) => members.push(s),
                    None => groups.push((g, vec![s])),
                },
            }
        }
        for (_, members) in &groups {
            let n = self.inner.round_robin.fetch_add(1, Ordering::Relaxed) as usize;
            send(members[n % members.len()]);
        }
        drop(groups);
        drop(subs);
        if dropped > 0 {
            metrics::counter!("presence_bus_dropped_total", "bus" => "inprocess")
                .increment(dropped);
        }
        delivered
    }

    fn add(&self, pattern: String, group: Option<String>) -> Result<BusSubscription, BusError> {
        if !valid_pattern(&pattern) {
            return Err(BusError::InvalidSubject(pattern));
        }
        let (tx, mut rx) = mpsc::channel(self.inner.capacity);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let sub = Sub { id, group, tx };
        let mut subs = self.inner.lock();
        if valid_subject(&pattern) {
            subs.exact.entry(pattern.clone()).or_default().push(sub);
        } else {
            subs.wild.push((pattern.clone(), sub));
        }
        drop(subs);
        let guard = Unsubscribe {
            inner: Arc::downgrade(&self.inner),
            id,
            pattern,
        };
        Ok(Box::pin(futures_util::stream::poll_fn(move |cx| {
            let _keep = &guard;
            rx.poll_recv(cx)
        })))
    }
}

impl Default for InProcessBus {
    fn default() -> Self {
        Self::new(4096)
    }
}

impl Bus for InProcessBus {
    fn publish(&self, subject: String, payload: Bytes) -> BusFuture<'_, ()> {
        self.publish_traced(subject, payload, None)
    }

    fn publish_traced(
        &self,
        subject: String,
        payload: Bytes,
        trace: Option<crate::trace::TraceParent>,
    ) -> BusFuture<'_, ()> {
        Box::pin(async move {
            if !valid_subject(&subject) {
                return Err(BusError::InvalidSubject(subject));
            }
            self.deliver(subject, payload, None, trace);
            Ok(())
        })
    }

    fn request(
        &self,
        subject: String,
        payload: Bytes,
        timeout: std::time::Duration,
    ) -> BusFuture<'_, Bytes> {
        Box::pin(async move {
            if !valid_subject(&subject) {
                return Err(BusError::InvalidSubject(subject));
            }
            let n = self.inner.round_robin.fetch_add(1, Ordering::Relaxed);
            let inbox = format!("_INBOX.inprocess.{n}");
            let mut replies = self.add(inbox.clone(), None)?;
            if self.deliver(subject.clone(), payload, Some(inbox), None) == 0 {
                return Err(BusError::Unavailable(format!("no responders on {subject}")));
            }
            match tokio::time::timeout(timeout, futures_util::StreamExt::next(&mut replies)).await {
                Ok(Some(m)) => Ok(m.payload),
                _ => Err(BusError::Unavailable(format!(
                    "no reply on {subject} within {timeout:?}"
                ))),
            }
        })
    }

    fn subscribe(&self, pattern: String) -> BusFuture<'_, BusSubscription> {
        Box::pin(async move { self.add(pattern, None) })
    }

    fn queue_subscribe(&self, pattern: String, group: String) -> BusFuture<'_, BusSubscription> {
        Box::pin(async move { self.add(pattern, Some(group)) })
    }

    fn reconnects(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.reconnects.subscribe()
    }

    fn flush(&self) -> BusFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    fn kind(&self) -> &'static str {
        "inprocess"
    }
}
