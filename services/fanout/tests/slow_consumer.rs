//! A watcher that never reads costs bounded memory and slows nobody:
//! its mailbox coalesces to one pending state per target while another
//! watcher receives everything. Tested below the gRPC transport, whose
//! HTTP/2 windows would otherwise absorb the first thousands of events.

#![allow(clippy::unwrap_used, missing_docs)]

use presence_auth::password::HashCost;
use presence_auth::{DomainSet, Principal, TokenSigner, rights};
use presence_bus::{InProcessBus, SharedBus};
use presence_core::{DomainId, Scope, SiteId, UserId};
use presence_directory::{Directory, DirectoryConfig, Store};
use presence_fanout::watch::Hub;
use presence_fanout::{Fanout, FanoutConfig};
use presence_policy::{AclView, Policy, PolicyConfig};
use presence_proto::v1::{self, device_event::Kind as K, watch_event::Event as E};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn user(id: &str) -> Principal {
    Principal::User {
        domain: DomainId::parse("acme").unwrap(),
        user: UserId::parse(id).unwrap(),
        scope: Scope::BasicUser,
        site: Some(SiteId::parse("hq").unwrap()),
    }
}

async fn next(rx: &mut tokio::sync::mpsc::Receiver<presence_fanout::watch::WatchItem>) -> E {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .event
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_never_reading_watcher_is_coalesced_and_slows_nobody() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open_unsynced(tmp.path()).unwrap());
    let bus: SharedBus = Arc::new(InProcessBus::new(100_000));
    let cfg = DirectoryConfig {
        hash_cost: HashCost {
            memory_kib: 256,
            iterations: 1,
        },
        ..DirectoryConfig::default()
    };
    let dir = Directory::new(
        store.clone(),
        bus.clone(),
        TokenSigner::new(TokenSigner::generate_key()).unwrap(),
        cfg,
    )
    .unwrap();
    let policy = Policy::new(dir.clone(), PolicyConfig::default());
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let acl = AclView::new(store.clone(), 10_000);
    let acl_sub = AclView::subscribe(&bus).await.unwrap();
    tracker.spawn(acl.clone().run(acl_sub, shutdown.clone()));
    // This test is about delivery, not ingest limits.
    let cfg = FanoutConfig {
        device_rate: presence_fanout::shard::RateLimit {
            per_second: 1_000_000,
            burst: 1_000_000,
        },
        ..FanoutConfig::default()
    };
    let fanout = Fanout::start(cfg, acl, bus.clone(), &shutdown, &tracker);
    let hub_sub = Hub::subscribe(&bus);
    tracker.spawn(fanout.hub().run(hub_sub, shutdown.clone()));

    let admin = Principal::Service {
        name: "t".into(),
        domains: DomainSet::All,
        rights: vec![rights::ALL.into()],
        unchecked: Vec::new(),
    };
    dir.create_domain(
        &admin,
        v1::CreateDomainRequest {
            id: "acme".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    dir.create_site(
        &admin,
        v1::CreateSiteRequest {
            domain: "acme".into(),
            id: "hq".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    for id in ["a1", "slow", "fast"] {
        dir.create_user(
            &admin,
            v1::CreateUserRequest {
                domain: "acme".into(),
                id: id.into(),
                site: "hq".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    policy
        .update_presence_settings(
            &admin,
            v1::UpdatePresenceSettingsRequest {
                domain: "acme".into(),
                user: "a1".into(),
                visibility: Some(v1::Visibility::Everyone as i32),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let req = || v1::WatchRequest {
        domain: "acme".into(),
        selector: Some(v1::watch_request::Selector::Targets(v1::TargetList {
            targets: vec!["a1".into()],
        })),
        ..Default::default()
    };
    let mut slow = fanout.watch(&user("slow"), req()).await.unwrap();
    let mut fast = fanout.watch(&user("fast"), req()).await.unwrap();
    let v0 = match next(&mut fast).await {
        E::State(s) => s.version,
        other => panic!("{other:?}"),
    };
    assert!(matches!(next(&mut fast).await, E::SnapshotDone(_)));

    // The device registers (DND only counts on registered devices), then
    // 2,000 changes while `slow` reads nothing.
    let reg = v1::DeviceEvent {
        domain: "acme".into(),
        user: "a1".into(),
        device: "d1".into(),
        sequence: 1,
        at_ms: 0,
        kind: Some(K::Registration(v1::Registration {
            expires_seconds: 600,
        })),
    };
    fanout
        .publish(&admin, v1::PublishRequest { events: vec![reg] })
        .await
        .unwrap();
    for batch in 0..40u64 {
        let events = (0..50u64)
            .map(|i| {
                let seq = batch * 50 + i + 2;
                v1::DeviceEvent {
                    domain: "acme".into(),
                    user: "a1".into(),
                    device: "d1".into(),
                    sequence: seq,
                    at_ms: 0,
                    kind: Some(K::DeviceDnd(v1::DeviceDnd {
                        enabled: seq % 2 == 0,
                    })),
                }
            })
            .collect();
        let r = fanout
            .publish(&admin, v1::PublishRequest { events })
            .await
            .unwrap();
        assert!(r.results.iter().all(|x| x.accepted));
    }
    let final_version = fanout
        .states(&DomainId::parse("acme").unwrap(), &["a1".into()])
        .await
        .unwrap()[0]
        .version;
    assert_eq!(final_version, v0 + 2001, "every event was a change");

    // The fast watcher gets to the final state.
    let mut last = v0;
    while last < final_version {
        if let E::State(s) = next(&mut fast).await {
            assert!(s.version > last);
            last = s.version;
        }
    }
    // The slow one: snapshot, then at most its channel's worth plus one
    // coalesced state per target, ending at the final state.
    let mut received = 0;
    let mut last: Option<u64> = None;
    while last != Some(final_version) {
        match next(&mut slow).await {
            E::State(s) => {
                assert!(
                    last.is_none_or(|l| s.version > l),
                    "versions only increase: {} after {last:?}",
                    s.version
                );
                last = Some(s.version);
                received += 1;
            }
            E::SnapshotDone(_) | E::Heartbeat(_) => {}
            other => panic!("{other:?}"),
        }
    }
    let bound = FanoutConfig::default().watch.send_buffer + 4;
    assert!(
        received <= bound,
        "received {received} states, bound {bound}"
    );
    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
}
