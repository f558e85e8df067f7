//! Cluster safety at start, with the real binary and real nats-servers:
//! a node configured unlike its deployment (shard count, lease lifetime,
//! signing key) is refused with exit 64 naming the setting and both
//! values; a NATS server without JetStream is reported at once; a
//! comma-separated list of seed servers connects through any of them.

#![allow(clippy::unwrap_used, missing_docs)]

use presence_testkit::{NatsServer, spawn_ready};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn presenced(dir: &Path, id: &str, nats: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_presenced"));
    cmd.args(["--listen", "127.0.0.1:0", "--metrics-listen", ""])
        .arg("--data-dir")
        .arg(dir.join(id))
        .args(["--nats-url", nats])
        .env("PRESENCE_NODE_ID", id)
        .env("PRESENCE_SHUTDOWN_GRACE_SECS", "1");
    cmd
}

/// Runs `cmd` to its exit, which must come within `limit`.
fn run_to_exit(mut cmd: Command, limit: Duration) -> Output {
    let mut child = presence_testkit::ChildGuard(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            let mut stderr = Vec::new();
            if let Some(mut e) = child.0.stderr.take() {
                std::io::Read::read_to_end(&mut e, &mut stderr).unwrap();
            }
            return Output {
                status,
                stdout: Vec::new(),
                stderr,
            };
        }
        assert!(
            Instant::now() < deadline,
            "presenced did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A refused node: its id, its environment, words its error must hold.
type Case = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static [&'static str],
);

#[test]
fn test_nodes_configured_unlike_the_deployment_are_refused() {
    let nats = NatsServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut first = presenced(dir, "a", nats.url());
    first.env("PRESENCE_SHARDS", "8");
    let (_a, _) = spawn_ready(first, &dir.join("a.ready"), "node a");
    let key = dir.join("a/auth.key");
    // Same settings and key: accepted.
    let mut same = presenced(dir, "b", nats.url());
    same.env("PRESENCE_SHARDS", "8")
        .env("PRESENCE_AUTH_KEY_FILE", &key)
        .args(["--roles", "fanout"]);
    let (_b, _) = spawn_ready(same, &dir.join("b.ready"), "node b");
    let cases: [Case; 3] = [
        (
            "c",
            &[("PRESENCE_SHARDS", "64")],
            &["shards", "recorded 8", "this node 64"],
        ),
        (
            "d",
            &[("PRESENCE_SHARDS", "8"), ("PRESENCE_LEASE_TTL_MS", "3000")],
            &["lease_ttl_ms", "recorded 10000", "this node 3000"],
        ),
        // No key file given: a key of its own.
        ("e", &[("PRESENCE_SHARDS", "8")], &["signing key"]),
    ];
    for (id, env, words) in cases {
        let mut cmd = presenced(dir, id, nats.url());
        cmd.envs(env.iter().copied());
        if id != "e" {
            cmd.env("PRESENCE_AUTH_KEY_FILE", &key);
        }
        let out = run_to_exit(cmd, Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "node {id}: {stderr}");
        for w in words {
            assert!(stderr.contains(w), "node {id}: {w:?} not in {stderr}");
        }
        assert!(
            !dir.join(format!("{id}.ready")).exists(),
            "node {id} must not serve"
        );
    }
}

#[test]
fn test_nats_without_jetstream_is_reported_at_once() {
    let nats = NatsServer::start_with_config("# no jetstream block: JetStream off\n");
    let tmp = tempfile::tempdir().unwrap();
    let out = run_to_exit(
        presenced(tmp.path(), "a", nats.url()),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("JetStream") && stderr.contains("-js"),
        "{stderr}"
    );
}

#[test]
fn test_a_list_of_seed_servers_connects_through_a_live_one() {
    let nats = NatsServer::start();
    // A port nothing listens on, then the live server.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let list = format!("nats://127.0.0.1:{dead}, {}", nats.url());
    let tmp = tempfile::tempdir().unwrap();
    let (_a, url) = spawn_ready(
        presenced(tmp.path(), "a", &list),
        &tmp.path().join("a.ready"),
        "node a",
    );
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    // A malformed list is a configuration error.
    let out = run_to_exit(
        presenced(tmp.path(), "b", "nats://127.0.0.1:4222,nats://:bad"),
        Duration::from_secs(30),
    );
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_a_restarted_node_keeps_its_identity_and_takes_its_shards_back_at_once() {
    use presence_proto::v1;
    let nats = NatsServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let start = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_presenced"));
        cmd.args(["--listen", "127.0.0.1:0", "--metrics-listen", ""])
            .arg("--data-dir")
            .arg(dir.join("a"))
            .args(["--nats-url", nats.url()])
            // Leases outliving the test: only taking them back works.
            .env("PRESENCE_LEASE_TTL_MS", "600000")
            .env("PRESENCE_SHUTDOWN_GRACE_SECS", "1");
        spawn_ready(cmd, &dir.join("a.ready"), "node a")
    };
    let (first, url) = start();
    let id = std::fs::read_to_string(dir.join("a/node-id")).unwrap();
    assert!(!id.trim().is_empty());
    let token = std::fs::read_to_string(dir.join("a/bootstrap-admin.token")).unwrap();
    let mut admin = presence_client::connect(&url, Some(token.trim()))
        .await
        .unwrap();
    admin
        .directory
        .create_domain(v1::CreateDomainRequest {
            id: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    admin
        .directory
        .create_user(v1::CreateUserRequest {
            domain: "acme".into(),
            id: "1001".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let r = admin
        .presence
        .publish(v1::PublishRequest {
            events: vec![v1::DeviceEvent {
                domain: "acme".into(),
                user: "1001".into(),
                device: "d1".into(),
                sequence: 1,
                at_ms: 0,
                kind: Some(v1::device_event::Kind::Registration(v1::Registration {
                    expires_seconds: 3600,
                })),
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.results[0].accepted, "{}", r.results[0].detail);
    drop(first); // SIGKILL: its leases stay in the bucket for ten minutes
    let (_second, url) = start();
    assert_eq!(
        std::fs::read_to_string(dir.join("a/node-id")).unwrap(),
        id,
        "the node id is kept across restarts"
    );
    let mut admin = presence_client::connect(&url, Some(token.trim()))
        .await
        .unwrap();
    let mut req = tonic::Request::new(v1::GetPresenceRequest {
        domain: "acme".into(),
        targets: vec!["1001".into()],
    });
    // Far below the lease lifetime: answered only if the node took its
    // own leases back instead of waiting for them to expire.
    req.set_timeout(Duration::from_secs(30));
    let states = admin
        .presence
        .get_presence(req)
        .await
        .unwrap()
        .into_inner()
        .states;
    assert_eq!(states.len(), 1);
    assert_eq!(
        states[0].presence,
        v1::PresenceStatus::Available as i32,
        "the registration survived the restart"
    );
}
