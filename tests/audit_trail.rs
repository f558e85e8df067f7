//! The audit trail over gRPC: every access-relevant change is recorded
//! with who, when, before and after; a domain's trail, one user's trail
//! and the deployment-wide trail are each readable by whom they concern,
//! newest first and paged; bad requests get clear errors; a domain
//! created again does not inherit the trail of the one deleted.

#![allow(clippy::unwrap_used)]

use presence_client::PresenceClient;
use presence_proto::v1::{self, GrantKind, Scope};
use presence_tests::{NewUser, Sandbox, assert_code, domain, service_token, site, user};
use tonic::Code;

const PW: &str = "correct horse battery";

async fn trail(
    c: &mut PresenceClient,
    d: &str,
    u: &str,
) -> Result<Vec<v1::AuditEvent>, tonic::Status> {
    c.directory
        .list_audit_events(v1::ListAuditEventsRequest {
            domain: d.into(),
            user: u.into(),
            page_size: 1000,
            page_token: String::new(),
        })
        .await
        .map(|r| r.into_inner().events)
}

fn actions(events: &[v1::AuditEvent]) -> Vec<&str> {
    events.iter().map(|e| e.action.as_str()).collect()
}

fn person<'a>(scope: Scope, site: &'a str) -> NewUser<'a> {
    NewUser {
        scope: Some(scope),
        site,
        password: Some(PW),
        ..Default::default()
    }
}

#[tokio::test]
async fn test_access_changes_are_recorded_and_readable_by_whom_they_concern() {
    let sb = Sandbox::start().await;
    let mut a = sb.admin.clone();
    domain(&mut a, "acme").await;
    domain(&mut a, "globex").await;
    site(&mut a, "acme", "hq").await;
    site(&mut a, "acme", "branch").await;
    user(&mut a, "acme", "om", person(Scope::OfficeManager, "hq")).await;
    user(&mut a, "acme", "1001", person(Scope::BasicUser, "hq")).await;
    user(&mut a, "acme", "1002", person(Scope::BasicUser, "hq")).await;
    user(&mut a, "acme", "1003", person(Scope::BasicUser, "hq")).await;
    user(&mut a, "globex", "gm", person(Scope::OfficeManager, "")).await;
    let mut om = sb.login("acme", "om", PW).await;

    // The office manager decides who sees 1002.
    om.policy
        .update_presence_settings(v1::UpdatePresenceSettingsRequest {
            domain: "acme".into(),
            user: "1002".into(),
            visibility: Some(v1::Visibility::Everyone as i32),
            ..Default::default()
        })
        .await
        .unwrap();
    om.policy
        .add_grant(v1::AddGrantRequest {
            domain: "acme".into(),
            target: "1002".into(),
            kind: GrantKind::See as i32,
            grantee: Some(v1::Grantee {
                kind: Some(v1::grantee::Kind::User("1001".into())),
            }),
        })
        .await
        .unwrap();
    om.policy
        .set_monitored_lines(v1::SetMonitoredLinesRequest {
            domain: "acme".into(),
            watcher: "1001".into(),
            targets: vec!["1002".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    // The administrator moves and promotes 1001, deletes 1003.
    a.directory
        .update_user(v1::UpdateUserRequest {
            domain: "acme".into(),
            id: "1001".into(),
            scope: Some(Scope::CallCenterSupervisor as i32),
            site: Some("branch".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    a.directory
        .delete_user(v1::DeleteUserRequest {
            domain: "acme".into(),
            id: "1003".into(),
            expected_version: 0,
        })
        .await
        .unwrap();
    let gw = service_token(&mut a, "gateway", &["acme"], &["presence.watch"]).await;
    a.auth
        .revoke_token(v1::RevokeTokenRequest {
            token: gw,
            ..Default::default()
        })
        .await
        .unwrap();
    a.auth
        .add_signing_key(v1::AddSigningKeyRequest {})
        .await
        .unwrap();

    // The domain's trail, newest first.
    let all = trail(&mut a, "acme", "").await.unwrap();
    assert_eq!(
        actions(&all),
        vec![
            "token.revoke",
            "token.issue",
            "user.delete",
            // One request's events come in the order it made them.
            "user.scope",
            "user.site",
            "policy.lines",
            "policy.grants",
            "policy.settings",
            "user.create",
            "user.create",
            "user.create",
            "user.create",
        ]
    );
    assert!(
        all.windows(2)
            .all(|w| w[0].at_ms >= w[1].at_ms && w[0].id < w[1].id)
    );
    let by_action = |a: &str| all.iter().find(|e| e.action == a).unwrap();
    let grants = by_action("policy.grants");
    assert_eq!(
        (grants.principal.as_str(), grants.user.as_str()),
        ("user acme/om", "1002")
    );
    assert_eq!(grants.before, "see=[] pickup=[]");
    assert_eq!(grants.after, "see=[user:1001] pickup=[]");
    let settings = by_action("policy.settings");
    assert!(
        settings.before.contains("visibility=permitted_users"),
        "{settings:?}"
    );
    assert!(
        settings.after.contains("visibility=everyone"),
        "{settings:?}"
    );
    let scope = by_action("user.scope");
    assert_eq!(
        (
            scope.before.as_str(),
            scope.after.as_str(),
            scope.principal.as_str()
        ),
        (
            "basic-user",
            "call-center-supervisor",
            "service bootstrap-admin"
        )
    );
    let site = by_action("user.site");
    assert_eq!(
        (site.before.as_str(), site.after.as_str()),
        ("hq", "branch")
    );
    assert_eq!(by_action("policy.lines").after, "[1001, 1002]");
    assert!(
        by_action("user.delete")
            .before
            .contains("scope=basic-user site=hq")
    );
    assert!(
        by_action("token.issue")
            .after
            .contains("service gateway domains=[acme]")
    );
    assert!(by_action("token.revoke").before.contains("token_id="));

    // "Who can see me, since when, and who decided it": 1002's own trail.
    let mut me = sb.login("acme", "1002", PW).await;
    let mine = trail(&mut me, "acme", "1002").await.unwrap();
    assert_eq!(
        actions(&mine),
        vec!["policy.grants", "policy.settings", "user.create"]
    );
    assert_eq!(mine[0].principal, "user acme/om");
    assert!(mine[0].at_ms > 0);
    // Not the domain's, not another user's.
    assert_code(trail(&mut me, "acme", "").await, Code::PermissionDenied);
    assert_code(trail(&mut me, "acme", "1001").await, Code::PermissionDenied);
    // The office manager reads the domain's; another tenant sees nothing.
    assert_eq!(trail(&mut om, "acme", "").await.unwrap().len(), all.len());
    let mut gm = sb.login("globex", "gm", PW).await;
    assert_code(trail(&mut gm, "acme", "").await, Code::NotFound);
    assert_code(trail(&mut gm, "acme", "1002").await, Code::NotFound);
    // A service with directory.read reads it; one without does not.
    let reader = service_token(&mut a, "audit", &["acme"], &["directory.read"]).await;
    let mut reader = sb.client(Some(&reader)).await;
    assert!(trail(&mut reader, "acme", "1001").await.is_ok());
    let watcher = service_token(&mut a, "w", &["acme"], &["presence.watch"]).await;
    let mut watcher = sb.client(Some(&watcher)).await;
    assert_code(
        trail(&mut watcher, "acme", "").await,
        Code::PermissionDenied,
    );

    // Deployment-wide: signing keys, tokens for every domain; admins only.
    let wide = trail(&mut a, "", "").await.unwrap();
    assert_eq!(actions(&wide), vec!["key.add"]);
    assert_eq!(wide[0].domain, "");
    assert_code(trail(&mut om, "", "").await, Code::PermissionDenied);
    let mut anonymous = sb.client(None).await;
    assert_code(
        trail(&mut anonymous, "acme", "").await,
        Code::Unauthenticated,
    );

    // Paging: pages of 5 walk the whole trail once, in order.
    let all = trail(&mut a, "acme", "").await.unwrap();
    assert_eq!(
        actions(&all)[..2],
        ["token.issue", "token.issue"],
        "the two tokens just issued"
    );
    let mut walked = Vec::new();
    let mut token = String::new();
    loop {
        let r = a
            .directory
            .list_audit_events(v1::ListAuditEventsRequest {
                domain: "acme".into(),
                user: String::new(),
                page_size: 5,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.events.len() <= 5);
        walked.extend(r.events);
        token = r.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(walked, all);

    // Bad requests.
    let bad =
        |domain: &str, user: &str, page_size: u32, page_token: &str| v1::ListAuditEventsRequest {
            domain: domain.into(),
            user: user.into(),
            page_size,
            page_token: page_token.into(),
        };
    for (req, code) in [
        (bad("acme", "", 1001, ""), Code::InvalidArgument),
        (bad("acme", "", 5, "not-a-token"), Code::InvalidArgument),
        (bad("", "1001", 5, ""), Code::InvalidArgument),
        (bad("Not A Domain!", "", 5, ""), Code::InvalidArgument),
        (bad("acme", "bad user!", 5, ""), Code::InvalidArgument),
        (bad("nowhere", "", 5, ""), Code::NotFound),
    ] {
        assert_code(a.directory.list_audit_events(req).await, code);
    }

    // A domain deleted and created again starts with an empty trail; the
    // deletion is in the deployment-wide one.
    a.directory
        .delete_domain(v1::DeleteDomainRequest {
            id: "acme".into(),
            force: true,
            expected_version: 0,
        })
        .await
        .unwrap();
    domain(&mut a, "acme").await;
    assert!(trail(&mut a, "acme", "").await.unwrap().is_empty());
    assert!(trail(&mut a, "acme", "1002").await.unwrap().is_empty());
    let wide = trail(&mut a, "", "").await.unwrap();
    assert_eq!(actions(&wide), vec!["domain.delete", "key.add"]);
    assert!(wide[0].before.contains("domain acme"));
    sb.stop().await;
}
