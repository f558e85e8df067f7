//! Failures under load, with real processes: three nats-servers in one
//! JetStream cluster and three presenced nodes with every role, all
//! running the shipped HA configuration (deploy/nats/cluster-*.conf,
//! deploy/presenced-ha.toml) with only ports, paths and hosts changed. Writers
//! through all three nodes keep creating users while the directory log's
//! stream leader (a nats-server) and then a presenced node are killed with
//! -9 and restarted; every acknowledged write is on every node exactly
//! once (no retry was ever answered `ALREADY_EXISTS`), and the stores end
//! with equal digests, also after every node is killed at once. A node
//! that dies between the log's acknowledgement
//! and its answer (a crash point) leaves a write that the client's retry
//! through another node completes with the original answer, applied once.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::{
    acme, assert_equal_digests, bootstrap_token, log_info, log_tail, node_with, user, user_ids,
    wait_version,
};
use presence_client::{PresenceClient, connect};
use presence_proto::v1;
use presence_testkit::NatsCluster;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tonic::Code;

const WRITES: usize = 50;

/// A keyed request: the same key on every attempt of one logical write.
fn keyed<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("idempotency-key", key.parse().unwrap());
    r
}

/// Connects to the first node of `urls` (from `start`) that answers.
async fn any_node(
    urls: &watch::Receiver<Vec<String>>,
    start: usize,
    token: &str,
) -> (usize, PresenceClient) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = start;
    loop {
        let url = {
            let u = urls.borrow();
            u[i % u.len()].clone()
        };
        if let Ok(c) = connect(&url, Some(token)).await {
            return (i, c);
        }
        assert!(Instant::now() < deadline, "no node answers");
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates users `w<n><i>` through node `n`, retrying each (same key)
/// through the next node on transient errors. Returns the ids created.
async fn writer(
    urls: watch::Receiver<Vec<String>>,
    token: String,
    n: usize,
    acked: Arc<AtomicUsize>,
) -> Vec<String> {
    let (mut at, mut c) = any_node(&urls, n, &token).await;
    let mut ids = Vec::new();
    for i in 0..WRITES {
        let id = format!("w{n}{i:03}");
        let key = format!("create-{id}");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match c.directory.create_user(keyed(user(&id), &key)).await {
                Ok(u) => {
                    assert_eq!(u.get_ref().id, id);
                    assert_eq!(u.get_ref().version, 1);
                    break;
                }
                Err(s) => {
                    assert_ne!(
                        s.code(),
                        Code::AlreadyExists,
                        "write {id} applied twice (or its retry lost its key): {s:?}"
                    );
                    assert!(
                        Instant::now() < deadline,
                        "write {id} never succeeded: {s:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    (at, c) = any_node(&urls, at + 1, &token).await;
                }
            }
        }
        ids.push(id);
        acked.fetch_add(1, Ordering::SeqCst);
    }
    ids
}

async fn wait_acked(acked: &AtomicUsize, n: usize, dir: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.load(Ordering::SeqCst) < n {
        if Instant::now() >= deadline {
            for id in ["a", "b", "c"] {
                eprintln!("{id}: {}", log_tail(dir, id));
            }
        }
        assert!(
            Instant::now() < deadline,
            "writes stalled at {}",
            acked.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_acknowledged_writes_survive_killing_the_log_leader_and_a_node_mid_burst() {
    let mut nats = NatsCluster::start_with_configs(
        [
            include_str!("../../../deploy/nats/cluster-1.conf"),
            include_str!("../../../deploy/nats/cluster-2.conf"),
            include_str!("../../../deploy/nats/cluster-3.conf"),
        ],
        "presenced:change-me",
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // The shared signing key the HA config names, at a test path.
    let key = dir.join("auth.key");
    std::fs::write(&key, "5e".repeat(32)).unwrap();
    let conf = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/presenced-ha.toml"
    );
    // Snapshots (and log compaction) every few entries, so they run
    // through the failures and under the shipped permissions too.
    let ha = [
        ("PRESENCE_CONFIG", conf),
        ("PRESENCE_DIRECTORY_SNAPSHOT_EVERY", "30"),
        ("PRESENCE_DIRECTORY_SNAPSHOT_INTERVAL_MS", "200"),
        // On loopback, without the shipped certificate paths.
        ("PRESENCE_TLS_CERT_FILE", ""),
        ("PRESENCE_TLS_KEY_FILE", ""),
    ];
    let node = |id: &str| node_with(dir, id, &nats.urls(), Some(&key), &ha);
    let (a, url_a) = node("a");
    let (b, url_b) = node("b");
    let (c, url_c) = node("c");
    let mut procs = vec![a, b, c];
    let token = bootstrap_token(&dir.join("a"));
    let mut ca = connect(&url_a, Some(&token)).await.unwrap();
    ca.directory.create_domain(acme()).await.unwrap();
    ca.directory.create_user(user("1000")).await.unwrap();
    for url in [&url_b, &url_c] {
        wait_version(&mut connect(url, Some(&token)).await.unwrap(), "1000", 1).await;
    }

    let (urls_tx, urls) = watch::channel(vec![url_a.clone(), url_b.clone(), url_c.clone()]);
    let acked = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..3)
        .map(|n| tokio::spawn(writer(urls.clone(), token.clone(), n, acked.clone())))
        .collect();

    // The stream leader's nats-server dies mid-burst.
    wait_acked(&acked, 20, dir).await;
    let client =
        async_nats::ConnectOptions::with_user_and_password("presenced".into(), "change-me".into())
            .connect(nats.url(0))
            .await
            .unwrap();
    let js = async_nats::jetstream::new(client);
    let leader = log_info(&js)
        .await
        .cluster
        .and_then(|c| c.leader)
        .expect("the log has a leader");
    let leader = nats.index_of(&leader).expect("leader is one of ours");
    nats.kill(leader);

    // Then presenced node b dies mid-burst; its writer goes on elsewhere.
    wait_acked(&acked, 60, dir).await;
    procs[1].0.kill().unwrap();
    procs[1].0.wait().unwrap();
    wait_acked(&acked, 90, dir).await;
    nats.restart(leader);
    std::fs::remove_file(dir.join("b.ready")).ok();
    let (b, url_b) = node_with(dir, "b", &nats.urls(), Some(&key), &ha);
    procs[1] = b;
    urls_tx.send_replace(vec![url_a.clone(), url_b.clone(), url_c.clone()]);

    let mut expected = vec!["1000".to_owned()];
    for w in writers {
        expected.extend(w.await.unwrap());
    }
    expected.sort();
    assert_eq!(expected.len(), 1 + 3 * WRITES);

    // Every acknowledged write is on every node, and nothing else.
    let last = expected.last().unwrap().clone();
    for url in [&url_a, &url_b, &url_c] {
        let mut cl = match connect(url, Some(&token)).await {
            Ok(c) => c,
            Err(e) => panic!(
                "{url}: {e}; logs:\na: {}\nb: {}\nc: {}",
                log_tail(dir, "a"),
                log_tail(dir, "b"),
                log_tail(dir, "c")
            ),
        };
        for n in 0..3 {
            wait_version(&mut cl, &format!("w{n}{:03}", WRITES - 1), 1).await;
        }
        wait_version(&mut cl, &last, 1).await;
        assert_eq!(user_ids(&mut cl).await, expected, "on {url}");
    }

    // A node dies after the log acknowledged its write and before it
    // answered; the client's retry through another node gets the
    // original answer, and the update is applied once (applied twice, it
    // would be a stale version: ABORTED).
    let (mut x, url_x) = node_with(
        dir,
        "x",
        &nats.urls(),
        Some(&key),
        &[
            ha[0],
            ha[1],
            ha[2],
            ha[3],
            ha[4],
            ("PRESENCE_TEST_CRASH_AFTER_LOG_APPENDS", "1"),
        ],
    );
    let mut cx = connect(&url_x, Some(&token)).await.unwrap();
    let v = wait_version(&mut cx, "1000", 1).await.version;
    let rename = v1::UpdateUserRequest {
        domain: "acme".into(),
        id: "1000".into(),
        expected_version: v,
        profile: Some(v1::ProfileUpdate {
            first_name: Some("Renamed".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let lost = cx
        .directory
        .update_user(keyed(rename.clone(), "rename-1000"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            lost.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal
        ),
        "{lost:?}"
    );
    let st = x.0.wait().unwrap();
    assert_eq!(st.code(), Some(137), "the node stopped at its crash point");
    for url in [&url_a, &url_c] {
        let mut cl = connect(url, Some(&token)).await.unwrap();
        let retried = cl
            .directory
            .update_user(keyed(rename.clone(), "rename-1000"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(retried.version, v + 1, "the original answer, on {url}");
        assert_eq!(retried.profile.unwrap().first_name, "Renamed");
    }
    // Without the key the same request is a new write, and stale.
    let stale = ca.directory.update_user(rename).await.unwrap_err();
    assert_eq!(stale.code(), Code::Aborted, "{stale:?}");
    for url in [&url_a, &url_b, &url_c] {
        let mut cl = connect(url, Some(&token)).await.unwrap();
        assert_eq!(wait_version(&mut cl, "1000", v + 1).await.version, v + 1);
    }

    // The log was compacted behind snapshots meanwhile.
    let first = log_info(&js).await.state.first_sequence;
    assert!(first > 1, "the directory log was never compacted");

    // Every presenced node killed at once: nothing acknowledged is lost
    // (the log is the source of truth), and each comes back with it.
    let before = user_ids(&mut ca).await;
    for p in &mut procs {
        p.0.kill().unwrap();
        p.0.wait().unwrap();
    }
    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        std::fs::remove_file(dir.join(format!("{id}.ready"))).ok();
        let (p, url) = node_with(dir, id, &nats.urls(), Some(&key), &ha);
        procs[i] = p;
        let mut cl = connect(&url, Some(&token)).await.unwrap();
        assert_eq!(
            user_ids(&mut cl).await,
            before,
            "node {id} after kill -9 of all"
        );
    }

    // Equal stores everywhere.
    for p in &mut procs {
        p.terminate(Duration::from_secs(10));
    }
    assert_equal_digests(dir, &["a", "b", "c"]);
}
