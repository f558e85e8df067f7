//! The presence service's domain API: ingest (gRPC `Publish` and the
//! NATS subjects `presence.v1.in.<domain>.<user>`) and `GetPresence`.

use crate::cluster::{Cluster, ShardParams};
use crate::convert::redact;
use crate::convert::{event_from_proto, reject_label, reject_reason, state_to_proto};
use crate::shard::{self, Clock, ShardHandle, UserKey};
use crate::watch::{Hub, StreamSlots, StreamSpec, run_stream};
use presence_auth::{Principal, rights};
use presence_bus::{BusSubscription, SharedBus, subjects};
use presence_core::presence::{EventKind, Limits};
use presence_core::{ApiError, ApiResult, DomainId, Mac, UserId};
use presence_policy::{AclView, Question};
use presence_proto::v1::{self, RejectReason};
use prost::Message;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;
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
    pub watch: crate::watch::WatchConfig,
    /// Publish rate allowed per device.
    pub device_rate: shard::RateLimit,
    /// Distributed shard ownership (used by [`Fanout::start_cluster`]).
    pub cluster: crate::cluster::ClusterConfig,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        Self {
            shards: 8,
            shard_inbox: 1024,
            max_publish_batch: 1000,
            max_targets: 5000,
            limits: Limits::default(),
            watch: crate::watch::WatchConfig::default(),
            device_rate: shard::RateLimit::default(),
            cluster: crate::cluster::ClusterConfig::default(),
        }
    }
}

/// The presence service.
#[derive(Clone)]
pub struct Fanout {
    inner: Arc<Inner>,
}

/// Where users' states live.
enum Shards {
    /// Every shard is an actor of this process.
    Local(Vec<ShardHandle>),
    /// Shards are owned by fanout nodes over NATS JetStream.
    Cluster(Arc<Cluster>),
}

struct Inner {
    shards: Shards,
    acl: AclView,
    cfg: FanoutConfig,
    hub: Hub,
    slots: StreamSlots,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

/// Counts and logs a rejected event and returns its result.
pub(crate) fn rejected(reason: RejectReason, detail: impl Into<String>) -> v1::PublishResult {
    metrics::counter!("presence_fanout_events_rejected_total", "reason" => reject_label(reason))
        .increment(1);
    let detail = detail.into();
    tracing::debug!(reason = reject_label(reason), %detail, "event rejected");
    v1::PublishResult {
        accepted: false,
        reason: reason as i32,
        detail,
    }
}

/// Counts an applied event and returns its verdict.
pub(crate) fn applied(changed: bool) -> v1::PublishResult {
    metrics::counter!("presence_fanout_events_applied_total").increment(1);
    if !changed {
        metrics::counter!("presence_fanout_events_unchanged_total").increment(1);
    }
    v1::PublishResult {
        accepted: true,
        reason: RejectReason::Unspecified as i32,
        detail: String::new(),
    }
}

/// Validates an event's shape and that its user exists; a rejection is
/// counted and returned as the event's verdict.
pub(crate) async fn check_event(
    acl: &AclView,
    d: &DomainId,
    u: &UserId,
    e: &v1::DeviceEvent,
) -> Result<presence_core::presence::Event, v1::PublishResult> {
    let ev = event_from_proto(e).map_err(|r| rejected(reject_reason(r), "malformed event"))?;
    if let EventKind::QueueLogin { queue, .. } = &ev.kind
        && UserId::parse(queue).is_err()
    {
        return Err(rejected(RejectReason::Malformed, "invalid queue id"));
    }
    match acl.user_exists(d, u).await {
        Ok(true) => {}
        Ok(false) => {
            return Err(rejected(
                RejectReason::UnknownUser,
                format!("user {u} not found in domain {d}"),
            ));
        }
        Err(e) => return Err(rejected(RejectReason::Unspecified, e.to_string())),
    }
    // A logout only removes what a login added: always taken.
    if let EventKind::QueueLogin {
        queue,
        logged_in: true,
    } = &ev.kind
    {
        check_queue_agent(acl, d, u, queue).await?;
    }
    Ok(ev)
}

/// Refuses a queue login of `u` unless the directory lists `u` as an
/// agent of queue `queue` of `d` (which also means its scope has the
/// queue-login capability). An unknown queue, another tenant's queue and
/// a queue `u` is not an agent of are refused alike.
async fn check_queue_agent(
    acl: &AclView,
    d: &DomainId,
    u: &UserId,
    queue: &str,
) -> Result<(), v1::PublishResult> {
    let not_agent = || {
        rejected(
            RejectReason::NotPermitted,
            format!("user {u} is not an agent of queue {queue}"),
        )
    };
    let sel = v1::watch_request::Selector::Queue(queue.to_owned());
    match acl
        .resolve(d, u, &sel, presence_core::text::MAX_QUEUE_MEMBERS)
        .await
    {
        Ok(agents) if agents.iter().any(|a| a == u.as_str()) => Ok(()),
        Ok(_) | Err(ApiError::NotFound(_) | ApiError::PermissionDenied(_)) => Err(not_agent()),
        Err(e) => Err(rejected(RejectReason::Unspecified, e.to_string())),
    }
}

/// Parses the user of an ingest subject `presence.v1.in.<domain>.<user>`
/// and checks that the payload names the same user (or none); fills the
/// payload's ids.
pub(crate) fn ingest_target(
    subject: &str,
    e: &mut v1::DeviceEvent,
) -> Result<(DomainId, UserId), v1::PublishResult> {
    let bad = || rejected(RejectReason::Malformed, format!("bad subject {subject}"));
    let parts: Vec<&str> = subject.split('.').collect();
    let (Some(d), Some(u), 5) = (parts.get(3), parts.get(4), parts.len()) else {
        return Err(bad());
    };
    let (Ok(d), Ok(u)) = (DomainId::parse(d), UserId::parse(u)) else {
        return Err(bad());
    };
    if (!e.domain.is_empty() && e.domain != d.as_str())
        || (!e.user.is_empty() && e.user != u.as_str())
    {
        return Err(rejected(
            RejectReason::Malformed,
            "payload names another user than its subject",
        ));
    }
    e.domain = d.to_string();
    e.user = u.to_string();
    Ok((d, u))
}

/// Returns whether `p` may publish `e` (already parsed ids).
fn may_publish(p: &Principal, d: &DomainId, u: &UserId, e: &v1::DeviceEvent) -> bool {
    use v1::device_event::Kind as K;
    match p {
        Principal::Service { .. } => p.has_right(d, rights::PRESENCE_PUBLISH),
        Principal::Phone { domain, user, mac } => {
            domain == d && user == u && Mac::parse(&e.device).is_ok_and(|m| m == *mac)
        }
        Principal::User { domain, user, .. } => {
            domain == d
                && user == u
                && matches!(
                    e.kind,
                    Some(K::ManualStatus(_) | K::UserDnd(_) | K::QueueLogin(_))
                )
        }
    }
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
        let shards = (0..cfg.shards.max(1))
            .map(|i| {
                shard::spawn(
                    i,
                    cfg.shard_inbox,
                    cfg.limits,
                    cfg.device_rate,
                    bus.clone(),
                    clock,
                    shutdown.clone(),
                    tracker,
                )
            })
            .collect();
        Self::with_shards(Shards::Local(shards), cfg, acl, bus, shutdown, tracker)
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
        let params = ShardParams {
            limits: cfg.limits,
            rate: cfg.device_rate,
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
            bus,
            shutdown,
            tracker,
        ))
    }

    fn with_shards(
        shards: Shards,
        cfg: FanoutConfig,
        acl: AclView,
        bus: SharedBus,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                shards,
                acl,
                cfg,
                hub: Hub::new(bus, shutdown.clone(), tracker.clone()),
                slots: StreamSlots::default(),
                shutdown: shutdown.clone(),
                tracker: tracker.clone(),
            }),
        }
    }

    /// Returns the shards this node owns (all of them unless clustered).
    pub fn owned_shards(&self) -> Vec<usize> {
        match &self.inner.shards {
            Shards::Local(v) => (0..v.len()).collect(),
            Shards::Cluster(c) => c.owned_shards(),
        }
    }

    /// Returns whether `p`'s binding to domain `d` holds: a service
    /// token's incarnation of `d` that the validating node could not
    /// check (no directory on this node) must be the domain's current
    /// one. A token of a deleted domain must not act on a domain created
    /// again under its id.
    async fn live_domain(&self, p: &Principal, d: &DomainId) -> ApiResult<bool> {
        let Principal::Service { unchecked, .. } = p else {
            return Ok(true);
        };
        let Some((_, claimed)) = unchecked.iter().find(|(x, _)| x == d) else {
            return Ok(true);
        };
        match self.inner.acl.domain_incarnation(d).await {
            Ok(now) => Ok(now == *claimed),
            Err(ApiError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Like [`Principal::require_domain`], and the binding of a service
    /// token to `d` holds ([`Fanout::live_domain`]).
    async fn require_live_domain(&self, p: &Principal, d: &DomainId) -> ApiResult<()> {
        p.require_domain(d)?;
        if self.live_domain(p, d).await? {
            Ok(())
        } else {
            Err(ApiError::domain_not_found(d.as_str()))
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
        metrics::counter!("presence_fanout_events_in_total").increment(1);
        check_event(&self.inner.acl, d, u, e).await
    }

    /// Applies validated events and returns their verdicts, in order.
    async fn apply_all(
        &self,
        events: Vec<(UserKey, presence_core::presence::Event, v1::DeviceEvent)>,
    ) -> Vec<v1::PublishResult> {
        match &self.inner.shards {
            Shards::Cluster(c) => {
                c.submit_and_wait(events.into_iter().map(|(k, _, e)| (k, e)).collect())
                    .await
            }
            Shards::Local(handles) => {
                let mut out = Vec::with_capacity(events.len());
                for ((d, u), ev, _) in events {
                    let h = &handles[shard::shard_index(&d, &u, handles.len())];
                    out.push(match h.apply((d, u), ev).await {
                        Ok(Ok(changed)) => applied(changed),
                        Ok(Err(r)) => rejected(reject_reason(r), format!("{r:?}")),
                        Err(e) => rejected(RejectReason::Unspecified, e.to_string()),
                    });
                }
                out
            }
        }
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
        let mut results: Vec<Option<v1::PublishResult>> = vec![None; req.events.len()];
        let mut valid = Vec::new();
        let mut slots = Vec::new();
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
            if !may_publish(p, &d, &u, &e) || !self.live_domain(p, &d).await? {
                results[i] = Some(rejected(
                    RejectReason::NotPermitted,
                    "not allowed to publish for this user or device",
                ));
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
        for (i, r) in slots.into_iter().zip(self.apply_all(valid).await) {
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
        self.require_live_domain(p, &d).await?;
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

    /// Returns the node's hub (run it with [`Hub::run`]).
    pub fn hub(&self) -> Hub {
        self.inner.hub.clone()
    }

    /// Returns the full (unredacted) current states of `targets`
    /// (offline at version 0 for users without state).
    pub async fn states(
        &self,
        d: &DomainId,
        targets: &[String],
    ) -> ApiResult<Vec<v1::PresenceState>> {
        match &self.inner.shards {
            Shards::Cluster(c) => c.states(d, targets).await,
            Shards::Local(handles) => {
                let mut out = Vec::with_capacity(targets.len());
                for t in targets {
                    let u = UserId::parse(t)?;
                    let h = &handles[shard::shard_index(d, &u, handles.len())];
                    let mut a = h.get(vec![(d.clone(), u.clone())]).await?;
                    let a = a
                        .pop()
                        .ok_or_else(|| ApiError::Internal("shard returned nothing".into()))?;
                    out.push(state_to_proto(d.as_str(), t, &a, true));
                }
                Ok(out)
            }
        }
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
    /// Returns the receiving end of the stream's bounded channel.
    pub async fn watch(
        &self,
        p: &Principal,
        req: v1::WatchRequest,
    ) -> ApiResult<mpsc::Receiver<crate::watch::WatchItem>> {
        let d = DomainId::parse(&req.domain)?;
        self.require_live_domain(p, &d).await?;
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
        )?;
        let targets = self.resolve_targets(&d, &watcher, &req).await?;
        let heartbeat = match req.heartbeat_seconds {
            0 => self.inner.cfg.watch.heartbeat,
            s => std::time::Duration::from_secs(u64::from(s.clamp(1, 3600))),
        };
        let known: HashMap<String, u64> = req.known_versions.clone().into_iter().collect();
        let (tx, rx) = mpsc::channel(self.inner.cfg.watch.send_buffer.max(1));
        let spec = StreamSpec {
            domain: d.clone(),
            watcher: watcher.clone(),
            targets: targets.into(),
            known,
            heartbeat,
        };
        let span = tracing::info_span!("watch", domain = %d, watcher = %watcher);
        let task = run_stream(
            self.clone(),
            self.inner.acl.clone(),
            self.inner.hub.clone(),
            spec,
            tx,
            self.inner.shutdown.clone(),
            slot,
        );
        self.inner
            .tracker
            .spawn(tracing::Instrument::instrument(task, span));
        Ok(rx)
    }

    /// Returns whether shards are owned across nodes (then the JetStream
    /// stream `PRESENCE_INGEST` captures the ingest subjects and
    /// [`Fanout::run_ingest`] is not used).
    pub fn is_clustered(&self) -> bool {
        matches!(self.inner.shards, Shards::Cluster(_))
    }

    /// Subscribes to the ingest subjects (queue group `fanout-ingest`);
    /// pass the result to [`Fanout::run_ingest`] (single-node mode).
    pub async fn subscribe_ingest(bus: &SharedBus) -> ApiResult<BusSubscription> {
        Ok(bus
            .queue_subscribe(subjects::ingest_all(), "fanout-ingest".into())
            .await?)
    }

    /// Applies device events from the bus until `shutdown`. The subject
    /// names the user; a payload naming another user is rejected.
    pub async fn run_ingest(self, mut sub: BusSubscription, shutdown: CancellationToken) {
        loop {
            let Some(m) = presence_bus::next_or_shutdown(&mut sub, &shutdown).await else {
                return;
            };
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
            let ev = match self.validate(&d, &u, &e).await {
                Ok(ev) => ev,
                Err(_) => continue,
            };
            self.apply_all(vec![((d, u), ev, e)]).await;
        }
    }
}
