//! Per-domain quotas: a domain over its ingest quota gets its events
//! refused as rate limited, a domain over its stream quota gets
//! RESOURCE_EXHAUSTED, and another domain is unaffected by either.
//! Time is paused: the token buckets refill only when the test says so.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::{World, gateway, pull};
use presence_core::ApiError;
use presence_fanout::FanoutConfig;
use presence_fanout::quota::DomainQuota;
use presence_fanout::shard::RateLimit;
use presence_proto::v1::{self, device_event::Kind as K};
use std::time::Duration;

fn status(domain: &str, user: &str, seq: u64) -> v1::DeviceEvent {
    v1::DeviceEvent {
        domain: domain.into(),
        user: user.into(),
        device: "d1".into(),
        sequence: seq,
        at_ms: 0,
        kind: Some(K::ManualStatus(v1::ManualStatus {
            status: v1::UserStatus::Away as i32,
            message: format!("m{seq}"),
        })),
    }
}

fn quota_config() -> FanoutConfig {
    FanoutConfig {
        domain_quota: DomainQuota {
            events: Some(RateLimit {
                per_second: 2,
                burst: 5,
            }),
            max_streams: 2,
        },
        ..FanoutConfig::default()
    }
}

#[tokio::test(start_paused = true)]
async fn test_a_domain_over_its_ingest_quota_is_refused_and_another_is_not() {
    let w = World::start(quota_config(), &["a1"]).await;
    w.add_domain("globex", &["g1"]).await;
    // Acme floods: 20 events at one instant, 5 fit in its burst.
    let flood: Vec<v1::DeviceEvent> = (1..=20).map(|s| status("acme", "a1", s)).collect();
    let r = w
        .fanout
        .publish(&w.admin, v1::PublishRequest { events: flood })
        .await
        .unwrap();
    let accepted = r.results.iter().filter(|x| x.accepted).count();
    assert_eq!(accepted, 5, "{r:?}");
    for x in r.results.iter().skip(5) {
        assert_eq!(x.reason, v1::RejectReason::RateLimited as i32);
        assert_eq!(x.detail, "domain acme over its ingest quota");
    }
    // Globex, at the same instant, has its whole burst.
    let events: Vec<v1::DeviceEvent> = (1..=5).map(|s| status("globex", "g1", s)).collect();
    let r = w
        .fanout
        .publish(&w.admin, v1::PublishRequest { events })
        .await
        .unwrap();
    assert!(r.results.iter().all(|x| x.accepted), "{r:?}");
    // Nothing refused was applied: acme's state is that of event 5.
    let st = &w
        .fanout
        .states(&common::acme(), &["a1".into()])
        .await
        .unwrap()[0];
    assert_eq!(st.message, "m5");
    // Half a second later acme has one token again (2 per second).
    tokio::time::advance(Duration::from_millis(500)).await;
    let r = w
        .fanout
        .publish(
            &w.admin,
            v1::PublishRequest {
                events: vec![status("acme", "a1", 21), status("acme", "a1", 22)],
            },
        )
        .await
        .unwrap();
    let got: Vec<bool> = r.results.iter().map(|x| x.accepted).collect();
    assert_eq!(got, vec![true, false]);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_a_domain_over_its_stream_quota_is_refused_and_another_is_not() {
    let w = World::start(quota_config(), &["a1", "a2", "a3"]).await;
    w.add_domain("globex", &["g1"]).await;
    let req = |domain: &str, watcher: &str| v1::WatchRequest {
        domain: domain.into(),
        watcher: watcher.into(),
        selector: Some(v1::watch_request::Selector::Targets(v1::TargetList {
            targets: vec![watcher.into()],
        })),
        ..Default::default()
    };
    // Different watchers, one gateway: the domain's quota binds, not the
    // principal's.
    let first = w.fanout.watch(&gateway(), req("acme", "a1")).await.unwrap();
    let _second = w.fanout.watch(&gateway(), req("acme", "a2")).await.unwrap();
    match w.fanout.watch(&gateway(), req("acme", "a3")).await {
        Err(ApiError::ResourceExhausted(m)) => {
            assert_eq!(
                m,
                "domain acme already has 2 open watch streams on this node"
            )
        }
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("a third acme stream was opened"),
    }
    // Globex is not affected, and its stream works.
    let mut g = pull(
        w.fanout
            .watch(&gateway(), req("globex", "g1"))
            .await
            .unwrap(),
    );
    let m = common::next_message(&mut g).await;
    assert!(
        matches!(m.event, Some(v1::watch_event::Event::State(ref s)) if s.user == "g1"),
        "{m:?}"
    );
    // A closed stream frees its slot.
    drop(first);
    assert!(w.fanout.watch(&gateway(), req("acme", "a3")).await.is_ok());
    w.stop().await;
}
