//! Expiry at the exact deadline, with paused tokio time: a ringing call
//! without news, and a registration, stop counting and watchers are told
//! (a new state is published).

#![allow(clippy::unwrap_used, missing_docs)]

use futures_util::StreamExt;
use presence_bus::{InProcessBus, SharedBus};
use presence_core::presence::{
    CallState, Direction, Event, EventKind, Limits, PresenceStatus, Telephony,
};
use presence_core::{DomainId, UserId};
use presence_fanout::shard::{self, Clock};
use presence_proto::v1;
use prost::Message;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[tokio::test(start_paused = true)]
async fn test_ringing_and_registration_expire_on_time() {
    let bus: SharedBus = Arc::new(InProcessBus::new(64));
    let mut out = bus
        .subscribe("presence.v1.out.acme.1001".into())
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let limits = Limits {
        ring_timeout_ms: 30_000,
        ..Limits::default()
    };
    let clock = Clock::new();
    let h = shard::spawn(
        0,
        16,
        limits,
        shard::RateLimit::default(),
        bus.clone(),
        clock,
        None,
        shutdown.clone(),
        &tracker,
    );
    let key = (
        DomainId::parse("acme").unwrap(),
        UserId::parse("1001").unwrap(),
    );
    let ev = |seq, kind| Event {
        device: "p1".into(),
        sequence: seq,
        at_ms: 0,
        kind,
    };
    assert_eq!(
        h.apply(key.clone(), ev(1, EventKind::Register { expires_s: 60 }))
            .await
            .unwrap(),
        Ok(true)
    );
    let ring = EventKind::Call {
        call_id: "c1".into(),
        state: CallState::Early,
        direction: Direction::Inbound,
        remote_number: "100".into(),
        remote_name: String::new(),
    };
    assert_eq!(h.apply(key.clone(), ev(2, ring)).await.unwrap(), Ok(true));
    let v = |m: presence_bus::BusMessage| v1::PresenceState::decode(m.payload).unwrap();
    let s1 = v(out.next().await.unwrap());
    let s2 = v(out.next().await.unwrap());
    assert_eq!(s2.telephony, v1::TelephonyStatus::Ringing as i32);
    assert_eq!(s2.version, s1.version + 1);

    tokio::time::advance(Duration::from_millis(29_999)).await;
    let a = h.get(vec![key.clone()]).await.unwrap();
    assert_eq!(
        a[0].telephony,
        Telephony::Ringing,
        "not a millisecond early"
    );

    // At 30 s the ringing call without news is gone, and watchers are told.
    let s3 = v(out.next().await.unwrap());
    assert_eq!(s3.telephony, v1::TelephonyStatus::NoCall as i32);
    assert_eq!(s3.version, s2.version + 1);
    assert_eq!(
        h.get(vec![key.clone()]).await.unwrap()[0].telephony,
        Telephony::NoCall
    );

    // At 60 s the registration expires: offline.
    let s4 = v(out.next().await.unwrap());
    assert_eq!(s4.presence, v1::PresenceStatus::Offline as i32);
    let a = h.get(vec![key.clone()]).await.unwrap();
    assert_eq!(
        (a[0].presence, a[0].version),
        (PresenceStatus::Offline, s4.version)
    );
    assert!(clock.now_ms() - s2.updated_at_ms >= 60_000 - 1);

    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
}

#[test]
fn test_shard_index_is_stable_and_spread() {
    let d = DomainId::parse("acme").unwrap();
    let mut counts = [0usize; 8];
    for i in 0..8000 {
        let u = UserId::parse(&format!("{}", 1000 + i)).unwrap();
        let s = shard::shard_index(&d, &u, 8);
        assert_eq!(s, shard::shard_index(&d, &u, 8));
        counts[s] += 1;
    }
    assert!(counts.iter().all(|c| *c > 700 && *c < 1300), "{counts:?}");
    // Pinned value: the mapping must not change between versions, or a
    // rolling upgrade would split a user's state across two shards.
    let pinned: Vec<usize> = ["1001", "1002", "alice"]
        .iter()
        .map(|u| shard::shard_index(&d, &UserId::parse(u).unwrap(), 1024))
        .collect();
    assert_eq!(
        pinned,
        vec![559, 994, 687],
        "FNV-1a of domain NUL user, mod 1024"
    );
}

#[tokio::test(start_paused = true)]
async fn test_publish_rate_per_device_is_limited() {
    let bus: SharedBus = Arc::new(InProcessBus::new(4096));
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let rate = shard::RateLimit {
        per_second: 10,
        burst: 5,
    };
    let h = shard::spawn(
        0,
        16,
        Limits::default(),
        rate,
        bus,
        Clock::new(),
        None,
        shutdown.clone(),
        &tracker,
    );
    let key = (
        DomainId::parse("acme").unwrap(),
        UserId::parse("1001").unwrap(),
    );
    let dnd = |device: &str, seq: u64| Event {
        device: device.into(),
        sequence: seq,
        at_ms: 0,
        kind: EventKind::DeviceDnd(seq.is_multiple_of(2)),
    };
    let mut results = Vec::new();
    for seq in 1..=7 {
        results.push(h.apply(key.clone(), dnd("p1", seq)).await.unwrap().is_ok());
    }
    assert_eq!(
        results,
        vec![true, true, true, true, true, false, false],
        "a burst of 5, then limited"
    );
    // Another device has its own bucket.
    assert!(h.apply(key.clone(), dnd("p2", 1)).await.unwrap().is_ok());
    // 100 ms later one token is back (10 per second).
    tokio::time::advance(Duration::from_millis(100)).await;
    assert!(h.apply(key.clone(), dnd("p1", 8)).await.unwrap().is_ok());
    let r = h
        .apply(key.clone(), dnd("p1", 9))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(r.reason, presence_core::presence::Reject::TooMany);
    assert_eq!(
        r.detail,
        "device p1 is over its rate of 10 events/s (burst 5)"
    );
    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
}
