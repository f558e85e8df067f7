//! Hot paths of presence fanout, each next to a baseline measured in the
//! same run (these machines are shared and noisy; compare ratios):
//!
//! - `state_machine`: one user's `apply` of a call event and of a manual
//!   status (validation, transition, aggregate) — baseline: cloning the
//!   event;
//! - `mailbox`: putting a state in a stream's mailbox (coalescing) and
//!   draining it — baseline: inserting into a `Mutex<HashMap>`;
//! - `delivery`: one state reaching 100 streams, encoded once and shared
//!   — baseline: a deep clone and an encode per stream (the layout before
//!   encode-once);
//! - `codec`: protobuf encode and decode of a `DeviceEvent` and of a full
//!   `PresenceState` — baseline: copying the encoded bytes;
//! - `shard_burst`: a shard actor absorbing 10,000 events from one
//!   publisher — baseline: the same round trips to an actor that does
//!   nothing.

#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::future::join_all;
use presence_bus::InProcessBus;
use presence_core::presence::{
    CallState, Direction, Event, EventKind, Limits, UserPresence, UserStatus,
};
use presence_core::{DomainId, UserId};
use presence_fanout::edge::{EncodeCounts, Mailbox, Shared};
use presence_fanout::shard::{self, Clock, RateLimit};
use presence_proto::frame::Frame;
use presence_proto::v1;
use prost::Message;
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

fn call(seq: u64, state: CallState) -> Event {
    Event {
        device: "0004f2a1b2c3".into(),
        sequence: seq,
        at_ms: 0,
        kind: EventKind::Call {
            call_id: "c-1".into(),
            state,
            direction: Direction::Inbound,
            remote_number: "+15550100".into(),
            remote_name: "Reception".into(),
        },
    }
}

fn status(seq: u64) -> Event {
    Event {
        device: "portal".into(),
        sequence: seq,
        at_ms: 0,
        kind: EventKind::ManualStatus(
            if seq.is_multiple_of(2) {
                UserStatus::Busy
            } else {
                UserStatus::Away
            },
            "in a meeting".into(),
        ),
    }
}

fn full_state(version: u64) -> v1::PresenceState {
    v1::PresenceState {
        domain: "acme".into(),
        user: "1001".into(),
        version,
        presence: v1::PresenceStatus::Busy as i32,
        telephony: v1::TelephonyStatus::Connected as i32,
        message: "in a meeting".into(),
        calls: vec![v1::ActiveCall {
            call_id: "c-1".into(),
            state: v1::CallState::Confirmed as i32,
            direction: v1::Direction::Inbound as i32,
            remote_number: "+15550100".into(),
            remote_name: "Reception".into(),
            started_at_ms: 1_795_000_000_000,
        }],
        queues_logged_in: vec!["sales".into()],
        updated_at_ms: 1_795_000_000_000,
        ..Default::default()
    }
}

fn state_machine(c: &mut Criterion) {
    let lim = Limits::default();
    let mut g = c.benchmark_group("state_machine");
    g.throughput(Throughput::Elements(1));
    let ev = call(1, CallState::Early);
    g.bench_function("baseline_clone_event", |b| b.iter(|| black_box(ev.clone())));
    // Ringing → answered → held → hung up, repeated with new call ids.
    g.bench_function("apply_call_cycle_of_4", |b| {
        let mut u = UserPresence::new(0);
        let mut seq = 0u64;
        b.iter(|| {
            for st in [
                CallState::Early,
                CallState::Confirmed,
                CallState::Held,
                CallState::Terminated,
            ] {
                seq += 1;
                let mut e = call(seq, st);
                if let EventKind::Call { call_id, .. } = &mut e.kind {
                    *call_id = format!("c-{}", seq / 4);
                }
                black_box(u.apply(&e, 1_000 + seq as i64, &lim).ok());
            }
        })
    });
    g.bench_function("apply_manual_status", |b| {
        let mut u = UserPresence::new(0);
        let mut seq = 0u64;
        b.iter(|| {
            seq += 1;
            black_box(u.apply(&status(seq), 1_000, &lim).ok())
        })
    });
    g.bench_function("apply_stale_rejected", |b| {
        let mut u = UserPresence::new(0);
        u.apply(&call(100, CallState::Early), 1_000, &lim).ok();
        let stale = call(5, CallState::Confirmed);
        b.iter(|| black_box(u.apply(&stale, 1_000, &lim).err()))
    });
    g.finish();
}

/// Successive versions of `s`, one per call: the setup of a batch.
fn next_version(s: &v1::PresenceState) -> impl FnMut() -> v1::PresenceState + '_ {
    let mut v = 0u64;
    move || {
        v += 1;
        v1::PresenceState {
            version: v,
            ..s.clone()
        }
    }
}

fn shared(st: v1::PresenceState) -> Arc<Shared> {
    let bytes = bytes::Bytes::from(st.encode_to_vec());
    Arc::new(Shared::new(st, bytes, &EncodeCounts::default()))
}

fn mailbox(c: &mut Criterion) {
    let mut g = c.benchmark_group("mailbox");
    g.throughput(Throughput::Elements(1));
    let s = full_state(1);
    g.bench_function("baseline_mutex_hashmap_insert", |b| {
        let m: Mutex<HashMap<String, v1::PresenceState>> = Mutex::new(HashMap::new());
        b.iter_batched(
            next_version(&s),
            |st| {
                let mut g = m.lock().unwrap();
                g.insert(st.user.clone(), st);
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("put_coalescing_one_target", |b| {
        let mb = Mailbox::new(1);
        let mut next = next_version(&s);
        b.iter_batched(
            || shared(next()),
            |st| black_box(mb.put(0, &st)),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("put_100_targets_then_drain", |b| {
        let mb = Mailbox::new(100);
        let states: Vec<Arc<Shared>> = (0..100)
            .map(|i| {
                shared(v1::PresenceState {
                    user: format!("u{i}"),
                    ..s.clone()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(100);
        b.iter(|| {
            for (i, st) in states.iter().enumerate() {
                mb.put(i as u32, st);
            }
            out.clear();
            mb.take(&mut out);
            black_box(out.len())
        })
    });
    g.finish();
}

/// One state reaching 100 streams, from its arrival at the edge to the
/// bytes each stream writes to its transport.
fn delivery(c: &mut Criterion) {
    let mut g = c.benchmark_group("delivery");
    const STREAMS: usize = 100;
    g.throughput(Throughput::Elements(STREAMS as u64));
    let state = full_state(1);
    let bytes = bytes::Bytes::from(state.encode_to_vec());
    // The layout before encode-once: decode, then per stream a deep
    // clone, redaction and an encode of the event.
    g.bench_function("baseline_clone_and_encode_per_stream", |b| {
        let mut buf = Vec::with_capacity(1024);
        b.iter(|| {
            let decoded = v1::PresenceState::decode(bytes.clone()).unwrap();
            for _ in 0..STREAMS {
                let e = v1::WatchEvent {
                    event: Some(v1::watch_event::Event::State(decoded.clone())),
                };
                buf.clear();
                e.encode(&mut buf).unwrap();
                black_box(buf.len());
            }
        })
    });
    g.bench_function("shared_to_100_mailboxes_and_frames", |b| {
        let counts = EncodeCounts::default();
        let boxes: Vec<Mailbox> = (0..STREAMS).map(|_| Mailbox::new(1)).collect();
        let mut buf = Vec::with_capacity(1024);
        let mut out = Vec::with_capacity(1);
        let mut v = 0;
        b.iter(|| {
            v += 1;
            let mut st = v1::PresenceState::decode(bytes.clone()).unwrap();
            st.version = v;
            let sh = Arc::new(Shared::new(st, bytes.clone(), &counts));
            for mb in &boxes {
                mb.put(0, &sh);
            }
            for mb in &boxes {
                out.clear();
                mb.take(&mut out);
                for (_, s) in out.drain(..) {
                    buf.clear();
                    Frame::One(s.event(true)).write(&mut buf);
                    black_box(buf.len());
                }
            }
        })
    });
    g.finish();
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    let event = v1::DeviceEvent {
        domain: "acme".into(),
        user: "1001".into(),
        device: "0004f2a1b2c3".into(),
        sequence: 42,
        at_ms: 1_795_000_000_000,
        kind: Some(v1::device_event::Kind::Call(v1::CallUpdate {
            call_id: "c-1".into(),
            state: v1::CallState::Early as i32,
            direction: v1::Direction::Inbound as i32,
            remote_number: "+15550100".into(),
            remote_name: "Reception".into(),
        })),
    };
    let state = full_state(7);
    let event_bytes = event.encode_to_vec();
    let state_bytes = state.encode_to_vec();
    g.bench_function("baseline_copy_state_bytes", |b| {
        b.iter(|| black_box(bytes::Bytes::copy_from_slice(&state_bytes)))
    });
    g.bench_function("encode_device_event", |b| {
        b.iter(|| black_box(event.encode_to_vec()))
    });
    g.bench_function("decode_device_event", |b| {
        b.iter(|| black_box(v1::DeviceEvent::decode(event_bytes.as_slice()).unwrap()))
    });
    g.bench_function("encode_presence_state", |b| {
        b.iter(|| black_box(state.encode_to_vec()))
    });
    g.bench_function("decode_presence_state", |b| {
        b.iter(|| black_box(v1::PresenceState::decode(state_bytes.as_slice()).unwrap()))
    });
    g.finish();
}

const BURST: u64 = 10_000;

fn shard_burst(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let shutdown = CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    let bus: presence_bus::SharedBus = Arc::new(InProcessBus::new(1 << 16));
    let handle = rt.block_on(async {
        shard::spawn(
            0,
            1024,
            Limits::default(),
            RateLimit {
                per_second: u32::MAX,
                burst: u32::MAX,
            },
            bus.clone(),
            Clock::new(),
            None,
            shutdown.clone(),
            &tracker,
        )
    });
    // The baseline actor: the same round trip, no work.
    let (tx, mut rx) = mpsc::channel::<oneshot::Sender<()>>(1024);
    rt.spawn(async move {
        while let Some(r) = rx.recv().await {
            let _ = r.send(());
        }
    });
    let d = DomainId::parse("acme").unwrap();
    let users: Vec<UserId> = (0..100)
        .map(|i| UserId::parse(&format!("u{i}")).unwrap())
        .collect();
    let mut g = c.benchmark_group("shard_burst");
    g.throughput(Throughput::Elements(BURST));
    g.sample_size(10);
    // The burst: 100 users publish concurrently, each its 100 events in
    // order (so none is stale); over when every verdict is back.
    let per_user = BURST / 100;
    g.bench_function("baseline_actor_round_trips", |b| {
        b.iter(|| {
            rt.block_on(join_all((0..100).map(|_| {
                let tx = tx.clone();
                async move {
                    for _ in 0..per_user {
                        let (r, w) = oneshot::channel();
                        tx.send(r).await.unwrap();
                        w.await.unwrap();
                    }
                }
            })))
        })
    });
    let mut round = 0u64;
    g.bench_function("absorb_10k_events_100_users", |b| {
        b.iter(|| {
            round += 1;
            let first = round * per_user;
            let accepted = rt.block_on(join_all(users.iter().map(|u| {
                let (handle, key) = (&handle, (d.clone(), u.clone()));
                async move {
                    let mut ok = 0;
                    for seq in first..first + per_user {
                        let r = handle.apply(key.clone(), status(seq)).await.unwrap();
                        ok += usize::from(r.is_ok());
                    }
                    ok
                }
            })));
            assert_eq!(accepted.iter().sum::<usize>() as u64, BURST);
        })
    });
    g.finish();
    shutdown.cancel();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = state_machine, mailbox, delivery, codec, shard_burst
}
criterion_main!(benches);
