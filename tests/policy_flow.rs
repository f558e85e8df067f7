//! The policy service end to end over gRPC: the administrator's
//! Presence → Permissions flow, monitored lines, explanations, watcher
//! lists, cascades, and ACL events on a real nats-server.

#![allow(clippy::unwrap_used)]

use futures_util::StreamExt;
use presence_client::PresenceClient;
use presence_proto::v1::{self, Scope, UserKind, grantee::Kind as G};
use presence_tests::{NatsServer, NewUser, Sandbox, assert_code, domain, site, user};
use prost::Message;
use std::time::Duration;
use tonic::Code;

const PW: &str = "correct horse battery";

async fn setup(sb: &Sandbox) -> PresenceClient {
    let mut a = sb.admin.clone();
    domain(&mut a, "acme").await;
    site(&mut a, "acme", "hq").await;
    site(&mut a, "acme", "branch").await;
    let people = [
        ("om", "Olivia", "Manager", Scope::OfficeManager, "hq"),
        ("jack", "Jack", "Manning", Scope::CallCenterAgent, "hq"),
        ("recep", "Rita", "Reception", Scope::BasicUser, "hq"),
        ("carol", "Carol", "Jones", Scope::BasicUser, "hq"),
        ("dave", "Dave", "Branch", Scope::BasicUser, "branch"),
        (
            "sup",
            "Sam",
            "Supervisor",
            Scope::CallCenterSupervisor,
            "branch",
        ),
    ];
    for (id, first, last, scope, s) in people {
        user(
            &mut a,
            "acme",
            id,
            NewUser {
                first,
                last,
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
        "acme",
        "q1",
        NewUser {
            kind: Some(UserKind::CallQueue),
            site: "hq",
            ..Default::default()
        },
    )
    .await;
    sb.login("acme", "om", PW).await
}

fn g_user(u: &str) -> v1::Grantee {
    v1::Grantee {
        kind: Some(G::User(u.into())),
    }
}

async fn sees(c: &mut PresenceClient, watcher: &str, targets: &[&str]) -> Vec<bool> {
    c.policy
        .check_see(v1::CheckRequest {
            domain: "acme".into(),
            watcher: watcher.into(),
            targets: targets.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .decisions
        .into_iter()
        .map(|d| d.allowed)
        .collect()
}

#[tokio::test]
async fn test_admin_presence_permissions_flow() {
    let sb = Sandbox::start().await;
    let mut om = setup(&sb).await;
    // Office managers see everyone by default; switch that off to look at
    // the grants alone.
    om.policy
        .update_domain_policy(v1::UpdateDomainPolicyRequest {
            domain: "acme".into(),
            office_manager_sees_domain: Some(false),
            ..Default::default()
        })
        .await
        .unwrap();

    // Open user → Presence → defaults.
    let s = om
        .policy
        .get_presence_settings(v1::GetPresenceSettingsRequest {
            domain: "acme".into(),
            user: "jack".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        s.visibility,
        v1::Visibility::PermittedUsers as i32,
        "private by default"
    );
    assert_eq!(sees(&mut om, "recep", &["jack"]).await, vec![false]);

    // Allow other users to see my presence, choose permitted users found
    // with the directory search, Save.
    om.policy
        .update_presence_settings(v1::UpdatePresenceSettingsRequest {
            domain: "acme".into(),
            user: "jack".into(),
            expected_version: s.version,
            visibility: Some(v1::Visibility::PermittedUsers as i32),
            ..Default::default()
        })
        .await
        .unwrap();
    let found = om
        .directory
        .list_users(v1::ListUsersRequest {
            domain: "acme".into(),
            search: "rita".into(),
            site: "hq".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .users;
    assert_eq!(found.len(), 1);
    let saved = om
        .policy
        .set_grants(v1::SetGrantsRequest {
            domain: "acme".into(),
            target: "jack".into(),
            expected_version: 0,
            see: vec![g_user(&found[0].id)],
            pickup: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(saved.version, 1);
    assert_eq!(sees(&mut om, "recep", &["jack"]).await, vec![true]);
    assert_eq!(sees(&mut om, "carol", &["jack"]).await, vec![false]);
    assert_eq!(sees(&mut om, "dave", &["jack"]).await, vec![false]);
    let d = om
        .policy
        .check_see(v1::CheckRequest {
            domain: "acme".into(),
            watcher: "recep".into(),
            targets: vec!["jack".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        !d.decisions[0].caller_id_visible,
        "see-only: no caller identity"
    );

    // The receptionist may also pick up Jack's calls.
    om.policy
        .add_grant(v1::AddGrantRequest {
            domain: "acme".into(),
            target: "jack".into(),
            kind: v1::GrantKind::Pickup as i32,
            grantee: Some(g_user("recep")),
        })
        .await
        .unwrap();
    let p = om
        .policy
        .check_pickup(v1::CheckRequest {
            domain: "acme".into(),
            watcher: "recep".into(),
            targets: vec!["jack".into(), "carol".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        p.decisions.iter().map(|d| d.allowed).collect::<Vec<_>>(),
        vec![true, false]
    );
    let d = om
        .policy
        .check_see(v1::CheckRequest {
            domain: "acme".into(),
            watcher: "recep".into(),
            targets: vec!["jack".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        d.decisions[0].caller_id_visible,
        "pickup grantees see who is calling"
    );

    // Why does Carol's phone not show Jack?
    let e = om
        .policy
        .explain(v1::ExplainRequest {
            domain: "acme".into(),
            watcher: "carol".into(),
            target: "jack".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!e.decision.as_ref().unwrap().allowed);
    assert_eq!(e.decision.unwrap().rule, v1::Rule::NoGrant as i32);
    assert!(
        e.reason.contains("jack has granted nothing to carol"),
        "{}",
        e.reason
    );
    let e = om
        .policy
        .explain(v1::ExplainRequest {
            domain: "acme".into(),
            watcher: "recep".into(),
            target: "jack".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(e.decision.unwrap().rule, v1::Rule::SeeGrantUser as i32);

    // Who is watching Jack? Whom can the receptionist see?
    let w = om
        .policy
        .list_watchers(v1::ListWatchersRequest {
            domain: "acme".into(),
            target: "jack".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        w.watchers
            .iter()
            .map(|x| (x.user.as_str(), x.can_pickup))
            .collect::<Vec<_>>(),
        vec![("recep", true)]
    );
    let m = om
        .policy
        .list_monitorable(v1::ListMonitorableRequest {
            domain: "acme".into(),
            watcher: "recep".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        m.targets
            .iter()
            .map(|x| x.target.as_str())
            .collect::<Vec<_>>(),
        vec!["jack", "recep"]
    );

    // A site grant: everyone in hq sees Jack; branch does not.
    om.policy
        .add_grant(v1::AddGrantRequest {
            domain: "acme".into(),
            target: "jack".into(),
            kind: v1::GrantKind::See as i32,
            grantee: Some(v1::Grantee {
                kind: Some(G::Site("hq".into())),
            }),
        })
        .await
        .unwrap();
    assert_eq!(sees(&mut om, "carol", &["jack"]).await, vec![true]);
    assert_eq!(sees(&mut om, "dave", &["jack"]).await, vec![false]);
    // Moving Dave to hq changes the answer; moving Carol out, too.
    om.directory
        .update_user(v1::UpdateUserRequest {
            domain: "acme".into(),
            id: "dave".into(),
            site: Some("hq".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    om.directory
        .update_user(v1::UpdateUserRequest {
            domain: "acme".into(),
            id: "carol".into(),
            site: Some("branch".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(sees(&mut om, "dave", &["jack"]).await, vec![true]);
    assert_eq!(sees(&mut om, "carol", &["jack"]).await, vec![false]);

    // Revoke the receptionist's grants.
    om.policy
        .remove_grant(v1::RemoveGrantRequest {
            domain: "acme".into(),
            target: "jack".into(),
            kind: v1::GrantKind::Pickup as i32,
            grantee: Some(g_user("recep")),
        })
        .await
        .unwrap();
    om.policy
        .remove_grant(v1::RemoveGrantRequest {
            domain: "acme".into(),
            target: "jack".into(),
            kind: v1::GrantKind::See as i32,
            grantee: Some(g_user("recep")),
        })
        .await
        .unwrap();
    // recep is still in hq, so the site grant shows Jack; visibility
    // "pickup users only" hides him again.
    assert_eq!(sees(&mut om, "recep", &["jack"]).await, vec![true]);
    om.policy
        .update_presence_settings(v1::UpdatePresenceSettingsRequest {
            domain: "acme".into(),
            user: "jack".into(),
            visibility: Some(v1::Visibility::PickupUsers as i32),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(sees(&mut om, "recep", &["jack"]).await, vec![false]);

    // Delete the watcher: nothing names it any more, and a new user with
    // the same id inherits nothing.
    om.policy
        .add_grant(v1::AddGrantRequest {
            domain: "acme".into(),
            target: "jack".into(),
            kind: v1::GrantKind::Pickup as i32,
            grantee: Some(g_user("recep")),
        })
        .await
        .unwrap();
    assert_eq!(sees(&mut om, "recep", &["jack"]).await, vec![true]);
    om.directory
        .delete_user(v1::DeleteUserRequest {
            domain: "acme".into(),
            id: "recep".into(),
            expected_version: 0,
        })
        .await
        .unwrap();
    let g = om
        .policy
        .list_grants(v1::ListGrantsRequest {
            domain: "acme".into(),
            target: "jack".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        !g.pickup.iter().chain(&g.see).any(|x| *x == g_user("recep")),
        "{g:?}"
    );
    user(
        &mut sb.admin.clone(),
        "acme",
        "recep",
        NewUser {
            site: "branch",
            ..Default::default()
        },
    )
    .await;
    assert_eq!(sees(&mut om, "recep", &["jack"]).await, vec![false]);
    // Unknown targets in a batch are simply denied, like another domain's.
    let r = om
        .policy
        .check_see(v1::CheckRequest {
            domain: "acme".into(),
            watcher: "om".into(),
            targets: vec!["ghost".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.decisions[0].allowed, r.decisions[0].rule),
        (false, v1::Rule::OtherDomain as i32)
    );
}

#[tokio::test]
async fn test_scope_implied_visibility_and_monitored_lines() {
    let sb = Sandbox::start().await;
    let mut om = setup(&sb).await;
    // Office manager sees the domain; the switch turns it off.
    assert_eq!(
        sees(&mut om, "om", &["jack", "dave"]).await,
        vec![true, true]
    );
    // The supervisor sees the agents of the queues it supervises.
    assert_eq!(sees(&mut om, "sup", &["jack"]).await, vec![false]);
    om.directory
        .set_queue_members(v1::SetQueueMembersRequest {
            domain: "acme".into(),
            id: "q1".into(),
            agents: vec!["jack".into()],
            supervisors: vec!["sup".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        sees(&mut om, "sup", &["jack", "carol"]).await,
        vec![true, false]
    );
    om.policy
        .update_domain_policy(v1::UpdateDomainPolicyRequest {
            domain: "acme".into(),
            supervisor_sees_queue_agents: Some(false),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(sees(&mut om, "sup", &["jack"]).await, vec![false]);

    // Monitored lines: derived (own line first, then what it may see),
    // then explicit; a line whose target does not allow the watcher is
    // kept but reported as denied.
    om.policy
        .set_grants(v1::SetGrantsRequest {
            domain: "acme".into(),
            target: "jack".into(),
            see: vec![g_user("carol")],
            ..Default::default()
        })
        .await
        .unwrap();
    let l = om
        .policy
        .get_monitored_lines(v1::GetMonitoredLinesRequest {
            domain: "acme".into(),
            watcher: "carol".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!l.explicit);
    assert_eq!(
        l.lines
            .iter()
            .map(|x| (x.target.as_str(), x.allowed))
            .collect::<Vec<_>>(),
        vec![("carol", true), ("jack", true)]
    );
    let l = om
        .policy
        .set_monitored_lines(v1::SetMonitoredLinesRequest {
            domain: "acme".into(),
            watcher: "carol".into(),
            expected_version: 0,
            targets: vec!["jack".into(), "dave".into()],
            omit_self: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(l.explicit);
    assert_eq!(
        l.lines
            .iter()
            .map(|x| (x.target.as_str(), x.allowed))
            .collect::<Vec<_>>(),
        vec![("carol", true), ("jack", true), ("dave", false)]
    );
    // Deleting a monitored user removes its line.
    om.directory
        .delete_user(v1::DeleteUserRequest {
            domain: "acme".into(),
            id: "dave".into(),
            expected_version: 0,
        })
        .await
        .unwrap();
    let l = om
        .policy
        .get_monitored_lines(v1::GetMonitoredLinesRequest {
            domain: "acme".into(),
            watcher: "carol".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        l.lines
            .iter()
            .map(|x| x.target.as_str())
            .collect::<Vec<_>>(),
        vec!["carol", "jack"]
    );
    // Stale version.
    assert_code(
        om.policy
            .set_monitored_lines(v1::SetMonitoredLinesRequest {
                domain: "acme".into(),
                watcher: "carol".into(),
                expected_version: 99,
                targets: vec![],
                omit_self: true,
            })
            .await,
        Code::Aborted,
    );
}

#[tokio::test]
async fn test_who_may_change_what_and_bad_inputs() {
    let sb = Sandbox::start().await;
    let _om = setup(&sb).await;
    let mut jack = sb.login("acme", "jack", PW).await;
    let mut carol = sb.login("acme", "carol", PW).await;
    // A user edits its own settings, grants and lines…
    jack.policy
        .update_presence_settings(v1::UpdatePresenceSettingsRequest {
            domain: "acme".into(),
            user: "jack".into(),
            visibility: Some(v1::Visibility::Everyone as i32),
            ..Default::default()
        })
        .await
        .unwrap();
    jack.policy
        .add_grant(v1::AddGrantRequest {
            domain: "acme".into(),
            target: "jack".into(),
            kind: v1::GrantKind::Pickup as i32,
            grantee: Some(g_user("carol")),
        })
        .await
        .unwrap();
    jack.policy
        .check_see(v1::CheckRequest {
            domain: "acme".into(),
            watcher: "jack".into(),
            targets: vec!["carol".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    // …but not anyone else's.
    assert_code(
        carol
            .policy
            .update_presence_settings(v1::UpdatePresenceSettingsRequest {
                domain: "acme".into(),
                user: "jack".into(),
                visibility: Some(v1::Visibility::Nobody as i32),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        carol
            .policy
            .add_grant(v1::AddGrantRequest {
                domain: "acme".into(),
                target: "jack".into(),
                kind: v1::GrantKind::See as i32,
                grantee: Some(g_user("carol")),
            })
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        carol
            .policy
            .check_see(v1::CheckRequest {
                domain: "acme".into(),
                watcher: "jack".into(),
                targets: vec![],
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        carol
            .policy
            .list_watchers(v1::ListWatchersRequest {
                domain: "acme".into(),
                target: "jack".into(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        carol
            .policy
            .update_domain_policy(v1::UpdateDomainPolicyRequest {
                domain: "acme".into(),
                office_manager_sees_domain: Some(false),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );
    // Another domain's principal sees nothing, as for an unknown domain.
    let mut a = sb.admin.clone();
    domain(&mut a, "globex").await;
    user(
        &mut a,
        "globex",
        "g1",
        NewUser {
            scope: Some(Scope::OfficeManager),
            password: Some(PW),
            ..Default::default()
        },
    )
    .await;
    let mut g1 = sb.login("globex", "g1", PW).await;
    let m = assert_code(
        g1.policy
            .list_grants(v1::ListGrantsRequest {
                domain: "acme".into(),
                target: "jack".into(),
            })
            .await,
        Code::NotFound,
    );
    assert_eq!(m, "domain acme not found");
    // No token.
    let mut anon = sb.client(None).await;
    assert_code(
        anon.policy
            .list_grants(v1::ListGrantsRequest {
                domain: "acme".into(),
                target: "jack".into(),
            })
            .await,
        Code::Unauthenticated,
    );

    // Bad inputs change nothing.
    let before = jack
        .policy
        .list_grants(v1::ListGrantsRequest {
            domain: "acme".into(),
            target: "jack".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let set = |see: Vec<v1::Grantee>| v1::SetGrantsRequest {
        domain: "acme".into(),
        target: "jack".into(),
        see,
        ..Default::default()
    };
    assert_code(
        jack.policy.set_grants(set(vec![g_user("jack")])).await,
        Code::InvalidArgument,
    );
    assert_code(
        jack.policy.set_grants(set(vec![g_user("ghost")])).await,
        Code::NotFound,
    );
    assert_code(
        jack.policy.set_grants(set(vec![g_user("bad id")])).await,
        Code::InvalidArgument,
    );
    assert_code(
        jack.policy
            .set_grants(set(vec![v1::Grantee {
                kind: Some(G::Site("nosite".into())),
            }]))
            .await,
        Code::NotFound,
    );
    assert_code(
        jack.policy
            .set_grants(set(vec![v1::Grantee { kind: None }]))
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        jack.policy
            .set_grants(set(vec![v1::Grantee {
                kind: Some(G::Domain(false)),
            }]))
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        jack.policy
            .set_grants(set(vec![g_user("carol"), g_user("carol")]))
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        jack.policy
            .set_grants(set((0..1001).map(|i| g_user(&format!("u{i}"))).collect()))
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        jack.policy
            .set_grants(v1::SetGrantsRequest {
                expected_version: 77,
                ..set(vec![])
            })
            .await,
        Code::Aborted,
    );
    assert_code(
        jack.policy
            .add_grant(v1::AddGrantRequest {
                domain: "acme".into(),
                target: "jack".into(),
                kind: 0,
                grantee: Some(g_user("carol")),
            })
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        jack.policy
            .update_presence_settings(v1::UpdatePresenceSettingsRequest {
                domain: "acme".into(),
                user: "jack".into(),
                visibility: Some(42),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        jack.policy
            .check_see(v1::CheckRequest {
                domain: "acme".into(),
                watcher: "jack".into(),
                targets: (0..5001).map(|i| format!("u{i}")).collect(),
                ..Default::default()
            })
            .await,
        Code::ResourceExhausted,
    );
    assert_code(
        jack.policy
            .set_monitored_lines(v1::SetMonitoredLinesRequest {
                domain: "acme".into(),
                watcher: "jack".into(),
                targets: (0..201).map(|i| format!("u{i}")).collect(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        jack.policy
            .get_presence_settings(v1::GetPresenceSettingsRequest {
                domain: "acme".into(),
                user: "ghost".into(),
            })
            .await,
        Code::NotFound,
    );
    let after = jack
        .policy
        .list_grants(v1::ListGrantsRequest {
            domain: "acme".into(),
            target: "jack".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before, after);
}

#[tokio::test]
async fn test_acl_events_on_real_nats() {
    let nats = NatsServer::start();
    let sb = Sandbox::start_with(nats.url()).await;
    let nc = async_nats::connect(nats.url()).await.unwrap();
    let mut acl = nc.subscribe("presence.v1.acl.acme").await.unwrap();
    nc.flush().await.unwrap();
    let mut om = setup(&sb).await;
    om.policy
        .add_grant(v1::AddGrantRequest {
            domain: "acme".into(),
            target: "jack".into(),
            kind: v1::GrantKind::See as i32,
            grantee: Some(g_user("carol")),
        })
        .await
        .unwrap();
    om.directory
        .delete_user(v1::DeleteUserRequest {
            domain: "acme".into(),
            id: "carol".into(),
            expected_version: 0,
        })
        .await
        .unwrap();
    let mut events = Vec::new();
    while events
        .last()
        .is_none_or(|e: &v1::AclEvent| e.reason != "user deleted")
    {
        let m = tokio::time::timeout(Duration::from_secs(10), acl.next())
            .await
            .unwrap()
            .unwrap();
        events.push(v1::AclEvent::decode(m.payload).unwrap());
    }
    assert!(
        events.windows(2).all(|w| w[0].epoch < w[1].epoch),
        "epochs increase"
    );
    let grant = events.iter().find(|e| e.reason == "grant added").unwrap();
    assert_eq!(
        (grant.targets.clone(), grant.watchers.clone()),
        (vec!["jack".to_string()], vec!["carol".to_string()])
    );
    let pol = om
        .policy
        .get_domain_policy(v1::GetDomainPolicyRequest {
            domain: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pol.epoch, events.last().unwrap().epoch);
}
