//! Many watchers on one stream (`WatchMany`), for gateways.
//!
//! A gateway terminating thousands of phones used to open one `Watch`
//! stream per phone: one HTTP/2 stream, one wake-up and one message per
//! phone for every change, and the same state sent once per phone that
//! may see it. On a `WatchMany` stream the client adds and removes
//! watchers (each keyed by a number it chooses, each with what a `Watch`
//! call would ask), and the server sends everything pending for all of
//! them in one message: a state that several watchers may see alike (the
//! same encoding, see [`crate::edge`]) travels once with all their keys.
//!
//! Each watcher is a [`WatchStream`] of its own (snapshot, access
//! checks, revocation, resume, coalescing: the same code as `Watch`),
//! polled by this stream instead of by a transport. For each key, events
//! keep the order its own `Watch` stream would give them: an event joins
//! an earlier key's copy of the same state only when that copy comes
//! after the key's previous event in the message. A watcher that cannot
//! start (not permitted, unknown user, too many streams) or fails ends
//! alone, with a `WatcherEnded` event carrying the gRPC code; the stream
//! and its other watchers go on. Each watcher counts as a stream against
//! the principal's and the domain's stream limits.

use crate::service::Fanout;
use crate::shards::Shards;
use crate::stream::{Batching, WatchStream};
use futures_util::future::{AbortHandle, Abortable, BoxFuture};
use futures_util::stream::{BoxStream, FuturesUnordered, SelectAll};
use futures_util::{FutureExt, StreamExt};
use presence_auth::Principal;
use presence_core::ApiResult;
use presence_proto::frame::{EventBytes, Frame, Keyed, KeyedBody, ManyFrame};
use presence_proto::v1;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

/// Most watchers on one stream.
pub const MAX_WATCHERS: usize = 10_000;
/// Heartbeat interval of a watcher inside the stream (its heartbeats are
/// dropped: the stream has its own).
const INNER_HEARTBEAT_SECS: u32 = 3600;

type Item = (u32, u64, Option<Result<Frame, Status>>);
type Opening = BoxFuture<'static, (u32, u64, ApiResult<WatchStream<Arc<Shards>>>)>;

/// A key's watcher: its generation (a key may be used again once
/// ended) and, once it runs, how to stop it.
struct Slot {
    generation: u64,
    stop: Option<AbortHandle>,
    removing: bool,
}

/// What waits to be sent, in order.
enum Pending {
    Event(u32, EventBytes),
    Keyed(Keyed),
}

/// Returns a watcher's `Watch` request as it runs inside the stream:
/// batched (its frames are unpacked here), with a rare heartbeat.
fn inner_request(mut w: v1::WatchRequest) -> v1::WatchRequest {
    w.batching = Some(v1::WatchBatching {
        max_bytes: 0,
        max_events: 0,
        linger_ms: 0,
    });
    w.heartbeat_seconds = INNER_HEARTBEAT_SECS;
    w
}

/// One `WatchMany` stream (see the module documentation).
pub struct ManyStream {
    fanout: Fanout,
    principal: Principal,
    requests: BoxStream<'static, Result<v1::WatchManyRequest, Status>>,
    requests_open: bool,
    first: bool,
    batching: Batching,
    watchers: SelectAll<BoxStream<'static, Item>>,
    opening: FuturesUnordered<Opening>,
    slots: HashMap<u32, Slot>,
    next_generation: u64,
    pending: VecDeque<Pending>,
    heartbeat: tokio::time::Interval,
    shutdown: CancellationToken,
}

impl ManyStream {
    /// Returns the stream of `principal`'s watchers, driven by
    /// `requests`.
    pub fn new(
        fanout: Fanout,
        principal: Principal,
        requests: BoxStream<'static, Result<v1::WatchManyRequest, Status>>,
    ) -> Self {
        let cfg = fanout.watch_config();
        let mut heartbeat = tokio::time::interval(cfg.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.reset();
        Self {
            batching: Batching::of(&v1::WatchBatching::default(), &cfg),
            shutdown: fanout.shutdown_token(),
            fanout,
            principal,
            requests,
            requests_open: true,
            first: true,
            watchers: SelectAll::new(),
            opening: FuturesUnordered::new(),
            slots: HashMap::new(),
            next_generation: 0,
            pending: VecDeque::new(),
            heartbeat,
        }
    }

    /// Returns the stream as the transport pulls it.
    pub fn into_stream(
        self,
    ) -> impl futures_util::Stream<Item = Result<ManyFrame, Status>> + Send + 'static {
        futures_util::stream::unfold(self, |mut s| async move {
            let f = s.next().await?;
            Some((Ok(f), s))
        })
    }

    /// Returns the next message, `None` when the stream has ended.
    pub async fn next(&mut self) -> Option<ManyFrame> {
        loop {
            if let Some(f) = self.pop_frame() {
                return Some(f);
            }
            if !self.requests_open && self.slots.is_empty() {
                return None;
            }
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return None,
                r = self.requests.next(), if self.requests_open => match r {
                    Some(Ok(req)) => self.apply(req),
                    // The client closed its side (or the call broke):
                    // the watchers it has go on until it hangs up.
                    Some(Err(_)) | None => self.requests_open = false,
                },
                Some((key, generation, r)) = self.opening.next(), if !self.opening.is_empty() => {
                    self.opened(key, generation, r);
                }
                Some(item) = self.watchers.next(), if !self.watchers.is_empty() => {
                    self.take(item);
                    if !self.batching.linger.is_zero() {
                        tokio::select! {
                            _ = self.shutdown.cancelled() => {}
                            _ = tokio::time::sleep(self.batching.linger) => {}
                        }
                    }
                    // Everything the watchers have ready now goes out
                    // together.
                    while self.pending.len() < self.batching.max_events {
                        match self.watchers.next().now_or_never() {
                            Some(Some(item)) => self.take(item),
                            _ => break,
                        }
                    }
                }
                _ = self.heartbeat.tick() => {
                    let now = presence_auth::token::now_ms();
                    self.pending.push_back(Pending::Keyed(Keyed {
                        keys: Vec::new(),
                        body: KeyedBody::Event(EventBytes::heartbeat(now)),
                    }));
                }
            }
        }
    }

    /// Applies one client message: batching (first message only), then
    /// removals, then additions.
    fn apply(&mut self, req: v1::WatchManyRequest) {
        if std::mem::take(&mut self.first)
            && let Some(b) = &req.batching
        {
            self.batching = Batching::of(b, &self.fanout.watch_config());
        }
        for key in req.remove {
            match self.slots.get_mut(&key) {
                Some(s) if !s.removing => {
                    s.removing = true;
                    if let Some(stop) = &s.stop {
                        stop.abort();
                    }
                }
                Some(_) => {}
                None => self.pending.push_back(Pending::Keyed(Keyed::ended(
                    key,
                    Code::NotFound as i32,
                    format!("no watcher with key {key}"),
                ))),
            }
        }
        for add in req.add {
            let key = add.key;
            let refused = if self.slots.contains_key(&key) {
                Some((Code::AlreadyExists, format!("key {key} is in use")))
            } else if self.slots.len() >= MAX_WATCHERS {
                Some((
                    Code::ResourceExhausted,
                    format!("at most {MAX_WATCHERS} watchers on one stream"),
                ))
            } else if add.watch.is_none() {
                Some((Code::InvalidArgument, "watch must be set".to_string()))
            } else {
                None
            };
            if let Some((code, message)) = refused {
                self.pending
                    .push_back(Pending::Keyed(Keyed::ended(key, code as i32, message)));
                continue;
            }
            let generation = self.next_generation;
            self.next_generation += 1;
            self.slots.insert(
                key,
                Slot {
                    generation,
                    stop: None,
                    removing: false,
                },
            );
            let fanout = self.fanout.clone();
            let p = self.principal.clone();
            let req = inner_request(add.watch.unwrap_or_default());
            self.opening.push(Box::pin(async move {
                (key, generation, fanout.watch(&p, req).await)
            }));
        }
    }

    /// A watcher's stream is open (or was refused).
    fn opened(&mut self, key: u32, generation: u64, r: ApiResult<WatchStream<Arc<Shards>>>) {
        let Some(slot) = self
            .slots
            .get_mut(&key)
            .filter(|s| s.generation == generation)
        else {
            return;
        };
        match r {
            Err(e) => {
                self.slots.remove(&key);
                let s = presence_proto::status::to_status(e);
                self.pending.push_back(Pending::Keyed(Keyed::ended(
                    key,
                    s.code() as i32,
                    s.message(),
                )));
            }
            Ok(_) if slot.removing => {
                self.slots.remove(&key);
                self.pending.push_back(Pending::Keyed(Keyed::ended(
                    key,
                    Code::Ok as i32,
                    "removed",
                )));
            }
            Ok(ws) => {
                let (stop, registration) = AbortHandle::new_pair();
                slot.stop = Some(stop);
                let s = Abortable::new(ws.into_stream(), registration)
                    .map(move |f| (key, generation, Some(f)))
                    .chain(futures_util::stream::once(async move {
                        (key, generation, None)
                    }));
                self.watchers.push(Box::pin(s));
            }
        }
    }

    /// Takes one message of a watcher (or its end).
    fn take(&mut self, (key, generation, item): Item) {
        if self
            .slots
            .get(&key)
            .is_none_or(|s| s.generation != generation)
        {
            return; // an ended watcher's last words
        }
        match item {
            Some(Ok(Frame::One(e))) => {
                if !e.is_heartbeat() {
                    self.pending.push_back(Pending::Event(key, e));
                }
            }
            Some(Ok(Frame::Batch(events))) => self
                .pending
                .extend(events.into_iter().map(|e| Pending::Event(key, e))),
            Some(Err(s)) => {
                self.slots.remove(&key);
                self.pending.push_back(Pending::Keyed(Keyed::ended(
                    key,
                    s.code() as i32,
                    s.message(),
                )));
            }
            None => {
                let removed = self.slots.remove(&key).is_some_and(|s| s.removing);
                let (code, message) = if removed {
                    (Code::Ok, "removed")
                } else {
                    (Code::Unavailable, "the server is shutting down")
                };
                self.pending
                    .push_back(Pending::Keyed(Keyed::ended(key, code as i32, message)));
            }
        }
    }

    /// Builds the next message from what is pending.
    fn pop_frame(&mut self) -> Option<ManyFrame> {
        if self.pending.is_empty() {
            return None;
        }
        let f = group(
            &mut self.pending,
            self.batching.max_events,
            self.batching.max_bytes,
        );
        if self.pending.is_empty() && self.pending.capacity() > 64 {
            self.pending = VecDeque::new();
        }
        Some(f)
    }
}

/// Takes from `pending` one message of at most `max_events` keyed events
/// and about `max_bytes` (at least one event): a state several keys
/// receive alike becomes one event with all their keys, unless that
/// would put it before a key's earlier event.
fn group(pending: &mut VecDeque<Pending>, max_events: usize, max_bytes: usize) -> ManyFrame {
    let mut out: Vec<Keyed> = Vec::new();
    // Per key, the position of its last event in `out`.
    let mut last: HashMap<u32, usize> = HashMap::new();
    // Per shared body, the position of its latest event in `out`.
    let mut by_body: HashMap<(u8, usize, usize), usize> = HashMap::new();
    let mut bytes = 0usize;
    while let Some(next) = pending.front() {
        let full = |extra: usize| {
            !out.is_empty() && (out.len() >= max_events || bytes + extra > max_bytes)
        };
        match next {
            Pending::Event(key, e) => {
                let key = *key;
                let joins = e
                    .identity()
                    .and_then(|id| by_body.get(&id).copied())
                    .filter(|at| last.get(&key).is_none_or(|l| l < at));
                if let Some(at) = joins {
                    let extra = prost::encoding::encoded_len_varint(u64::from(key)) + 1;
                    if bytes + extra > max_bytes && !out.is_empty() && out.len() > 1 {
                        break;
                    }
                    out[at].keys.push(key);
                    last.insert(key, at);
                    bytes += extra;
                    pending.pop_front();
                    continue;
                }
                let k = Keyed {
                    keys: vec![key],
                    body: KeyedBody::Event(e.clone()),
                };
                let len = k.element_len();
                if full(len) {
                    break;
                }
                if let Some(id) = e.identity() {
                    by_body.insert(id, out.len());
                }
                last.insert(key, out.len());
                out.push(k);
                bytes += len;
                pending.pop_front();
            }
            Pending::Keyed(k) => {
                let len = k.element_len();
                if full(len) {
                    break;
                }
                for key in &k.keys {
                    last.insert(*key, out.len());
                }
                bytes += len;
                if let Some(Pending::Keyed(k)) = pending.pop_front() {
                    out.push(k);
                }
            }
        }
    }
    ManyFrame(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn state(body: &Bytes) -> EventBytes {
        EventBytes::state(body.clone())
    }

    fn keys(f: &ManyFrame) -> Vec<Vec<u32>> {
        f.0.iter().map(|k| k.keys.clone()).collect()
    }

    #[test]
    fn test_a_shared_state_travels_once_with_every_key() {
        let a = Bytes::from_static(b"\x0a\x01a");
        let b = Bytes::from_static(b"\x0a\x01b");
        let mut p: VecDeque<Pending> = [
            Pending::Event(1, state(&a)),
            Pending::Event(2, state(&a)),
            Pending::Event(2, state(&b)),
            Pending::Event(3, state(&a)),
            Pending::Event(3, state(&b)),
        ]
        .into();
        let f = group(&mut p, 1000, 1 << 20);
        assert_eq!(keys(&f), vec![vec![1, 2, 3], vec![2, 3]]);
        assert!(p.is_empty());
        let decoded = f.to_event().unwrap();
        assert_eq!(decoded.events.len(), 2);
        assert_eq!(decoded.events[0].keys, vec![1, 2, 3]);
    }

    #[test]
    fn test_grouping_keeps_each_keys_order() {
        // Key 2 got b before a: a must not move ahead of b for key 2.
        let a = Bytes::from_static(b"\x0a\x01a");
        let b = Bytes::from_static(b"\x0a\x01b");
        let mut p: VecDeque<Pending> = [
            Pending::Event(1, state(&a)),
            Pending::Event(2, state(&b)),
            Pending::Event(2, state(&a)),
        ]
        .into();
        let f = group(&mut p, 1000, 1 << 20);
        assert_eq!(keys(&f), vec![vec![1], vec![2], vec![2]]);
        // Equal bytes that are not one shared encoding stay apart.
        let c1 = Bytes::from(b"\x0a\x01c".to_vec());
        let c2 = Bytes::from(b"\x0a\x01c".to_vec());
        let mut p: VecDeque<Pending> =
            [Pending::Event(1, state(&c1)), Pending::Event(2, state(&c2))].into();
        assert_eq!(keys(&group(&mut p, 1000, 1 << 20)), vec![vec![1], vec![2]]);
    }

    #[test]
    fn test_messages_stay_within_their_bounds() {
        let bodies: Vec<Bytes> = (0..10u8).map(|i| Bytes::from(vec![i; 100])).collect();
        let mut p: VecDeque<Pending> = bodies.iter().map(|b| Pending::Event(1, state(b))).collect();
        let f = group(&mut p, 3, 1 << 20);
        assert_eq!(f.0.len(), 3);
        let f = group(&mut p, 1000, 250);
        assert_eq!(f.0.len(), 2, "two 100-byte events fit in 250 bytes");
        assert!(f.encoded_len() <= 250);
        let mut one: VecDeque<Pending> = [Pending::Event(1, state(&bodies[0]))].into();
        assert_eq!(
            group(&mut one, 1000, 10).0.len(),
            1,
            "an event larger than the bound goes alone"
        );
        let mut ended: VecDeque<Pending> = [Pending::Keyed(Keyed::ended(
            7,
            Code::NotFound as i32,
            "gone",
        ))]
        .into();
        let e = group(&mut ended, 1000, 1 << 20).to_event().unwrap();
        assert_eq!(e.events[0].keys, vec![7]);
        assert!(matches!(
            e.events[0].body,
            Some(v1::keyed_event::Body::Ended(v1::WatcherEnded {
                code: 5,
                ..
            }))
        ));
    }

    #[test]
    fn test_an_inner_watch_is_batched_with_a_rare_heartbeat() {
        let r = inner_request(v1::WatchRequest {
            heartbeat_seconds: 5,
            ..Default::default()
        });
        assert!(r.batching.is_some());
        assert_eq!(r.heartbeat_seconds, INNER_HEARTBEAT_SECS);
    }
}
