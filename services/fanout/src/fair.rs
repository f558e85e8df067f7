//! Fair scheduling of device events by domain, between the ingest
//! subscription and whoever applies or admits the events.
//!
//! NATS hands a subscriber one FIFO stream of every tenant's events. When
//! the consumer falls behind, a FIFO makes every tenant wait behind the
//! one that floods, and the client's bounded buffer drops whatever
//! arrives next, whoever sent it. The [`Inlet`] instead moves every
//! received event at once into a [`FairQueue`]: one FIFO per domain
//! (so each user's events keep their order), taken round-robin, so a
//! domain with one pending event waits for at most one event of each
//! other domain. When the queue is full, the event shed is the newest of
//! the domain with the longest backlog (the flooder's, not its victim's),
//! counted by domain in `presence_fanout_ingest_shed_total{domain}`.

use futures_util::{FutureExt, StreamExt};
use presence_bus::{BusMessage, BusSubscription};
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use tokio_util::sync::CancellationToken;

/// How many domains a full queue looks at to find the longest backlog
/// when it lost track of it (bounds the work per event when a flood
/// spreads over many domains).
const RESCAN: usize = 64;

/// Per-key FIFOs taken round-robin, with at most `cap` items in all.
#[derive(Debug)]
pub struct FairQueue<K, T> {
    queues: HashMap<K, VecDeque<T>>,
    /// Keys with queued items, in the order they are served.
    ring: VecDeque<K>,
    /// The key believed to have the longest queue (exact while items are
    /// only pushed; a hint once round-robin takes have shortened queues).
    heaviest: Option<K>,
    len: usize,
    cap: usize,
}

impl<K: Hash + Eq + Clone, T> FairQueue<K, T> {
    /// Returns an empty queue holding at most `cap` (≥ 1) items.
    pub fn new(cap: usize) -> Self {
        Self {
            queues: HashMap::new(),
            ring: VecDeque::new(),
            heaviest: None,
            len: 0,
            cap: cap.max(1),
        }
    }

    /// Returns the number of queued items.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Returns whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Returns how many items of `k` are queued.
    pub fn len_of(&self, k: &K) -> usize {
        self.queues.get(k).map_or(0, VecDeque::len)
    }

    /// Queues `item` of `k`. When the queue is full, sheds one item and
    /// returns it with its key: `item` itself when `k` has the longest
    /// backlog (or as long as any known one), otherwise the newest item
    /// of the longest backlog.
    pub fn push(&mut self, k: K, item: T) -> Option<(K, T)> {
        let mut shed = None;
        if self.len >= self.cap {
            let victim = self.longest().filter(|h| self.len_of(h) > self.len_of(&k));
            let Some(h) = victim else {
                return Some((k, item));
            };
            shed = self.pop_newest(&h).map(|t| (h, t));
        }
        let q = match self.queues.get_mut(&k) {
            Some(q) => q,
            None => {
                self.ring.push_back(k.clone());
                self.queues.entry(k.clone()).or_default()
            }
        };
        q.push_back(item);
        let n = q.len();
        self.len += 1;
        if self.heaviest.as_ref().is_none_or(|h| n > self.len_of(h)) {
            self.heaviest = Some(k);
        }
        shed
    }

    /// Takes the oldest item of the next key in turn.
    pub fn pop(&mut self) -> Option<(K, T)> {
        let k = self.ring.pop_front()?;
        let q = self.queues.get_mut(&k)?;
        let item = q.pop_front()?;
        self.len -= 1;
        if q.is_empty() {
            self.queues.remove(&k);
            if self.heaviest.as_ref() == Some(&k) {
                self.heaviest = None;
            }
        } else {
            self.ring.push_back(k.clone());
        }
        Some((k, item))
    }

    /// Removes and returns every queued item, round-robin.
    pub fn drain(&mut self) -> Vec<(K, T)> {
        let mut out = Vec::with_capacity(self.len);
        while let Some(x) = self.pop() {
            out.push(x);
        }
        out
    }

    /// The key with the longest queue: the tracked one, or the longest of
    /// the next [`RESCAN`] keys in turn.
    fn longest(&mut self) -> Option<K> {
        if self.heaviest.is_none() {
            self.heaviest = self
                .ring
                .iter()
                .take(RESCAN)
                .max_by_key(|k| self.len_of(k))
                .cloned();
        }
        self.heaviest.clone()
    }

    fn pop_newest(&mut self, k: &K) -> Option<T> {
        let q = self.queues.get_mut(k)?;
        let item = q.pop_back()?;
        self.len -= 1;
        if q.is_empty() {
            self.queues.remove(k);
            self.ring.retain(|r| r != k);
            self.heaviest = None;
        }
        Some(item)
    }
}

/// The domain token of an ingest subject `presence.v1.in.<domain>.<user>`
/// as sent (validated later, by whoever takes the event); a subject
/// without one is queued under the empty key.
fn domain_token(subject: &str) -> String {
    subject.split('.').nth(3).unwrap_or_default().to_owned()
}

/// An ingest subscription read through a [`FairQueue`]: every event
/// already received is queued by domain before the next one is taken.
pub struct Inlet {
    sub: BusSubscription,
    queue: FairQueue<String, BusMessage>,
    closed: bool,
    /// Where to answer shed requests (domain, reply subject), at most
    /// [`MAX_SHED_ANSWERS`] until taken.
    shed: Vec<(String, String)>,
}

/// Most shed requests kept for an answer between two
/// [`Inlet::take_shed`] calls (beyond, the publisher's request times
/// out).
const MAX_SHED_ANSWERS: usize = 1024;

impl Inlet {
    /// Reads `sub` through a queue of at most `backlog` events.
    pub fn new(sub: BusSubscription, backlog: usize) -> Self {
        Self {
            sub,
            queue: FairQueue::new(backlog),
            closed: false,
            shed: Vec::new(),
        }
    }

    /// Returns the number of events waiting.
    pub fn backlog(&self) -> usize {
        self.queue.len()
    }

    fn queue(&mut self, m: BusMessage) {
        let key = domain_token(&m.subject);
        if let Some((domain, m)) = self.queue.push(key, m) {
            metrics::counter!("presence_fanout_ingest_shed_total", "domain" => domain.clone())
                .increment(1);
            if let Some(r) = m.reply
                && self.shed.len() < MAX_SHED_ANSWERS
            {
                self.shed.push((domain, r));
            }
        }
    }

    /// Takes the shed requests to answer: (domain token, reply subject).
    pub fn take_shed(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.shed)
    }

    /// Queues every event the subscription has ready, without waiting.
    pub fn fill(&mut self) {
        while !self.closed {
            match self.sub.next().now_or_never() {
                Some(Some(m)) => self.queue(m),
                Some(None) => self.closed = true,
                None => break,
            }
        }
        metrics::gauge!("presence_fanout_ingest_backlog").set(self.queue.len() as f64);
    }

    /// Returns the next event in fair order, waiting for one when none is
    /// queued; `None` once the subscription ended and the queue is empty.
    pub async fn next(&mut self) -> Option<BusMessage> {
        self.fill();
        if let Some((_, m)) = self.queue.pop() {
            return Some(m);
        }
        if self.closed {
            return None;
        }
        let m = self.sub.next().await;
        match m {
            Some(m) => {
                self.queue(m);
                self.fill();
                self.queue.pop().map(|(_, m)| m)
            }
            None => {
                self.closed = true;
                None
            }
        }
    }

    /// Waits until the subscription has something, then queues all it
    /// has, without taking anything (for a consumer that has no room
    /// yet); false once the subscription ended.
    pub async fn receive(&mut self) -> bool {
        if self.closed {
            return false;
        }
        match self.sub.next().await {
            Some(m) => {
                self.queue(m);
                self.fill();
                true
            }
            None => {
                self.closed = true;
                false
            }
        }
    }

    /// [`Inlet::next`], or `None` once `shutdown` fires.
    pub async fn next_or_shutdown(&mut self, shutdown: &CancellationToken) -> Option<BusMessage> {
        tokio::select! {
            _ = shutdown.cancelled() => None,
            m = self.next() => m,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_take_turns_and_each_key_keeps_its_order() {
        let mut q = FairQueue::new(100);
        for i in 0..5 {
            assert!(q.push("a", i).is_none());
        }
        assert!(q.push("b", 10).is_none());
        assert!(q.push("b", 11).is_none());
        let order: Vec<_> = q.drain();
        assert_eq!(
            order,
            vec![
                ("a", 0),
                ("b", 10),
                ("a", 1),
                ("b", 11),
                ("a", 2),
                ("a", 3),
                ("a", 4)
            ]
        );
        assert!(q.is_empty());
        assert!(q.pop().is_none());
    }

    #[test]
    fn a_full_queue_sheds_the_newest_of_the_longest_backlog() {
        let mut q = FairQueue::new(10);
        for i in 0..10 {
            assert!(q.push("flood", i).is_none());
        }
        // The flooder's own next event is shed…
        assert_eq!(q.push("flood", 10), Some(("flood", 10)));
        // …and another domain's event takes the place of the flooder's
        // newest.
        assert_eq!(q.push("quiet", 100), Some(("flood", 9)));
        assert_eq!(q.push("quiet", 101), Some(("flood", 8)));
        assert_eq!(q.len(), 10);
        assert_eq!(q.len_of(&"quiet"), 2);
        // Served in turn: the quiet domain does not wait behind the flood.
        assert_eq!(q.pop(), Some(("flood", 0)));
        assert_eq!(q.pop(), Some(("quiet", 100)));
        assert_eq!(q.pop(), Some(("flood", 1)));
        assert_eq!(q.pop(), Some(("quiet", 101)));
    }

    #[test]
    fn equal_backlogs_shed_the_newcomer() {
        let mut q = FairQueue::new(4);
        for i in 0..2 {
            q.push("a", i);
            q.push("b", i);
        }
        assert_eq!(q.push("a", 9), Some(("a", 9)));
        assert_eq!(q.push("c", 9).map(|(k, _)| k), Some("a"));
        assert_eq!(q.len(), 4);
    }

    #[test]
    fn the_longest_backlog_is_found_again_after_it_drained() {
        let mut q = FairQueue::new(6);
        q.push("a", 0);
        for i in 0..4 {
            q.push("b", i);
        }
        // a drains: b stays the longest, tracked or found again.
        assert_eq!(q.pop(), Some(("a", 0)));
        assert_eq!(q.pop(), Some(("b", 0)));
        q.push("c", 0);
        q.push("c", 1);
        q.push("c", 2);
        assert_eq!(q.len(), 6);
        // b and c have three each: a newcomer takes c's or b's newest,
        // never blocks.
        let shed = q.push("d", 0);
        assert!(matches!(shed, Some(("b", 3)) | Some(("c", 2))), "{shed:?}");
        assert_eq!(q.len_of(&"d"), 1);
    }

    #[test]
    fn the_bound_holds_whatever_is_pushed() {
        let mut q = FairQueue::new(50);
        let mut shed = 0;
        for i in 0..10_000u32 {
            let k = if i % 7 == 0 { i % 13 } else { i % 3 };
            if q.push(k, i).is_some() {
                shed += 1;
            }
            assert!(q.len() <= 50);
            if i % 5 == 0 {
                q.pop();
            }
        }
        assert_eq!(q.len() + shed + 2000, 10_000);
        // Every key's items still come out in the order they went in.
        let mut last: HashMap<u32, u32> = HashMap::new();
        for (k, v) in q.drain() {
            if let Some(p) = last.insert(k, v) {
                assert!(p < v, "key {k}: {p} before {v}");
            }
        }
    }

    fn message(domain: &str, n: usize) -> BusMessage {
        BusMessage {
            subject: format!("presence.v1.in.{domain}.u{n}"),
            payload: bytes::Bytes::new(),
            reply: None,
            trace: None,
        }
    }

    #[tokio::test]
    async fn an_inlet_serves_a_quiet_domain_before_a_floods_backlog() {
        let ready: Vec<BusMessage> = (0..1000)
            .map(|n| message("flood", n))
            .chain((0..5).map(|n| message("quiet", n)))
            .collect();
        let mut inlet = Inlet::new(Box::pin(futures_util::stream::iter(ready)), 100);
        let mut seen = Vec::new();
        while let Some(m) = inlet.next().await {
            seen.push(m.subject);
        }
        // The backlog held 100: the flood lost what did not fit, the
        // quiet domain lost nothing and was served among the first.
        let quiet: Vec<usize> = seen
            .iter()
            .enumerate()
            .filter(|(_, s)| s.contains(".quiet."))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(quiet.len(), 5);
        assert!(quiet.iter().all(|&i| i < 10), "{quiet:?}");
        assert_eq!(seen.len(), 100);
        assert_eq!(inlet.backlog(), 0);
        // Nobody asked for an answer.
        assert!(inlet.take_shed().is_empty());
    }

    #[tokio::test]
    async fn shed_requests_are_kept_for_an_answer() {
        let ready: Vec<BusMessage> = (0..10)
            .map(|n| BusMessage {
                reply: Some(format!("_INBOX.{n}")),
                trace: None,
                ..message("flood", n)
            })
            .collect();
        let mut inlet = Inlet::new(Box::pin(futures_util::stream::iter(ready)), 4);
        assert!(inlet.receive().await);
        assert_eq!(inlet.backlog(), 4);
        let shed = inlet.take_shed();
        assert_eq!(shed.len(), 6);
        assert!(shed.iter().all(|(d, _)| d == "flood"));
        assert_eq!(shed[0].1, "_INBOX.4");
        assert!(!inlet.receive().await, "the subscription ended");
        assert_eq!(
            inlet.next().await.map(|m| m.subject),
            Some(message("flood", 0).subject)
        );
    }
}
