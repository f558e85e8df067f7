//! Distributed fanout with real processes: three (then four) presenced
//! nodes share one nats-server with JetStream. Node `a` holds the
//! directory and policy; the others are fanout-only nodes asking it over
//! NATS. Shards spread over the nodes through JetStream KV leases; a
//! watcher on node `b` follows users whose shards live on other nodes.
//! Killing a node with -9 moves its shards to the survivors, which
//! restore the snapshot, replay the input log and keep every state
//! (registrations included); a joining node takes its share by hand-off.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use async_nats::jetstream;
use presence_client::{PresenceClient, connect};
use presence_proto::v1::{self, device_event::Kind as K, watch_event::Event as E};
use presence_testkit::{ChildGuard as Proc, NatsServer, spawn_ready};
use prost::Message;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tonic::Streaming;

const SHARDS: usize = 32;
const USERS: usize = 24;

/// Starts a node and waits for its ready file.
fn node(dir: &Path, id: &str, roles: &str, nats: &str, key: Option<&Path>) -> (Proc, String) {
    node_with_metrics(dir, id, roles, nats, key, "")
}

/// [`node`], with its Prometheus exporter on `metrics` (empty: none).
fn node_with_metrics(
    dir: &Path,
    id: &str,
    roles: &str,
    nats: &str,
    key: Option<&Path>,
    metrics: &str,
) -> (Proc, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_presenced"));
    cmd.args(["--listen", "127.0.0.1:0", "--metrics-listen", metrics])
        .arg("--data-dir")
        .arg(dir.join(id))
        .args(["--nats-url", nats, "--roles", roles])
        .env("PRESENCE_NODE_ID", id)
        .env("PRESENCE_SHARDS", SHARDS.to_string())
        .env("PRESENCE_LEASE_TTL_MS", "1500")
        .env("PRESENCE_SNAPSHOT_INTERVAL_MS", "100")
        .env("PRESENCE_SHUTDOWN_GRACE_SECS", "1");
    if let Some(k) = key {
        cmd.env("PRESENCE_AUTH_KEY_FILE", k);
    }
    spawn_ready(cmd, &dir.join(format!("{id}.ready")), &format!("node {id}"))
}

async fn owners(js: &jetstream::Context) -> Vec<Option<String>> {
    common::owners(js, SHARDS).await
}

async fn wait_spread(js: &jetstream::Context, nodes: &[&str]) -> Vec<String> {
    common::wait_spread(js, SHARDS, nodes).await
}

fn user(i: usize) -> String {
    format!("u{i:02}")
}

fn event(u: &str, seq: u64, kind: K) -> v1::DeviceEvent {
    v1::DeviceEvent {
        domain: "acme".into(),
        user: u.into(),
        device: format!("dev-{u}"),
        sequence: seq,
        at_ms: 0,
        kind: Some(kind),
    }
}

fn call(state: v1::CallState) -> K {
    K::Call(v1::CallUpdate {
        call_id: "c1".into(),
        state: state as i32,
        direction: v1::Direction::Inbound as i32,
        remote_number: "+15550100".into(),
        remote_name: "Caller".into(),
    })
}

async fn publish_nats(nc: &async_nats::Client, e: v1::DeviceEvent) {
    nc.publish(
        format!("presence.v1.in.acme.{}", e.user),
        e.encode_to_vec().into(),
    )
    .await
    .unwrap();
}

/// Reads the stream until every user's state satisfies `pred`, checking
/// that versions only increase per user.
async fn until_all(
    s: &mut Streaming<v1::WatchEvent>,
    seen: &mut HashMap<String, v1::PresenceState>,
    what: &str,
    pred: impl Fn(&v1::PresenceState) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let ok = (0..USERS).all(|i| seen.get(&user(i)).is_some_and(&pred));
        if ok {
            return;
        }
        let m = tokio::time::timeout_at(deadline, s.message())
            .await
            .unwrap_or_else(|_| panic!("watcher never saw {what}: {seen:?}"))
            .unwrap()
            .expect("stream ended");
        if let Some(E::State(st)) = m.event {
            if let Some(old) = seen.get(&st.user) {
                assert!(
                    st.version > old.version,
                    "version of {} went from {} to {}",
                    st.user,
                    old.version,
                    st.version
                );
            }
            seen.insert(st.user.clone(), st);
        }
    }
}

async fn admin_client(url: &str, dir: &Path) -> PresenceClient {
    let token = std::fs::read_to_string(dir.join("a/bootstrap-admin.token")).unwrap();
    connect(url, Some(token.trim())).await.unwrap()
}

/// Creates domain `acme` with `ids` as agents (`boss` an office manager).
async fn setup(admin: &mut PresenceClient, ids: &[String]) {
    admin
        .directory
        .create_domain(v1::CreateDomainRequest {
            id: "acme".into(),
            name: "Acme".into(),
            dns_name: "acme.example.com".into(),
        })
        .await
        .unwrap();
    for id in ids {
        let scope = if id == "boss" {
            v1::Scope::OfficeManager
        } else {
            v1::Scope::CallCenterAgent
        };
        admin
            .directory
            .create_user(v1::CreateUserRequest {
                domain: "acme".into(),
                id: id.clone(),
                scope: scope as i32,
                profile: Some(v1::Profile {
                    first_name: id.clone(),
                    last_name: "Test".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_shards_spread_survive_kill_9_and_rebalance_on_join() {
    let nats = NatsServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_a, url_a) = node(dir, "a", "directory,policy,fanout", nats.url(), None);
    let key = dir.join("a/auth.key");
    let (_b, url_b) = node(dir, "b", "fanout", nats.url(), Some(&key));
    let (mut c, _url_c) = node(dir, "c", "fanout", nats.url(), Some(&key));
    let nc = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(nc.clone());
    wait_spread(&js, &["a", "b", "c"]).await;

    // The directory lives on a; b and c ask it over NATS.
    let mut admin = admin_client(&url_a, dir).await;
    let mut ids = vec!["boss".to_string()];
    ids.extend((0..USERS).map(user));
    setup(&mut admin, &ids).await;
    let gateway = admin
        .auth
        .issue_token(v1::IssueTokenRequest {
            subject: Some(v1::issue_token_request::Subject::Service(
                v1::ServicePrincipal {
                    name: "gateway".into(),
                    domains: vec!["acme".into()],
                    rights: vec!["presence.watch".into(), "presence.publish".into()],
                },
            )),
            ttl_seconds: 3600,
        })
        .await
        .unwrap()
        .into_inner()
        .token;

    // The office manager's console, served by fanout-only node b.
    let mut gw_b = connect(&url_b, Some(&gateway)).await.unwrap();
    let mut s = gw_b
        .presence
        .watch(v1::WatchRequest {
            domain: "acme".into(),
            watcher: "boss".into(),
            selector: Some(v1::watch_request::Selector::Targets(v1::TargetList {
                targets: (0..USERS).map(user).collect(),
            })),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = HashMap::new();

    // Phones register and ring, through NATS ingest (any node validates,
    // the owner of each user's shard applies).
    for i in 0..USERS {
        let u = user(i);
        publish_nats(
            &nc,
            event(
                &u,
                1,
                K::Registration(v1::Registration {
                    expires_seconds: 3600,
                }),
            ),
        )
        .await;
        publish_nats(&nc, event(&u, 2, call(v1::CallState::Early))).await;
    }
    until_all(&mut s, &mut seen, "every phone ringing", |st| {
        st.telephony == v1::TelephonyStatus::Ringing as i32
            // No pickup grant: caller identity is masked, on b as anywhere.
            && st.calls.first().is_some_and(|c| c.remote_number.is_empty())
    })
    .await;

    // kill -9 node c: its shards have no owner until their leases expire.
    let before = owners(&js).await;
    let on_c: Vec<usize> = (0..SHARDS)
        .filter(|n| before[*n].as_deref() == Some("c"))
        .collect();
    assert!(!on_c.is_empty(), "c owned shards: {before:?}");
    c.0.kill().unwrap();
    c.0.wait().unwrap();
    // Events sent meanwhile wait in the shard log.
    for i in 0..USERS {
        publish_nats(&nc, event(&user(i), 3, call(v1::CallState::Confirmed))).await;
    }
    let after = wait_spread(&js, &["a", "b"]).await;
    for n in &on_c {
        assert_ne!(after[*n], "c");
    }
    until_all(
        &mut s,
        &mut seen,
        "every call answered after the takeover",
        |st| st.telephony == v1::TelephonyStatus::Connected as i32,
    )
    .await;
    // Registrations survived the crash (snapshot + log): still reachable.
    let got = gw_b
        .presence
        .get_presence(v1::GetPresenceRequest {
            domain: "acme".into(),
            targets: (0..USERS).map(user).collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.states.len(), USERS);
    for st in &got.states {
        assert_eq!(st.presence, v1::PresenceStatus::Busy as i32, "{st:?}");
        assert_eq!(
            st.telephony,
            v1::TelephonyStatus::Connected as i32,
            "{st:?}"
        );
        assert_eq!(st.version, seen[&st.user].version, "watcher has the latest");
    }

    // A node joins: it takes its share by hand-off (final snapshot, lease
    // released) and the states stay exact.
    let (_d, url_d) = node(dir, "d", "fanout", nats.url(), Some(&key));
    wait_spread(&js, &["a", "b", "d"]).await;
    let mut gw_d = connect(&url_d, Some(&gateway)).await.unwrap();
    let r = gw_d
        .presence
        .publish(v1::PublishRequest {
            events: (0..USERS)
                .map(|i| event(&user(i), 4, call(v1::CallState::Held)))
                .collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.results.iter().all(|x| x.accepted), "{r:?}");
    until_all(
        &mut s,
        &mut seen,
        "every call on hold after the join",
        |st| st.telephony == v1::TelephonyStatus::OnHold as i32,
    )
    .await;
    // Hang up: registered and idle is Available (not Offline), so the
    // registrations made before the crash and the join were kept.
    let r = gw_d
        .presence
        .publish(v1::PublishRequest {
            events: (0..USERS)
                .map(|i| event(&user(i), 5, call(v1::CallState::Terminated)))
                .collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.results.iter().all(|x| x.accepted), "{r:?}");
    until_all(&mut s, &mut seen, "every phone idle and registered", |st| {
        st.telephony == v1::TelephonyStatus::NoCall as i32
            && st.presence == v1::PresenceStatus::Available as i32
    })
    .await;
    // A stale sequence is still rejected by the new owners (device state
    // moved with the shard).
    let r = gw_d
        .presence
        .publish(v1::PublishRequest {
            events: vec![event(&user(0), 2, call(v1::CallState::Early))],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.results[0].reason,
        v1::RejectReason::StaleSequence as i32,
        "{r:?}"
    );
}

/// The shipped least-privilege NATS config (deploy/nats/single.conf)
/// carries a clustered node: presenced's user may use JetStream and KV,
/// the PBX user may only publish ingest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_shipped_nats_config_serves_a_clustered_node() {
    let nats = NatsServer::start_with_config(include_str!("../../../deploy/nats/single.conf"));
    let port = nats.port();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let url = format!("nats://presenced:change-me@127.0.0.1:{port}");
    let (_a, url_a) = node(dir, "a", "directory,policy,fanout", &url, None);
    let mut admin = admin_client(&url_a, dir).await;
    setup(&mut admin, &[user(0)]).await;
    let mut s = admin
        .presence
        .watch(v1::WatchRequest {
            domain: "acme".into(),
            watcher: user(0),
            selector: Some(v1::watch_request::Selector::Targets(v1::TargetList {
                targets: vec![user(0)],
            })),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let pbx = async_nats::ConnectOptions::with_user_and_password("pbx".into(), "change-me".into())
        .connect(format!("nats://127.0.0.1:{port}"))
        .await
        .unwrap();
    publish_nats(
        &pbx,
        event(
            &user(0),
            1,
            K::Registration(v1::Registration {
                expires_seconds: 600,
            }),
        ),
    )
    .await;
    pbx.flush().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let m = tokio::time::timeout_at(deadline, s.message())
            .await
            .expect("the PBX's event never arrived")
            .unwrap()
            .expect("stream ended");
        if let Some(E::State(st)) = m.event
            && st.presence == v1::PresenceStatus::Available as i32
        {
            break;
        }
    }
}

/// A clustered node whose NATS server has gone away still stops on
/// SIGTERM (it used to wait for a reconnection forever in its final bus
/// flush), and cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_sigterm_stops_a_node_whose_nats_server_is_gone() {
    let nats = NatsServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let (mut a, url_a) = node(tmp.path(), "a", "directory,policy,fanout", nats.url(), None);
    let mut admin = admin_client(&url_a, tmp.path()).await;
    setup(&mut admin, &[user(0)]).await;
    drop(nats);
    let status = tokio::task::spawn_blocking(move || a.terminate(Duration::from_secs(60)))
        .await
        .unwrap()
        .expect("presenced did not exit within 60 s of SIGTERM with NATS gone");
    assert!(status.success(), "exit status {status}");
}

/// Reads a Prometheus exporter's page.
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// Returns the value of the sample `name` (with its labels) on a page.
fn sample(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The owner of a shard applies the events it admitted as soon as their
/// entry is stored (without reading them back from the log), in order:
/// a call's whole life, published back to back over NATS, reaches a
/// watcher with increasing versions, ending where the device ended
/// after six changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_an_owner_applies_what_it_admitted_without_reading_it_back() {
    let nats = NatsServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics = format!("127.0.0.1:{port}");
    let (_a, url_a) = node_with_metrics(
        dir,
        "a",
        "directory,policy,fanout",
        nats.url(),
        None,
        &metrics,
    );
    let nc = async_nats::connect(nats.url()).await.unwrap();
    wait_spread(&jetstream::new(nc.clone()), &["a"]).await;
    let mut admin = admin_client(&url_a, dir).await;
    let u = user(0);
    setup(&mut admin, std::slice::from_ref(&u)).await;
    let mut s = admin
        .presence
        .watch(v1::WatchRequest {
            domain: "acme".into(),
            watcher: u.clone(),
            selector: Some(v1::watch_request::Selector::Targets(v1::TargetList {
                targets: vec![u.clone()],
            })),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let life = [
        K::Registration(v1::Registration {
            expires_seconds: 600,
        }),
        call(v1::CallState::Early),
        call(v1::CallState::Confirmed),
        call(v1::CallState::Held),
        call(v1::CallState::Confirmed),
        call(v1::CallState::Terminated),
    ];
    for (i, kind) in life.into_iter().enumerate() {
        publish_nats(&nc, event(&u, i as u64 + 1, kind)).await;
    }
    nc.flush().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last = None;
    loop {
        let m = tokio::time::timeout_at(deadline, s.message())
            .await
            .expect("the call's end never arrived")
            .unwrap()
            .expect("stream ended");
        let Some(E::State(st)) = m.event else {
            continue;
        };
        if let Some(last) = last {
            assert!(st.version > last, "version {} after {last}", st.version);
        }
        last = Some(st.version);
        // A term's versions start at `term << 32`; each of the six
        // events changed the state once.
        if st.version & 0xffff_ffff == 6 {
            assert_eq!(st.telephony, v1::TelephonyStatus::NoCall as i32);
            assert_eq!(st.presence, v1::PresenceStatus::Available as i32);
            break;
        }
    }
    let page = scrape(&metrics);
    assert!(
        sample(
            &page,
            "presence_fanout_log_handed_early_total{outcome=\"early\"}"
        ) >= 1.0,
        "{page}"
    );
}

/// A node reaches a nats-server that requires TLS with client
/// certificates signed by its own CA and an nkey user: with the CA, its
/// client certificate and its seed it serves (a device event travels
/// through JetStream to a reader); without the client certificate, or
/// without the seed, or trusting the wrong CA, it exits naming NATS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_a_node_connects_to_nats_over_tls_with_a_client_certificate_and_an_nkey() {
    let pki = presence_testkit::pki::Pki::new();
    let nkey = nkeys::KeyPair::new_user();
    let seed = pki.dir().join("node.nk");
    std::fs::write(&seed, nkey.seed().unwrap()).unwrap();
    let conf = format!(
        "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: true\n}}\n\
         authorization {{\n  users = [ {{ nkey: {} }} ]\n}}\n\
         jetstream {{\n  store_dir: \"x\"\n}}\n",
        pki.server_cert.display().to_string(),
        pki.server_key.display().to_string(),
        pki.ca.display().to_string(),
        nkey.public_key(),
    );
    let nats = NatsServer::start_with_config(&conf);
    let url = format!("tls://127.0.0.1:{}", nats.port());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let node_cmd = |id: &str, env: &[(&str, &Path)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_presenced"));
        cmd.args(["--listen", "127.0.0.1:0", "--metrics-listen", ""])
            .arg("--data-dir")
            .arg(dir.join(id))
            .args(["--nats-url", &url])
            .env("PRESENCE_NODE_ID", id)
            .env("PRESENCE_SHUTDOWN_GRACE_SECS", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    };
    let all: [(&str, &Path); 4] = [
        ("PRESENCE_NATS_TLS_CA_FILE", &pki.ca),
        ("PRESENCE_NATS_TLS_CERT_FILE", &pki.client_cert),
        ("PRESENCE_NATS_TLS_KEY_FILE", &pki.client_key),
        ("PRESENCE_NATS_NKEY_FILE", &seed),
    ];
    // Each missing piece is refused by the server (or the client) and
    // the node exits at once, naming NATS.
    let wrong = presence_testkit::pki::Pki::new();
    let cases: [(&str, Vec<(&str, &Path)>); 3] = [
        ("no client certificate", vec![all[0], all[3]]),
        ("no nkey", vec![all[0], all[1], all[2]]),
        (
            "another CA",
            vec![
                ("PRESENCE_NATS_TLS_CA_FILE", &wrong.ca),
                all[1],
                all[2],
                all[3],
            ],
        ),
    ];
    for (what, env) in cases {
        let out = node_cmd("refused", &env).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: started anyway");
        assert!(
            err.contains("NATS") || err.contains("nats"),
            "{what}: {err}"
        );
    }
    let cmd = node_cmd("a", &all);
    let (_a, url_a) = spawn_ready(cmd, &dir.join("a.ready"), "node a");
    let mut admin = admin_client(&url_a, dir).await;
    let u = user(0);
    setup(&mut admin, std::slice::from_ref(&u)).await;
    let r = admin
        .presence
        .publish(v1::PublishRequest {
            events: vec![event(
                &u,
                1,
                K::Registration(v1::Registration {
                    expires_seconds: 600,
                }),
            )],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.results[0].accepted, "{:?}", r.results[0]);
    let got = admin
        .presence
        .get_presence(v1::GetPresenceRequest {
            domain: "acme".into(),
            targets: vec![u.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.states[0].presence, v1::PresenceStatus::Available as i32);
}
