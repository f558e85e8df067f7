//! Full CRUD of every directory entity over real gRPC on loopback, plus
//! search, filters, paging, hide-system-users and delete cascades.

#![allow(clippy::unwrap_used)]

use presence_proto::v1::{self, Scope, UserKind};
use presence_tests::{NewUser, Sandbox, assert_code, domain, site, user};
use tonic::Code;

#[tokio::test]
async fn test_domain_and_site_crud() {
    let sb = Sandbox::start().await;
    let mut c = sb.admin.clone();
    let d = domain(&mut c, "acme").await;
    assert_eq!((d.id.as_str(), d.version), ("acme", 1));
    assert_eq!(d.dns_name, "acme.pbx.example.com");
    let got = c
        .directory
        .get_domain(v1::GetDomainRequest { id: "acme".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, d);
    domain(&mut c, "globex").await;
    let list = c
        .directory
        .list_domains(v1::ListDomainsRequest {
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.domains.len(), 1);
    assert_eq!(list.domains[0].id, "acme");
    assert_eq!(list.next_page_token, "acme");
    let list2 = c
        .directory
        .list_domains(v1::ListDomainsRequest {
            page_size: 1,
            page_token: list.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list2.domains[0].id, "globex");
    assert!(list2.next_page_token.is_empty());
    let up = c
        .directory
        .update_domain(v1::UpdateDomainRequest {
            id: "acme".into(),
            expected_version: 1,
            name: Some("Acme Corp".into()),
            dns_name: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((up.name.as_str(), up.version), ("Acme Corp", 2));
    assert_eq!(up.dns_name, d.dns_name);

    let s = site(&mut c, "acme", "hq").await;
    assert_eq!(s.version, 1);
    site(&mut c, "acme", "branch").await;
    let sites = c
        .directory
        .list_sites(v1::ListSitesRequest {
            domain: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        sites
            .sites
            .iter()
            .map(|s| s.id.as_str())
            .collect::<Vec<_>>(),
        vec!["branch", "hq"]
    );
    let s2 = c
        .directory
        .update_site(v1::UpdateSiteRequest {
            domain: "acme".into(),
            id: "hq".into(),
            expected_version: 1,
            address: Some("1 Main St".into()),
            time_zone: Some("Europe/Paris".into()),
            name: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (s2.address.as_str(), s2.time_zone.as_str(), s2.version),
        ("1 Main St", "Europe/Paris", 2)
    );
    c.directory
        .delete_site(v1::DeleteSiteRequest {
            domain: "acme".into(),
            id: "branch".into(),
            expected_version: 1,
        })
        .await
        .unwrap();
    assert_code(
        c.directory
            .get_site(v1::GetSiteRequest {
                domain: "acme".into(),
                id: "branch".into(),
            })
            .await,
        Code::NotFound,
    );

    // A domain with content needs force; force removes everything.
    user(
        &mut c,
        "globex",
        "100",
        NewUser {
            first: "G",
            ..Default::default()
        },
    )
    .await;
    c.directory
        .add_phone(v1::AddPhoneRequest {
            domain: "globex".into(),
            user: "100".into(),
            mac: "00:11:22:33:44:55".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_code(
        c.directory
            .delete_domain(v1::DeleteDomainRequest {
                id: "globex".into(),
                expected_version: 0,
                force: false,
            })
            .await,
        Code::FailedPrecondition,
    );
    c.directory
        .delete_domain(v1::DeleteDomainRequest {
            id: "globex".into(),
            expected_version: 0,
            force: true,
        })
        .await
        .unwrap();
    assert_code(
        c.directory
            .get_domain(v1::GetDomainRequest {
                id: "globex".into(),
            })
            .await,
        Code::NotFound,
    );
    // The MAC is free again for another domain.
    user(&mut c, "acme", "1001", NewUser::default()).await;
    c.directory
        .add_phone(v1::AddPhoneRequest {
            domain: "acme".into(),
            user: "1001".into(),
            mac: "001122334455".into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn seed_users(c: &mut presence_client::PresenceClient) {
    domain(c, "acme").await;
    site(c, "acme", "hq").await;
    site(c, "acme", "branch").await;
    let people = [
        (
            "1001",
            "Jack",
            "Manning",
            "jack.manning@acme.com",
            "Sales",
            Scope::OfficeManager,
            "hq",
        ),
        (
            "1002",
            "Jill",
            "Manning",
            "jill@acme.com",
            "Support",
            Scope::BasicUser,
            "hq",
        ),
        (
            "1003",
            "Bob",
            "Stone",
            "bob@acme.com",
            "sales",
            Scope::CallCenterAgent,
            "branch",
        ),
        (
            "1004",
            "Alice",
            "Jackson",
            "alice@acme.com",
            "Support",
            Scope::CallCenterAgent,
            "branch",
        ),
        (
            "1005",
            "Zoë",
            "Ångström",
            "zoe@acme.com",
            "R&D",
            Scope::SimpleUser,
            "",
        ),
    ];
    for (id, first, last, email, dept, scope, site) in people {
        user(
            c,
            "acme",
            id,
            NewUser {
                first,
                last,
                email,
                department: dept,
                scope: Some(scope),
                site,
                ..Default::default()
            },
        )
        .await;
    }
    for (id, kind) in [
        ("8000", UserKind::ConferenceBridge),
        ("8001", UserKind::AutoAttendant),
        ("8002", UserKind::CallQueue),
    ] {
        user(
            c,
            "acme",
            id,
            NewUser {
                first: "System",
                last: id,
                kind: Some(kind),
                site: "hq",
                ..Default::default()
            },
        )
        .await;
    }
}

async fn ids(
    c: &mut presence_client::PresenceClient,
    req: v1::ListUsersRequest,
) -> (Vec<String>, String) {
    let r = c.directory.list_users(req).await.unwrap().into_inner();
    (
        r.users.into_iter().map(|u| u.id).collect(),
        r.next_page_token,
    )
}

fn list(search: &str) -> v1::ListUsersRequest {
    v1::ListUsersRequest {
        domain: "acme".into(),
        search: search.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn test_user_search_filters_paging_and_system_users() {
    let sb = Sandbox::start().await;
    let mut c = sb.admin.clone();
    seed_users(&mut c).await;

    // hide_system_users defaults to true.
    assert_eq!(
        ids(&mut c, list("")).await.0,
        vec!["1001", "1002", "1003", "1004", "1005"]
    );
    let all = v1::ListUsersRequest {
        hide_system_users: Some(false),
        ..list("")
    };
    assert_eq!(ids(&mut c, all.clone()).await.0.len(), 8);
    assert_eq!(
        ids(
            &mut c,
            v1::ListUsersRequest {
                kind: UserKind::CallQueue as i32,
                hide_system_users: Some(false),
                ..list("")
            }
        )
        .await
        .0,
        vec!["8002"]
    );
    // Asking for a system kind while hiding system users returns nothing.
    assert!(
        ids(
            &mut c,
            v1::ListUsersRequest {
                kind: UserKind::CallQueue as i32,
                ..list("")
            }
        )
        .await
        .0
        .is_empty()
    );

    // Case-insensitive word-prefix search over names, e-mail, extension.
    assert_eq!(ids(&mut c, list("manning")).await.0, vec!["1001", "1002"]);
    assert_eq!(ids(&mut c, list("JACK")).await.0, vec!["1001", "1004"]);
    assert_eq!(ids(&mut c, list("jack man")).await.0, vec!["1001"]);
    assert_eq!(ids(&mut c, list("jack.manning@")).await.0, vec!["1001"]);
    assert_eq!(
        ids(&mut c, list("100")).await.0,
        vec!["1001", "1002", "1003", "1004", "1005"]
    );
    assert_eq!(ids(&mut c, list("1003")).await.0, vec!["1003"]);
    assert_eq!(ids(&mut c, list("ångs")).await.0, vec!["1005"]);
    assert_eq!(ids(&mut c, list("zoë")).await.0, vec!["1005"]);
    assert!(ids(&mut c, list("nobody")).await.0.is_empty());
    assert_eq!(
        ids(
            &mut c,
            v1::ListUsersRequest {
                hide_system_users: Some(false),
                ..list("system")
            }
        )
        .await
        .0
        .len(),
        3
    );

    // Filters, alone and combined with search.
    assert_eq!(
        ids(
            &mut c,
            v1::ListUsersRequest {
                scope: Scope::CallCenterAgent as i32,
                ..list("")
            }
        )
        .await
        .0,
        vec!["1003", "1004"]
    );
    assert_eq!(
        ids(
            &mut c,
            v1::ListUsersRequest {
                site: "branch".into(),
                ..list("")
            }
        )
        .await
        .0,
        vec!["1003", "1004"]
    );
    assert_eq!(
        ids(
            &mut c,
            v1::ListUsersRequest {
                department: "SALES".into(),
                ..list("")
            }
        )
        .await
        .0,
        vec!["1001", "1003"]
    );
    assert_eq!(
        ids(
            &mut c,
            v1::ListUsersRequest {
                site: "hq".into(),
                ..list("manning")
            }
        )
        .await
        .0,
        vec!["1001", "1002"]
    );
    assert_eq!(
        ids(
            &mut c,
            v1::ListUsersRequest {
                department: "support".into(),
                ..list("al")
            }
        )
        .await
        .0,
        vec!["1004"]
    );

    // Paging: stable order, no duplicates, no gaps, both with and without search.
    for search in ["", "1"] {
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let (page, next) = ids(
                &mut c,
                v1::ListUsersRequest {
                    page_size: 2,
                    page_token: token.clone(),
                    hide_system_users: Some(false),
                    ..list(search)
                },
            )
            .await;
            assert!(page.len() <= 2);
            seen.extend(page);
            if next.is_empty() {
                break;
            }
            token = next;
        }
        let expected: Vec<String> = if search.is_empty() {
            [
                "1001", "1002", "1003", "1004", "1005", "8000", "8001", "8002",
            ]
            .map(String::from)
            .to_vec()
        } else {
            ["1001", "1002", "1003", "1004", "1005"]
                .map(String::from)
                .to_vec()
        };
        assert_eq!(seen, expected, "search {search:?}");
    }

    // Renaming re-indexes: the old name no longer matches.
    c.directory
        .update_user(v1::UpdateUserRequest {
            domain: "acme".into(),
            id: "1002".into(),
            profile: Some(v1::ProfileUpdate {
                last_name: Some("Turner".into()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&mut c, list("manning")).await.0, vec!["1001"]);
    assert_eq!(ids(&mut c, list("turn")).await.0, vec!["1002"]);
}

#[tokio::test]
async fn test_user_update_options_phones_queues_and_delete_cascade() {
    let sb = Sandbox::start().await;
    let mut c = sb.admin.clone();
    seed_users(&mut c).await;
    let d = || "acme".to_string();

    // Update: profile, scope, site.
    let u = c
        .directory
        .update_user(v1::UpdateUserRequest {
            domain: d(),
            id: "1002".into(),
            expected_version: 1,
            scope: Some(Scope::CallCenterSupervisor as i32),
            site: Some("branch".into()),
            profile: Some(v1::ProfileUpdate {
                caller_id_name: Some("JILL M".into()),
                ..Default::default()
            }),
            password: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (u.scope, u.site.as_str(), u.version),
        (Scope::CallCenterSupervisor as i32, "branch", 2)
    );
    assert_eq!(u.profile.as_ref().unwrap().caller_id_name, "JILL M");
    assert_eq!(
        u.profile.as_ref().unwrap().first_name,
        "Jill",
        "unset fields keep their value"
    );

    // Options: defaults, answering rules, voicemail with PIN.
    let o = c
        .directory
        .get_user_options(v1::GetUserOptionsRequest {
            domain: d(),
            user: "1003".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(o.answering_rules.is_empty());
    assert!(
        o.voicemail.as_ref().unwrap().enabled,
        "agents have voicemail"
    );
    assert_eq!(
        o.voicemail.as_ref().unwrap().notification_email,
        "bob@acme.com"
    );
    let rule = |cond: v1::RuleCondition, t: v1::forward_target::Target, secs| v1::AnsweringRule {
        condition: cond as i32,
        forward_to: Some(v1::ForwardTarget { target: Some(t) }),
        ring_timeout_seconds: secs,
        enabled: true,
    };
    use v1::forward_target::Target;
    let o = c
        .directory
        .set_answering_rules(v1::SetAnsweringRulesRequest {
            domain: d(),
            user: "1003".into(),
            expected_version: o.version,
            answering_rules: vec![
                rule(v1::RuleCondition::Busy, Target::User("1004".into()), 0),
                rule(v1::RuleCondition::NoAnswer, Target::Voicemail(true), 30),
                rule(
                    v1::RuleCondition::Unregistered,
                    Target::ExternalNumber("+14155550100".into()),
                    15,
                ),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(o.answering_rules.len(), 3);
    assert_eq!(
        o.answering_rules[0].ring_timeout_seconds, 20,
        "default timeout"
    );
    assert_eq!(
        o.answering_rules[1].condition,
        v1::RuleCondition::NoAnswer as i32,
        "order kept"
    );
    let o = c
        .directory
        .update_voicemail(v1::UpdateVoicemailRequest {
            domain: d(),
            user: "1003".into(),
            expected_version: o.version,
            greeting: Some("Bob here".into()),
            pin: Some("4321".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let vm = o.voicemail.unwrap();
    assert!(vm.pin_set);
    assert_eq!(vm.greeting, "Bob here");

    // Phones: add with any MAC spelling, edit, move, list.
    let p = c
        .directory
        .add_phone(v1::AddPhoneRequest {
            domain: d(),
            user: "1004".into(),
            mac: "00-1A-2B-3C-4D-5E".into(),
            model: "Poly VVX 450".into(),
            label: "desk".into(),
            line_keys: vec![
                v1::LineKey {
                    index: 2,
                    kind: "blf".into(),
                    value: "1003".into(),
                    label: "Bob".into(),
                },
                v1::LineKey {
                    index: 1,
                    kind: "line".into(),
                    value: "1004".into(),
                    label: "me".into(),
                },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.mac, "001a2b3c4d5e");
    assert_eq!(
        p.line_keys.iter().map(|k| k.index).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let p = c
        .directory
        .update_phone(v1::UpdatePhoneRequest {
            domain: d(),
            mac: "001a.2b3c.4d5e".into(),
            expected_version: 1,
            label: Some("reception".into()),
            user: Some("1003".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            p.user.as_str(),
            p.label.as_str(),
            p.version,
            p.line_keys.len()
        ),
        ("1003", "reception", 2, 2)
    );
    c.directory
        .add_phone(v1::AddPhoneRequest {
            domain: d(),
            user: "1003".into(),
            mac: "aa:bb:cc:00:00:01".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let ph = c
        .directory
        .list_phones(v1::ListPhonesRequest {
            domain: d(),
            user: "1003".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ph.phones.iter().map(|p| p.mac.as_str()).collect::<Vec<_>>(),
        vec!["001a2b3c4d5e", "aabbcc000001"]
    );
    let ph4 = c
        .directory
        .list_phones(v1::ListPhonesRequest {
            domain: d(),
            user: "1004".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ph4.phones.is_empty(), "moved away");
    let page = c
        .directory
        .list_phones(v1::ListPhonesRequest {
            domain: d(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.phones.len(), 1);
    let page2 = c
        .directory
        .list_phones(v1::ListPhonesRequest {
            domain: d(),
            page_size: 1,
            page_token: page.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page2.phones[0].mac, "aabbcc000001");
    c.directory
        .delete_phone(v1::DeletePhoneRequest {
            domain: d(),
            mac: "aabbcc000001".into(),
            expected_version: 0,
        })
        .await
        .unwrap();
    assert_code(
        c.directory
            .get_phone(v1::GetPhoneRequest {
                domain: d(),
                mac: "aabbcc000001".into(),
            })
            .await,
        Code::NotFound,
    );

    // Queues: members and logins.
    let q = c
        .directory
        .set_queue_members(v1::SetQueueMembersRequest {
            domain: d(),
            id: "8002".into(),
            expected_version: 1,
            agents: vec!["1003".into(), "1004".into()],
            supervisors: vec!["1002".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(q.agents.len(), 2);
    let q = c
        .directory
        .set_queue_login(v1::SetQueueLoginRequest {
            domain: d(),
            id: "8002".into(),
            agent: "1003".into(),
            logged_in: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(q.agents.iter().any(|a| a.user == "1003" && a.logged_in));
    // Re-setting members keeps the login of an agent that stays.
    let q = c
        .directory
        .set_queue_members(v1::SetQueueMembersRequest {
            domain: d(),
            id: "8002".into(),
            expected_version: q.version,
            agents: vec!["1003".into(), "1004".into()],
            supervisors: vec!["1002".into(), "1001".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(q.agents.iter().any(|a| a.user == "1003" && a.logged_in));
    let mine = c
        .directory
        .list_queues(v1::ListQueuesRequest {
            domain: d(),
            member: "1001".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mine.queues.len(), 1);

    // Deleting 1004 removes its queue membership and the rule of 1003
    // that forwarded to it, atomically.
    c.directory
        .delete_user(v1::DeleteUserRequest {
            domain: d(),
            id: "1004".into(),
            expected_version: 0,
        })
        .await
        .unwrap();
    let q = c
        .directory
        .get_queue(v1::GetQueueRequest {
            domain: d(),
            id: "8002".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        q.agents.iter().map(|a| a.user.as_str()).collect::<Vec<_>>(),
        vec!["1003"]
    );
    let o = c
        .directory
        .get_user_options(v1::GetUserOptionsRequest {
            domain: d(),
            user: "1003".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        o.answering_rules.len(),
        2,
        "rule forwarding to the deleted user is gone"
    );
    assert!(
        ids(&mut c, list("alice")).await.0.is_empty(),
        "search index cleaned"
    );
    // Deleting 1003 removes its phones (MAC free again).
    c.directory
        .delete_user(v1::DeleteUserRequest {
            domain: d(),
            id: "1003".into(),
            expected_version: 0,
        })
        .await
        .unwrap();
    assert_code(
        c.directory
            .get_phone(v1::GetPhoneRequest {
                domain: d(),
                mac: "001a2b3c4d5e".into(),
            })
            .await,
        Code::NotFound,
    );
    c.directory
        .add_phone(v1::AddPhoneRequest {
            domain: d(),
            user: "1001".into(),
            mac: "001a2b3c4d5e".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // Deleting the queue user removes the queue.
    c.directory
        .delete_user(v1::DeleteUserRequest {
            domain: d(),
            id: "8002".into(),
            expected_version: 0,
        })
        .await
        .unwrap();
    assert_code(
        c.directory
            .get_queue(v1::GetQueueRequest {
                domain: d(),
                id: "8002".into(),
            })
            .await,
        Code::NotFound,
    );
    assert_code(
        c.directory
            .get_user(v1::GetUserRequest {
                domain: d(),
                id: "8002".into(),
            })
            .await,
        Code::NotFound,
    );
}

#[tokio::test]
async fn test_restart_keeps_everything() {
    let sb = Sandbox::start().await;
    let mut c = sb.admin.clone();
    seed_users(&mut c).await;
    c.directory
        .add_phone(v1::AddPhoneRequest {
            domain: "acme".into(),
            user: "1001".into(),
            mac: "0004f2000001".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let before = ids(
        &mut c,
        v1::ListUsersRequest {
            hide_system_users: Some(false),
            ..list("")
        },
    )
    .await
    .0;
    let sb = sb.restart().await;
    let mut c = sb.client(Some(&sb_token(&sb))).await;
    let after = ids(
        &mut c,
        v1::ListUsersRequest {
            hide_system_users: Some(false),
            ..list("")
        },
    )
    .await
    .0;
    assert_eq!(before, after);
    assert_eq!(
        ids(&mut c, list("manning")).await.0,
        vec!["1001", "1002"],
        "index survives"
    );
    let p = c
        .directory
        .get_phone(v1::GetPhoneRequest {
            domain: "acme".into(),
            mac: "0004f2000001".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.user, "1001");
    sb.stop().await;
}

fn sb_token(sb: &Sandbox) -> String {
    sb.admin_token.clone()
}
