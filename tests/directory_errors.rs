//! Every bad-input class gets its documented gRPC code and changes
//! nothing.

#![allow(clippy::unwrap_used)]

use presence_client::PresenceClient;
use presence_proto::v1::{self, Scope, UserKind};
use presence_tests::{NewUser, Sandbox, assert_code, domain, req_user, site, user};
use tonic::Code;

async fn setup() -> (Sandbox, PresenceClient) {
    let sb = Sandbox::start().await;
    let mut c = sb.admin.clone();
    domain(&mut c, "acme").await;
    domain(&mut c, "globex").await;
    site(&mut c, "acme", "hq").await;
    user(
        &mut c,
        "acme",
        "1001",
        NewUser {
            first: "Jack",
            scope: Some(Scope::CallCenterAgent),
            site: "hq",
            ..Default::default()
        },
    )
    .await;
    user(
        &mut c,
        "acme",
        "q1",
        NewUser {
            kind: Some(UserKind::CallQueue),
            ..Default::default()
        },
    )
    .await;
    user(&mut c, "globex", "2001", NewUser::default()).await;
    c.directory
        .add_phone(v1::AddPhoneRequest {
            domain: "acme".into(),
            user: "1001".into(),
            mac: "00:04:f2:aa:bb:cc".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    (sb, c)
}

type Snapshot = (
    v1::User,
    v1::UserOptions,
    v1::Phone,
    v1::Site,
    Vec<v1::User>,
    v1::Queue,
);

async fn snapshot(c: &mut PresenceClient) -> Snapshot {
    let d = || "acme".to_string();
    let u = c
        .directory
        .get_user(v1::GetUserRequest {
            domain: d(),
            id: "1001".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let o = c
        .directory
        .get_user_options(v1::GetUserOptionsRequest {
            domain: d(),
            user: "1001".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let p = c
        .directory
        .get_phone(v1::GetPhoneRequest {
            domain: d(),
            mac: "0004f2aabbcc".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let s = c
        .directory
        .get_site(v1::GetSiteRequest {
            domain: d(),
            id: "hq".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let all = c
        .directory
        .list_users(v1::ListUsersRequest {
            domain: d(),
            hide_system_users: Some(false),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .users;
    let q = c
        .directory
        .get_queue(v1::GetQueueRequest {
            domain: d(),
            id: "q1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    (u, o, p, s, all, q)
}

fn rules_req(
    user: &str,
    rules: Vec<v1::AnsweringRule>,
    version: u64,
) -> v1::SetAnsweringRulesRequest {
    v1::SetAnsweringRulesRequest {
        domain: "acme".into(),
        user: user.into(),
        answering_rules: rules,
        expected_version: version,
    }
}

fn members(agents: &[&str], supervisors: &[&str], version: u64) -> v1::SetQueueMembersRequest {
    v1::SetQueueMembersRequest {
        domain: "acme".into(),
        id: "q1".into(),
        expected_version: version,
        agents: agents.iter().map(|s| s.to_string()).collect(),
        supervisors: supervisors.iter().map(|s| s.to_string()).collect(),
    }
}

fn phone(d: &str, u: &str, mac: &str, keys: Vec<v1::LineKey>) -> v1::AddPhoneRequest {
    v1::AddPhoneRequest {
        domain: d.into(),
        user: u.into(),
        mac: mac.into(),
        line_keys: keys,
        ..Default::default()
    }
}

fn voicemail(user: &str) -> v1::UpdateVoicemailRequest {
    v1::UpdateVoicemailRequest {
        domain: "acme".into(),
        user: user.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn test_malformed_ids_are_invalid_argument() {
    let (_sb, mut c) = setup().await;
    let before = snapshot(&mut c).await;
    for bad in [
        "Acme",
        "ac.me",
        "ac me",
        "*",
        ">",
        "",
        "-x",
        &"a".repeat(64),
    ] {
        let m = assert_code(
            c.directory
                .create_domain(v1::CreateDomainRequest {
                    id: bad.into(),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
        );
        assert!(m.contains("invalid domain id"), "{m}");
        assert_code(
            c.directory
                .get_domain(v1::GetDomainRequest { id: bad.into() })
                .await,
            Code::InvalidArgument,
        );
    }
    for bad in ["10.01", "a b", "x>", "", "é", &"1".repeat(65)] {
        let m = assert_code(
            c.directory
                .create_user(req_user("acme", bad, NewUser::default()))
                .await,
            Code::InvalidArgument,
        );
        assert!(m.contains("invalid user id"), "{m}");
        assert_code(
            c.directory
                .get_user(v1::GetUserRequest {
                    domain: "acme".into(),
                    id: bad.into(),
                })
                .await,
            Code::InvalidArgument,
        );
        assert_code(
            c.directory
                .create_site(v1::CreateSiteRequest {
                    domain: "acme".into(),
                    id: bad.into(),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
        );
    }
    let mut r = req_user("acme", "1999", NewUser::default());
    r.scope = 42;
    assert_code(c.directory.create_user(r).await, Code::InvalidArgument);
    let mut r = req_user("acme", "1999", NewUser::default());
    r.kind = 42;
    assert_code(c.directory.create_user(r).await, Code::InvalidArgument);
    let m = assert_code(
        c.directory
            .create_user(req_user(
                "acme",
                "1999",
                NewUser {
                    email: "not-an-email",
                    ..Default::default()
                },
            ))
            .await,
        Code::InvalidArgument,
    );
    assert!(m.contains("invalid email"), "{m}");
    assert_code(
        c.directory
            .create_user(req_user(
                "acme",
                "1999",
                NewUser {
                    site: "h q",
                    ..Default::default()
                },
            ))
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        c.directory
            .create_user(req_user(
                "acme",
                "1999",
                NewUser {
                    password: Some("short"),
                    ..Default::default()
                },
            ))
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        c.directory
            .list_users(v1::ListUsersRequest {
                domain: "acme".into(),
                page_token: "not a token".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(snapshot(&mut c).await, before, "nothing changed");
}

#[tokio::test]
async fn test_bad_and_duplicate_macs() {
    let (_sb, mut c) = setup().await;
    let before = snapshot(&mut c).await;
    for bad in [
        "",
        "00:04:f2:aa:bb",
        "00:04:f2:aa:bb:cc:dd",
        "00:04:f2:aa:bb:zz",
        "00-04:f2-aa:bb-cc",
        "000000000000",
        "ff:ff:ff:ff:ff:ff",
    ] {
        let m = assert_code(
            c.directory
                .add_phone(phone("acme", "1001", bad, vec![]))
                .await,
            Code::InvalidArgument,
        );
        assert!(m.contains("invalid mac"), "{m}");
    }
    // The same device in another spelling, in the same domain. (MACs are
    // unique per domain: another domain's is answered like a free one,
    // see security_probe.rs.)
    for (d, u, mac) in [
        ("acme", "1001", "0004F2AABBCC"),
        ("acme", "1001", "0004.f2aa.bbcc"),
    ] {
        let m = assert_code(
            c.directory.add_phone(phone(d, u, mac, vec![])).await,
            Code::AlreadyExists,
        );
        assert!(m.contains("0004f2aabbcc"), "{m}");
    }
    let key = |index, kind: &str, value: &str| v1::LineKey {
        index,
        kind: kind.into(),
        value: value.into(),
        label: String::new(),
    };
    for keys in [
        vec![key(0, "line", "1001")],
        vec![key(1, "line", "1001"), key(1, "blf", "1002")],
        vec![key(1, "laser", "x")],
        vec![key(1, "blf", "a.b")],
        (1..=257).map(|i| key(i, "line", "1001")).collect(),
    ] {
        assert_code(
            c.directory
                .add_phone(phone("acme", "1001", "0004f2000009", keys))
                .await,
            Code::InvalidArgument,
        );
    }
    // A phone of another domain is "not found" from this one.
    assert_code(
        c.directory
            .get_phone(v1::GetPhoneRequest {
                domain: "globex".into(),
                mac: "0004f2aabbcc".into(),
            })
            .await,
        Code::NotFound,
    );
    assert_eq!(snapshot(&mut c).await, before);
}

#[tokio::test]
async fn test_unknown_ids_are_not_found() {
    let (_sb, mut c) = setup().await;
    let before = snapshot(&mut c).await;
    let m = assert_code(
        c.directory
            .get_domain(v1::GetDomainRequest {
                id: "nosuch".into(),
            })
            .await,
        Code::NotFound,
    );
    assert_eq!(m, "domain nosuch not found");
    assert_code(
        c.directory
            .get_user(v1::GetUserRequest {
                domain: "acme".into(),
                id: "9999".into(),
            })
            .await,
        Code::NotFound,
    );
    assert_code(
        c.directory
            .get_user(v1::GetUserRequest {
                domain: "nosuch".into(),
                id: "1001".into(),
            })
            .await,
        Code::NotFound,
    );
    assert_code(
        c.directory
            .create_user(req_user("nosuch", "1", NewUser::default()))
            .await,
        Code::NotFound,
    );
    let m = assert_code(
        c.directory
            .create_user(req_user(
                "acme",
                "1998",
                NewUser {
                    site: "nosite",
                    ..Default::default()
                },
            ))
            .await,
        Code::NotFound,
    );
    assert!(m.contains("site nosite"), "{m}");
    assert_code(
        c.directory
            .add_phone(phone("acme", "9999", "0004f2000001", vec![]))
            .await,
        Code::NotFound,
    );
    assert_code(
        c.directory
            .delete_user(v1::DeleteUserRequest {
                domain: "acme".into(),
                id: "9999".into(),
                expected_version: 0,
            })
            .await,
        Code::NotFound,
    );
    assert_code(
        c.directory
            .get_queue(v1::GetQueueRequest {
                domain: "acme".into(),
                id: "1001".into(),
            })
            .await,
        Code::NotFound,
    );
    assert_code(
        c.directory
            .set_queue_members(members(&["9999"], &[], 0))
            .await,
        Code::NotFound,
    );
    let rule = v1::AnsweringRule {
        condition: v1::RuleCondition::Busy as i32,
        forward_to: Some(v1::ForwardTarget {
            target: Some(v1::forward_target::Target::User("9999".into())),
        }),
        ..Default::default()
    };
    assert_code(
        c.directory
            .set_answering_rules(rules_req("1001", vec![rule], 0))
            .await,
        Code::NotFound,
    );
    assert_eq!(snapshot(&mut c).await, before);
}

#[tokio::test]
async fn test_duplicates_are_already_exists() {
    let (_sb, mut c) = setup().await;
    let before = snapshot(&mut c).await;
    assert_code(
        c.directory
            .create_domain(v1::CreateDomainRequest {
                id: "acme".into(),
                ..Default::default()
            })
            .await,
        Code::AlreadyExists,
    );
    assert_code(
        c.directory
            .create_site(v1::CreateSiteRequest {
                domain: "acme".into(),
                id: "hq".into(),
                ..Default::default()
            })
            .await,
        Code::AlreadyExists,
    );
    let m = assert_code(
        c.directory
            .create_user(req_user(
                "acme",
                "1001",
                NewUser {
                    first: "Other",
                    ..Default::default()
                },
            ))
            .await,
        Code::AlreadyExists,
    );
    assert_eq!(m, "user 1001 already exists in domain acme");
    assert_eq!(
        snapshot(&mut c).await,
        before,
        "the existing user was not overwritten"
    );
}

#[tokio::test]
async fn test_stale_versions_are_aborted() {
    let (_sb, mut c) = setup().await;
    let before = snapshot(&mut c).await;
    let (u, o, p, s, _, q) = before.clone();
    let rename = |v| v1::UpdateUserRequest {
        domain: "acme".into(),
        id: "1001".into(),
        expected_version: v,
        profile: Some(v1::ProfileUpdate {
            first_name: Some("Changed".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let m = assert_code(
        c.directory.update_user(rename(u.version + 5)).await,
        Code::Aborted,
    );
    assert!(m.contains("stale version"), "{m}");
    assert_code(
        c.directory
            .delete_user(v1::DeleteUserRequest {
                domain: "acme".into(),
                id: "1001".into(),
                expected_version: u.version + 1,
            })
            .await,
        Code::Aborted,
    );
    assert_code(
        c.directory
            .set_answering_rules(rules_req("1001", vec![], o.version + 1))
            .await,
        Code::Aborted,
    );
    assert_code(
        c.directory
            .update_voicemail(v1::UpdateVoicemailRequest {
                expected_version: o.version + 1,
                pin: Some("1234".into()),
                ..voicemail("1001")
            })
            .await,
        Code::Aborted,
    );
    assert_code(
        c.directory
            .update_phone(v1::UpdatePhoneRequest {
                domain: "acme".into(),
                mac: p.mac.clone(),
                expected_version: p.version + 1,
                label: Some("x".into()),
                ..Default::default()
            })
            .await,
        Code::Aborted,
    );
    assert_code(
        c.directory
            .delete_phone(v1::DeletePhoneRequest {
                domain: "acme".into(),
                mac: p.mac.clone(),
                expected_version: p.version + 1,
            })
            .await,
        Code::Aborted,
    );
    assert_code(
        c.directory
            .update_site(v1::UpdateSiteRequest {
                domain: "acme".into(),
                id: "hq".into(),
                expected_version: s.version + 1,
                name: Some("x".into()),
                ..Default::default()
            })
            .await,
        Code::Aborted,
    );
    assert_code(
        c.directory
            .update_domain(v1::UpdateDomainRequest {
                id: "acme".into(),
                expected_version: 99,
                name: Some("x".into()),
                dns_name: None,
            })
            .await,
        Code::Aborted,
    );
    assert_code(
        c.directory
            .set_queue_members(members(&[], &[], q.version + 1))
            .await,
        Code::Aborted,
    );
    assert_eq!(snapshot(&mut c).await, before);
    c.directory.update_user(rename(u.version)).await.unwrap();
}

#[tokio::test]
async fn test_oversized_fields_and_lists() {
    let (_sb, mut c) = setup().await;
    let before = snapshot(&mut c).await;
    let long = "x".repeat(129);
    let m = assert_code(
        c.directory
            .create_user(req_user(
                "acme",
                "1997",
                NewUser {
                    first: &long,
                    ..Default::default()
                },
            ))
            .await,
        Code::InvalidArgument,
    );
    assert!(m.contains("first_name is too long"), "{m}");
    assert_code(
        c.directory
            .create_domain(v1::CreateDomainRequest {
                id: "big".into(),
                name: long.clone(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        c.directory
            .create_domain(v1::CreateDomainRequest {
                id: "big".into(),
                dns_name: "bad dns".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        c.directory
            .update_voicemail(v1::UpdateVoicemailRequest {
                greeting: Some("g".repeat(1025)),
                ..voicemail("1001")
            })
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        c.directory
            .create_user(req_user(
                "acme",
                "1997",
                NewUser {
                    first: "a\u{7}b",
                    ..Default::default()
                },
            ))
            .await,
        Code::InvalidArgument,
    );
    let rules: Vec<v1::AnsweringRule> = (0..33)
        .map(|_| v1::AnsweringRule {
            condition: v1::RuleCondition::Always as i32,
            forward_to: Some(v1::ForwardTarget {
                target: Some(v1::forward_target::Target::Voicemail(true)),
            }),
            ..Default::default()
        })
        .collect();
    assert_code(
        c.directory
            .set_answering_rules(rules_req("1001", rules, 0))
            .await,
        Code::InvalidArgument,
    );
    let agents: Vec<String> = (0..2001).map(|i| format!("a{i}")).collect();
    let refs: Vec<&str> = agents.iter().map(String::as_str).collect();
    assert_code(
        c.directory.set_queue_members(members(&refs, &[], 0)).await,
        Code::InvalidArgument,
    );
    assert_eq!(snapshot(&mut c).await, before);
}

#[tokio::test]
async fn test_bad_options_and_preconditions() {
    let (_sb, mut c) = setup().await;
    user(
        &mut c,
        "acme",
        "1002",
        NewUser {
            scope: Some(Scope::SimpleUser),
            site: "hq",
            ..Default::default()
        },
    )
    .await;
    let before = snapshot(&mut c).await;
    use v1::forward_target::Target;
    let rule = |cond: i32, t: Option<Target>, secs| v1::AnsweringRule {
        condition: cond,
        forward_to: t.map(|t| v1::ForwardTarget { target: Some(t) }),
        ring_timeout_seconds: secs,
        enabled: true,
    };
    for r in [
        rule(0, Some(Target::Voicemail(true)), 0),
        rule(1, None, 0),
        rule(1, Some(Target::Voicemail(false)), 0),
        rule(1, Some(Target::ExternalNumber("call me".into())), 0),
        rule(1, Some(Target::Voicemail(true)), 3),
        rule(1, Some(Target::Voicemail(true)), 301),
        rule(1, Some(Target::User("1001".into())), 0),
    ] {
        assert_code(
            c.directory
                .set_answering_rules(rules_req("1001", vec![r], 0))
                .await,
            Code::InvalidArgument,
        );
    }
    for pin in ["12", "12ab", "1234567890123"] {
        assert_code(
            c.directory
                .update_voicemail(v1::UpdateVoicemailRequest {
                    pin: Some(pin.into()),
                    ..voicemail("1001")
                })
                .await,
            Code::InvalidArgument,
        );
    }
    // Simple users have no voicemail, cannot be agents, get no welcome.
    assert_code(
        c.directory
            .update_voicemail(v1::UpdateVoicemailRequest {
                enabled: Some(true),
                ..voicemail("1002")
            })
            .await,
        Code::FailedPrecondition,
    );
    assert_code(
        c.directory
            .set_queue_members(members(&["1002"], &[], 0))
            .await,
        Code::FailedPrecondition,
    );
    assert_code(
        c.directory
            .set_queue_members(members(&[], &["1001"], 0))
            .await,
        Code::FailedPrecondition,
    );
    assert_code(
        c.directory
            .send_welcome(v1::SendWelcomeRequest {
                domain: "acme".into(),
                user: "1002".into(),
                ttl_seconds: 0,
            })
            .await,
        Code::FailedPrecondition,
    );
    assert_code(
        c.directory
            .set_queue_members(members(&["1001", "1001"], &[], 0))
            .await,
        Code::InvalidArgument,
    );
    // A site with users cannot go; an agent not in the queue cannot log in.
    assert_code(
        c.directory
            .delete_site(v1::DeleteSiteRequest {
                domain: "acme".into(),
                id: "hq".into(),
                expected_version: 0,
            })
            .await,
        Code::FailedPrecondition,
    );
    assert_code(
        c.directory
            .set_queue_login(v1::SetQueueLoginRequest {
                domain: "acme".into(),
                id: "q1".into(),
                agent: "1001".into(),
                logged_in: true,
            })
            .await,
        Code::FailedPrecondition,
    );
    assert_eq!(snapshot(&mut c).await, before);
    // A queue member cannot drop below agent scope.
    c.directory
        .set_queue_members(members(&["1001"], &[], 0))
        .await
        .unwrap();
    let u = c
        .directory
        .get_user(v1::GetUserRequest {
            domain: "acme".into(),
            id: "1001".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_code(
        c.directory
            .update_user(v1::UpdateUserRequest {
                domain: "acme".into(),
                id: "1001".into(),
                scope: Some(Scope::BasicUser as i32),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
    );
    let u2 = c
        .directory
        .get_user(v1::GetUserRequest {
            domain: "acme".into(),
            id: "1001".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(u, u2);
}
