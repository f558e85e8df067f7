//! Kill and restart nats-server mid-run: the broker reconnects and a
//! watcher converges to the true state.

#![allow(clippy::unwrap_used)]

use presence_client::PresenceClient;
use presence_proto::v1::{self, Scope, device_event::Kind as K, watch_event::Event as E};
use presence_tests::{NatsServer, NewUser, Sandbox, domain, user};
use std::time::Duration;
use tonic::Streaming;

const PW: &str = "correct horse battery";

fn call(seq: u64, state: v1::CallState) -> v1::DeviceEvent {
    v1::DeviceEvent {
        domain: "acme".into(),
        user: "a1".into(),
        device: "d1".into(),
        sequence: seq,
        at_ms: 0,
        kind: Some(K::Call(v1::CallUpdate {
            call_id: "c1".into(),
            state: state as i32,
            direction: v1::Direction::Inbound as i32,
            remote_number: "100".into(),
            remote_name: String::new(),
        })),
    }
}

async fn until(
    s: &mut Streaming<v1::WatchEvent>,
    pred: impl Fn(&v1::PresenceState) -> bool,
) -> v1::PresenceState {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let m = tokio::time::timeout_at(deadline, s.message())
            .await
            .expect("watcher did not converge within 30s");
        if let Some(E::State(st)) = m.unwrap().expect("stream ended").event
            && pred(&st)
        {
            return st;
        }
    }
}

async fn publish(c: &mut PresenceClient, e: v1::DeviceEvent) {
    let r = c
        .presence
        .publish(v1::PublishRequest { events: vec![e] })
        .await
        .unwrap()
        .into_inner();
    assert!(r.results[0].accepted, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_broker_reconnects_and_watchers_converge() {
    let mut nats = NatsServer::start();
    let sb = Sandbox::start_with(nats.url()).await;
    let mut a = sb.admin.clone();
    domain(&mut a, "acme").await;
    user(
        &mut a,
        "acme",
        "a1",
        NewUser {
            scope: Some(Scope::CallCenterAgent),
            ..Default::default()
        },
    )
    .await;
    user(
        &mut a,
        "acme",
        "w",
        NewUser {
            password: Some(PW),
            ..Default::default()
        },
    )
    .await;
    a.policy
        .update_presence_settings(v1::UpdatePresenceSettingsRequest {
            domain: "acme".into(),
            user: "a1".into(),
            visibility: Some(v1::Visibility::Everyone as i32),
            ..Default::default()
        })
        .await
        .unwrap();
    let pbx_token = presence_tests::service_token(
        &mut a,
        "pbx",
        &["acme"],
        &["presence.publish", "presence.watch"],
    )
    .await;
    let mut pbx = sb.client(Some(&pbx_token)).await;
    let mut w = sb.login("acme", "w", PW).await;
    let mut s = w
        .presence
        .watch(v1::WatchRequest {
            domain: "acme".into(),
            selector: Some(v1::watch_request::Selector::Targets(v1::TargetList {
                targets: vec!["a1".into()],
            })),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    publish(&mut pbx, call(1, v1::CallState::Early)).await;
    until(&mut s, |st| {
        st.telephony == v1::TelephonyStatus::Ringing as i32
    })
    .await;

    // The NATS server dies and comes back on the same port.
    nats.restart();
    publish(&mut pbx, call(2, v1::CallState::Confirmed)).await;
    let truth = |c: &mut PresenceClient| {
        let mut c = c.clone();
        async move {
            c.presence
                .get_presence(v1::GetPresenceRequest {
                    domain: "acme".into(),
                    targets: vec!["a1".into()],
                })
                .await
                .unwrap()
                .into_inner()
                .states
                .remove(0)
        }
    };
    let want = truth(&mut pbx).await;
    let got = until(&mut s, |st| st.version >= want.version).await;
    assert_eq!(got.telephony, v1::TelephonyStatus::Connected as i32);

    // And the pipeline works after the reconnection.
    publish(&mut pbx, call(3, v1::CallState::Terminated)).await;
    let want = truth(&mut pbx).await;
    let got = until(&mut s, |st| st.version >= want.version).await;
    assert_eq!(
        (got.telephony, got.version),
        (v1::TelephonyStatus::NoCall as i32, want.version)
    );
}
