//! Watch streams end to end: the seed scenario (a supervisor's console
//! and a receptionist's phone watch agents through a call), revocation,
//! resume with known versions, grants while open and bad requests. The
//! slow consumer is tested below the transport, in
//! services/fanout/tests/slow_consumer.rs.

#![allow(clippy::unwrap_used)]

use presence_client::PresenceClient;
use presence_proto::v1::{
    self, Scope, UserKind, device_event::Kind as K, grantee::Kind as G, watch_event::Event as E,
};
use presence_tests::{NatsServer, NewUser, Sandbox, assert_code, domain, site, user};
use std::collections::HashMap;
use std::time::Duration;
use tonic::Code;
use tonic::Streaming;

const PW: &str = "correct horse battery";

fn call(seq: u64, id: &str, state: v1::CallState) -> v1::DeviceEvent {
    v1::DeviceEvent {
        domain: "acme".into(),
        user: "a1".into(),
        device: "0004f2000001".into(),
        sequence: seq,
        at_ms: 0,
        kind: Some(K::Call(v1::CallUpdate {
            call_id: id.into(),
            state: state as i32,
            direction: v1::Direction::Inbound as i32,
            remote_number: "+14155550100".into(),
            remote_name: "Big Customer".into(),
        })),
    }
}

fn ev(seq: u64, kind: K) -> v1::DeviceEvent {
    v1::DeviceEvent {
        domain: "acme".into(),
        user: "a1".into(),
        device: "0004f2000001".into(),
        sequence: seq,
        at_ms: 0,
        kind: Some(kind),
    }
}

async fn next(s: &mut Streaming<v1::WatchEvent>) -> E {
    let m = tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("no watch event within 10s");
    m.unwrap().expect("stream ended").event.unwrap()
}

/// Reads until the snapshot is done; returns states by user and denied targets.
async fn snapshot(
    s: &mut Streaming<v1::WatchEvent>,
) -> (HashMap<String, v1::PresenceState>, Vec<String>) {
    let mut states = HashMap::new();
    let mut denied = Vec::new();
    loop {
        match next(s).await {
            E::State(st) => {
                states.insert(st.user.clone(), st);
            }
            E::Denied(a) => denied.push(a.target),
            E::SnapshotDone(_) => return (states, denied),
            other => panic!("unexpected before snapshot end: {other:?}"),
        }
    }
}

fn targets(t: &[&str]) -> Option<v1::watch_request::Selector> {
    Some(v1::watch_request::Selector::Targets(v1::TargetList {
        targets: t.iter().map(|s| s.to_string()).collect(),
    }))
}

async fn watch(
    c: &mut PresenceClient,
    selector: Option<v1::watch_request::Selector>,
    known: HashMap<String, u64>,
    heartbeat: u32,
) -> Streaming<v1::WatchEvent> {
    c.presence
        .watch(v1::WatchRequest {
            domain: "acme".into(),
            watcher: String::new(),
            selector,
            known_versions: known,
            heartbeat_seconds: heartbeat,
            batching: None,
        })
        .await
        .unwrap()
        .into_inner()
}

struct World {
    sb: Sandbox,
    pbx: PresenceClient,
}

async fn world() -> World {
    world_with("").await
}

/// The same world over a real nats-server when `nats_url` is set.
async fn world_with(nats_url: &str) -> World {
    let sb = Sandbox::start_with(nats_url).await;
    let mut a = sb.admin.clone();
    domain(&mut a, "acme").await;
    site(&mut a, "acme", "hq").await;
    for (id, scope) in [
        ("a1", Scope::CallCenterAgent),
        ("a2", Scope::CallCenterAgent),
        ("sup", Scope::CallCenterSupervisor),
        ("recep", Scope::BasicUser),
        ("seer", Scope::BasicUser),
        ("stranger", Scope::BasicUser),
        ("slowpoke", Scope::BasicUser),
    ] {
        user(
            &mut a,
            "acme",
            id,
            NewUser {
                scope: Some(scope),
                site: "hq",
                password: Some(PW),
                ..Default::default()
            },
        )
        .await;
    }
    user(
        &mut a,
        "acme",
        "q1",
        NewUser {
            kind: Some(UserKind::CallQueue),
            site: "hq",
            ..Default::default()
        },
    )
    .await;
    a.directory
        .set_queue_members(v1::SetQueueMembersRequest {
            domain: "acme".into(),
            id: "q1".into(),
            agents: vec!["a1".into(), "a2".into()],
            supervisors: vec!["sup".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let g = |u: &str| v1::Grantee {
        kind: Some(G::User(u.into())),
    };
    a.policy
        .set_grants(v1::SetGrantsRequest {
            domain: "acme".into(),
            target: "a1".into(),
            see: vec![g("seer"), g("slowpoke")],
            pickup: vec![g("recep")],
            ..Default::default()
        })
        .await
        .unwrap();
    let pbx = presence_tests::service_token(&mut a, "pbx", &["acme"], &["presence.publish"]).await;
    let mut pbx = sb.client(Some(&pbx)).await;
    let r = pbx
        .presence
        .publish(v1::PublishRequest {
            events: vec![ev(
                1,
                K::Registration(v1::Registration {
                    expires_seconds: 3600,
                }),
            )],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.results[0].accepted);
    World { sb, pbx }
}

async fn publish(pbx: &mut PresenceClient, events: Vec<v1::DeviceEvent>) {
    let r = pbx
        .presence
        .publish(v1::PublishRequest { events })
        .await
        .unwrap()
        .into_inner();
    assert!(r.results.iter().all(|x| x.accepted), "{r:?}");
}

/// Reads states of `a1` until `done` holds for one; checks that versions
/// strictly increase and that caller identity is shown as expected.
async fn follow(
    s: &mut Streaming<v1::WatchEvent>,
    after: u64,
    caller_id: bool,
    done: impl Fn(&v1::PresenceState) -> bool,
) -> u64 {
    let mut last = after;
    loop {
        match next(s).await {
            E::State(st) => {
                assert_eq!(st.user, "a1");
                assert!(
                    st.version > last,
                    "version went from {last} to {}",
                    st.version
                );
                last = st.version;
                for c in &st.calls {
                    assert_eq!(
                        !c.remote_number.is_empty(),
                        caller_id,
                        "caller id shown: {c:?}"
                    );
                }
                if done(&st) {
                    return last;
                }
            }
            E::Heartbeat(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_seed_scenario_console_and_phones_through_a_call() {
    seed_scenario("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_seed_scenario_over_real_nats() {
    let nats = NatsServer::start();
    seed_scenario(nats.url()).await;
}

async fn seed_scenario(nats_url: &str) {
    let World { sb, mut pbx } = world_with(nats_url).await;
    let mut sup = sb.login("acme", "sup", PW).await;
    let mut recep = sb.login("acme", "recep", PW).await;
    let mut seer = sb.login("acme", "seer", PW).await;
    let mut stranger = sb.login("acme", "stranger", PW).await;

    let mut console = watch(
        &mut sup,
        Some(v1::watch_request::Selector::Queue("q1".into())),
        HashMap::new(),
        0,
    )
    .await;
    let mut rphone = watch(&mut recep, targets(&["a1", "a2"]), HashMap::new(), 0).await;
    let mut sphone = watch(&mut seer, targets(&["a1"]), HashMap::new(), 1).await;
    let mut xphone = watch(&mut stranger, targets(&["a1"]), HashMap::new(), 0).await;

    let (cs, cd) = snapshot(&mut console).await;
    assert_eq!(
        (cs.len(), cd.len()),
        (2, 0),
        "the supervisor sees both agents of its queue"
    );
    let (rs, rd) = snapshot(&mut rphone).await;
    assert_eq!(
        (rs.keys().cloned().collect::<Vec<_>>(), rd),
        (vec!["a1".to_string()], vec!["a2".to_string()])
    );
    let (ss, _) = snapshot(&mut sphone).await;
    let (xs, xd) = snapshot(&mut xphone).await;
    assert!(xs.is_empty());
    assert_eq!(xd, vec!["a1".to_string()]);
    let v0 = rs["a1"].version;
    assert_eq!(cs["a1"].version, v0);
    assert_eq!(ss["a1"].version, v0);

    // The agent's phone rings, is answered, put on hold, hung up.
    publish(&mut pbx, vec![call(2, "c1", v1::CallState::Early)]).await;
    let ringing = |s: &v1::PresenceState| s.telephony == v1::TelephonyStatus::Ringing as i32;
    let r1 = follow(&mut rphone, v0, true, ringing).await;
    follow(&mut sphone, v0, false, ringing).await;
    follow(&mut console, v0, false, ringing).await;
    for (seq, st) in [
        (3, v1::CallState::Confirmed),
        (4, v1::CallState::Held),
        (5, v1::CallState::Terminated),
    ] {
        publish(&mut pbx, vec![call(seq, "c1", st)]).await;
    }
    let idle = |s: &v1::PresenceState| s.telephony == v1::TelephonyStatus::NoCall as i32;
    let r_end = follow(&mut rphone, r1, true, idle).await;
    let s_end = follow(&mut sphone, v0, false, idle).await;
    let c_end = follow(&mut console, v0, false, idle).await;
    assert_eq!(
        (r_end, s_end, c_end),
        (r_end, r_end, r_end),
        "everyone converges on the same final version"
    );

    // The admin revokes the see-only watcher: it is told, then nothing.
    let mut a = sb.admin.clone();
    a.policy
        .remove_grant(v1::RemoveGrantRequest {
            domain: "acme".into(),
            target: "a1".into(),
            kind: v1::GrantKind::See as i32,
            grantee: Some(v1::Grantee {
                kind: Some(G::User("seer".into())),
            }),
        })
        .await
        .unwrap();
    loop {
        match next(&mut sphone).await {
            E::Revoked(r) => {
                assert_eq!(r.target, "a1");
                break;
            }
            E::Heartbeat(_) => {}
            other => panic!("expected revoked, got {other:?}"),
        }
    }
    publish(&mut pbx, vec![call(6, "c2", v1::CallState::Early)]).await;
    // The receptionist gets it (so it was dispatched to every mailbox)…
    follow(&mut rphone, r_end, true, ringing).await;
    // …and the revoked watcher only sees its heartbeats: two in a row
    // prove its task went through its mailbox in between.
    for _ in 0..2 {
        match next(&mut sphone).await {
            E::Heartbeat(_) => {}
            other => panic!("revoked watcher received {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_resume_with_known_versions_and_grant_while_open() {
    let World { sb, mut pbx } = world().await;
    let mut recep = sb.login("acme", "recep", PW).await;
    let mut s = watch(&mut recep, targets(&["a1", "a2"]), HashMap::new(), 0).await;
    let (states, _) = snapshot(&mut s).await;
    let v = states["a1"].version;
    drop(s);
    // Reconnect with the version it has: nothing to resend.
    let mut s = watch(
        &mut recep,
        targets(&["a1", "a2"]),
        HashMap::from([("a1".to_string(), v)]),
        0,
    )
    .await;
    let (states, denied) = snapshot(&mut s).await;
    assert!(
        states.is_empty(),
        "unchanged targets are not resent: {states:?}"
    );
    assert_eq!(denied, vec!["a2".to_string()]);
    publish(
        &mut pbx,
        vec![ev(2, K::DeviceDnd(v1::DeviceDnd { enabled: true }))],
    )
    .await;
    follow(&mut s, v, true, |st| st.dnd).await;
    // A grant while the stream is open: granted, then the current state.
    let mut a = sb.admin.clone();
    a.policy
        .add_grant(v1::AddGrantRequest {
            domain: "acme".into(),
            target: "a2".into(),
            kind: v1::GrantKind::See as i32,
            grantee: Some(v1::Grantee {
                kind: Some(G::User("recep".into())),
            }),
        })
        .await
        .unwrap();
    match next(&mut s).await {
        E::Granted(g) => assert_eq!(g.target, "a2"),
        other => panic!("expected granted, got {other:?}"),
    }
    match next(&mut s).await {
        E::State(st) => assert_eq!(st.user, "a2"),
        other => panic!("expected a2's state, got {other:?}"),
    }
}

#[tokio::test]
async fn test_watch_bad_requests() {
    let World { sb, .. } = world().await;
    let mut recep = sb.login("acme", "recep", PW).await;
    let too_many: Vec<String> = (0..5001).map(|i| format!("u{i}")).collect();
    let refs: Vec<&str> = too_many.iter().map(String::as_str).collect();
    let r = recep
        .presence
        .watch(v1::WatchRequest {
            domain: "acme".into(),
            selector: targets(&refs),
            ..Default::default()
        })
        .await;
    assert_code(r.map(|_| ()), Code::ResourceExhausted);
    let r = recep
        .presence
        .watch(v1::WatchRequest {
            domain: "acme".into(),
            selector: None,
            ..Default::default()
        })
        .await;
    assert_code(r.map(|_| ()), Code::InvalidArgument);
    let r = recep
        .presence
        .watch(v1::WatchRequest {
            domain: "acme".into(),
            watcher: "sup".into(),
            selector: targets(&["a1"]),
            ..Default::default()
        })
        .await;
    assert_code(r.map(|_| ()), Code::PermissionDenied);
    let r = recep
        .presence
        .watch(v1::WatchRequest {
            domain: "globex".into(),
            selector: targets(&["a1"]),
            ..Default::default()
        })
        .await;
    assert_code(r.map(|_| ()), Code::NotFound);
    let r = recep
        .presence
        .watch(v1::WatchRequest {
            domain: "acme".into(),
            selector: Some(v1::watch_request::Selector::Queue("nosuch".into())),
            ..Default::default()
        })
        .await;
    assert_code(r.map(|_| ()), Code::NotFound);
    let mut anon = sb.client(None).await;
    let r = anon
        .presence
        .watch(v1::WatchRequest {
            domain: "acme".into(),
            selector: targets(&["a1"]),
            ..Default::default()
        })
        .await;
    assert_code(r.map(|_| ()), Code::Unauthenticated);
}

#[tokio::test]
async fn test_gateway_watches_on_behalf_of_phones() {
    let World { sb, .. } = world().await;
    let mut a = sb.admin.clone();
    let token = |rights: Vec<&str>| v1::IssueTokenRequest {
        subject: Some(v1::issue_token_request::Subject::Service(
            v1::ServicePrincipal {
                name: "gateway".into(),
                domains: vec!["acme".into()],
                rights: rights.into_iter().map(String::from).collect(),
            },
        )),
        ttl_seconds: 600,
    };
    let gw = a
        .auth
        .issue_token(token(vec!["presence.watch"]))
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut gw = sb.client(Some(&gw)).await;
    let on_behalf = |watcher: &str| v1::WatchRequest {
        domain: "acme".into(),
        watcher: watcher.into(),
        selector: targets(&["a1"]),
        ..Default::default()
    };
    // Many streams over one connection, each filtered for its watcher.
    let mut as_recep = gw
        .presence
        .watch(on_behalf("recep"))
        .await
        .unwrap()
        .into_inner();
    let mut as_stranger = gw
        .presence
        .watch(on_behalf("stranger"))
        .await
        .unwrap()
        .into_inner();
    let (states, denied) = snapshot(&mut as_recep).await;
    assert!(states.contains_key("a1") && denied.is_empty());
    let (states, denied) = snapshot(&mut as_stranger).await;
    assert!(states.is_empty());
    assert_eq!(denied, vec!["a1".to_string()]);
    // A service must name the watcher, and needs presence.watch.
    assert_code(
        gw.presence.watch(on_behalf("")).await.map(|_| ()),
        Code::InvalidArgument,
    );
    assert_code(
        gw.presence.watch(on_behalf("ghost")).await.map(|_| ()),
        Code::NotFound,
    );
    let publisher = a
        .auth
        .issue_token(token(vec!["presence.publish"]))
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut publisher = sb.client(Some(&publisher)).await;
    assert_code(
        publisher
            .presence
            .watch(on_behalf("recep"))
            .await
            .map(|_| ()),
        Code::PermissionDenied,
    );
}

/// Reads one message of a batched stream: its events, in order.
async fn next_batch(s: &mut Streaming<v1::WatchEvent>) -> Vec<E> {
    match next(s).await {
        E::Batch(b) => b.events.into_iter().map(|e| e.event.unwrap()).collect(),
        E::Heartbeat(_) => Vec::new(),
        other => panic!("a batched stream sent {other:?} outside a batch"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_batched_stream_over_grpc() {
    let World { sb, mut pbx } = world().await;
    let mut a = sb.admin.clone();
    let gw = presence_tests::service_token(&mut a, "gateway", &["acme"], &["presence.watch"]).await;
    let mut gw = sb.client(Some(&gw)).await;
    let mut s = gw
        .presence
        .watch(v1::WatchRequest {
            domain: "acme".into(),
            watcher: "seer".into(),
            selector: targets(&["a1", "a2"]),
            batching: Some(v1::WatchBatching {
                max_events: 2,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // The snapshot in batches of at most two: a1's state, a2 denied, the end.
    let mut snapshot = Vec::new();
    while !snapshot.iter().any(|e| matches!(e, E::SnapshotDone(_))) {
        let batch = next_batch(&mut s).await;
        assert!(batch.len() <= 2, "{batch:?}");
        snapshot.extend(batch);
    }
    let v0 = match &snapshot[..] {
        [E::Denied(d), E::State(st), E::SnapshotDone(_)] if d.target == "a2" => st.version,
        other => panic!("{other:?}"),
    };
    // A burst of changes: the stream ends at the last one, versions only
    // increase, and there is never more than one state of a1 per batch.
    let events: Vec<v1::DeviceEvent> = (0..50u64)
        .map(|i| {
            ev(
                i + 2,
                K::DeviceDnd(v1::DeviceDnd {
                    enabled: i % 2 == 0,
                }),
            )
        })
        .collect();
    publish(&mut pbx, events).await;
    let mut last = v0;
    while last < v0 + 50 {
        let states: Vec<u64> = next_batch(&mut s)
            .await
            .into_iter()
            .map(|e| match e {
                E::State(st) => st.version,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(states.len() <= 1, "one state of a1 per batch: {states:?}");
        for v in states {
            assert!(v > last, "{v} after {last}");
            last = v;
        }
    }
    // Revocation travels in a batch too.
    a.policy
        .remove_grant(v1::RemoveGrantRequest {
            domain: "acme".into(),
            target: "a1".into(),
            kind: v1::GrantKind::See as i32,
            grantee: Some(v1::Grantee {
                kind: Some(G::User("seer".into())),
            }),
        })
        .await
        .unwrap();
    loop {
        let batch = next_batch(&mut s).await;
        if let Some(E::Revoked(r)) = batch.first() {
            assert_eq!(r.target, "a1");
            break;
        }
        assert!(batch.iter().all(|e| matches!(e, E::State(_))), "{batch:?}");
    }
}

/// `WatchMany` over gRPC with the generated client: a gateway's watchers
/// on one stream get their snapshots and a change, a watcher the caller
/// may not act for ends alone with PERMISSION_DENIED, and an anonymous
/// caller is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_watch_many_over_grpc() {
    let World { sb, mut pbx } = world().await;
    let mut a = sb.admin.clone();
    let token =
        presence_tests::service_token(&mut a, "gateway", &["acme"], &["presence.watch"]).await;
    let mut gw = sb.client(Some(&token)).await;
    let add = |key: u32, watcher: &str| v1::WatchManyAdd {
        key,
        watch: Some(v1::WatchRequest {
            domain: "acme".into(),
            watcher: watcher.into(),
            selector: targets(&["a1"]),
            ..Default::default()
        }),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(v1::WatchManyRequest {
        add: vec![add(1, "seer"), add(2, "slowpoke")],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut s = gw
        .presence
        .watch_many(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut done: HashMap<u32, u64> = HashMap::new();
    let read_until = async |s: &mut Streaming<v1::WatchManyEvent>,
                            done: &mut HashMap<u32, u64>,
                            enough: &dyn Fn(&HashMap<u32, u64>) -> bool| {
        while !enough(done) {
            let m = tokio::time::timeout(Duration::from_secs(10), s.message())
                .await
                .expect("no WatchMany message within 10 s")
                .unwrap()
                .expect("stream ended");
            for k in m.events {
                if let Some(v1::keyed_event::Body::Event(e)) = k.body
                    && let Some(E::State(st)) = e.event
                {
                    for key in k.keys {
                        done.insert(key, st.version);
                    }
                }
            }
        }
    };
    read_until(&mut s, &mut done, &|d| d.len() == 2).await;
    let v0 = done[&1];
    publish(
        &mut pbx,
        vec![ev(2, K::DeviceDnd(v1::DeviceDnd { enabled: true }))],
    )
    .await;
    read_until(&mut s, &mut done, &|d| d.values().all(|v| *v > v0)).await;

    // A user may watch only as itself: another watcher ends alone.
    let mut seer = sb.login("acme", "seer", PW).await;
    let (utx, urx) = tokio::sync::mpsc::channel(4);
    utx.send(v1::WatchManyRequest {
        add: vec![add(7, "slowpoke")],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut us = seer
        .presence
        .watch_many(tokio_stream::wrappers::ReceiverStream::new(urx))
        .await
        .unwrap()
        .into_inner();
    let m = tokio::time::timeout(Duration::from_secs(10), us.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match &m.events[..] {
        [
            v1::KeyedEvent {
                keys,
                body: Some(v1::keyed_event::Body::Ended(end)),
            },
        ] => {
            assert_eq!(keys, &vec![7]);
            assert_eq!(end.code, Code::PermissionDenied as i32, "{end:?}");
        }
        other => panic!("{other:?}"),
    }
    drop(utx);

    let mut anon = sb.client(None).await;
    let (_atx, arx) = tokio::sync::mpsc::channel::<v1::WatchManyRequest>(1);
    assert_code(
        anon.presence
            .watch_many(tokio_stream::wrappers::ReceiverStream::new(arx))
            .await,
        Code::Unauthenticated,
    );
    drop(tx);
}
