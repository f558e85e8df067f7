//! Batched and unbatched streams tell a watcher the same thing: for
//! random sequences of device events and grant changes (seeded, several
//! seeds), an unbatched stream and two batched ones (small batches, and
//! large batches with a linger) end with the same states and have seen
//! the same access changes, every version of a target only increases,
//! and no batch holds two states of one target or exceeds its bounds.
//! Streams are read irregularly, so their mailboxes coalesce differently.
//!
//! And a state is encoded once per visibility class, however many
//! streams receive it (counted at the edge).

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::{Pulled, World, event, next_events, next_message, user};
use presence_fanout::FanoutConfig;
use presence_proto::v1::{self, device_event::Kind as K, watch_event::Event as E};
use presence_testkit::Rng;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

const TARGETS: &[&str] = &["t0", "t1", "t2", "t3", "t4"];

/// What one stream has told its client.
#[derive(Default)]
struct View {
    states: HashMap<String, v1::PresenceState>,
    /// (target, "denied" | "revoked" | "granted"), in order.
    access: Vec<(String, &'static str)>,
    last: HashMap<String, u64>,
    max_events: Option<usize>,
    snapshot_done: bool,
}

impl View {
    fn batched(max_events: usize) -> Self {
        Self {
            max_events: Some(max_events),
            ..Self::default()
        }
    }

    fn apply(&mut self, e: E) {
        match e {
            E::State(s) => {
                if let Some(l) = self.last.get(&s.user) {
                    assert!(s.version > *l, "{} went from {l} to {}", s.user, s.version);
                }
                self.last.insert(s.user.clone(), s.version);
                self.states.insert(s.user.clone(), s);
            }
            E::Revoked(c) => {
                self.states.remove(&c.target);
                self.last.remove(&c.target);
                self.access.push((c.target, "revoked"));
            }
            E::Granted(c) => self.access.push((c.target, "granted")),
            E::Denied(c) => self.access.push((c.target, "denied")),
            E::SnapshotDone(_) => self.snapshot_done = true,
            E::Heartbeat(_) => {}
            E::Batch(_) => panic!("a batch inside a batch"),
        }
    }

    /// Applies one message (a batch's events in order, checking its
    /// shape against this stream's mode).
    fn message(&mut self, m: v1::WatchEvent) {
        match (m.event.unwrap(), self.max_events) {
            (E::Batch(b), Some(max)) => {
                assert!(
                    !b.events.is_empty() && b.events.len() <= max,
                    "{} events",
                    b.events.len()
                );
                let mut seen = HashSet::new();
                for e in b.events {
                    let e = e.event.unwrap();
                    assert!(!matches!(e, E::Heartbeat(_)), "heartbeats travel alone");
                    if let E::State(s) = &e {
                        assert!(
                            seen.insert(s.user.clone()),
                            "two states of {} in one batch",
                            s.user
                        );
                    }
                    self.apply(e);
                }
            }
            (E::Heartbeat(_), _) => {}
            (E::Batch(_), None) => panic!("a batch on an unbatched stream"),
            (e, Some(_)) => panic!("{e:?} outside a batch on a batched stream"),
            (e, None) => self.apply(e),
        }
    }
}

/// Applies whatever `s` can send right now (nothing waits).
async fn read_ready(s: &mut Pulled, v: &mut View) {
    loop {
        match tokio::time::timeout(Duration::ZERO, futures_util::StreamExt::next(s)).await {
            Ok(Some(Ok(f))) => v.message(f.to_event().unwrap()),
            Ok(other) => panic!("stream ended: {other:?}"),
            Err(_) => return,
        }
    }
}

/// Reads until `done(view)`.
async fn read_until(s: &mut Pulled, v: &mut View, done: impl Fn(&View) -> bool) {
    while !done(v) {
        let m = next_message(s).await;
        v.message(m);
    }
}

/// Per target: the device's next sequence and its call's progress.
struct Device {
    seq: u64,
    call: Option<(u32, v1::CallState)>,
    calls: u32,
}

fn random_event(rng: &mut Rng, target: &str, d: &mut Device) -> v1::DeviceEvent {
    d.seq += 1;
    let kind = match rng.below(3) {
        0 => K::DeviceDnd(v1::DeviceDnd {
            enabled: rng.below(2) == 0,
        }),
        1 => K::ManualStatus(v1::ManualStatus {
            status: v1::UserStatus::Away as i32,
            message: format!("m{}", rng.below(1000)),
        }),
        _ => {
            let (id, state) = match d.call {
                None => {
                    d.calls += 1;
                    (d.calls, v1::CallState::Early)
                }
                Some((id, v1::CallState::Early)) => (id, v1::CallState::Confirmed),
                Some((id, v1::CallState::Confirmed)) => (id, v1::CallState::Held),
                Some((id, _)) => (id, v1::CallState::Terminated),
            };
            d.call = (state != v1::CallState::Terminated).then_some((id, state));
            K::Call(v1::CallUpdate {
                call_id: format!("c{id}"),
                state: state as i32,
                direction: v1::Direction::Inbound as i32,
                remote_number: "+4930555".into(),
                remote_name: "Caller".into(),
            })
        }
    };
    event(target, d.seq, kind)
}

async fn run_seed(seed: u64, steps: usize) {
    let mut rng = Rng::new(seed);
    let mut users = TARGETS.to_vec();
    users.push("w");
    let world = World::start(FanoutConfig::default(), &users).await;
    let see = v1::GrantKind::See;
    for t in TARGETS {
        world
            .settings(
                t,
                v1::Visibility::PermittedUsers,
                v1::CallerIdVisibility::PermittedUsers,
            )
            .await;
    }
    // t0: pickup (so caller id too), never toggled; t1, t2 seen at first.
    world.grant("t0", "w", v1::GrantKind::Pickup, true).await;
    let mut granted: HashSet<&str> = ["t1", "t2"].into();
    for t in &granted {
        world.grant(t, "w", see, true).await;
    }
    let mut devices: Vec<Device> = TARGETS
        .iter()
        .map(|_| Device {
            seq: 0,
            call: None,
            calls: 0,
        })
        .collect();
    for (t, d) in TARGETS.iter().zip(&mut devices) {
        d.seq += 1;
        world
            .publish(vec![event(
                t,
                d.seq,
                K::Registration(v1::Registration {
                    expires_seconds: 3600,
                }),
            )])
            .await;
    }
    let small = v1::WatchBatching {
        max_events: 3,
        ..Default::default()
    };
    let lingering = v1::WatchBatching {
        linger_ms: (rng.below(3) * 2) as u32,
        ..Default::default()
    };
    let mut streams = vec![
        (world.watch("w", TARGETS, None).await, View::default()),
        (
            world.watch("w", TARGETS, Some(small)).await,
            View::batched(3),
        ),
        (
            world.watch("w", TARGETS, Some(lingering)).await,
            View::batched(1000),
        ),
    ];
    // The snapshot: t3 and t4 denied.
    for (s, v) in &mut streams {
        read_until(s, v, |v| v.snapshot_done).await;
    }
    let mut expected_access: Vec<(String, &'static str)> =
        vec![("t3".into(), "denied"), ("t4".into(), "denied")];
    for step in 0..steps {
        if rng.below(10) < 7 {
            let i = rng.below(TARGETS.len());
            let e = random_event(&mut rng, TARGETS[i], &mut devices[i]);
            world.publish(vec![e]).await;
        } else {
            let t = TARGETS[1 + rng.below(TARGETS.len() - 1)];
            let add = !granted.contains(t);
            world.grant(t, "w", see, add).await;
            if add {
                granted.insert(t);
            } else {
                granted.remove(t);
            }
            expected_access.push((t.into(), if add { "granted" } else { "revoked" }));
            // Every stream reports the change before the next one.
            let n = expected_access.len();
            for (s, v) in &mut streams {
                read_until(s, v, |v| v.access.len() >= n).await;
                assert_eq!(v.access, expected_access, "seed {seed} step {step}");
            }
        }
        let who = rng.below(streams.len() + 2);
        if let Some((s, v)) = streams.get_mut(who) {
            read_ready(s, v).await;
        }
    }
    // What the watcher may see now, as GetPresence shows it.
    let expected: HashMap<String, v1::PresenceState> = world
        .fanout
        .get_presence(
            &user("w"),
            v1::GetPresenceRequest {
                domain: "acme".into(),
                targets: TARGETS.iter().map(|t| (*t).to_string()).collect(),
            },
        )
        .await
        .unwrap()
        .states
        .into_iter()
        .map(|s| (s.user.clone(), s))
        .collect();
    for (i, (s, v)) in streams.iter_mut().enumerate() {
        read_until(s, v, |v| v.states == expected).await;
        assert_eq!(v.access, expected_access, "seed {seed}: stream {i}");
    }
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_batched_and_unbatched_streams_agree_on_random_sequences() {
    for seed in [1u64, 7, 42, 1234, 99_999] {
        run_seed(seed, 150).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_a_state_is_encoded_once_per_visibility_class() {
    let watchers: Vec<String> = (0..12).map(|i| format!("w{i}")).collect();
    let mut users: Vec<&str> = watchers.iter().map(String::as_str).collect();
    users.push("t");
    let world = World::start(FanoutConfig::default(), &users).await;
    world
        .settings(
            "t",
            v1::Visibility::PermittedUsers,
            v1::CallerIdVisibility::PermittedUsers,
        )
        .await;
    // Half the watchers may pick up (and so see caller identity).
    for (i, w) in watchers.iter().enumerate() {
        let kind = if i % 2 == 0 {
            v1::GrantKind::Pickup
        } else {
            v1::GrantKind::See
        };
        world.grant("t", w, kind, true).await;
    }
    // Two streams per watcher, one of them batched: 24 receivers.
    let mut streams = Vec::new();
    for (i, w) in watchers.iter().enumerate() {
        for batching in [None, Some(v1::WatchBatching::default())] {
            let mut s = world.watch(w, &["t"], batching).await;
            let mut got = Vec::new();
            while !got.iter().any(|e| matches!(e, E::SnapshotDone(_))) {
                got.extend(next_events(&mut s).await);
            }
            streams.push((i % 2 == 0, s));
        }
    }
    let before = world.fanout.edge().encodes().get();
    let with_identity = |state: v1::CallState, seq: u64| {
        event(
            "t",
            seq,
            K::Call(v1::CallUpdate {
                call_id: "c1".into(),
                state: state as i32,
                direction: v1::Direction::Inbound as i32,
                remote_number: "+4930555".into(),
                remote_name: "Caller".into(),
            }),
        )
    };
    let changes = vec![
        (
            event(
                "t",
                1,
                K::Registration(v1::Registration {
                    expires_seconds: 600,
                }),
            ),
            false,
        ),
        (with_identity(v1::CallState::Early, 2), true),
        (with_identity(v1::CallState::Confirmed, 3), true),
        (
            event("t", 4, K::DeviceDnd(v1::DeviceDnd { enabled: true })),
            true,
        ),
        (with_identity(v1::CallState::Terminated, 5), false),
    ];
    let mut identity_states = 0;
    for (e, has_identity) in &changes {
        world.publish(vec![e.clone()]).await;
        identity_states += u64::from(*has_identity);
        let version = world
            .fanout
            .states(&common::acme(), &["t".into()])
            .await
            .unwrap()[0]
            .version;
        // Every stream receives this very state before the next change.
        for (caller_id, s) in &mut streams {
            let state = loop {
                let states: Vec<v1::PresenceState> = next_events(s)
                    .await
                    .into_iter()
                    .filter_map(|e| match e {
                        E::State(st) => Some(st),
                        _ => None,
                    })
                    .collect();
                if let Some(st) = states.into_iter().last() {
                    break st;
                }
            };
            assert_eq!(state.version, version);
            for c in &state.calls {
                assert_eq!(
                    !c.remote_number.is_empty(),
                    *caller_id,
                    "caller identity only for pickup grantees"
                );
            }
            assert_eq!(state.calls.is_empty(), !*has_identity);
        }
    }
    let after = world.fanout.edge().encodes().get();
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (changes.len() as u64, identity_states),
        "one shared state per change and one redacted encoding per change with \
         caller identity, for 24 streams"
    );
    world.stop().await;
}
