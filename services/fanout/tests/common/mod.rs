//! A single-node world for fanout tests below the gRPC transport: a real
//! sled directory in a temp dir, the policy, the ACL view, local shards
//! and the edge over the in-process bus.

#![allow(clippy::unwrap_used, dead_code)]

use futures_util::StreamExt;
use presence_auth::password::HashCost;
use presence_auth::{DomainSet, Principal, TokenSigner, rights};
use presence_bus::{InProcessBus, SharedBus};
use presence_core::{DomainId, Scope, SiteId, UserId};
use presence_directory::{Directory, DirectoryConfig, Store};
use presence_fanout::edge::Edge;
use presence_fanout::shards::Shards;
use presence_fanout::stream::WatchStream;
use presence_fanout::{Fanout, FanoutConfig};
use presence_policy::{AclView, Policy, PolicyConfig};
use presence_proto::v1::{self, grantee::Kind as G, watch_event::Event as E};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A running single-node fanout with its directory and policy.
pub struct World {
    pub _tmp: tempfile::TempDir,
    pub dir: Directory,
    pub policy: Policy,
    pub fanout: Fanout,
    pub admin: Principal,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
}

/// A watch stream as the transport pulls it.
pub type Pulled = Pin<
    Box<
        dyn futures_util::Stream<Item = Result<presence_proto::frame::Frame, tonic::Status>> + Send,
    >,
>;

/// Returns a pinned stream of `s`.
pub fn pull(s: WatchStream<Arc<Shards>>) -> Pulled {
    Box::pin(s.into_stream())
}

/// Reads the next message of `s` (10 s at most) as the client decodes it.
pub async fn next_message(s: &mut Pulled) -> v1::WatchEvent {
    let f = tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("no watch message within 10 s")
        .expect("stream ended")
        .expect("stream failed");
    f.to_event().unwrap()
}

/// Reads the next message and returns its events (a batch's, in order).
pub async fn next_events(s: &mut Pulled) -> Vec<E> {
    match next_message(s).await.event.unwrap() {
        E::Batch(b) => b.events.into_iter().map(|e| e.event.unwrap()).collect(),
        e => vec![e],
    }
}

/// Reads the next single event of an unbatched stream.
pub async fn next(s: &mut Pulled) -> E {
    let mut v = next_events(s).await;
    assert_eq!(
        v.len(),
        1,
        "an unbatched stream sends one event per message"
    );
    v.remove(0)
}

pub fn acme() -> DomainId {
    DomainId::parse("acme").unwrap()
}

/// A basic user of acme at site hq.
pub fn user(id: &str) -> Principal {
    Principal::User {
        domain: acme(),
        user: UserId::parse(id).unwrap(),
        scope: Scope::BasicUser,
        site: Some(SiteId::parse("hq").unwrap()),
    }
}

/// A gateway service of acme that may watch on users' behalf.
pub fn gateway() -> Principal {
    Principal::Service {
        name: "gateway".into(),
        domains: DomainSet::All,
        rights: vec![rights::PRESENCE_WATCH.into()],
    }
}

impl World {
    /// Starts the world with `cfg` (device rate limits raised) and users
    /// `users` in domain acme, site hq.
    pub async fn start(mut cfg: FanoutConfig, users: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open_unsynced(tmp.path()).unwrap());
        let bus: SharedBus = Arc::new(InProcessBus::new(100_000));
        let dcfg = DirectoryConfig {
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
            dcfg,
        )
        .unwrap();
        let policy = Policy::new(dir.clone(), PolicyConfig::default());
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let acl = AclView::new(store.clone(), 10_000);
        let acl_sub = AclView::subscribe(&bus).await.unwrap();
        tracker.spawn(acl.clone().run(acl_sub, shutdown.clone()));
        cfg.device_rate = presence_fanout::shard::RateLimit {
            per_second: 1_000_000,
            burst: 1_000_000,
        };
        let fanout = Fanout::start(cfg, acl, bus.clone(), &shutdown, &tracker);
        let edge_sub = Edge::subscribe(&bus);
        tracker.spawn(fanout.edge().run(edge_sub, shutdown.clone()));
        let admin = Principal::Service {
            name: "t".into(),
            domains: DomainSet::All,
            rights: vec![rights::ALL.into()],
        };
        dir.create_domain(
            &admin,
            v1::CreateDomainRequest {
                id: "acme".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        dir.create_site(
            &admin,
            v1::CreateSiteRequest {
                domain: "acme".into(),
                id: "hq".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        for id in users {
            dir.create_user(
                &admin,
                v1::CreateUserRequest {
                    domain: "acme".into(),
                    id: (*id).into(),
                    site: "hq".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        }
        Self {
            _tmp: tmp,
            dir,
            policy,
            fanout,
            admin,
            shutdown,
            tracker,
        }
    }

    /// Creates domain `id` with site hq and `users`.
    pub async fn add_domain(&self, id: &str, users: &[&str]) {
        self.dir
            .create_domain(
                &self.admin,
                v1::CreateDomainRequest {
                    id: id.into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        self.dir
            .create_site(
                &self.admin,
                v1::CreateSiteRequest {
                    domain: id.into(),
                    id: "hq".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        for u in users {
            self.dir
                .create_user(
                    &self.admin,
                    v1::CreateUserRequest {
                        domain: id.into(),
                        id: (*u).into(),
                        site: "hq".into(),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
        }
    }

    /// Sets `target`'s visibility and caller-id visibility.
    pub async fn settings(
        &self,
        target: &str,
        visibility: v1::Visibility,
        caller_id: v1::CallerIdVisibility,
    ) {
        self.policy
            .update_presence_settings(
                &self.admin,
                v1::UpdatePresenceSettingsRequest {
                    domain: "acme".into(),
                    user: target.into(),
                    visibility: Some(visibility as i32),
                    caller_id_visibility: Some(caller_id as i32),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }

    /// Adds (or removes) a grant of `kind` on `target` to user `grantee`.
    pub async fn grant(&self, target: &str, grantee: &str, kind: v1::GrantKind, add: bool) {
        let g = Some(v1::Grantee {
            kind: Some(G::User(grantee.into())),
        });
        if add {
            self.policy
                .add_grant(
                    &self.admin,
                    v1::AddGrantRequest {
                        domain: "acme".into(),
                        target: target.into(),
                        kind: kind as i32,
                        grantee: g,
                    },
                )
                .await
                .unwrap();
        } else {
            self.policy
                .remove_grant(
                    &self.admin,
                    v1::RemoveGrantRequest {
                        domain: "acme".into(),
                        target: target.into(),
                        kind: kind as i32,
                        grantee: g,
                    },
                )
                .await
                .unwrap();
        }
    }

    /// Publishes events as the admin; every one must be accepted.
    pub async fn publish(&self, events: Vec<v1::DeviceEvent>) {
        let r = self
            .fanout
            .publish(&self.admin, v1::PublishRequest { events })
            .await
            .unwrap();
        assert!(r.results.iter().all(|x| x.accepted), "{r:?}");
    }

    /// Opens a stream watching `targets` on `watcher`'s behalf.
    pub async fn watch(
        &self,
        watcher: &str,
        targets: &[&str],
        batching: Option<v1::WatchBatching>,
    ) -> Pulled {
        let req = v1::WatchRequest {
            domain: "acme".into(),
            watcher: watcher.into(),
            selector: Some(v1::watch_request::Selector::Targets(v1::TargetList {
                targets: targets.iter().map(|t| (*t).to_string()).collect(),
            })),
            batching,
            ..Default::default()
        };
        pull(self.fanout.watch(&gateway(), req).await.unwrap())
    }

    /// Stops everything.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// A device event of `user` from device `d1`.
pub fn event(user: &str, seq: u64, kind: v1::device_event::Kind) -> v1::DeviceEvent {
    v1::DeviceEvent {
        domain: "acme".into(),
        user: user.into(),
        device: "d1".into(),
        sequence: seq,
        at_ms: 0,
        kind: Some(kind),
    }
}
