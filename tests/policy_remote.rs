//! The ACL view of a separate (fanout) process over a real nats-server:
//! cache misses are answered by the policy node through request/reply,
//! ACL events arrive over NATS, and a revocation is never served from the
//! cache once its event is applied.

#![allow(clippy::unwrap_used)]

use presence_bus::nats::NatsConfig;
use presence_bus::{NatsBus, SharedBus};
use presence_core::{DomainId, UserId};
use presence_policy::{AclView, Question};
use presence_proto::v1::{self, Scope, grantee::Kind as G};
use presence_tests::{NatsServer, NewUser, Sandbox, domain, site, user};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_remote_acl_view_follows_policy_over_nats() {
    let nats = NatsServer::start();
    let sb = Sandbox::start_with(nats.url()).await;
    let mut a = sb.admin.clone();
    domain(&mut a, "acme").await;
    site(&mut a, "acme", "hq").await;
    for (id, scope) in [
        ("jack", Scope::CallCenterAgent),
        ("recep", Scope::BasicUser),
        ("carol", Scope::BasicUser),
    ] {
        user(
            &mut a,
            "acme",
            id,
            NewUser {
                scope: Some(scope),
                site: "hq",
                ..Default::default()
            },
        )
        .await;
    }
    a.policy
        .update_domain_policy(v1::UpdateDomainPolicyRequest {
            domain: "acme".into(),
            office_manager_sees_domain: Some(false),
            ..Default::default()
        })
        .await
        .unwrap();

    // The "fanout process": its own NATS connection, no directory store.
    let bus: SharedBus = Arc::new(
        NatsBus::connect(&NatsConfig {
            url: nats.url().into(),
            subscription_capacity: 1024,
            connection_name: "fanout-under-test".into(),
            connect_timeout: Duration::from_secs(5),
            security: Default::default(),
        })
        .await
        .unwrap(),
    );
    let view = AclView::remote(bus.clone(), 10_000, Duration::from_secs(5));
    let shutdown = CancellationToken::new();
    let sub = AclView::subscribe(&bus).await.unwrap();
    bus.flush().await.unwrap();
    let runner = tokio::spawn(view.clone().run(sub, shutdown.clone()));

    let d = DomainId::parse("acme").unwrap();
    let recep = UserId::parse("recep").unwrap();
    let targets = vec!["jack".to_string(), "carol".to_string(), "ghost".to_string()];
    let allowed = |v: &[v1::Decision]| v.iter().map(|x| x.allowed).collect::<Vec<_>>();

    let r = view
        .check(&d, &recep, &targets, Question::See)
        .await
        .unwrap();
    assert_eq!(allowed(&r), vec![false, false, false]);

    let g = a
        .policy
        .add_grant(v1::AddGrantRequest {
            domain: "acme".into(),
            target: "jack".into(),
            kind: v1::GrantKind::Pickup as i32,
            grantee: Some(v1::Grantee {
                kind: Some(G::User("recep".into())),
            }),
        })
        .await;
    g.unwrap();
    let epoch = a
        .policy
        .get_domain_policy(v1::GetDomainPolicyRequest {
            domain: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .epoch;
    assert!(
        view.wait_for_epoch(&d, epoch, Duration::from_secs(10))
            .await
    );
    let r = view
        .check(&d, &recep, &targets, Question::See)
        .await
        .unwrap();
    assert_eq!(allowed(&r), vec![true, false, false]);
    assert!(r[0].caller_id_visible);
    let p = view
        .check(&d, &recep, &targets, Question::Pickup)
        .await
        .unwrap();
    assert_eq!(allowed(&p), vec![true, false, false]);
    // Served from the cache now.
    assert!(view.cached_entries() >= 3);
    let again = view
        .check(&d, &recep, &targets, Question::See)
        .await
        .unwrap();
    assert_eq!(again, r);

    // Revoke: once the event is applied, the cache no longer allows it.
    a.policy
        .remove_grant(v1::RemoveGrantRequest {
            domain: "acme".into(),
            target: "jack".into(),
            kind: v1::GrantKind::Pickup as i32,
            grantee: Some(v1::Grantee {
                kind: Some(G::User("recep".into())),
            }),
        })
        .await
        .unwrap();
    let epoch = a
        .policy
        .get_domain_policy(v1::GetDomainPolicyRequest {
            domain: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .epoch;
    assert!(
        view.wait_for_epoch(&d, epoch, Duration::from_secs(10))
            .await
    );
    let r = view
        .check(&d, &recep, &targets, Question::See)
        .await
        .unwrap();
    assert_eq!(allowed(&r), vec![false, false, false]);

    // Errors travel back: an unknown watcher is NotFound.
    let ghost = UserId::parse("ghost").unwrap();
    let e = view
        .check(&d, &ghost, &targets, Question::See)
        .await
        .unwrap_err();
    assert!(matches!(e, presence_core::ApiError::NotFound(_)), "{e:?}");

    // Existence and watch selectors resolve remotely too.
    assert!(view.user_exists(&d, &recep).await.unwrap());
    assert!(!view.user_exists(&d, &ghost).await.unwrap());
    use v1::watch_request::Selector as S;
    let site_users = view
        .resolve(&d, &recep, &S::Site("hq".into()), 100)
        .await
        .unwrap();
    let mut sorted = site_users.clone();
    sorted.sort();
    assert_eq!(sorted, vec!["carol", "jack", "recep"]);
    let explicit = S::Targets(v1::TargetList {
        targets: vec!["jack".into(), "carol".into(), "jack".into()],
    });
    assert_eq!(
        view.resolve(&d, &recep, &explicit, 100).await.unwrap(),
        vec!["jack", "carol"],
        "deduplicated, in order"
    );
    let e = view.resolve(&d, &recep, &explicit, 1).await.unwrap_err();
    assert!(
        matches!(e, presence_core::ApiError::ResourceExhausted(_)),
        "{e:?}"
    );
    let e = view
        .resolve(&d, &recep, &S::Site("nowhere".into()), 100)
        .await
        .unwrap_err();
    assert!(matches!(e, presence_core::ApiError::NotFound(_)), "{e:?}");

    // Without a policy node, a miss is Unavailable (not a wrong answer).
    sb.stop().await;
    let carol = UserId::parse("carol").unwrap();
    let e = view
        .check(&d, &carol, &targets, Question::See)
        .await
        .unwrap_err();
    assert!(
        matches!(e, presence_core::ApiError::Unavailable(_)),
        "{e:?}"
    );

    shutdown.cancel();
    runner.await.unwrap();
}
