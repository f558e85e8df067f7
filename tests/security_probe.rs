//! Regression tests of the black-box security probe's findings, each
//! through gRPC the way it was seen: hidden e-mails recovered by search,
//! a site manager crossing its site through queue membership, stream
//! limits shared across tenants, a queue's agents revealed by a watch,
//! unchecked queue logins, welcome tokens outliving password changes,
//! forced resets satisfied by the old password, control characters in
//! presence text, phones squatted across tenants, raw page tokens and
//! shared DNS names. (Identity reuse is in identity_lifecycle.rs; login
//! storms and idle connections against the real binary in
//! services/presenced/tests/abuse.rs.)

#![allow(clippy::unwrap_used)]

use presence_client::PresenceClient;
use presence_proto::v1::{self, Scope, UserKind, device_event::Kind as K};
use presence_tests::{NewUser, Sandbox, assert_code, domain, service_token, site, user};
use tonic::Code;

const PW: &str = "correct horse battery";

/// acme (sites hq, branch) and globex; people of every scope; queue 8000
/// in hq with agent `agent` and supervisor `sup`; globex's queue 7000
/// and user g1.
async fn world(sb: &Sandbox) {
    let mut a = sb.admin.clone();
    domain(&mut a, "acme").await;
    domain(&mut a, "globex").await;
    site(&mut a, "acme", "hq").await;
    site(&mut a, "acme", "branch").await;
    let people = [
        ("om", Scope::OfficeManager, "hq", "om@acme.example"),
        ("sm", Scope::SiteManager, "hq", "sm@acme.example"),
        ("sup", Scope::CallCenterSupervisor, "hq", "sup@acme.example"),
        ("agent", Scope::CallCenterAgent, "hq", "agent@acme.example"),
        (
            "agent2",
            Scope::CallCenterAgent,
            "branch",
            "agent2@acme.example",
        ),
        ("basic", Scope::BasicUser, "hq", "basic@acme.example"),
        ("kim", Scope::BasicUser, "hq", "k.secret-99@hidden-corp.org"),
    ];
    for (id, scope, s, email) in people {
        user(
            &mut a,
            "acme",
            id,
            NewUser {
                first: id,
                email,
                scope: Some(scope),
                site: s,
                password: Some(PW),
                ..Default::default()
            },
        )
        .await;
    }
    for (d, q, s) in [("acme", "8000", "hq"), ("globex", "7000", "")] {
        user(
            &mut a,
            d,
            q,
            NewUser {
                first: "Sales",
                kind: Some(UserKind::CallQueue),
                site: s,
                ..Default::default()
            },
        )
        .await;
    }
    set_members(&mut a, &["agent"], &["sup"]).await.unwrap();
    user(
        &mut a,
        "globex",
        "g1",
        NewUser {
            first: "g",
            ..Default::default()
        },
    )
    .await;
}

async fn set_members(
    c: &mut PresenceClient,
    agents: &[&str],
    supervisors: &[&str],
) -> Result<v1::Queue, tonic::Status> {
    c.directory
        .set_queue_members(v1::SetQueueMembersRequest {
            domain: "acme".into(),
            id: "8000".into(),
            agents: agents.iter().map(|s| s.to_string()).collect(),
            supervisors: supervisors.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

async fn search(c: &mut PresenceClient, q: &str) -> Vec<String> {
    c.directory
        .list_users(v1::ListUsersRequest {
            domain: "acme".into(),
            search: q.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .users
        .into_iter()
        .map(|u| u.id)
        .collect()
}

#[tokio::test]
async fn test_search_matches_only_fields_the_caller_sees() {
    let sb = Sandbox::start().await;
    world(&sb).await;
    let mut basic = sb.login("acme", "basic", PW).await;
    for q in [
        "k.secret",
        "k.secret-99@hidden-corp.org",
        "hidden",
        "hidden-corp.org",
    ] {
        assert_eq!(search(&mut basic, q).await, Vec::<String>::new(), "{q}");
    }
    // What the caller does see still matches.
    assert_eq!(search(&mut basic, "kim").await, vec!["kim".to_string()]);
    // A manager sees the e-mail, so it may search by it.
    let mut om = sb.login("acme", "om", PW).await;
    assert_eq!(search(&mut om, "k.secret").await, vec!["kim".to_string()]);
    assert_eq!(search(&mut om, "hidden").await, vec!["kim".to_string()]);
}

#[tokio::test]
async fn test_site_manager_cannot_reach_across_its_site_through_a_queue() {
    let sb = Sandbox::start().await;
    world(&sb).await;
    let mut sm = sb.login("acme", "sm", PW).await;
    let mut om = sb.login("acme", "om", PW).await;
    // The probe's request: a branch agent and the manager itself.
    assert_code(
        set_members(&mut sm, &["agent", "agent2"], &["sup", "sm"]).await,
        Code::PermissionDenied,
    );
    let q = om
        .directory
        .get_queue(v1::GetQueueRequest {
            domain: "acme".into(),
            id: "8000".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let agents: Vec<&str> = q.agents.iter().map(|a| a.user.as_str()).collect();
    assert_eq!(
        (agents, q.supervisors.clone()),
        (vec!["agent"], vec!["sup".to_string()])
    );
    let decision = sm
        .policy
        .check_see(v1::CheckRequest {
            domain: "acme".into(),
            watcher: "sm".into(),
            targets: vec!["agent2".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .decisions;
    assert!(!decision[0].allowed, "sm must not see the branch agent");
    // Members of its own site it may change.
    set_members(&mut sm, &["agent"], &["sup", "sm"])
        .await
        .unwrap();
    // A branch member an office manager added may stay when the site
    // manager edits the queue, but the site manager cannot remove it.
    set_members(&mut om, &["agent", "agent2"], &["sup", "sm"])
        .await
        .unwrap();
    set_members(&mut sm, &["agent", "agent2"], &["sm"])
        .await
        .unwrap();
    assert_code(
        set_members(&mut sm, &["agent"], &["sm"]).await,
        Code::PermissionDenied,
    );
}

fn watch_req(domain: &str, watcher: &str, targets: &[&str]) -> v1::WatchRequest {
    v1::WatchRequest {
        domain: domain.into(),
        watcher: watcher.into(),
        selector: Some(v1::watch_request::Selector::Targets(v1::TargetList {
            targets: targets.iter().map(|s| s.to_string()).collect(),
        })),
        ..Default::default()
    }
}

#[tokio::test]
async fn test_stream_limits_do_not_cross_tenants() {
    let sb = Sandbox::start_tuned(|c| c.max_streams_per_principal = 2).await;
    world(&sb).await;
    let mut a = sb.admin.clone();
    // acme's service takes globex's gateway name and fills its quota.
    let squatter = service_token(&mut a, "globex-phone-gw", &["acme"], &["presence.watch"]).await;
    let real = service_token(&mut a, "globex-phone-gw", &["globex"], &["presence.watch"]).await;
    let mut sq = sb.client(Some(&squatter)).await;
    let mut gw = sb.client(Some(&real)).await;
    let mut held = fill_quota(&mut sq, watch_req("acme", "basic", &["agent"])).await;
    // globex's real gateway of that name still gets its own two.
    held.extend(fill_quota(&mut gw, watch_req("globex", "g1", &["g1"])).await);
}

/// Opens streams with `req` up to the limit of two, checks the next is
/// `ResourceExhausted`, and returns the open ones (to hold them).
async fn fill_quota(
    c: &mut PresenceClient,
    req: v1::WatchRequest,
) -> Vec<tonic::Streaming<v1::WatchEvent>> {
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(c.presence.watch(req.clone()).await.unwrap().into_inner());
    }
    assert_code(
        c.presence.watch(req).await.map(drop),
        Code::ResourceExhausted,
    );
    held
}

#[tokio::test]
async fn test_watching_a_queue_needs_the_right_to_read_it() {
    let sb = Sandbox::start().await;
    world(&sb).await;
    let queue = || v1::WatchRequest {
        domain: "acme".into(),
        selector: Some(v1::watch_request::Selector::Queue("8000".into())),
        ..Default::default()
    };
    let mut basic = sb.login("acme", "basic", PW).await;
    assert_code(
        basic
            .directory
            .get_queue(v1::GetQueueRequest {
                domain: "acme".into(),
                id: "8000".into(),
            })
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        basic.presence.watch(queue()).await.map(drop),
        Code::PermissionDenied,
    );
    // A service watching on behalf of the basic user is refused alike.
    let mut a = sb.admin.clone();
    let gw = service_token(&mut a, "gw", &["acme"], &["presence.watch"]).await;
    let mut gw = sb.client(Some(&gw)).await;
    let mut on_behalf = queue();
    on_behalf.watcher = "basic".into();
    assert_code(
        gw.presence.watch(on_behalf).await.map(drop),
        Code::PermissionDenied,
    );
    // Its supervisor, its agent and managers may.
    for who in ["sup", "agent", "om", "sm"] {
        let mut c = sb.login("acme", who, PW).await;
        c.presence
            .watch(queue())
            .await
            .unwrap_or_else(|e| panic!("{who}: {e}"));
    }
}

fn queue_login(user: &str, queue: &str, seq: u64) -> v1::DeviceEvent {
    v1::DeviceEvent {
        domain: "acme".into(),
        user: user.into(),
        device: "portal".into(),
        sequence: seq,
        at_ms: 0,
        kind: Some(K::QueueLogin(v1::QueueLogin {
            queue: queue.into(),
            logged_in: true,
        })),
    }
}

async fn publish_one(c: &mut PresenceClient, e: v1::DeviceEvent) -> v1::PublishResult {
    c.presence
        .publish(v1::PublishRequest { events: vec![e] })
        .await
        .unwrap()
        .into_inner()
        .results
        .remove(0)
}

async fn queues_of(c: &mut PresenceClient, user: &str) -> Vec<String> {
    c.presence
        .get_presence(v1::GetPresenceRequest {
            domain: "acme".into(),
            targets: vec![user.into()],
        })
        .await
        .unwrap()
        .into_inner()
        .states
        .into_iter()
        .next()
        .map(|s| s.queues_logged_in)
        .unwrap_or_default()
}

#[tokio::test]
async fn test_queue_logins_are_checked_against_the_directory() {
    let sb = Sandbox::start().await;
    world(&sb).await;
    let not_permitted = v1::RejectReason::NotPermitted as i32;
    // A basic user (no queue-login capability, not an agent).
    let mut basic = sb.login("acme", "basic", PW).await;
    let r = publish_one(&mut basic, queue_login("basic", "8000", 1)).await;
    assert_eq!(
        (r.accepted, r.reason),
        (false, not_permitted),
        "{}",
        r.detail
    );
    // An agent: unknown queues and another tenant's queue ids are refused
    // alike; its own queue is taken.
    let mut agent = sb.login("acme", "agent", PW).await;
    for (seq, q) in [(1, "9999"), (2, "7000"), (3, "sm")] {
        let r = publish_one(&mut agent, queue_login("agent", q, seq)).await;
        assert_eq!(
            (r.accepted, r.reason),
            (false, not_permitted),
            "{q}: {}",
            r.detail
        );
    }
    // agent2 is not an agent of 8000 (it exists in the domain).
    let mut agent2 = sb.login("acme", "agent2", PW).await;
    let r = publish_one(&mut agent2, queue_login("agent2", "8000", 1)).await;
    assert_eq!((r.accepted, r.reason), (false, not_permitted));
    let r = publish_one(&mut agent, queue_login("agent", "8000", 4)).await;
    assert!(r.accepted, "{}", r.detail);
    // A PBX publishing for users is held to the same rule.
    let mut a = sb.admin.clone();
    let pbx = service_token(&mut a, "pbx", &["acme"], &["presence.publish"]).await;
    let mut pbx = sb.client(Some(&pbx)).await;
    let r = publish_one(&mut pbx, queue_login("basic", "8000", 2)).await;
    assert_eq!((r.accepted, r.reason), (false, not_permitted));
    let mut om = sb.login("acme", "om", PW).await;
    assert_eq!(queues_of(&mut om, "agent").await, vec!["8000".to_string()]);
    assert_eq!(queues_of(&mut om, "basic").await, Vec::<String>::new());
    assert_eq!(queues_of(&mut om, "agent2").await, Vec::<String>::new());
}

async fn welcome(a: &mut PresenceClient, user: &str) -> String {
    a.directory
        .send_welcome(v1::SendWelcomeRequest {
            domain: "acme".into(),
            user: user.into(),
            ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .welcome_token
}

async fn accept(sb: &Sandbox, token: &str) -> Result<v1::LoginResponse, tonic::Status> {
    let mut anon = sb.client(None).await;
    anon.auth
        .accept_welcome(v1::AcceptWelcomeRequest {
            welcome_token: token.into(),
            password: "attacker passphrase".into(),
            voicemail_pin: None,
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn test_password_changes_and_resets_void_a_pending_welcome() {
    let sb = Sandbox::start().await;
    world(&sb).await;
    let mut a = sb.admin.clone();
    // An administrator sets the password.
    let w = welcome(&mut a, "basic").await;
    a.directory
        .update_user(v1::UpdateUserRequest {
            domain: "acme".into(),
            id: "basic".into(),
            password: Some("admin set passphrase".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_code(accept(&sb, &w).await, Code::Unauthenticated);
    // ResetUser.
    let w = welcome(&mut a, "basic").await;
    a.directory
        .reset_user(v1::ResetUserRequest {
            domain: "acme".into(),
            user: "basic".into(),
        })
        .await
        .unwrap();
    assert_code(accept(&sb, &w).await, Code::Unauthenticated);
    // The user's own password change.
    let w = welcome(&mut a, "basic").await;
    let mut basic = sb.login("acme", "basic", "admin set passphrase").await;
    basic
        .auth
        .change_password(v1::ChangePasswordRequest {
            old_password: "admin set passphrase".into(),
            new_password: "own new passphrase".into(),
        })
        .await
        .unwrap();
    assert_code(accept(&sb, &w).await, Code::Unauthenticated);
    // A welcome nothing voided still works.
    let w = welcome(&mut a, "basic").await;
    accept(&sb, &w).await.unwrap();
}

fn login(user: &str, pw: &str, new: Option<&str>) -> v1::LoginRequest {
    v1::LoginRequest {
        domain: "acme".into(),
        user: user.into(),
        password: pw.into(),
        new_password: new.map(str::to_owned),
    }
}

#[tokio::test]
async fn test_forced_reset_needs_a_different_password_and_stray_new_passwords_are_refused() {
    let sb = Sandbox::start().await;
    world(&sb).await;
    let mut anon = sb.client(None).await;
    // Without a pending reset, new_password is refused (not ignored),
    // and the password stays what it was.
    for new in ["x", "a brand new passphrase"] {
        assert_code(
            anon.auth.login(login("basic", PW, Some(new))).await,
            Code::InvalidArgument,
        );
    }
    anon.auth.login(login("basic", PW, None)).await.unwrap();
    let mut a = sb.admin.clone();
    a.directory
        .force_password_reset(v1::ForcePasswordResetRequest {
            domain: "acme".into(),
            user: "basic".into(),
        })
        .await
        .unwrap();
    assert_code(
        anon.auth.login(login("basic", PW, None)).await,
        Code::FailedPrecondition,
    );
    assert_code(
        anon.auth.login(login("basic", PW, Some(PW))).await,
        Code::InvalidArgument,
    );
    // Still pending after the refusals; a different password satisfies it.
    assert_code(
        anon.auth.login(login("basic", PW, None)).await,
        Code::FailedPrecondition,
    );
    anon.auth
        .login(login("basic", PW, Some("a brand new passphrase")))
        .await
        .unwrap();
    anon.auth
        .login(login("basic", "a brand new passphrase", None))
        .await
        .unwrap();
}

#[tokio::test]
async fn test_control_and_bidi_characters_in_presence_text_are_rejected() {
    let sb = Sandbox::start().await;
    world(&sb).await;
    let mut a = sb.admin.clone();
    let pbx = service_token(&mut a, "pbx", &["acme"], &["presence.publish"]).await;
    let mut pbx = sb.client(Some(&pbx)).await;
    let malformed = v1::RejectReason::Malformed as i32;
    let status = |msg: &str| {
        K::ManualStatus(v1::ManualStatus {
            status: v1::UserStatus::Busy as i32,
            message: msg.into(),
        })
    };
    let call = |id: &str, number: &str, name: &str| {
        K::Call(v1::CallUpdate {
            call_id: id.into(),
            state: v1::CallState::Early as i32,
            direction: v1::Direction::Inbound as i32,
            remote_number: number.into(),
            remote_name: name.into(),
        })
    };
    let bad: Vec<(&str, &str, K)> = vec![
        ("status NUL", "dev1", status("in a meeting\u{0}")),
        ("status CRLF", "dev1", status("busy\r\nX-Injected: 1")),
        ("status ESC", "dev1", status("\u{1b}[31mred")),
        ("status RLO", "dev1", status("gnp.exe\u{202e}")),
        ("call id", "dev1", call("c\n1", "+1415", "Bob")),
        ("remote number", "dev1", call("c1", "+1415\u{0}", "Bob")),
        ("remote name", "dev1", call("c1", "+1415", "\u{202e}boB")),
        ("device id", "dev\u{1b}1", status("ok")),
    ];
    for (seq, (what, device, kind)) in bad.into_iter().enumerate() {
        let r = publish_one(
            &mut pbx,
            v1::DeviceEvent {
                domain: "acme".into(),
                user: "basic".into(),
                device: device.into(),
                sequence: seq as u64 + 1,
                at_ms: 0,
                kind: Some(kind),
            },
        )
        .await;
        assert_eq!(
            (r.accepted, r.reason),
            (false, malformed),
            "{what}: {}",
            r.detail
        );
    }
    // Nothing of it reached the state; clean text still does.
    let r = publish_one(
        &mut pbx,
        v1::DeviceEvent {
            domain: "acme".into(),
            user: "basic".into(),
            device: "dev1".into(),
            sequence: 100,
            at_ms: 0,
            kind: Some(status("in a meeting")),
        },
    )
    .await;
    assert!(r.accepted, "{}", r.detail);
    // Profile fields refuse the bidi override as well.
    assert_code(
        a.directory
            .update_user(v1::UpdateUserRequest {
                domain: "acme".into(),
                id: "basic".into(),
                profile: Some(v1::ProfileUpdate {
                    first_name: Some("gnp.exe\u{202e}".into()),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn test_a_mac_of_another_tenant_is_answered_like_a_free_one() {
    let sb = Sandbox::start().await;
    world(&sb).await;
    let mut a = sb.admin.clone();
    let add = |d: &str, u: &str, label: &str| v1::AddPhoneRequest {
        domain: d.into(),
        user: u.into(),
        mac: "00:04:F2:AA:BB:CC".into(),
        label: label.into(),
        ..Default::default()
    };
    let acme_phone = a
        .directory
        .add_phone(add("acme", "basic", "acme desk"))
        .await
        .unwrap()
        .into_inner();
    // globex learns nothing and takes nothing from acme.
    let globex_phone = a
        .directory
        .add_phone(add("globex", "g1", "globex desk"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acme_phone.mac, globex_phone.mac);
    assert_code(
        a.directory.add_phone(add("acme", "kim", "again")).await,
        Code::AlreadyExists,
    );
    let get = |d: &str| v1::GetPhoneRequest {
        domain: d.into(),
        mac: "0004f2aabbcc".into(),
    };
    let got = a
        .directory
        .get_phone(get("acme"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (got.user.as_str(), got.label.as_str()),
        ("basic", "acme desk")
    );
    let got = a
        .directory
        .get_phone(get("globex"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (got.user.as_str(), got.label.as_str()),
        ("g1", "globex desk")
    );
    // Each tenant's phone token stands for its own phone only.
    let t = presence_tests::phone_token(&mut a, "globex", "0004f2aabbcc").await;
    let mut phone = sb.client(Some(&t)).await;
    let who = phone
        .auth
        .who_am_i(v1::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    match who.principal.and_then(|p| p.kind) {
        Some(v1::principal::Kind::Phone(p)) => {
            assert_eq!((p.domain.as_str(), p.user.as_str()), ("globex", "g1"))
        }
        other => panic!("{other:?}"),
    }
    // Deleting globex's phone leaves acme's.
    a.directory
        .delete_phone(v1::DeletePhoneRequest {
            domain: "globex".into(),
            mac: "0004f2aabbcc".into(),
            expected_version: 0,
        })
        .await
        .unwrap();
    a.directory.get_phone(get("acme")).await.unwrap();
}

#[tokio::test]
async fn test_malformed_page_tokens_are_invalid_argument() {
    let sb = Sandbox::start().await;
    world(&sb).await;
    let mut a = sb.admin.clone();
    let huge = "a".repeat(1 << 20);
    for token in ["\u{0}", "../etc", "acme\u{0}x", huge.as_str()] {
        let t = || token.to_string();
        assert_code(
            a.directory
                .list_domains(v1::ListDomainsRequest {
                    page_size: 0,
                    page_token: t(),
                })
                .await,
            Code::InvalidArgument,
        );
        assert_code(
            a.directory
                .list_sites(v1::ListSitesRequest {
                    domain: "acme".into(),
                    page_size: 0,
                    page_token: t(),
                })
                .await,
            Code::InvalidArgument,
        );
        assert_code(
            a.directory
                .list_users(v1::ListUsersRequest {
                    domain: "acme".into(),
                    page_token: t(),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
        );
        assert_code(
            a.policy
                .list_watchers(v1::ListWatchersRequest {
                    domain: "acme".into(),
                    target: "basic".into(),
                    page_size: 0,
                    page_token: t(),
                })
                .await,
            Code::InvalidArgument,
        );
        assert_code(
            a.policy
                .list_monitorable(v1::ListMonitorableRequest {
                    domain: "acme".into(),
                    watcher: "basic".into(),
                    page_size: 0,
                    page_token: t(),
                })
                .await,
            Code::InvalidArgument,
        );
    }
    // A token a previous page returned is taken.
    let first = a
        .directory
        .list_domains(v1::ListDomainsRequest {
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.domains[0].id, "acme");
    let next = a
        .directory
        .list_domains(v1::ListDomainsRequest {
            page_size: 1,
            page_token: first.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.domains[0].id, "globex");
}

#[tokio::test]
async fn test_dns_names_are_unique_across_domains() {
    let sb = Sandbox::start().await;
    world(&sb).await;
    let mut a = sb.admin.clone();
    let r = a
        .directory
        .create_domain(v1::CreateDomainRequest {
            id: "copycat".into(),
            name: "Copy".into(),
            dns_name: "ACME.pbx.example.com.".into(),
        })
        .await;
    assert_code(r, Code::AlreadyExists);
    let r = a
        .directory
        .update_domain(v1::UpdateDomainRequest {
            id: "globex".into(),
            dns_name: Some("acme.pbx.example.com".into()),
            ..Default::default()
        })
        .await;
    assert_code(r, Code::AlreadyExists);
    // Setting a domain's own name again is no conflict.
    a.directory
        .update_domain(v1::UpdateDomainRequest {
            id: "acme".into(),
            dns_name: Some("acme.pbx.example.com".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_code(
        a.directory
            .get_domain(v1::GetDomainRequest {
                id: "copycat".into(),
            })
            .await,
        Code::NotFound,
    );
}

#[tokio::test]
async fn test_a_message_over_the_size_limit_is_resource_exhausted() {
    let sb = Sandbox::start().await;
    world(&sb).await;
    let mut a = sb.admin.clone();
    let r = a
        .directory
        .list_users(v1::ListUsersRequest {
            domain: "acme".into(),
            search: "x".repeat(5 << 20),
            ..Default::default()
        })
        .await;
    let m = assert_code(r, Code::ResourceExhausted);
    assert!(m.contains("too large"), "{m}");
    // The connection still serves.
    assert_eq!(search(&mut a, "kim").await, vec!["kim".to_string()]);
}
