//! The in-process bus: the embedded default when no NATS URL is given.
//!
//! Each subscription has a bounded queue (capacity from config). A
//! publisher never waits: when a subscriber's queue is full the message
//! is dropped for that subscriber and counted in
//! `presence_bus_dropped_total`, exactly like a NATS slow consumer.

use crate::pattern::{matches, valid_pattern, valid_subject};
use crate::{Bus, BusError, BusFuture, BusMessage, BusSubscription};
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

struct Sub {
    pattern: String,
    group: Option<String>,
    tx: mpsc::Sender<BusMessage>,
}

struct Inner {
    reconnects: tokio::sync::watch::Sender<u64>,
    subs: Mutex<Vec<Sub>>,
    capacity: usize,
    round_robin: AtomicU64,
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
                subs: Mutex::new(Vec::new()),
                capacity: capacity.max(1),
                round_robin: AtomicU64::new(0),
            }),
        }
    }

    fn deliver(&self, subject: String, payload: Bytes, reply: Option<String>) -> usize {
        let msg = BusMessage {
            subject,
            payload,
            reply,
        };
        let mut delivered = 0usize;
        let mut dropped = 0u64;
        let mut subs = match self.inner.subs.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        subs.retain(|s| !s.tx.is_closed());
        let mut groups_done: Vec<&str> = Vec::new();
        for (i, sub) in subs.iter().enumerate() {
            if !matches(&sub.pattern, &msg.subject) {
                continue;
            }
            match &sub.group {
                None => {
                    if sub.tx.try_send(msg.clone()).is_err() {
                        dropped += 1;
                    } else {
                        delivered += 1;
                    }
                }
                Some(g) => {
                    if groups_done.contains(&g.as_str()) {
                        continue;
                    }
                    groups_done.push(g.as_str());
                    let members: Vec<usize> = subs
                        .iter()
                        .enumerate()
                        .skip(i)
                        .filter(|(_, s)| {
                            s.group.as_deref() == Some(g) && matches(&s.pattern, &msg.subject)
                        })
                        .map(|(j, _)| j)
                        .collect();
                    let n = self.inner.round_robin.fetch_add(1, Ordering::Relaxed) as usize;
                    let pick = members[n % members.len()];
                    if subs[pick].tx.try_send(msg.clone()).is_err() {
                        dropped += 1;
                    } else {
                        delivered += 1;
                    }
                }
            }
        }
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
        let mut subs = match self.inner.subs.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        subs.push(Sub { pattern, group, tx });
        drop(subs);
        Ok(Box::pin(futures_util::stream::poll_fn(move |cx| {
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
        Box::pin(async move {
            if !valid_subject(&subject) {
                return Err(BusError::InvalidSubject(subject));
            }
            self.deliver(subject, payload, None);
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
            if self.deliver(subject.clone(), payload, Some(inbox)) == 0 {
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
