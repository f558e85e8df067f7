//! Device-event ingest (gRPC Publish and NATS subjects), per-user state,
//! and GetPresence filtered by policy with caller-id redaction.

#![allow(clippy::unwrap_used)]

use futures_util::StreamExt;
use presence_client::PresenceClient;
use presence_proto::v1::{self, Scope, device_event::Kind as K, grantee::Kind as G};
use presence_tests::{NatsServer, NewUser, Sandbox, assert_code, domain, site, user};
use prost::Message;
use std::time::Duration;
use tonic::Code;

const PW: &str = "correct horse battery";

fn call(user: &str, device: &str, seq: u64, id: &str, state: v1::CallState) -> v1::DeviceEvent {
    v1::DeviceEvent {
        domain: "acme".into(),
        user: user.into(),
        device: device.into(),
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

fn register(user: &str, device: &str, seq: u64) -> v1::DeviceEvent {
    v1::DeviceEvent {
        domain: "acme".into(),
        user: user.into(),
        device: device.into(),
        sequence: seq,
        at_ms: 0,
        kind: Some(K::Registration(v1::Registration {
            expires_seconds: 3600,
        })),
    }
}

async fn setup(sb: &Sandbox) -> (PresenceClient, String) {
    let mut a = sb.admin.clone();
    domain(&mut a, "acme").await;
    site(&mut a, "acme", "hq").await;
    for (id, scope) in [
        ("agent", Scope::CallCenterAgent),
        ("recep", Scope::BasicUser),
        ("seer", Scope::BasicUser),
        ("other", Scope::BasicUser),
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
    a.directory
        .add_phone(v1::AddPhoneRequest {
            domain: "acme".into(),
            user: "agent".into(),
            mac: "0004f2000001".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    a.policy
        .set_grants(v1::SetGrantsRequest {
            domain: "acme".into(),
            target: "agent".into(),
            see: vec![v1::Grantee {
                kind: Some(G::User("seer".into())),
            }],
            pickup: vec![v1::Grantee {
                kind: Some(G::User("recep".into())),
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    let pbx = presence_tests::service_token(&mut a, "pbx", &["acme"], &["presence.publish"]).await;
    (sb.client(Some(&pbx)).await, pbx)
}

async fn state_of(c: &mut PresenceClient, target: &str) -> Option<v1::PresenceState> {
    let r = c
        .presence
        .get_presence(v1::GetPresenceRequest {
            domain: "acme".into(),
            targets: vec![target.into()],
        })
        .await
        .unwrap()
        .into_inner();
    r.states.into_iter().next()
}

#[tokio::test]
async fn test_publish_and_filtered_get_presence() {
    let sb = Sandbox::start().await;
    let (mut pbx, _) = setup(&sb).await;
    let publish = |events: Vec<v1::DeviceEvent>| v1::PublishRequest { events };
    let r = pbx
        .presence
        .publish(publish(vec![
            register("agent", "0004f2000001", 1),
            call("agent", "0004f2000001", 2, "c1", v1::CallState::Early),
            call("agent", "0004f2000001", 2, "c1", v1::CallState::Early), // duplicate
            call("ghost", "0004f2000001", 1, "c1", v1::CallState::Early), // unknown user
            call("agent", "0004f2000001", 3, "", v1::CallState::Early),   // malformed
        ]))
        .await
        .unwrap()
        .into_inner();
    let reasons: Vec<(bool, i32)> = r.results.iter().map(|x| (x.accepted, x.reason)).collect();
    use v1::RejectReason as R;
    assert_eq!(
        reasons,
        vec![
            (true, R::Unspecified as i32),
            (true, R::Unspecified as i32),
            (false, R::StaleSequence as i32),
            (false, R::UnknownUser as i32),
            (false, R::Malformed as i32),
        ]
    );

    // The receptionist (pickup grant) sees who is calling; a see-only
    // watcher sees the ringing but not the caller; others see nothing.
    let mut recep = sb.login("acme", "recep", PW).await;
    let mut seer = sb.login("acme", "seer", PW).await;
    let mut other = sb.login("acme", "other", PW).await;
    let s = state_of(&mut recep, "agent").await.unwrap();
    assert_eq!(
        (s.telephony, s.presence),
        (
            v1::TelephonyStatus::Ringing as i32,
            v1::PresenceStatus::Busy as i32
        )
    );
    assert_eq!(s.calls[0].remote_number, "+14155550100");
    let s2 = state_of(&mut seer, "agent").await.unwrap();
    assert_eq!(s2.telephony, v1::TelephonyStatus::Ringing as i32);
    assert_eq!(
        (
            s2.calls[0].remote_number.as_str(),
            s2.calls[0].remote_name.as_str()
        ),
        ("", "")
    );
    assert_eq!(s2.version, s.version, "the same full state, only redacted");
    let r = other
        .presence
        .get_presence(v1::GetPresenceRequest {
            domain: "acme".into(),
            targets: vec!["agent".into(), "ghost".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.states.is_empty());
    assert_eq!(r.denied, vec!["agent".to_string(), "ghost".to_string()]);

    // Answered, held, hung up: versions only increase.
    let mut last = s.version;
    for (seq, st, tel) in [
        (3, v1::CallState::Confirmed, v1::TelephonyStatus::Connected),
        (4, v1::CallState::Held, v1::TelephonyStatus::OnHold),
        (5, v1::CallState::Terminated, v1::TelephonyStatus::NoCall),
    ] {
        let r = pbx
            .presence
            .publish(publish(vec![call("agent", "0004f2000001", seq, "c1", st)]))
            .await
            .unwrap()
            .into_inner();
        assert!(r.results[0].accepted);
        let s = state_of(&mut recep, "agent").await.unwrap();
        assert_eq!(s.telephony, tel as i32);
        assert!(s.version > last);
        last = s.version;
    }
    // A late "ringing" for the ended call is an illegal transition.
    let r = pbx
        .presence
        .publish(publish(vec![call(
            "agent",
            "0004f2000001",
            6,
            "c1",
            v1::CallState::Early,
        )]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results[0].reason, R::IllegalTransition as i32);
    // The detail is a sentence naming the call and the state at fault.
    assert_eq!(
        r.results[0].detail,
        "call c1 has ended; it cannot become early"
    );
    assert_eq!(
        state_of(&mut recep, "agent").await.unwrap().telephony,
        v1::TelephonyStatus::NoCall as i32
    );
}

#[tokio::test]
async fn test_who_may_publish() {
    let sb = Sandbox::start().await;
    let (_pbx, _) = setup(&sb).await;
    let mut a = sb.admin.clone();
    let phone = presence_tests::phone_token(&mut a, "acme", "0004f2000001").await;
    let mut phone = sb.client(Some(&phone)).await;
    let r = phone
        .presence
        .publish(v1::PublishRequest {
            events: vec![
                register("agent", "00:04:F2:00:00:01", 1),
                register("agent", "0004f2999999", 1),
                register("recep", "0004f2000001", 1),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.results.iter().map(|x| x.accepted).collect::<Vec<_>>(),
        vec![true, false, false]
    );
    assert_eq!(r.results[1].reason, v1::RejectReason::NotPermitted as i32);

    // A user may set its own manual status, not report calls.
    let mut agent = sb.login("acme", "agent", PW).await;
    let status = v1::DeviceEvent {
        domain: "acme".into(),
        user: "agent".into(),
        device: "portal".into(),
        sequence: 1,
        at_ms: 0,
        kind: Some(K::ManualStatus(v1::ManualStatus {
            status: v1::UserStatus::Away as i32,
            message: "lunch".into(),
        })),
    };
    let r = agent
        .presence
        .publish(v1::PublishRequest {
            events: vec![
                status,
                call("agent", "portal", 2, "x", v1::CallState::Early),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.results.iter().map(|x| x.accepted).collect::<Vec<_>>(),
        vec![true, false]
    );
    let s = state_of(&mut agent, "agent").await.unwrap();
    assert_eq!(
        (s.user_status, s.message.as_str()),
        (v1::UserStatus::Away as i32, "lunch")
    );

    // Another tenant's publisher learns nothing about acme's users.
    domain(&mut a, "globex").await;
    let g = presence_tests::service_token(
        &mut a,
        "gpbx",
        &["globex"],
        &["presence.publish", "presence.watch"],
    )
    .await;
    let mut g = sb.client(Some(&g)).await;
    let r = g
        .presence
        .publish(v1::PublishRequest {
            events: vec![register("agent", "d", 1), register("ghost", "d", 1)],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        r.results
            .iter()
            .all(|x| x.reason == v1::RejectReason::NotPermitted as i32)
    );
    assert_code(
        g.presence
            .get_presence(v1::GetPresenceRequest {
                domain: "acme".into(),
                targets: vec!["agent".into()],
            })
            .await,
        Code::NotFound,
    );
    // Limits.
    let many: Vec<v1::DeviceEvent> = (0..1001).map(|i| register("agent", "d", i + 1)).collect();
    assert_code(
        agent
            .presence
            .publish(v1::PublishRequest { events: many })
            .await,
        Code::ResourceExhausted,
    );
    assert_code(
        agent
            .presence
            .get_presence(v1::GetPresenceRequest {
                domain: "acme".into(),
                targets: vec!["bad id".into()],
            })
            .await,
        Code::InvalidArgument,
    );
    let mut anon = sb.client(None).await;
    assert_code(
        anon.presence
            .publish(v1::PublishRequest { events: vec![] })
            .await,
        Code::Unauthenticated,
    );
}

#[tokio::test]
async fn test_ingest_from_nats_subjects() {
    let nats = NatsServer::start();
    let sb = Sandbox::start_with(nats.url()).await;
    let (_pbx, _) = setup(&sb).await;
    let nc = async_nats::connect(nats.url()).await.unwrap();
    let mut out = nc.subscribe("presence.v1.out.acme.agent").await.unwrap();
    nc.flush().await.unwrap();
    // The subject names the user; the payload may leave domain/user empty.
    let mut e = call("agent", "0004f2000001", 1, "c9", v1::CallState::Early);
    e.domain.clear();
    e.user.clear();
    nc.publish("presence.v1.in.acme.agent", e.encode_to_vec().into())
        .await
        .unwrap();
    // Garbage and mismatched payloads are rejected without harm.
    nc.publish("presence.v1.in.acme.agent", vec![0xff, 0x00, 0x13].into())
        .await
        .unwrap();
    let wrong = call("recep", "0004f2000001", 2, "c9", v1::CallState::Confirmed);
    nc.publish("presence.v1.in.acme.agent", wrong.encode_to_vec().into())
        .await
        .unwrap();
    nc.publish(
        "presence.v1.in.acme.agent",
        call("agent", "0004f2000001", 3, "c9", v1::CallState::Confirmed)
            .encode_to_vec()
            .into(),
    )
    .await
    .unwrap();
    let m1 = tokio::time::timeout(Duration::from_secs(10), out.next())
        .await
        .unwrap()
        .unwrap();
    let s1 = v1::PresenceState::decode(m1.payload).unwrap();
    assert_eq!(s1.telephony, v1::TelephonyStatus::Ringing as i32);
    let m2 = tokio::time::timeout(Duration::from_secs(10), out.next())
        .await
        .unwrap()
        .unwrap();
    let s2 = v1::PresenceState::decode(m2.payload).unwrap();
    assert_eq!(s2.telephony, v1::TelephonyStatus::Connected as i32);
    assert_eq!(
        s2.version,
        s1.version + 1,
        "the mismatched payload changed nothing"
    );
    let mut recep = sb.login("acme", "recep", PW).await;
    assert_eq!(
        state_of(&mut recep, "agent").await.unwrap().version,
        s2.version
    );
}

/// A clustered sandbox (one shard) with an ingest quota of 1 event/s
/// and bursts of 3 per domain.
async fn quota_sandbox(nats: &NatsServer) -> Sandbox {
    Sandbox::start_tuned_with(nats.url(), |c| {
        c.shards = 1;
        c.domain_events_per_second = 1;
        c.domain_events_burst = 3;
    })
    .await
}

/// A second tenant, globex, with user g1.
async fn add_globex(a: &mut PresenceClient) {
    domain(a, "globex").await;
    site(a, "globex", "hq").await;
    user(
        a,
        "globex",
        "g1",
        NewUser {
            site: "hq",
            ..Default::default()
        },
    )
    .await;
}

/// A manual status event `m<seq>` of `user` from device "pbx".
fn status_event(domain: &str, user: &str, seq: u64) -> v1::DeviceEvent {
    v1::DeviceEvent {
        domain: domain.into(),
        user: user.into(),
        device: "pbx".into(),
        sequence: seq,
        at_ms: 0,
        kind: Some(K::ManualStatus(v1::ManualStatus {
            status: v1::UserStatus::Away as i32,
            message: format!("m{seq}"),
        })),
    }
}

/// A domain's ingest quota with shards owned over NATS (the shard owner
/// enforces it on the input log's clock): acme's flood beyond its burst
/// is refused as rate limited, globex at the same time is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_domain_ingest_quota_in_a_fanout_cluster() {
    let nats = NatsServer::start();
    let sb = quota_sandbox(&nats).await;
    let (mut pbx, _) = setup(&sb).await;
    let mut a = sb.admin.clone();
    add_globex(&mut a).await;
    let mut events: Vec<v1::DeviceEvent> =
        (1..=10).map(|s| status_event("acme", "recep", s)).collect();
    events.extend((1..=3).map(|s| status_event("globex", "g1", s)));
    let gx =
        presence_tests::service_token(&mut a, "pbx-gx", &["globex"], &["presence.publish"]).await;
    let r = pbx
        .presence
        .publish(v1::PublishRequest {
            events: events[..10].to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut gx = sb.client(Some(&gx)).await;
    let g = gx
        .presence
        .publish(v1::PublishRequest {
            events: events[10..].to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    let accepted = r.results.iter().filter(|x| x.accepted).count();
    // The burst of 3, and at most one more token if a second passed
    // between the first and the last append to the log.
    assert!((3..=4).contains(&accepted), "{r:?}");
    assert!(r.results[..3].iter().all(|x| x.accepted), "{r:?}");
    for x in r.results.iter().filter(|x| !x.accepted) {
        assert_eq!(x.reason, v1::RejectReason::RateLimited as i32);
        assert_eq!(x.detail, "domain acme over its ingest quota");
    }
    assert!(g.results.iter().all(|x| x.accepted), "globex: {g:?}");
}

/// Admission in front of the input log: over NATS, the node owning a
/// user's shard refuses a domain's flood beyond its quota (and malformed
/// or oversized events) before anything is stored. A publisher that asks
/// gets JetStream's acknowledgment shape or the refusal, and the log
/// holds exactly the admitted events, batched into entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_nats_flood_is_refused_before_the_input_log() {
    let nats = NatsServer::start();
    let sb = quota_sandbox(&nats).await;
    let _ = setup(&sb).await;
    let mut a = sb.admin.clone();
    add_globex(&mut a).await;
    let nc = async_nats::connect(nats.url()).await.unwrap();
    let mut applied = nc.subscribe("presence.v1.out.acme.recep").await.unwrap();
    nc.flush().await.unwrap();
    let ask = |subject: &'static str, payload: Vec<u8>| {
        let nc = nc.clone();
        async move {
            let r = nc.request(subject, payload.into()).await.unwrap();
            serde_json::from_slice::<serde_json::Value>(&r.payload).unwrap()
        }
    };
    let mut acme_ok = 0u64;
    for seq in 1..=10 {
        let v = ask(
            "presence.v1.in.acme.recep",
            status_event("acme", "recep", seq).encode_to_vec(),
        )
        .await;
        if v["stream"] == "PRESENCE_INGEST" {
            assert!(v["seq"].as_u64().unwrap() > 0, "{v}");
            // Admitted ones come first: the burst, then the refill.
            assert_eq!(acme_ok, seq - 1, "{v}");
            acme_ok += 1;
        } else {
            assert_eq!(v["error"]["code"], 429, "{v}");
            assert_eq!(
                v["error"]["description"], "domain acme over its ingest quota",
                "{v}"
            );
        }
    }
    // The burst of 3, and one more token if a second passed.
    assert!((3..=4).contains(&acme_ok), "{acme_ok}");
    for seq in 1..=3 {
        let v = ask(
            "presence.v1.in.globex.g1",
            status_event("globex", "g1", seq).encode_to_vec(),
        )
        .await;
        assert_eq!(v["stream"], "PRESENCE_INGEST", "globex is not limited: {v}");
    }
    let v = ask(
        "presence.v1.in.acme",
        status_event("acme", "recep", 99).encode_to_vec(),
    )
    .await;
    assert_eq!(v["error"]["code"], 400, "{v}");
    let v = ask("presence.v1.in.acme.recep", vec![0u8; 20_000]).await;
    assert_eq!(v["error"]["code"], 400, "{v}");
    assert!(
        v["error"]["description"]
            .as_str()
            .unwrap()
            .contains("at most 16384"),
        "{v}"
    );

    // The log holds the admitted events and nothing else.
    let js = async_nats::jetstream::new(nc.clone());
    let mut stream = js.get_stream("PRESENCE_INGEST").await.unwrap();
    let info = stream.info().await.unwrap().clone();
    assert_eq!(
        info.config.subjects,
        vec!["presence.v1.admitted".to_string()]
    );
    let mut logged: Vec<(String, u64)> = Vec::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let m = stream.get_raw_message(seq).await.unwrap();
        assert_eq!(m.subject.as_str(), "presence.v1.admitted");
        for item in v1::IngestBatch::decode(m.payload).unwrap().items {
            let e = v1::DeviceEvent::decode(item.event.as_slice()).unwrap();
            assert!(item.reply.is_empty() && !item.takeover, "{item:?}");
            logged.push((item.domain, e.sequence));
        }
    }
    let mut want: Vec<(String, u64)> = (1..=acme_ok).map(|s| ("acme".into(), s)).collect();
    want.extend((1..=3).map(|s| ("globex".to_string(), s)));
    assert_eq!(logged, want);

    // And the owner applied them, in order: recep's states are those of
    // the admitted events, the last one is current.
    let mut seen = Vec::new();
    while seen.last() != Some(&format!("m{acme_ok}")) {
        let m = tokio::time::timeout(Duration::from_secs(10), applied.next())
            .await
            .unwrap_or_else(|_| panic!("recep's states so far: {seen:?}"))
            .unwrap();
        seen.push(v1::PresenceState::decode(m.payload).unwrap().message);
    }
    let want: Vec<String> = (1..=acme_ok).map(|s| format!("m{s}")).collect();
    assert_eq!(seen, want);
    let mut recep = sb.login("acme", "recep", PW).await;
    assert_eq!(
        state_of(&mut recep, "recep").await.unwrap().message,
        format!("m{acme_ok}")
    );
}
