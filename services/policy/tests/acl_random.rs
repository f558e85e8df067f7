//! The ACL view is never more permissive than a fresh evaluation once a
//! change's event is applied: a randomized sequence of grants,
//! revocations, setting changes, domain switches, scope/site/queue
//! changes and deletions, comparing every cached decision with a fresh
//! one after each step. Real sled store, real in-process bus.

#![allow(clippy::unwrap_used, missing_docs)]

use presence_auth::password::HashCost;
use presence_auth::{DomainSet, Principal, TokenSigner, rights};
use presence_bus::{InProcessBus, SharedBus};
use presence_core::{DomainId, UserId};
use presence_directory::{Directory, DirectoryConfig, Store};
use presence_policy::service::evaluate;
use presence_policy::{AclView, Policy, PolicyConfig, Question, records};
use presence_proto::v1::{self, grantee::Kind as G};
use presence_testkit::Rng;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const USERS: &[&str] = &["u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7"];
const SITES: &[&str] = &["hq", "branch", ""];
const SCOPES: &[v1::Scope] = &[
    v1::Scope::SimpleUser,
    v1::Scope::BasicUser,
    v1::Scope::CallCenterAgent,
    v1::Scope::CallCenterSupervisor,
    v1::Scope::SiteManager,
    v1::Scope::OfficeManager,
];

fn admin() -> Principal {
    Principal::Service {
        name: "test".into(),
        domains: DomainSet::All,
        rights: vec![rights::ALL.into()],
    }
}

async fn create_user(dir: &Directory, id: &str, scope: v1::Scope, site: &str) {
    dir.create_user(
        &admin(),
        v1::CreateUserRequest {
            domain: "acme".into(),
            id: id.into(),
            scope: scope as i32,
            site: site.into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
}

fn grantee(rng: &mut Rng) -> v1::Grantee {
    let kind = match rng.below(4) {
        0 | 1 => G::User((*rng.pick(USERS)).into()),
        2 => G::Site((*rng.pick(&SITES[..2])).into()),
        _ => G::Domain(true),
    };
    v1::Grantee { kind: Some(kind) }
}

/// Performs one random change; errors (e.g. grant to self) are fine and
/// must change nothing.
async fn random_change(rng: &mut Rng, dir: &Directory, pol: &Policy) -> String {
    let p = admin();
    let d = || "acme".to_string();
    let u = rng.pick(USERS).to_string();
    match rng.below(9) {
        0 => {
            let kind = if rng.below(2) == 0 {
                v1::GrantKind::See
            } else {
                v1::GrantKind::Pickup
            };
            let g = grantee(rng);
            let r = pol
                .add_grant(
                    &p,
                    v1::AddGrantRequest {
                        domain: d(),
                        target: u.clone(),
                        kind: kind as i32,
                        grantee: Some(g.clone()),
                    },
                )
                .await;
            format!("add {kind:?} {g:?} on {u}: {}", r.is_ok())
        }
        1 => {
            let grants = pol
                .list_grants(
                    &p,
                    v1::ListGrantsRequest {
                        domain: d(),
                        target: u.clone(),
                    },
                )
                .await
                .unwrap();
            let all: Vec<(v1::GrantKind, v1::Grantee)> = grants
                .see
                .iter()
                .map(|g| (v1::GrantKind::See, g.clone()))
                .chain(
                    grants
                        .pickup
                        .iter()
                        .map(|g| (v1::GrantKind::Pickup, g.clone())),
                )
                .collect();
            if all.is_empty() {
                return "nothing to revoke".into();
            }
            let (kind, g) = rng.pick(&all).clone();
            pol.remove_grant(
                &p,
                v1::RemoveGrantRequest {
                    domain: d(),
                    target: u.clone(),
                    kind: kind as i32,
                    grantee: Some(g.clone()),
                },
            )
            .await
            .unwrap();
            format!("revoke {kind:?} {g:?} on {u}")
        }
        2 => {
            let v = *rng.pick(&[
                v1::Visibility::Everyone,
                v1::Visibility::Nobody,
                v1::Visibility::PermittedUsers,
                v1::Visibility::PickupUsers,
            ]);
            pol.update_presence_settings(
                &p,
                v1::UpdatePresenceSettingsRequest {
                    domain: d(),
                    user: u.clone(),
                    visibility: Some(v as i32),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            format!("visibility of {u} = {v:?}")
        }
        3 => {
            let v = *rng.pick(&[
                v1::CallerIdVisibility::All,
                v1::CallerIdVisibility::None,
                v1::CallerIdVisibility::PermittedUsers,
            ]);
            pol.update_presence_settings(
                &p,
                v1::UpdatePresenceSettingsRequest {
                    domain: d(),
                    user: u.clone(),
                    caller_id_visibility: Some(v as i32),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            format!("caller id of {u} = {v:?}")
        }
        4 => {
            let (a, b, c) = (rng.below(2) == 0, rng.below(2) == 0, rng.below(2) == 0);
            pol.update_domain_policy(
                &p,
                v1::UpdateDomainPolicyRequest {
                    domain: d(),
                    office_manager_sees_domain: Some(a),
                    site_manager_sees_site: Some(b),
                    supervisor_sees_queue_agents: Some(c),
                },
            )
            .await
            .unwrap();
            format!("domain switches {a} {b} {c}")
        }
        5 => {
            let s = *rng.pick(SITES);
            dir.update_user(
                &p,
                v1::UpdateUserRequest {
                    domain: d(),
                    id: u.clone(),
                    site: Some(s.into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            format!("site of {u} = {s:?}")
        }
        6 => {
            let sc = *rng.pick(SCOPES);
            let r = dir
                .update_user(
                    &p,
                    v1::UpdateUserRequest {
                        domain: d(),
                        id: u.clone(),
                        scope: Some(sc as i32),
                        ..Default::default()
                    },
                )
                .await;
            format!("scope of {u} = {sc:?}: {}", r.is_ok())
        }
        7 => {
            let mut agents = Vec::new();
            let mut sups = Vec::new();
            for x in USERS {
                let usr = dir
                    .get_user(
                        &p,
                        v1::GetUserRequest {
                            domain: d(),
                            id: (*x).into(),
                        },
                    )
                    .await
                    .unwrap();
                let sc = v1::Scope::try_from(usr.scope).unwrap();
                if rng.below(2) == 0 && sc as i32 >= v1::Scope::CallCenterAgent as i32 {
                    agents.push(x.to_string());
                } else if rng.below(2) == 0 && sc as i32 >= v1::Scope::CallCenterSupervisor as i32 {
                    sups.push(x.to_string());
                }
            }
            let r = dir
                .set_queue_members(
                    &p,
                    v1::SetQueueMembersRequest {
                        domain: d(),
                        id: "q".into(),
                        agents: agents.clone(),
                        supervisors: sups.clone(),
                        ..Default::default()
                    },
                )
                .await;
            format!(
                "queue agents {agents:?} supervisors {sups:?}: {}",
                r.is_ok()
            )
        }
        _ => {
            dir.delete_user(
                &p,
                v1::DeleteUserRequest {
                    domain: d(),
                    id: u.clone(),
                    expected_version: 0,
                },
            )
            .await
            .unwrap();
            let site = *rng.pick(SITES);
            create_user(dir, &u, v1::Scope::BasicUser, site).await;
            format!("delete and re-create {u} in {site:?}")
        }
    }
}

async fn compare_all(view: &AclView, store: &Store, d: &DomainId, step: &str) {
    let targets: Vec<String> = USERS
        .iter()
        .map(|s| s.to_string())
        .chain(["q".to_string(), "ghost".to_string()])
        .collect();
    for w in USERS {
        let wid = UserId::parse(w).unwrap();
        for q in [Question::See, Question::Pickup] {
            let cached = view.check(d, &wid, &targets, q).await.unwrap();
            let (_, fresh) = evaluate(store, d, &wid, &targets, q).unwrap();
            for (c, f) in cached.iter().zip(&fresh) {
                assert!(
                    !c.allowed || f.allowed,
                    "after {step}: cache lets {w} {q:?} {} but a fresh evaluation denies",
                    f.target
                );
                assert!(
                    !c.caller_id_visible || f.caller_id_visible,
                    "after {step}: cache shows caller id of {} to {w}",
                    f.target
                );
                assert_eq!(
                    c, f,
                    "after {step}: cached and fresh differ for {w} -> {}",
                    f.target
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_cache_never_more_permissive_than_fresh_evaluation() {
    for seed in [1u64, 7, 42, 1234] {
        run_seed(seed, 120).await;
    }
}

async fn run_seed(seed: u64, steps: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open_unsynced(tmp.path()).unwrap());
    let bus: SharedBus = Arc::new(InProcessBus::new(100_000));
    let cfg = DirectoryConfig {
        hash_cost: HashCost {
            memory_kib: 256,
            iterations: 1,
        },
        ..DirectoryConfig::default()
    };
    let dir = Directory::new(
        store.clone(),
        bus.clone(),
        TokenSigner::new(TokenSigner::generate_key()).unwrap(),
        cfg,
    )
    .unwrap();
    let pol = Policy::new(dir.clone(), PolicyConfig::default());
    let view = AclView::new(store.clone(), 10_000);
    let shutdown = CancellationToken::new();
    let sub = AclView::subscribe(&bus).await.unwrap();
    let runner = tokio::spawn(view.clone().run(sub, shutdown.clone()));

    let p = admin();
    dir.create_domain(
        &p,
        v1::CreateDomainRequest {
            id: "acme".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    for s in ["hq", "branch"] {
        dir.create_site(
            &p,
            v1::CreateSiteRequest {
                domain: "acme".into(),
                id: s.into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    let mut rng = Rng::new(seed);
    for u in USERS {
        let (scope, site) = (*rng.pick(SCOPES), *rng.pick(SITES));
        create_user(&dir, u, scope, site).await;
    }
    dir.create_user(
        &p,
        v1::CreateUserRequest {
            domain: "acme".into(),
            id: "q".into(),
            kind: v1::UserKind::CallQueue as i32,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let d = DomainId::parse("acme").unwrap();
    for step in 0..steps {
        let what = random_change(&mut rng, &dir, &pol).await;
        let epoch = records::domain_policy(store.as_ref(), &d).unwrap().epoch;
        assert!(
            view.wait_for_epoch(&d, epoch, Duration::from_secs(10))
                .await,
            "event for epoch {epoch} not applied"
        );
        compare_all(
            &view,
            &store,
            &d,
            &format!("seed {seed} step {step}: {what}"),
        )
        .await;
    }
    assert!(view.cached_entries() > 0, "the cache was exercised");
    shutdown.cancel();
    runner.await.unwrap();
}
