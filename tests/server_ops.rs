//! Operations surface: grpc health and reflection without a token, and
//! directory change events on a real nats-server.

#![allow(clippy::unwrap_used)]

use futures_util::StreamExt;
use presence_proto::v1;
use presence_tests::{NatsServer, NewUser, Sandbox, domain, user};
use prost::Message;
use std::time::Duration;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

#[tokio::test]
async fn test_health_is_open_and_serving() {
    let sb = Sandbox::start().await;
    let channel = tonic::transport::Endpoint::from_shared(sb.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in [
        "",
        "presence.v1.DirectoryService",
        "presence.v1.AuthService",
    ] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
    let r = health
        .check(HealthCheckRequest {
            service: "presence.v1.Nope".into(),
        })
        .await;
    assert_eq!(r.unwrap_err().code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn test_reflection_lists_services_without_a_token() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let sb = Sandbox::start().await;
    let channel = tonic::transport::Endpoint::from_shared(sb.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut refl = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(futures_util::stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "presence.v1.DirectoryService",
        "presence.v1.AuthService",
        "presence.v1.PolicyService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
}

#[tokio::test]
async fn test_directory_events_and_welcome_mail_on_real_nats() {
    let nats = NatsServer::start();
    let sb = Sandbox::start_with(nats.url()).await;
    let nc = async_nats::connect(nats.url()).await.unwrap();
    let mut dir_events = nc.subscribe("presence.v1.dir.acme").await.unwrap();
    let mut mail = nc.subscribe("presence.v1.mail.acme").await.unwrap();
    nc.flush().await.unwrap();
    let mut a = sb.admin.clone();
    domain(&mut a, "acme").await;
    user(
        &mut a,
        "acme",
        "1001",
        NewUser {
            first: "Jack",
            email: "jack@acme.com",
            ..Default::default()
        },
    )
    .await;
    a.directory
        .update_user(v1::UpdateUserRequest {
            domain: "acme".into(),
            id: "1001".into(),
            scope: Some(v1::Scope::CallCenterAgent as i32),
            ..Default::default()
        })
        .await
        .unwrap();
    let w = a
        .directory
        .send_welcome(v1::SendWelcomeRequest {
            domain: "acme".into(),
            user: "1001".into(),
            ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    a.directory
        .delete_user(v1::DeleteUserRequest {
            domain: "acme".into(),
            id: "1001".into(),
            expected_version: 0,
        })
        .await
        .unwrap();

    let mut got = Vec::new();
    for _ in 0..5 {
        let m = tokio::time::timeout(Duration::from_secs(10), dir_events.next())
            .await
            .unwrap()
            .unwrap();
        got.push(v1::DirectoryEvent::decode(m.payload).unwrap());
    }
    let summary: Vec<(i32, i32, String)> = got
        .iter()
        .map(|e| (e.entity, e.change, e.id.clone()))
        .collect();
    use v1::{ChangeKind as C, EntityKind as E};
    assert_eq!(
        summary,
        vec![
            (E::Domain as i32, C::Created as i32, "acme".into()),
            (E::User as i32, C::Created as i32, "1001".into()),
            (E::User as i32, C::Updated as i32, "1001".into()),
            (E::Credentials as i32, C::Updated as i32, "1001".into()),
            (E::User as i32, C::Deleted as i32, "1001".into()),
        ]
    );
    assert!(
        got[2]
            .facts
            .contains(&"scope:call-center-agent".to_string()),
        "{:?}",
        got[2].facts
    );
    assert!(
        got.windows(2).all(|w| w[0].sequence < w[1].sequence),
        "store sequence increases"
    );
    let m = tokio::time::timeout(Duration::from_secs(10), mail.next())
        .await
        .unwrap()
        .unwrap();
    let wm = v1::WelcomeMail::decode(m.payload).unwrap();
    assert_eq!(
        (
            wm.user.as_str(),
            wm.email.as_str(),
            wm.welcome_token.as_str()
        ),
        ("1001", "jack@acme.com", w.welcome_token.as_str())
    );
}
