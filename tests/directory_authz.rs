//! The authorization matrix: each principal kind × each directory and
//! auth RPC, as one table. `ok` = allowed, `PD` = PermissionDenied,
//! `NF` = NotFound (another tenant sees exactly what an unknown domain
//! gives), `UA` = Unauthenticated.

#![allow(clippy::unwrap_used)]

use presence_client::PresenceClient;
use presence_proto::v1::{self, Scope, UserKind};
use presence_tests::{NewUser, Sandbox, assert_code, domain, req_user, site, user};
use tonic::{Code, Status};

const PRINCIPALS: &[&str] = &[
    "admin", "om", "sm", "sup", "agent", "basic", "reader", "outsider", "other", "none", "phone",
];

#[rustfmt::skip]
const MATRIX: &[(&str, &str)] = &[
    //                      admin om  sm  sup agent basic reader outsider other none phone
    ("get_domain",          "ok   ok  ok  ok  ok    ok    ok     PD       NF    UA   PD"),
    ("update_domain",       "ok   ok  PD  PD  PD    PD    PD     PD       NF    UA   PD"),
    ("create_site",         "ok   ok  PD  PD  PD    PD    PD     PD       NF    UA   PD"),
    ("list_sites",          "ok   ok  ok  ok  ok    ok    ok     PD       NF    UA   PD"),
    ("create_basic_hq",     "ok   ok  ok  PD  PD    PD    PD     PD       NF    UA   PD"),
    ("create_manager_hq",   "ok   ok  PD  PD  PD    PD    PD     PD       NF    UA   PD"),
    ("create_basic_branch", "ok   ok  PD  PD  PD    PD    PD     PD       NF    UA   PD"),
    ("get_user_basic",      "ok   ok  ok  PD  PD    ok    ok     PD       NF    UA   ok"),
    ("get_user_branch",     "ok   ok  PD  PD  PD    PD    ok     PD       NF    UA   PD"),
    ("list_users",          "ok   ok  ok  ok  ok    ok    ok     PD       NF    UA   PD"),
    ("edit_profile_basic",  "ok   ok  ok  PD  PD    ok    PD     PD       NF    UA   PD"),
    ("change_scope",        "ok   ok  ok  PD  PD    PD    PD     PD       NF    UA   PD"),
    ("self_scope_change",   "ok   ok  ok  PD  PD    PD    PD     PD       NF    UA   PD"),
    ("delete_user",         "ok   ok  ok  PD  PD    PD    PD     PD       NF    UA   PD"),
    ("get_options_basic",   "ok   ok  ok  PD  PD    ok    ok     PD       NF    UA   PD"),
    ("set_rules_basic",     "ok   ok  ok  PD  PD    ok    PD     PD       NF    UA   PD"),
    ("reset_user",          "ok   ok  ok  PD  PD    PD    PD     PD       NF    UA   PD"),
    ("send_welcome",        "ok   ok  ok  PD  PD    PD    PD     PD       NF    UA   PD"),
    ("force_reset",         "ok   ok  ok  PD  PD    PD    PD     PD       NF    UA   PD"),
    ("add_phone",           "ok   ok  ok  PD  PD    PD    PD     PD       NF    UA   PD"),
    ("list_phones_basic",   "ok   ok  ok  PD  PD    ok    ok     PD       NF    UA   ok"),
    ("get_queue",           "ok   ok  ok  ok  ok    PD    ok     PD       NF    UA   PD"),
    ("set_queue_members",   "ok   ok  ok  PD  PD    PD    PD     PD       NF    UA   PD"),
    ("queue_add_branch",    "ok   ok  PD  PD  PD    PD    PD     PD       NF    UA   PD"),
    ("agent_login",         "ok   ok  ok  ok  ok    PD    PD     PD       NF    UA   PD"),
    ("create_domain",       "ok   PD  PD  PD  PD    PD    PD     PD       PD    UA   PD"),
    ("delete_domain",       "ok   PD  PD  PD  PD    PD    PD     PD       NF    UA   PD"),
    ("issue_token",         "ok   PD  PD  PD  PD    PD    PD     PD       PD    UA   PD"),
    ("revoke_token_by_id",  "ok   PD  PD  PD  PD    PD    PD     PD       PD    UA   PD"),
    ("who_am_i",            "ok   ok  ok  ok  ok    ok    ok     ok       ok    UA   ok"),
    ("audit_domain",        "ok   ok  PD  PD  PD    PD    ok     PD       NF    UA   PD"),
    ("audit_basic",         "ok   ok  ok  PD  PD    ok    ok     PD       NF    UA   PD"),
    ("audit_deployment",    "ok   PD  PD  PD  PD    PD    PD     PD       PD    UA   PD"),
    ("list_signing_keys",   "ok   PD  PD  PD  PD    PD    PD     PD       PD    UA   PD"),
    ("add_signing_key",     "ok   PD  PD  PD  PD    PD    PD     PD       PD    UA   PD"),
    // An unknown key: the admin gets past authorization to NotFound.
    ("retire_signing_key",  "NF   PD  PD  PD  PD    PD    PD     PD       PD    UA   PD"),
];

const PW: &str = "correct horse battery";

async fn setup(sb: &Sandbox) -> Vec<PresenceClient> {
    let mut a = sb.admin.clone();
    domain(&mut a, "acme").await;
    domain(&mut a, "globex").await;
    site(&mut a, "acme", "hq").await;
    site(&mut a, "acme", "branch").await;
    let people = [
        ("om", Scope::OfficeManager, "hq"),
        ("sm", Scope::SiteManager, "hq"),
        ("sup", Scope::CallCenterSupervisor, "hq"),
        ("agent", Scope::CallCenterAgent, "hq"),
        ("basic", Scope::BasicUser, "hq"),
        ("t-branch", Scope::BasicUser, "branch"),
        ("agent-b", Scope::CallCenterAgent, "branch"),
    ];
    for (id, scope, s) in people {
        user(
            &mut a,
            "acme",
            id,
            NewUser {
                first: id,
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
            agents: vec!["agent".into()],
            supervisors: vec!["sup".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    a.directory
        .add_phone(v1::AddPhoneRequest {
            domain: "acme".into(),
            user: "basic".into(),
            mac: "0004f2000100".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // Per-principal disposable targets.
    for i in 0..PRINCIPALS.len() {
        for prefix in ["u", "d", "r"] {
            user(
                &mut a,
                "acme",
                &format!("{prefix}-{i}"),
                NewUser {
                    first: "t",
                    site: "hq",
                    ..Default::default()
                },
            )
            .await;
        }
        domain(&mut a, &format!("scratch-{i}")).await;
        // A queue of hq per principal, for adding a branch agent to it.
        user(
            &mut a,
            "acme",
            &format!("qx-{i}"),
            NewUser {
                kind: Some(UserKind::CallQueue),
                site: "hq",
                ..Default::default()
            },
        )
        .await;
        site(&mut a, "acme", &format!("x-{i}")).await;
        a.directory
            .add_phone(v1::AddPhoneRequest {
                domain: "acme".into(),
                user: format!("u-{i}"),
                mac: format!("0004f20020{i:02x}"),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let reader =
        presence_tests::service_token(&mut a, "reader", &["acme"], &["directory.read"]).await;
    let outsider =
        presence_tests::service_token(&mut a, "pbx", &["acme"], &["presence.publish"]).await;
    let phone = presence_tests::phone_token(&mut a, "acme", "00:04:f2:00:01:00").await;
    vec![
        a.clone(),
        sb.login("acme", "om", PW).await,
        sb.login("acme", "sm", PW).await,
        sb.login("acme", "sup", PW).await,
        sb.login("acme", "agent", PW).await,
        sb.login("acme", "basic", PW).await,
        sb.client(Some(&reader)).await,
        sb.client(Some(&outsider)).await,
        sb.login("globex", "om", PW).await,
        sb.client(None).await,
        sb.client(Some(&phone)).await,
    ]
}

async fn call(op: &str, i: usize, c: &mut PresenceClient) -> Result<(), Status> {
    let d = || "acme".to_string();
    let dir = &mut c.directory;
    match op {
        "get_domain" => dir
            .get_domain(v1::GetDomainRequest { id: d() })
            .await
            .map(drop),
        "update_domain" => dir
            .update_domain(v1::UpdateDomainRequest {
                id: d(),
                expected_version: 0,
                name: Some(format!("acme {i}")),
                dns_name: None,
            })
            .await
            .map(drop),
        "create_site" => dir
            .create_site(v1::CreateSiteRequest {
                domain: d(),
                id: format!("s-{i}"),
                ..Default::default()
            })
            .await
            .map(drop),
        "list_sites" => dir
            .list_sites(v1::ListSitesRequest {
                domain: d(),
                ..Default::default()
            })
            .await
            .map(drop),
        "create_basic_hq" => dir
            .create_user(req_user(
                "acme",
                &format!("n-{i}"),
                NewUser {
                    site: "hq",
                    ..Default::default()
                },
            ))
            .await
            .map(drop),
        "create_manager_hq" => dir
            .create_user(req_user(
                "acme",
                &format!("m-{i}"),
                NewUser {
                    site: "hq",
                    scope: Some(Scope::OfficeManager),
                    ..Default::default()
                },
            ))
            .await
            .map(drop),
        "create_basic_branch" => dir
            .create_user(req_user(
                "acme",
                &format!("b-{i}"),
                NewUser {
                    site: "branch",
                    ..Default::default()
                },
            ))
            .await
            .map(drop),
        "get_user_basic" => dir
            .get_user(v1::GetUserRequest {
                domain: d(),
                id: "basic".into(),
            })
            .await
            .map(drop),
        "get_user_branch" => dir
            .get_user(v1::GetUserRequest {
                domain: d(),
                id: "t-branch".into(),
            })
            .await
            .map(drop),
        "list_users" => dir
            .list_users(v1::ListUsersRequest {
                domain: d(),
                ..Default::default()
            })
            .await
            .map(drop),
        "edit_profile_basic" => dir
            .update_user(v1::UpdateUserRequest {
                domain: d(),
                id: "basic".into(),
                profile: Some(v1::ProfileUpdate {
                    department: Some(format!("dept {i}")),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .map(drop),
        "change_scope" => dir
            .update_user(v1::UpdateUserRequest {
                domain: d(),
                id: format!("u-{i}"),
                scope: Some(Scope::CallCenterAgent as i32),
                ..Default::default()
            })
            .await
            .map(drop),
        "self_scope_change" => {
            // "basic" trying to promote itself; others promote basic's
            // twin u-i (so managers succeed).
            let id = if PRINCIPALS[i] == "basic" {
                "basic".to_string()
            } else {
                format!("u-{i}")
            };
            dir.update_user(v1::UpdateUserRequest {
                domain: d(),
                id,
                scope: Some(Scope::CallCenterSupervisor as i32),
                ..Default::default()
            })
            .await
            .map(drop)
        }
        "delete_user" => dir
            .delete_user(v1::DeleteUserRequest {
                domain: d(),
                id: format!("d-{i}"),
                expected_version: 0,
            })
            .await
            .map(drop),
        "get_options_basic" => dir
            .get_user_options(v1::GetUserOptionsRequest {
                domain: d(),
                user: "basic".into(),
            })
            .await
            .map(drop),
        "set_rules_basic" => dir
            .set_answering_rules(v1::SetAnsweringRulesRequest {
                domain: d(),
                user: "basic".into(),
                expected_version: 0,
                answering_rules: vec![],
            })
            .await
            .map(drop),
        "reset_user" => dir
            .reset_user(v1::ResetUserRequest {
                domain: d(),
                user: format!("r-{i}"),
            })
            .await
            .map(drop),
        "send_welcome" => dir
            .send_welcome(v1::SendWelcomeRequest {
                domain: d(),
                user: format!("r-{i}"),
                ttl_seconds: 0,
            })
            .await
            .map(drop),
        "force_reset" => dir
            .force_password_reset(v1::ForcePasswordResetRequest {
                domain: d(),
                user: format!("r-{i}"),
            })
            .await
            .map(drop),
        "add_phone" => dir
            .add_phone(v1::AddPhoneRequest {
                domain: d(),
                user: format!("u-{i}"),
                mac: format!("0004f20010{i:02x}"),
                ..Default::default()
            })
            .await
            .map(drop),
        "list_phones_basic" => dir
            .list_phones(v1::ListPhonesRequest {
                domain: d(),
                user: "basic".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "get_queue" => dir
            .get_queue(v1::GetQueueRequest {
                domain: d(),
                id: "q1".into(),
            })
            .await
            .map(drop),
        "set_queue_members" => dir
            .set_queue_members(v1::SetQueueMembersRequest {
                domain: d(),
                id: "q1".into(),
                agents: vec!["agent".into()],
                supervisors: vec!["sup".into()],
                ..Default::default()
            })
            .await
            .map(drop),
        // A site manager of hq cannot reach a branch agent through a queue.
        "queue_add_branch" => dir
            .set_queue_members(v1::SetQueueMembersRequest {
                domain: d(),
                id: format!("qx-{i}"),
                agents: vec!["agent".into(), "agent-b".into()],
                supervisors: vec![],
                ..Default::default()
            })
            .await
            .map(drop),
        "agent_login" => dir
            .set_queue_login(v1::SetQueueLoginRequest {
                domain: d(),
                id: "q1".into(),
                agent: "agent".into(),
                logged_in: i.is_multiple_of(2),
            })
            .await
            .map(drop),
        "create_domain" => dir
            .create_domain(v1::CreateDomainRequest {
                id: format!("new-{i}"),
                ..Default::default()
            })
            .await
            .map(drop),
        "delete_domain" => {
            // Tenants ask for their neighbour's domain "acme"; the admin
            // deletes a scratch domain.
            let id = if i == 0 { format!("scratch-{i}") } else { d() };
            dir.delete_domain(v1::DeleteDomainRequest {
                id,
                expected_version: 0,
                force: true,
            })
            .await
            .map(drop)
        }
        "issue_token" => c
            .auth
            .issue_token(v1::IssueTokenRequest {
                subject: Some(v1::issue_token_request::Subject::Service(
                    v1::ServicePrincipal {
                        name: "gw".into(),
                        domains: vec!["acme".into()],
                        rights: vec!["directory.read".into()],
                    },
                )),
                ttl_seconds: 60,
            })
            .await
            .map(drop),
        "revoke_token_by_id" => c
            .auth
            .revoke_token(v1::RevokeTokenRequest {
                token: String::new(),
                token_id: format!("{:032x}", i + 1),
                expires_at_ms: 0,
            })
            .await
            .map(drop),
        "who_am_i" => c.auth.who_am_i(v1::WhoAmIRequest {}).await.map(drop),
        "audit_domain" | "audit_basic" | "audit_deployment" => dir
            .list_audit_events(v1::ListAuditEventsRequest {
                domain: if op == "audit_deployment" {
                    String::new()
                } else {
                    d()
                },
                user: if op == "audit_basic" {
                    "basic".into()
                } else {
                    String::new()
                },
                ..Default::default()
            })
            .await
            .map(drop),
        "list_signing_keys" => c
            .auth
            .list_signing_keys(v1::ListSigningKeysRequest {})
            .await
            .map(drop),
        "add_signing_key" => c
            .auth
            .add_signing_key(v1::AddSigningKeyRequest {})
            .await
            .map(drop),
        "retire_signing_key" => c
            .auth
            .retire_signing_key(v1::RetireSigningKeyRequest {
                id: format!("{:016x}", i + 1),
            })
            .await
            .map(drop),
        "list_domains" => dir
            .list_domains(v1::ListDomainsRequest::default())
            .await
            .map(drop),
        "get_site" => dir
            .get_site(v1::GetSiteRequest {
                domain: d(),
                id: "hq".into(),
            })
            .await
            .map(drop),
        "update_site" => dir
            .update_site(v1::UpdateSiteRequest {
                domain: d(),
                id: "hq".into(),
                address: Some(format!("{i} Main St")),
                ..Default::default()
            })
            .await
            .map(drop),
        "delete_site" => dir
            .delete_site(v1::DeleteSiteRequest {
                domain: d(),
                id: format!("x-{i}"),
                expected_version: 0,
            })
            .await
            .map(drop),
        "get_phone_basic" => dir
            .get_phone(v1::GetPhoneRequest {
                domain: d(),
                mac: "0004f2000100".into(),
            })
            .await
            .map(drop),
        "update_phone" => dir
            .update_phone(v1::UpdatePhoneRequest {
                domain: d(),
                mac: format!("0004f20020{i:02x}"),
                label: Some(format!("label {i}")),
                ..Default::default()
            })
            .await
            .map(drop),
        "delete_phone" => dir
            .delete_phone(v1::DeletePhoneRequest {
                domain: d(),
                mac: format!("0004f20020{i:02x}"),
                expected_version: 0,
            })
            .await
            .map(drop),
        "list_queues" => dir
            .list_queues(v1::ListQueuesRequest {
                domain: d(),
                member: String::new(),
            })
            .await
            .map(drop),
        "voicemail_basic" => dir
            .update_voicemail(v1::UpdateVoicemailRequest {
                domain: d(),
                user: "basic".into(),
                greeting: Some(format!("greeting {i}")),
                ..Default::default()
            })
            .await
            .map(drop),
        "change_password" => c
            .auth
            .change_password(v1::ChangePasswordRequest {
                old_password: PW.into(),
                new_password: PW.into(),
            })
            .await
            .map(drop),
        other => panic!("unknown op {other}"),
    }
}

#[tokio::test]
async fn test_authorization_matrix() {
    let sb = Sandbox::start().await;
    let mut clients = setup(&sb).await;
    let failures = presence_tests::check_matrix(PRINCIPALS, MATRIX, &mut clients, |op, i, c| {
        Box::pin(call(op, i, c))
    })
    .await;
    assert!(
        failures.is_empty(),
        "authorization matrix mismatches:\n{}",
        failures.join("\n")
    );
}

#[tokio::test]
async fn test_other_tenant_sees_exactly_unknown_domain_answers() {
    let sb = Sandbox::start().await;
    let mut clients = setup(&sb).await;
    let other = &mut clients[8];
    let real = other
        .directory
        .get_user(v1::GetUserRequest {
            domain: "acme".into(),
            id: "basic".into(),
        })
        .await
        .unwrap_err();
    let fake = other
        .directory
        .get_user(v1::GetUserRequest {
            domain: "nosuch".into(),
            id: "basic".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(real.code(), Code::NotFound);
    assert_eq!(
        real.message().replace("acme", "X"),
        fake.message().replace("nosuch", "X")
    );
    let real = other
        .directory
        .list_users(v1::ListUsersRequest {
            domain: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let fake = other
        .directory
        .list_users(v1::ListUsersRequest {
            domain: "nosuch".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!((real.code(), fake.code()), (Code::NotFound, Code::NotFound));
    assert_eq!(
        real.message().replace("acme", "X"),
        fake.message().replace("nosuch", "X")
    );
    // Its own domain list shows only globex.
    let list = other
        .directory
        .list_domains(v1::ListDomainsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        list.domains
            .iter()
            .map(|d| d.id.as_str())
            .collect::<Vec<_>>(),
        vec!["globex"]
    );
}

#[tokio::test]
async fn test_members_see_a_redacted_directory() {
    let sb = Sandbox::start().await;
    let mut clients = setup(&sb).await;
    let mut a = sb.admin.clone();
    a.directory
        .update_user(v1::UpdateUserRequest {
            domain: "acme".into(),
            id: "t-branch".into(),
            profile: Some(v1::ProfileUpdate {
                email: Some("tb@acme.com".into()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let basic = &mut clients[5];
    let users = basic
        .directory
        .list_users(v1::ListUsersRequest {
            domain: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .users;
    let tb = users.iter().find(|u| u.id == "t-branch").unwrap();
    assert_eq!(
        tb.profile.as_ref().unwrap().email,
        "",
        "e-mail hidden from a plain member"
    );
    assert_eq!(
        tb.profile.as_ref().unwrap().first_name,
        "t-branch",
        "names are the company directory"
    );
    let om = &mut clients[1];
    let users = om
        .directory
        .list_users(v1::ListUsersRequest {
            domain: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .users;
    let tb = users.iter().find(|u| u.id == "t-branch").unwrap();
    assert_eq!(tb.profile.as_ref().unwrap().email, "tb@acme.com");
}

#[tokio::test]
async fn test_site_manager_cannot_move_users_out_or_escalate() {
    let sb = Sandbox::start().await;
    let mut clients = setup(&sb).await;
    let sm = &mut clients[2];
    for req in [
        v1::UpdateUserRequest {
            domain: "acme".into(),
            id: "basic".into(),
            site: Some("branch".into()),
            ..Default::default()
        },
        v1::UpdateUserRequest {
            domain: "acme".into(),
            id: "basic".into(),
            scope: Some(Scope::OfficeManager as i32),
            ..Default::default()
        },
        v1::UpdateUserRequest {
            domain: "acme".into(),
            id: "om".into(),
            profile: Some(v1::ProfileUpdate::default()),
            ..Default::default()
        },
    ] {
        assert_code(sm.directory.update_user(req).await, Code::PermissionDenied);
    }
    // Within its site and up to its own scope it may.
    sm.directory
        .update_user(v1::UpdateUserRequest {
            domain: "acme".into(),
            id: "basic".into(),
            scope: Some(Scope::SiteManager as i32),
            ..Default::default()
        })
        .await
        .unwrap();
}
