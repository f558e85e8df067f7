//! Helpers shared by the replicated-deployment tests: presenced nodes on
//! a NATS cluster, waiting for a node to see a write, store digests.

#![allow(dead_code, clippy::unwrap_used)]

use async_nats::jetstream;
use presence_client::PresenceClient;
use presence_proto::v1;
use presence_testkit::{ChildGuard as Proc, spawn_ready_logged};
use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Starts node `id` (data dir `dir/id`, log `dir/id.log`) seeded with
/// `nats`, the directory log at 3 replicas, with extra `env`, and waits
/// for its ready file.
pub fn node_with(
    dir: &Path,
    id: &str,
    nats: &str,
    key: Option<&Path>,
    env: &[(&str, &str)],
) -> (Proc, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_presenced"));
    cmd.args(["--listen", "127.0.0.1:0", "--metrics-listen", ""])
        .arg("--data-dir")
        .arg(dir.join(id))
        .args(["--nats-url", nats])
        .env("PRESENCE_NODE_ID", id)
        .env("PRESENCE_JETSTREAM_REPLICAS", "3")
        .env("PRESENCE_SHUTDOWN_GRACE_SECS", "1");
    if let Some(k) = key {
        cmd.env("PRESENCE_AUTH_KEY_FILE", k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    spawn_ready_logged(
        cmd,
        &dir.join(format!("{id}.ready")),
        &format!("node {id}"),
        Some(&dir.join(format!("{id}.log"))),
    )
}

/// [`node_with`] without extra settings.
pub fn node(dir: &Path, id: &str, nats: &str, key: Option<&Path>) -> (Proc, String) {
    node_with(dir, id, nats, key, &[])
}

/// The bootstrap admin token a node wrote to its data dir.
pub fn bootstrap_token(node_dir: &Path) -> String {
    std::fs::read_to_string(node_dir.join("bootstrap-admin.token"))
        .unwrap()
        .trim()
        .to_owned()
}

/// A basic user `id` of acme.
pub fn user(id: &str) -> v1::CreateUserRequest {
    v1::CreateUserRequest {
        domain: "acme".into(),
        id: id.into(),
        scope: v1::Scope::BasicUser as i32,
        profile: Some(v1::Profile {
            first_name: id.into(),
            last_name: "Test".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The acme domain.
pub fn acme() -> v1::CreateDomainRequest {
    v1::CreateDomainRequest {
        id: "acme".into(),
        name: "Acme".into(),
        dns_name: "acme.example.com".into(),
    }
}

/// Waits until `user` of acme is at `version` (at least) on `c`: the
/// bounded lag of a node that did not take the write.
pub async fn wait_version(c: &mut PresenceClient, user: &str, version: u64) -> v1::User {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(u) = c
            .directory
            .get_user(v1::GetUserRequest {
                domain: "acme".into(),
                id: user.into(),
            })
            .await
        {
            let u = u.into_inner();
            if u.version >= version {
                return u;
            }
        }
        assert!(
            Instant::now() < deadline,
            "user {user} never reached version {version}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The digest of the directory store in a (stopped) node's data dir.
pub fn digest(node_dir: &Path) -> String {
    let store = presence_directory::Store::open(&node_dir.join("directory")).unwrap();
    store.digest().unwrap()
}

/// Every user id of acme, sorted, as `c` lists them (system users too).
pub async fn user_ids(c: &mut PresenceClient) -> Vec<String> {
    let mut ids = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = c
            .directory
            .list_users(v1::ListUsersRequest {
                domain: "acme".into(),
                hide_system_users: Some(false),
                page_size: 500,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        ids.extend(page.users.into_iter().map(|u| u.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    ids.sort();
    ids
}

/// The directory log stream's current info.
pub async fn log_info(js: &async_nats::jetstream::Context) -> async_nats::jetstream::stream::Info {
    let mut s = js.get_stream("PRESENCE_DIRECTORY").await.unwrap();
    s.info().await.unwrap().clone()
}

/// Asserts that the (stopped) nodes `ids` under `dir` hold equal stores.
pub fn assert_equal_digests(dir: &Path, ids: &[&str]) {
    let digests: Vec<String> = ids.iter().map(|id| digest(&dir.join(id))).collect();
    assert!(
        digests.iter().all(|d| *d == digests[0]),
        "store digests differ: {digests:?}"
    );
}

/// The last lines of node `id`'s log (for failure messages).
pub fn log_tail(dir: &Path, id: &str) -> String {
    let text = std::fs::read_to_string(dir.join(format!("{id}.log"))).unwrap_or_default();
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("ERROR")).collect();
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains("WARN")).collect();
    format!(
        "{}\n… {}",
        errors[errors.len().saturating_sub(5)..].join("\n"),
        warnings[warnings.len().saturating_sub(3)..].join("\n")
    )
}

/// The owner of each of `shards` shards (from the lease bucket).
pub async fn owners(js: &jetstream::Context, shards: usize) -> Vec<Option<String>> {
    let Ok(kv) = js.get_key_value("presence_shard_leases").await else {
        return vec![None; shards];
    };
    let mut out = Vec::new();
    for n in 0..shards {
        let e = kv.entry(format!("s{n}")).await.unwrap();
        out.push(
            e.filter(|e| e.operation == jetstream::kv::Operation::Put)
                .map(|e| String::from_utf8_lossy(&e.value).into_owned()),
        );
    }
    out
}

/// Waits until every shard is owned by one of `nodes` and each of them
/// owns at least one (ownership is visible in the lease bucket).
pub async fn wait_spread(js: &jetstream::Context, shards: usize, nodes: &[&str]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = owners(js, shards).await;
        let all: Option<Vec<String>> = o.into_iter().collect();
        if let Some(all) = all {
            let used: HashSet<&str> = all.iter().map(String::as_str).collect();
            if all.iter().all(|x| nodes.contains(&x.as_str())) && used.len() == nodes.len() {
                return all;
            }
        }
        assert!(
            Instant::now() < deadline,
            "shards never spread over {nodes:?}: {:?}",
            owners(js, shards).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
