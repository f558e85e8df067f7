//! The node reports that hold compaction back, on a real nats-server:
//! the least reported position wins, a withdrawn report no longer
//! counts, and a nameless reader (a backup) never reports.

#![allow(clippy::unwrap_used, missing_docs)]

use presence_directory::compaction::Snapshots;
use presence_testkit::NatsServer;
use std::time::Duration;

#[tokio::test]
async fn test_the_least_reported_position_holds_compaction_back() {
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let snaps = Snapshots::open(&js, 1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(snaps.least_applied().await.unwrap(), None);
    snaps.report("a", 50).await.unwrap();
    snaps.report("b", 30).await.unwrap();
    snaps.report("", 1).await.unwrap();
    assert_eq!(snaps.least_applied().await.unwrap(), Some(30));
    snaps.report("b", 70).await.unwrap();
    assert_eq!(snaps.least_applied().await.unwrap(), Some(50));
    snaps.withdraw("a").await;
    assert_eq!(snaps.least_applied().await.unwrap(), Some(70));
}

/// What compaction purges: behind the oldest snapshot and the least
/// reported position, and nothing at all when that is below the log's
/// start (a purge up to sequence 1 emptied the log on nats-server 2.9).
#[test]
fn test_purge_keeps_what_nodes_need_and_never_goes_below_the_start() {
    use presence_directory::replica::purge_below;
    // A joining node that has applied nothing holds the whole log.
    assert_eq!(purge_below(49, Some(0), 1), None);
    assert_eq!(purge_below(49, Some(0), 50), None);
    // A lagging node holds what it still has to apply.
    assert_eq!(purge_below(201, Some(120), 50), Some(121));
    // Otherwise up to the oldest retained snapshot.
    assert_eq!(purge_below(201, None, 50), Some(202));
    assert_eq!(purge_below(201, Some(300), 50), Some(202));
    // Already compacted that far: nothing to send.
    assert_eq!(purge_below(49, None, 50), None);
}
