//! Many watchers on one `WatchMany` stream, below the transport, in
//! paused time (a linger ends only once every other task is idle, so
//! what is pending is the same on every run): snapshots per watcher, a
//! state several watchers see alike sent once with all their keys,
//! caller identity only where allowed, refused and removed watchers
//! ending alone, revocation per watcher, and keys used again.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::{World, event, gateway};
use futures_util::StreamExt;
use presence_fanout::FanoutConfig;
use presence_proto::v1::{
    self, device_event::Kind as K, keyed_event::Body, watch_event::Event as E,
};
use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::Code;

type Many = Pin<
    Box<
        dyn futures_util::Stream<Item = Result<presence_proto::frame::ManyFrame, tonic::Status>>
            + Send,
    >,
>;

fn add(key: u32, watcher: &str, targets: &[&str]) -> v1::WatchManyAdd {
    v1::WatchManyAdd {
        key,
        watch: Some(v1::WatchRequest {
            domain: "acme".into(),
            watcher: watcher.into(),
            selector: Some(v1::watch_request::Selector::Targets(v1::TargetList {
                targets: targets.iter().map(|t| (*t).to_string()).collect(),
            })),
            ..Default::default()
        }),
    }
}

async fn next(s: &mut Many, what: &str) -> Vec<v1::KeyedEvent> {
    let f = tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .unwrap_or_else(|_| panic!("no message within 10 s: {what}"))
        .expect("stream ended")
        .expect("stream failed");
    f.to_event().unwrap().events
}

fn ringing(seq: u64) -> v1::DeviceEvent {
    event(
        "a1",
        seq,
        K::Call(v1::CallUpdate {
            call_id: "c1".into(),
            state: v1::CallState::Early as i32,
            direction: v1::Direction::Inbound as i32,
            remote_number: "+14155550100".into(),
            remote_name: "Big Customer".into(),
        }),
    )
}

fn status(seq: u64, message: &str) -> v1::DeviceEvent {
    event(
        "a1",
        seq,
        K::ManualStatus(v1::ManualStatus {
            status: v1::UserStatus::Away as i32,
            message: message.into(),
        }),
    )
}

/// What the stream told each key.
#[derive(Default)]
struct Views {
    events: HashMap<u32, Vec<E>>,
    ended: HashMap<u32, (i32, String)>,
    /// Key sets of the states sent, in order.
    shared: Vec<Vec<u32>>,
}

impl Views {
    fn take(&mut self, events: Vec<v1::KeyedEvent>) {
        for k in events {
            match k.body.unwrap() {
                Body::Event(e) => {
                    let e = e.event.unwrap();
                    assert!(!matches!(e, E::Batch(_)), "never a batch inside");
                    if matches!(e, E::State(_)) {
                        self.shared.push(k.keys.clone());
                    }
                    for key in &k.keys {
                        self.events.entry(*key).or_default().push(e.clone());
                    }
                }
                Body::Ended(end) => {
                    assert_eq!(k.keys.len(), 1);
                    self.ended.insert(k.keys[0], (end.code, end.message));
                }
            }
        }
    }

    fn snapshot_done(&self, key: u32) -> bool {
        self.events
            .get(&key)
            .is_some_and(|v| v.iter().any(|e| matches!(e, E::SnapshotDone(_))))
    }

    /// The last state of `target` told to `key`.
    fn state(&self, key: u32, target: &str) -> Option<&v1::PresenceState> {
        self.events.get(&key)?.iter().rev().find_map(|e| match e {
            E::State(s) if s.user == target => Some(s),
            _ => None,
        })
    }
}

#[tokio::test(start_paused = true)]
async fn test_many_watchers_on_one_stream() {
    let w = World::start(
        FanoutConfig::default(),
        &["a1", "a2", "seer", "slow", "recep"],
    )
    .await;
    w.settings(
        "a1",
        v1::Visibility::PermittedUsers,
        v1::CallerIdVisibility::PermittedUsers,
    )
    .await;
    w.grant("a1", "seer", v1::GrantKind::See, true).await;
    w.grant("a1", "slow", v1::GrantKind::See, true).await;
    w.grant("a1", "recep", v1::GrantKind::Pickup, true).await;
    let (tx, rx) = mpsc::channel(8);
    let requests = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(Ok)
        .boxed();
    let mut s: Many = Box::pin(w.fanout.watch_many(gateway(), requests).into_stream());
    tx.send(v1::WatchManyRequest {
        add: vec![
            add(1, "seer", &["a1", "a2"]),
            add(2, "slow", &["a1"]),
            add(3, "recep", &["a1"]),
            add(4, "ghost", &["a1"]),
            add(1, "slow", &["a1"]),
            v1::WatchManyAdd {
                key: 5,
                watch: None,
            },
        ],
        remove: vec![99],
        batching: Some(v1::WatchBatching {
            linger_ms: 20,
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    let mut v = Views::default();
    while !(1..=3).all(|k| v.snapshot_done(k)) || !v.ended.contains_key(&4) {
        v.take(next(&mut s, "step 1").await);
    }
    assert_eq!(v.ended[&1].0, Code::AlreadyExists as i32, "a key in use");
    assert_eq!(v.ended[&4].0, Code::NotFound as i32, "{:?}", v.ended[&4]);
    assert_eq!(v.ended[&5].0, Code::InvalidArgument as i32);
    assert_eq!(v.ended[&99].0, Code::NotFound as i32, "no such key");
    assert!(
        v.events[&1]
            .iter()
            .any(|e| matches!(e, E::Denied(d) if d.target == "a2")),
        "seer may not see a2: {:?}",
        v.events[&1]
    );

    // a1 rings: seer and slow see it alike (no caller identity) and get
    // it once, together; recep may pick up and sees who calls.
    let encodes = w.fanout.edge().encodes().get();
    w.publish(vec![ringing(1)]).await;
    let mut v = Views::default();
    while !(1..=3).all(|k| v.state(k, "a1").is_some()) {
        v.take(next(&mut s, "step 2").await);
    }
    assert_eq!(
        v.shared
            .iter()
            .map(|k| k.iter().copied().collect::<HashSet<_>>())
            .collect::<Vec<_>>(),
        vec![HashSet::from([1, 2]), HashSet::from([3])],
        "one event for the watchers that see it alike"
    );
    for k in [1, 2] {
        let st = v.state(k, "a1").unwrap();
        assert_eq!(st.telephony, v1::TelephonyStatus::Ringing as i32);
        assert!(st.calls[0].remote_number.is_empty(), "{st:?}");
    }
    assert_eq!(
        v.state(3, "a1").unwrap().calls[0].remote_number,
        "+14155550100"
    );
    let after = w.fanout.edge().encodes().get();
    assert_eq!(
        (after.0 - encodes.0, after.1 - encodes.1),
        (1, 1),
        "one full and one redacted encoding for all watchers"
    );

    // Removing a watcher ends it alone; the others go on.
    tx.send(v1::WatchManyRequest {
        remove: vec![2],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut v = Views::default();
    while !v.ended.contains_key(&2) {
        v.take(next(&mut s, "step 3").await);
    }
    assert_eq!(v.ended[&2], (Code::Ok as i32, "removed".into()));
    w.publish(vec![status(2, "lunch")]).await;
    let mut v = Views::default();
    while !(v.state(1, "a1").is_some() && v.state(3, "a1").is_some()) {
        v.take(next(&mut s, "step 4").await);
    }
    assert!(!v.events.contains_key(&2), "a removed watcher gets nothing");

    // A revoked grant reaches its watcher only.
    w.grant("a1", "seer", v1::GrantKind::See, false).await;
    let mut v = Views::default();
    while !v.events.get(&1).is_some_and(|e| {
        e.iter()
            .any(|e| matches!(e, E::Revoked(r) if r.target == "a1"))
    }) {
        v.take(next(&mut s, "step 5").await);
    }
    assert!(!v.events.contains_key(&3), "{:?}", v.events.get(&3));

    // A key that ended may be used again; its new watcher starts with a
    // snapshot.
    tx.send(v1::WatchManyRequest {
        add: vec![add(2, "slow", &["a1"])],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut v = Views::default();
    while !v.snapshot_done(2) {
        v.take(next(&mut s, "step 6").await);
    }
    let st = v.state(2, "a1").unwrap();
    assert_eq!(st.message, "lunch", "the current state: {st:?}");

    // The client closes its side: the stream goes on for its watchers.
    drop(tx);
    w.publish(vec![status(3, "back")]).await;
    let mut v = Views::default();
    while v.state(2, "a1").is_none_or(|st| st.message != "back") {
        v.take(next(&mut s, "step 7").await);
    }
    w.stop().await;
}
