//! A watcher that never reads costs bounded memory and slows nobody:
//! its mailbox coalesces to one pending state per target while another
//! watcher receives everything. Tested below the gRPC transport, whose
//! HTTP/2 windows would otherwise absorb the first thousands of events.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::{World, event, next};
use presence_fanout::FanoutConfig;
use presence_proto::v1::{self, device_event::Kind as K, watch_event::Event as E};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_never_reading_watcher_is_coalesced_and_slows_nobody() {
    let w = World::start(FanoutConfig::default(), &["a1", "slow", "fast"]).await;
    w.settings("a1", v1::Visibility::Everyone, v1::CallerIdVisibility::All)
        .await;
    let mut slow = w.watch("slow", &["a1"], None).await;
    let mut fast = w.watch("fast", &["a1"], None).await;
    let v0 = match next(&mut fast).await {
        E::State(s) => s.version,
        other => panic!("{other:?}"),
    };
    assert!(matches!(next(&mut fast).await, E::SnapshotDone(_)));
    // The slow watcher reads its snapshot, then nothing.
    assert!(matches!(next(&mut slow).await, E::State(_)));
    assert!(matches!(next(&mut slow).await, E::SnapshotDone(_)));

    // The device registers (DND only counts on registered devices), then
    // 2,000 changes while `slow` reads nothing.
    w.publish(vec![event(
        "a1",
        1,
        K::Registration(v1::Registration {
            expires_seconds: 600,
        }),
    )])
    .await;
    for batch in 0..40u64 {
        let events = (0..50u64)
            .map(|i| {
                let seq = batch * 50 + i + 2;
                event(
                    "a1",
                    seq,
                    K::DeviceDnd(v1::DeviceDnd {
                        enabled: seq % 2 == 0,
                    }),
                )
            })
            .collect();
        w.publish(events).await;
    }
    let final_version = w
        .fanout
        .states(&common::acme(), &["a1".into()])
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
    // The slow one: nothing was buffered for it but the one pending state
    // of its target, the final one.
    match next(&mut slow).await {
        E::State(s) => assert_eq!(s.version, final_version, "coalesced to the latest"),
        other => panic!("{other:?}"),
    }
    w.stop().await;
}
