//! The presence service's domain API: ingest (gRPC `Publish` and the
//! NATS subjects `presence.v1.in.<domain>.<user>`) and `GetPresence`.

use crate::cluster::{Cluster, ShardParams};
use crate::convert::redact;
use crate::edge::Edge;
use crate::fair::Inlet;
use crate::ingest::{check_event, ingest_span, ingest_target, may_publish, rejected};
use crate::quota::{DomainQuota, IngestQuota, StreamSlots, over_ingest_quota};
use crate::shard::{self, Clock};
use crate::shards::Shards;
use crate::stream::{Batching, StreamSpec, WatchStream};
use presence_auth::{Principal, rights};
use presence_bus::trace::TraceParent;
use presence_bus::{BusSubscription, SharedBus, subjects};
use presence_core::presence::Limits;
use presence_core::{ApiError, ApiResult, DomainId, UserId};
use presence_policy::{AclView, Question};
use presence_proto::v1::{self, RejectReason};
use prost::Message;
use std::collections::HashMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Settings of the presence service.
#[derive(Debug, Clone)]
pub struct FanoutConfig {
    /// Number of shard actors.
    pub shards: usize,
    /// Commands buffered per shard before publishers wait.
    pub shard_inbox: usize,
    /// Most events in one `Publish` call.
    pub max_publish_batch: usize,
    /// Most targets in one `GetPresence` call.
    pub max_targets: usize,
    /// State-machine timeouts and bounds.
    pub limits: Limits,
    /// Watch stream limits.
    pub watch: crate::stream::WatchConfig,
    /// Publish rate allowed per device.
    pub device_rate: shard::RateLimit,
    /// Distributed shard ownership (used by [`Fanout::start_cluster`]).
    pub cluster: crate::cluster::ClusterConfig,
    /// Per-domain ingest and stream quotas (see [`crate::quota`]).
    pub domain_quota: DomainQuota,
    /// Device events received from the bus and not yet taken, queued by
    /// domain (see [`crate::fair`]); beyond, the longest backlog sheds.
    pub ingest_backlog: usize,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        Self {
            shards: 8,
            shard_inbox: 1024,
            max_publish_batch: 1000,
            max_targets: 5000,
            limits: Limits::default(),
            watch: crate::stream::WatchConfig::default(),
            device_rate: shard::RateLimit::default(),
            cluster: crate::cluster::ClusterConfig::default(),
            domain_quota: DomainQuota::default(),
            ingest_backlog: 65_536,
        }
    }
}

/// The presence service.
#[derive(Clone)]
pub struct Fanout {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Arc<Shards>,
    acl: AclView,
    cfg: FanoutConfig,
    edge: Edge,
    slots: StreamSlots,
    /// The node's per-domain ingest quota (gRPC Publish and, with local
    /// shards, NATS ingest); clustered shard owners enforce their own
    /// share of it too.
    ingest_quota: std::sync::Mutex<IngestQuota>,
    clock: Clock,
    shutdown: CancellationToken,
}

impl Fanout {
    /// Starts the shard actors (tracked by `tracker`, stopped by
    /// `shutdown`) and returns the service: every shard in this process.
    pub fn start(
        cfg: FanoutConfig,
        acl: AclView,
        bus: SharedBus,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
    ) -> Self {
        let clock = Clock::new();
        let edge = Edge::new(bus.clone(), shutdown.clone(), tracker.clone());
        let shards = (0..cfg.shards.max(1))
            .map(|i| {
                shard::spawn(
                    i,
                    cfg.shard_inbox,
                    cfg.limits,
                    cfg.device_rate,
                    bus.clone(),
                    clock,
                    Some(edge.clone()),
                    shutdown.clone(),
                    tracker,
                )
            })
            .collect();
        Self::with_shards(Shards::Local(shards), cfg, acl, edge, shutdown)
    }

    /// Starts the service in distributed mode: shards are owned by the
    /// fanout nodes sharing `client`'s NATS (see [`crate::cluster`]).
    /// `shutdown` hands this node's shards off.
    pub async fn start_cluster(
        cfg: FanoutConfig,
        acl: AclView,
        bus: SharedBus,
        client: async_nats::Client,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
    ) -> ApiResult<Self> {
        let edge = Edge::new(bus.clone(), shutdown.clone(), tracker.clone());
        let params = ShardParams {
            edge: edge.clone(),
            limits: cfg.limits,
            rate: cfg.device_rate,
            domain_rate: cfg.domain_quota.per_shard(cfg.shards),
            bus: bus.clone(),
            clock: Clock::new(),
            acl: acl.clone(),
        };
        let cluster = Cluster::start(
            client,
            cfg.cluster.clone(),
            cfg.shards,
            params,
            shutdown,
            tracker,
        )
        .await?;
        Ok(Self::with_shards(
            Shards::Cluster(cluster),
            cfg,
            acl,
            edge,
            shutdown,
        ))
    }

    fn with_shards(
        shards: Shards,
        cfg: FanoutConfig,
        acl: AclView,
        edge: Edge,
        shutdown: &CancellationToken,
    ) -> Self {
        // The node's own bucket: the whole quota with local shards; with
        // clustered shards an early cut for gRPC Publish before anything
        // reaches the input log (the owners enforce their shares again).
        let cfg_events = cfg.domain_quota.events;
        Self {
            inner: Arc::new(Inner {
                shards: Arc::new(shards),
                acl,
                cfg,
                edge,
                slots: StreamSlots::default(),
                ingest_quota: std::sync::Mutex::new(IngestQuota::new(cfg_events)),
                clock: Clock::new(),
                shutdown: shutdown.clone(),
            }),
        }
    }

    /// Returns the shards this node owns (all of them unless clustered).
    pub fn owned_shards(&self) -> Vec<usize> {
        self.inner.shards.owned()
    }

    /// Takes one event of `d` from the node's ingest quota.
    fn admit(&self, d: &DomainId) -> bool {
        let now = self.inner.clock.now_ms();
        match self.inner.ingest_quota.lock() {
            Ok(mut q) => q.admit(d, now),
            Err(e) => e.into_inner().admit(d, now),
        }
    }

    async fn user_exists(&self, d: &DomainId, u: &UserId) -> ApiResult<bool> {
        self.inner.acl.user_exists(d, u).await
    }

    /// Validates one event (identity checks already done).
    async fn validate(
        &self,
        d: &DomainId,
        u: &UserId,
        e: &v1::DeviceEvent,
    ) -> Result<presence_core::presence::Event, v1::PublishResult> {
        check_event(&self.inner.acl, d, u, e).await
    }

    /// Ingests a batch of events for the caller; each is accepted or
    /// rejected on its own.
    pub async fn publish(
        &self,
        p: &Principal,
        req: v1::PublishRequest,
    ) -> ApiResult<v1::PublishResponse> {
        if req.events.len() > self.inner.cfg.max_publish_batch {
            return Err(ApiError::ResourceExhausted(format!(
                "{} events in one publish, at most {}",
                req.events.len(),
                self.inner.cfg.max_publish_batch
            )));
        }
        // Verdicts in request order: early rejections now, the valid
        // events' verdicts from the shards (in one pipelined batch).
        // The request's span (see presenced's gRPC tracing), carried to
        // the shards and the watchers.
        let trace = TraceParent::current();
        let mut results: Vec<Option<v1::PublishResult>> = vec![None; req.events.len()];
        let mut valid = Vec::new();
        let mut slots = Vec::new();
        metrics::counter!("presence_fanout_events_in_total").increment(req.events.len() as u64);
        for (i, e) in req.events.into_iter().enumerate() {
            let (Ok(d), Ok(u)) = (DomainId::parse(&e.domain), UserId::parse(&e.user)) else {
                results[i] = Some(rejected(
                    RejectReason::Malformed,
                    "invalid domain or user id",
                ));
                continue;
            };
            // Not permitted is answered before existence, so another
            // tenant learns nothing.
            if !may_publish(p, &d, &u, &e) {
                results[i] = Some(rejected(
                    RejectReason::NotPermitted,
                    "not allowed to publish for this user or device",
                ));
                continue;
            }
            if !self.admit(&d) {
                results[i] = Some(rejected(RejectReason::RateLimited, over_ingest_quota(&d)));
                continue;
            }
            match self.validate(&d, &u, &e).await {
                Ok(ev) => {
                    valid.push(((d, u), ev, e));
                    slots.push(i);
                }
                Err(r) => results[i] = Some(r),
            }
        }
        for (i, r) in slots
            .into_iter()
            .zip(self.inner.shards.apply_all(valid, trace).await)
        {
            results[i] = Some(r);
        }
        Ok(v1::PublishResponse {
            results: results.into_iter().flatten().collect(),
        })
    }

    /// Returns the states of the targets the caller may see; the others
    /// (and unknown ones) are listed in `denied`. Users and phones see
    /// through their own permissions; a service needs `presence.watch`.
    pub async fn get_presence(
        &self,
        p: &Principal,
        req: v1::GetPresenceRequest,
    ) -> ApiResult<v1::GetPresenceResponse> {
        let d = DomainId::parse(&req.domain)?;
        p.require_domain(&d)?;
        if req.targets.len() > self.inner.cfg.max_targets {
            return Err(ApiError::ResourceExhausted(format!(
                "{} targets, at most {}",
                req.targets.len(),
                self.inner.cfg.max_targets
            )));
        }
        let targets: Vec<UserId> = req
            .targets
            .iter()
            .map(|t| UserId::parse(t))
            .collect::<ApiResult<_>>()?;
        // (target, caller id visible) of the permitted targets.
        let permitted: Vec<(UserId, bool)> = match p {
            Principal::User { user, .. } | Principal::Phone { user, .. } => {
                let names: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
                let decisions = self
                    .inner
                    .acl
                    .decide(&d, user, &names, Question::See)
                    .await?;
                targets
                    .iter()
                    .zip(decisions)
                    .filter(|(_, dec)| dec.allowed)
                    .map(|(t, dec)| (t.clone(), dec.caller_id_visible))
                    .collect()
            }
            Principal::Service { .. } => {
                if !p.has_right(&d, rights::PRESENCE_WATCH) {
                    return Err(ApiError::denied("not allowed to read presence"));
                }
                let mut out = Vec::new();
                for t in &targets {
                    if self.user_exists(&d, t).await? {
                        out.push((t.clone(), true));
                    }
                }
                out
            }
        };
        let names: Vec<String> = permitted.iter().map(|(t, _)| t.to_string()).collect();
        let states = self
            .states(&d, &names)
            .await?
            .into_iter()
            .zip(&permitted)
            .map(|(s, (_, caller_id))| redact(s, *caller_id))
            .collect();
        let denied = targets
            .iter()
            .filter(|t| !permitted.iter().any(|(p, _)| p == *t))
            .map(|t| t.to_string())
            .collect();
        Ok(v1::GetPresenceResponse { states, denied })
    }

    /// Returns the limits of watch streams.
    pub fn watch_config(&self) -> crate::stream::WatchConfig {
        self.inner.cfg.watch.clone()
    }

    /// Returns the token that ends every stream at shutdown.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Opens a `WatchMany` stream of `p`'s watchers, driven by
    /// `requests` (see [`crate::many`]).
    pub fn watch_many(
        &self,
        p: Principal,
        requests: futures_util::stream::BoxStream<
            'static,
            Result<v1::WatchManyRequest, tonic::Status>,
        >,
    ) -> crate::many::ManyStream {
        crate::many::ManyStream::new(self.clone(), p, requests)
    }

    /// Returns the node's edge (run it with [`Edge::run`]).
    pub fn edge(&self) -> Edge {
        self.inner.edge.clone()
    }

    /// Returns the full (unredacted) current states of `targets`
    /// (offline at version 0 for users without state).
    pub async fn states(
        &self,
        d: &DomainId,
        targets: &[String],
    ) -> ApiResult<Vec<v1::PresenceState>> {
        self.inner.shards.states(d, targets).await
    }

    async fn resolve_targets(
        &self,
        d: &DomainId,
        w: &UserId,
        req: &v1::WatchRequest,
    ) -> ApiResult<Vec<String>> {
        let sel = req
            .selector
            .clone()
            .ok_or_else(|| ApiError::invalid("a selector must be set"))?;
        self.inner
            .acl
            .resolve(d, w, &sel, self.inner.cfg.watch.max_targets)
            .await
    }

    /// Opens a watch stream: the watcher is the caller (a service with
    /// `presence.watch` names it), the targets come from the selector.
    /// The stream registers and sends its snapshot when the transport
    /// first pulls it.
    pub async fn watch(
        &self,
        p: &Principal,
        req: v1::WatchRequest,
    ) -> ApiResult<WatchStream<Arc<Shards>>> {
        let d = DomainId::parse(&req.domain)?;
        p.require_domain(&d)?;
        let watcher = match p {
            Principal::User { user, .. } | Principal::Phone { user, .. } => {
                if !req.watcher.is_empty() && req.watcher != user.as_str() {
                    return Err(ApiError::denied(
                        "not allowed to watch on behalf of another user",
                    ));
                }
                user.clone()
            }
            Principal::Service { .. } => {
                if !p.has_right(&d, rights::PRESENCE_WATCH) {
                    return Err(ApiError::denied("not allowed to watch presence"));
                }
                if req.watcher.is_empty() {
                    return Err(ApiError::invalid(
                        "watcher must be set when a service watches",
                    ));
                }
                UserId::parse(&req.watcher)?
            }
        };
        if !self.user_exists(&d, &watcher).await? {
            return Err(presence_directory::records::user_not_found(
                &d,
                watcher.as_str(),
            ));
        }
        let slot = self.inner.slots.take(
            &p.limit_key(&d),
            self.inner.cfg.watch.max_streams_per_principal,
            d.as_str(),
            self.inner.cfg.domain_quota.max_streams,
        )?;
        let targets = self.resolve_targets(&d, &watcher, &req).await?;
        let heartbeat = match req.heartbeat_seconds {
            0 => self.inner.cfg.watch.heartbeat,
            s => std::time::Duration::from_secs(u64::from(s.clamp(1, 3600))),
        };
        let known: HashMap<String, u64> = req.known_versions.into_iter().collect();
        let spec = StreamSpec {
            domain: d,
            watcher,
            targets,
            known,
            heartbeat,
            batching: req
                .batching
                .as_ref()
                .map(|b| Batching::of(b, &self.inner.cfg.watch)),
        };
        Ok(WatchStream::new(
            spec,
            self.inner.shards.clone(),
            self.inner.acl.clone(),
            self.inner.edge.clone(),
            self.inner.shutdown.clone(),
            slot,
        ))
    }

    /// Returns whether shards are owned across nodes (then
    /// [`Fanout::run_ingest`] admits events into the input log).
    pub fn is_clustered(&self) -> bool {
        matches!(*self.inner.shards, Shards::Cluster(_))
    }

    /// Subscribes to the ingest subjects; pass the result to
    /// [`Fanout::run_ingest`]. With local shards in the queue group
    /// `fanout-ingest`; clustered, every node receives every event (the
    /// owner of its shard admits it, the others keep it for a takeover).
    pub async fn subscribe_ingest(&self, bus: &SharedBus) -> ApiResult<BusSubscription> {
        Ok(if self.is_clustered() {
            bus.subscribe_ingest(subjects::ingest_all()).await?
        } else {
            bus.queue_subscribe(subjects::ingest_all(), "fanout-ingest".into())
                .await?
        })
    }

    /// Takes device events from the bus until `shutdown`. The subject
    /// names the user; a payload naming another user is rejected. With
    /// local shards each event is applied here; clustered, events are
    /// admitted (the node's quota) and appended to the input log in
    /// batches, for the shards' owners to apply.
    ///
    /// Either way events are taken round-robin by domain from a bounded
    /// backlog ([`crate::fair::Inlet`]): a tenant that floods waits behind
    /// its own events, not the others'.
    pub async fn run_ingest(self, sub: BusSubscription, shutdown: CancellationToken) {
        let mut inlet = Inlet::new(sub, self.inner.cfg.ingest_backlog);
        if let Shards::Cluster(c) = &*self.inner.shards {
            let c = c.clone();
            return c.run_admission(inlet, shutdown).await;
        }
        loop {
            let Some(m) = inlet.next_or_shutdown(&shutdown).await else {
                return;
            };
            metrics::counter!("presence_fanout_events_in_total").increment(1);
            let mut e = match v1::DeviceEvent::decode(m.payload) {
                Ok(e) => e,
                Err(err) => {
                    rejected(
                        RejectReason::Malformed,
                        format!("undecodable payload: {err}"),
                    );
                    continue;
                }
            };
            let Ok((d, u)) = ingest_target(&m.subject, &mut e) else {
                continue;
            };
            if !self.admit(&d) {
                rejected(RejectReason::RateLimited, over_ingest_quota(&d));
                continue;
            }
            let ev = match self.validate(&d, &u, &e).await {
                Ok(ev) => ev,
                Err(_) => continue,
            };
            let trace = ingest_span(&m.subject, m.trace);
            self.inner
                .shards
                .apply_all(vec![((d, u), ev, e)], trace)
                .await;
        }
    }
}
