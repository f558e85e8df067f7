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
