//! Log compaction, joining from a snapshot, backup and restore, with real
//! processes: three nats-servers in one JetStream cluster, presenced
//! nodes publishing directory snapshots every few entries. The log is
//! compacted behind them; a node with an empty data dir joins from the
//! newest snapshot plus the tail and ends with the same store digest;
//! a backup taken through NATS from the running deployment restores into
//! a fresh deployment (and into an embedded broker) with the same users,
//! grants and passwords; bad restores are refused and change nothing.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::{
    acme, assert_equal_digests, bootstrap_token, digest, log_info, node_with, user, user_ids,
    wait_version,
};
use presence_client::{PresenceClient, connect};
use presence_proto::v1;
use presence_testkit::{ChildGuard as Proc, NatsCluster, NatsServer, spawn_ready};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const SNAPSHOTS: [(&str, &str); 2] = [
    ("PRESENCE_DIRECTORY_SNAPSHOT_EVERY", "25"),
    ("PRESENCE_DIRECTORY_SNAPSHOT_INTERVAL_MS", "200"),
];

/// Runs `presenced <args>` to completion.
fn presenced(args: &[&str], data_dir: &Path, nats: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_presenced"));
    cmd.args(args).arg("--data-dir").arg(data_dir);
    if let Some(n) = nats {
        cmd.args(["--nats-url", n]);
    }
    cmd.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Starts an embedded broker on `data_dir`.
fn embedded(data_dir: &Path) -> (Proc, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_presenced"));
    cmd.args(["--listen", "127.0.0.1:0", "--metrics-listen", ""])
        .arg("--data-dir")
        .arg(data_dir)
        .env("PRESENCE_SHUTDOWN_GRACE_SECS", "1");
    let ready = data_dir.with_extension("ready");
    spawn_ready(cmd, &ready, "embedded broker")
}

fn stop(p: &mut Proc) {
    let st = p.terminate(Duration::from_secs(20)).expect("node stops");
    assert!(st.success(), "node exited with {st}");
}

/// The last sequence of the directory log.
async fn log_last(js: &async_nats::jetstream::Context) -> u64 {
    log_info(js).await.state.last_sequence
}

/// The first sequence left in the directory log.
async fn log_first(js: &async_nats::jetstream::Context) -> u64 {
    log_info(js).await.state.first_sequence
}

async fn grants(c: &mut PresenceClient, target: &str) -> Vec<v1::Grantee> {
    c.policy
        .list_grants(v1::ListGrantsRequest {
            domain: "acme".into(),
            target: target.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .see
}

async fn login(url: &str, password: &str) -> Result<v1::LoginResponse, tonic::Status> {
    let mut c = connect(url, None).await.unwrap();
    c.auth
        .login(v1::LoginRequest {
            domain: "acme".into(),
            user: "pw".into(),
            password: password.into(),
            new_password: None,
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_log_compacts_behind_snapshots_nodes_join_from_them_and_backups_restore() {
    let nats = NatsCluster::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (a, url_a) = node_with(dir, "a", &nats.url(0), None, &SNAPSHOTS);
    let key = dir.join("a/auth.key");
    let (b, url_b) = node_with(dir, "b", &nats.url(1), Some(&key), &SNAPSHOTS);
    let mut procs = vec![a, b];
    let token = bootstrap_token(&dir.join("a"));
    let mut ca = connect(&url_a, Some(&token)).await.unwrap();
    let mut cb = connect(&url_b, Some(&token)).await.unwrap();

    // A directory written through both nodes, with a password and a grant.
    ca.directory.create_domain(acme()).await.unwrap();
    ca.directory
        .create_user(v1::CreateUserRequest {
            password: Some("restored secret pw".into()),
            ..user("pw")
        })
        .await
        .unwrap();
    wait_version(&mut cb, "pw", 1).await;
    for i in 0..70 {
        let c = if i % 2 == 0 { &mut ca } else { &mut cb };
        c.directory
            .create_user(user(&format!("1{i:03}")))
            .await
            .unwrap();
    }
    // Node b stops; the directory goes on through a, long enough for the
    // log to be compacted past everything b has.
    let client = async_nats::connect(nats.url(2)).await.unwrap();
    let js = async_nats::jetstream::new(client);
    stop(&mut procs[1]);
    let b_had = log_last(&js).await;
    let grant = |u: &str| v1::AddGrantRequest {
        domain: "acme".into(),
        target: "pw".into(),
        kind: v1::GrantKind::See as i32,
        grantee: Some(v1::Grantee {
            kind: Some(v1::grantee::Kind::User(u.into())),
        }),
    };
    ca.policy.add_grant(grant("1000")).await.unwrap();
    ca.policy.add_grant(grant("1001")).await.unwrap();
    // Batches of writes until two snapshots past b's last entry retire
    // the one b could have continued from.
    let mut written = 0;
    while log_first(&js).await <= b_had + 1 {
        assert!(
            written < 600,
            "the directory log was never compacted past node b (at {b_had}): it holds {}..={}",
            log_first(&js).await,
            log_last(&js).await
        );
        let before = log_first(&js).await;
        for _ in 0..30 {
            ca.directory
                .create_user(user(&format!("2{written:03}")))
                .await
                .unwrap();
            written += 1;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while log_first(&js).await == before && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // b comes back behind the log's start: it loads the newest snapshot
    // over its old store, then the tail.
    std::fs::remove_file(dir.join("b.ready")).ok();
    let (b, url_b) = node_with(dir, "b", &nats.url(1), Some(&key), &SNAPSHOTS);
    procs[1] = b;
    let mut cb = connect(&url_b, Some(&token)).await.unwrap();
    assert_eq!(user_ids(&mut cb).await, user_ids(&mut ca).await);
    assert_eq!(grants(&mut cb, "pw").await.len(), 2);

    // A node with an empty data dir joins from the newest snapshot plus
    // the tail, and answers like the others as soon as it is ready.
    let (c, url_c) = node_with(dir, "c", &nats.url(2), Some(&key), &SNAPSHOTS);
    procs.push(c);
    let mut cc = connect(&url_c, Some(&token)).await.unwrap();
    let expected = user_ids(&mut ca).await;
    assert_eq!(expected.len(), 71 + written);
    assert_eq!(user_ids(&mut cc).await, expected);
    assert_eq!(grants(&mut cc, "pw").await, grants(&mut ca, "pw").await);
    assert_eq!(grants(&mut cc, "pw").await.len(), 2);
    // ... and takes writes like the others.
    cc.directory.create_user(user("3999")).await.unwrap();
    wait_version(&mut ca, "3999", 1).await;
    wait_version(&mut cb, "3999", 1).await;

    // A backup through NATS while the deployment serves.
    let backup = dir.join("directory.backup");
    let out = presenced(
        &["backup", "--out", backup.to_str().unwrap()],
        &dir.join("backup-work"),
        Some(&nats.url(1)),
    );
    assert!(out.status.success(), "backup failed: {}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("records"));

    // Restoring into a deployment whose log holds entries is refused.
    let refused = presenced(
        &["restore", "--from", backup.to_str().unwrap()],
        &dir.join("restore-work"),
        Some(&nats.url(0)),
    );
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("already holds"),
        "{}",
        stderr(&refused)
    );

    // Every node holds the same store.
    for p in &mut procs {
        stop(p);
    }
    assert_equal_digests(dir, &["a", "b", "c"]);
    drop(nats);

    // Restore into a fresh deployment (one nats-server here): a node
    // started there serves the same users, grants and passwords.
    let fresh = NatsServer::start();
    // A node already running on the fresh deployment's empty log stops
    // (non-zero) when the restore lands under it, and says why.
    let (mut early, _) = node_with(
        dir,
        "d",
        fresh.url(),
        None,
        &[("PRESENCE_JETSTREAM_REPLICAS", "1")],
    );
    let restored = presenced(
        &["restore", "--from", backup.to_str().unwrap()],
        &dir.join("restore-work"),
        Some(fresh.url()),
    );
    assert!(restored.status.success(), "{}", stderr(&restored));
    let deadline = Instant::now() + Duration::from_secs(30);
    let st = loop {
        if let Some(st) = early.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the node kept serving under a restore: {:?}",
            std::fs::read_to_string(dir.join("d.log"))
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!st.success(), "it stops with an error");
    // Started again on the same data dir, it loads the restored snapshot.
    std::fs::remove_file(dir.join("d.ready")).ok();
    let (mut d, url_d) = node_with(
        dir,
        "d",
        fresh.url(),
        None,
        &[("PRESENCE_JETSTREAM_REPLICAS", "1")],
    );
    let mut cd = connect(&url_d, Some(&bootstrap_token(&dir.join("d"))))
        .await
        .unwrap();
    let mut expected = expected;
    expected.push("3999".into());
    expected.sort();
    assert_eq!(user_ids(&mut cd).await, expected);
    assert_eq!(grants(&mut cd, "pw").await.len(), 2);
    login(&url_d, "restored secret pw").await.unwrap();
    assert_eq!(
        login(&url_d, "wrong password").await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    // The restored deployment takes writes.
    cd.directory.create_user(user("3000")).await.unwrap();
    stop(&mut d);

    // Embedded: a damaged backup is refused and leaves the data dir empty;
    // the good one loads and an embedded broker serves it.
    let damaged = dir.join("damaged.backup");
    let mut bytes = std::fs::read(&backup).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&damaged, bytes).unwrap();
    let e = dir.join("e");
    let bad = presenced(&["restore", "--from", damaged.to_str().unwrap()], &e, None);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("not a valid directory snapshot"));
    let good = presenced(&["restore", "--from", backup.to_str().unwrap()], &e, None);
    assert!(good.status.success(), "{}", stderr(&good));
    let again = presenced(&["restore", "--from", backup.to_str().unwrap()], &e, None);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("already holds a directory"));
    let (mut emb, url_e) = embedded(&e);
    let mut ce = connect(&url_e, Some(&bootstrap_token(&e))).await.unwrap();
    assert_eq!(user_ids(&mut ce).await, expected);
    assert_eq!(grants(&mut ce, "pw").await.len(), 2);
    login(&url_e, "restored secret pw").await.unwrap();
    // A running embedded broker holds its store: backup says so.
    let busy = presenced(&["backup", "--out", "/dev/null"], &e, None);
    assert!(!busy.status.success());
    assert!(stderr(&busy).contains("stop it first"), "{}", stderr(&busy));
    stop(&mut emb);

    // An embedded backup round-trips to an identical store.
    let second = dir.join("embedded.backup");
    let out = presenced(&["backup", "--out", second.to_str().unwrap()], &e, None);
    assert!(out.status.success(), "{}", stderr(&out));
    let f = dir.join("f");
    let out = presenced(&["restore", "--from", second.to_str().unwrap()], &f, None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(digest(&e), digest(&f));
}
