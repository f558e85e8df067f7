//! Who may read and change presence permissions, as one table: each
//! principal kind × each PolicyService RPC. `ok` allowed, `PD`
//! PermissionDenied, `NF` NotFound (another tenant), `UA`
//! Unauthenticated.

#![allow(clippy::unwrap_used)]

use presence_client::PresenceClient;
use presence_proto::v1::{self, Scope, grantee::Kind as G};
use presence_tests::{NewUser, Sandbox, domain, site, user};
use tonic::Status;

const PRINCIPALS: &[&str] = &[
    "admin", "om", "sm", "sup", "agent", "basic", "reader", "writer", "outsider", "other", "none",
    "phone",
];

#[rustfmt::skip]
const MATRIX: &[(&str, &str)] = &[
    //                       admin om  sm  sup agent basic reader writer outsider other none phone
    ("get_settings",         "ok   ok  ok  PD  PD    ok    ok     ok     PD       NF    UA   ok"),
    ("update_settings",      "ok   ok  ok  PD  PD    ok    PD     ok     PD       NF    UA   PD"),
    ("update_branch",        "ok   ok  PD  PD  PD    PD    PD     ok     PD       NF    UA   PD"),
    ("list_grants",          "ok   ok  ok  PD  PD    ok    ok     ok     PD       NF    UA   ok"),
    ("set_grants",           "ok   ok  ok  PD  PD    ok    PD     ok     PD       NF    UA   PD"),
    ("add_grant",            "ok   ok  ok  PD  PD    ok    PD     ok     PD       NF    UA   PD"),
    ("remove_grant",         "ok   ok  ok  PD  PD    ok    PD     ok     PD       NF    UA   PD"),
    ("get_lines",            "ok   ok  ok  PD  PD    ok    ok     ok     PD       NF    UA   ok"),
    ("set_lines",            "ok   ok  ok  PD  PD    ok    PD     ok     PD       NF    UA   PD"),
    ("get_domain_policy",    "ok   ok  ok  ok  ok    ok    ok     ok     PD       NF    UA   PD"),
    ("update_domain_policy", "ok   ok  PD  PD  PD    PD    PD     ok     PD       NF    UA   PD"),
    ("check_see",            "ok   ok  ok  PD  PD    ok    ok     ok     PD       NF    UA   ok"),
    ("check_pickup",         "ok   ok  ok  PD  PD    ok    ok     ok     PD       NF    UA   ok"),
    ("explain",              "ok   ok  ok  PD  ok    ok    ok     ok     PD       NF    UA   ok"),
    ("list_watchers",        "ok   ok  ok  PD  PD    ok    ok     ok     PD       NF    UA   ok"),
    ("list_monitorable",     "ok   ok  ok  PD  PD    ok    ok     ok     PD       NF    UA   ok"),
];

const PW: &str = "correct horse battery";

async fn setup(sb: &Sandbox) -> Vec<PresenceClient> {
    let mut a = sb.admin.clone();
    domain(&mut a, "acme").await;
    domain(&mut a, "globex").await;
    site(&mut a, "acme", "hq").await;
    site(&mut a, "acme", "branch").await;
    for (id, scope, s) in [
        ("om", Scope::OfficeManager, "hq"),
        ("sm", Scope::SiteManager, "hq"),
        ("sup", Scope::CallCenterSupervisor, "hq"),
        ("agent", Scope::CallCenterAgent, "hq"),
        ("basic", Scope::BasicUser, "hq"),
        ("t-branch", Scope::BasicUser, "branch"),
    ] {
        user(
            &mut a,
            "acme",
            id,
            NewUser {
                scope: Some(scope),
                site: s,
                password: Some(PW),
                ..Default::default()
            },
        )
        .await;
    }
    user(
        &mut a,
        "globex",
        "om",
        NewUser {
            scope: Some(Scope::OfficeManager),
            password: Some(PW),
            ..Default::default()
        },
    )
    .await;
    a.directory
        .add_phone(v1::AddPhoneRequest {
            domain: "acme".into(),
            user: "basic".into(),
            mac: "0004f2000100".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let reader = presence_tests::service_token(&mut a, "reader", &["acme"], &["policy.read"]).await;
    let writer =
        presence_tests::service_token(&mut a, "writer", &["acme"], &["policy.write"]).await;
    let outsider =
        presence_tests::service_token(&mut a, "outsider", &["acme"], &["directory.read"]).await;
    let phone = presence_tests::phone_token(&mut a, "acme", "0004f2000100").await;
    vec![
        a.clone(),
        sb.login("acme", "om", PW).await,
        sb.login("acme", "sm", PW).await,
        sb.login("acme", "sup", PW).await,
        sb.login("acme", "agent", PW).await,
        sb.login("acme", "basic", PW).await,
        sb.client(Some(&reader)).await,
        sb.client(Some(&writer)).await,
        sb.client(Some(&outsider)).await,
        sb.login("globex", "om", PW).await,
        sb.client(None).await,
        sb.client(Some(&phone)).await,
    ]
}

async fn call(op: &str, i: usize, c: &mut PresenceClient) -> Result<(), Status> {
    let d = || "acme".to_string();
    let agent = || {
        Some(v1::Grantee {
            kind: Some(G::User("agent".into())),
        })
    };
    let p = &mut c.policy;
    match op {
        "get_settings" => p
            .get_presence_settings(v1::GetPresenceSettingsRequest {
                domain: d(),
                user: "basic".into(),
            })
            .await
            .map(drop),
        "update_settings" | "update_branch" => {
            let user = if op == "update_branch" {
                "t-branch"
            } else {
                "basic"
            };
            let ring = i.is_multiple_of(2);
            p.update_presence_settings(v1::UpdatePresenceSettingsRequest {
                domain: d(),
                user: user.into(),
                ring_on_monitored_call: Some(ring),
                ..Default::default()
            })
            .await
            .map(drop)
        }
        "list_grants" => p
            .list_grants(v1::ListGrantsRequest {
                domain: d(),
                target: "basic".into(),
            })
            .await
            .map(drop),
        "set_grants" => p
            .set_grants(v1::SetGrantsRequest {
                domain: d(),
                target: "basic".into(),
                see: vec![v1::Grantee {
                    kind: Some(G::Site("hq".into())),
                }],
                ..Default::default()
            })
            .await
            .map(drop),
        "add_grant" => p
            .add_grant(v1::AddGrantRequest {
                domain: d(),
                target: "basic".into(),
                kind: v1::GrantKind::Pickup as i32,
                grantee: agent(),
            })
            .await
            .map(drop),
        "remove_grant" => p
            .remove_grant(v1::RemoveGrantRequest {
                domain: d(),
                target: "basic".into(),
                kind: v1::GrantKind::Pickup as i32,
                grantee: agent(),
            })
            .await
            .map(drop),
        "get_lines" => p
            .get_monitored_lines(v1::GetMonitoredLinesRequest {
                domain: d(),
                watcher: "basic".into(),
            })
            .await
            .map(drop),
        "set_lines" => p
            .set_monitored_lines(v1::SetMonitoredLinesRequest {
                domain: d(),
                watcher: "basic".into(),
                targets: vec!["agent".into()],
                ..Default::default()
            })
            .await
            .map(drop),
        "get_domain_policy" => p
            .get_domain_policy(v1::GetDomainPolicyRequest { domain: d() })
            .await
            .map(drop),
        "update_domain_policy" => p
            .update_domain_policy(v1::UpdateDomainPolicyRequest {
                domain: d(),
                site_manager_sees_site: Some(true),
                ..Default::default()
            })
            .await
            .map(drop),
        "check_see" => p
            .check_see(v1::CheckRequest {
                domain: d(),
                watcher: "basic".into(),
                targets: vec!["agent".into()],
                ..Default::default()
            })
            .await
            .map(drop),
        "check_pickup" => p
            .check_pickup(v1::CheckRequest {
                domain: d(),
                watcher: "basic".into(),
                targets: vec!["agent".into()],
                ..Default::default()
            })
            .await
            .map(drop),
        "explain" => p
            .explain(v1::ExplainRequest {
                domain: d(),
                watcher: "basic".into(),
                target: "agent".into(),
            })
            .await
            .map(drop),
        "list_watchers" => p
            .list_watchers(v1::ListWatchersRequest {
                domain: d(),
                target: "basic".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "list_monitorable" => p
            .list_monitorable(v1::ListMonitorableRequest {
                domain: d(),
                watcher: "basic".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        other => panic!("unknown op {other}"),
    }
}

#[tokio::test]
async fn test_policy_authorization_matrix() {
    let sb = Sandbox::start().await;
    let mut clients = setup(&sb).await;
    let failures = presence_tests::check_matrix(PRINCIPALS, MATRIX, &mut clients, |op, i, c| {
        Box::pin(call(op, i, c))
    })
    .await;
    assert!(
        failures.is_empty(),
        "policy authorization mismatches:\n{}",
        failures.join("\n")
    );
}

#[tokio::test]
async fn test_watcher_and_monitorable_lists_page() {
    let sb = Sandbox::start().await;
    let mut a = sb.admin.clone();
    domain(&mut a, "acme").await;
    for i in 0..7 {
        user(&mut a, "acme", &format!("u{i}"), NewUser::default()).await;
    }
    user(&mut a, "acme", "star", NewUser::default()).await;
    a.policy
        .update_presence_settings(v1::UpdatePresenceSettingsRequest {
            domain: "acme".into(),
            user: "star".into(),
            visibility: Some(v1::Visibility::Everyone as i32),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let r = a
            .policy
            .list_watchers(v1::ListWatchersRequest {
                domain: "acme".into(),
                target: "star".into(),
                page_size: 3,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.watchers.len() <= 3);
        seen.extend(r.watchers.into_iter().map(|w| w.user));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(seen, (0..7).map(|i| format!("u{i}")).collect::<Vec<_>>());
    let r = a
        .policy
        .list_monitorable(v1::ListMonitorableRequest {
            domain: "acme".into(),
            watcher: "u3".into(),
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.targets
            .iter()
            .map(|t| t.target.as_str())
            .collect::<Vec<_>>(),
        vec!["star"]
    );
    assert_eq!(r.next_page_token, "star");
    let r2 = a
        .policy
        .list_monitorable(v1::ListMonitorableRequest {
            domain: "acme".into(),
            watcher: "u3".into(),
            page_size: 1,
            page_token: r.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r2.targets
            .iter()
            .map(|t| t.target.as_str())
            .collect::<Vec<_>>(),
        vec!["u3"]
    );
    assert!(r2.next_page_token.is_empty());
}
