//! Where users' states live: shard actors of this process, or shards
//! owned across nodes ([`crate::cluster`]). Both apply validated events
//! and answer reads the same way; the service and the streams only see
//! [`Shards`].

use crate::cluster::Cluster;
use crate::convert::{reject_reason, state_to_proto};
use crate::ingest::{applied, rejected};
use crate::shard::{self, ShardHandle, UserKey};
use crate::stream::StateSource;
use presence_bus::trace::TraceParent;
use presence_core::presence::Event;
use presence_core::{ApiError, ApiResult, DomainId, UserId};
use presence_proto::v1::{self, RejectReason};
use std::sync::Arc;

/// The shards of a node.
pub enum Shards {
    /// Every shard is an actor of this process.
    Local(Vec<ShardHandle>),
    /// Shards are owned by fanout nodes over NATS JetStream.
    Cluster(Arc<Cluster>),
}

impl Shards {
    /// Returns the shards this node owns (all of them unless clustered).
    pub fn owned(&self) -> Vec<usize> {
        match self {
            Shards::Local(v) => (0..v.len()).collect(),
            Shards::Cluster(c) => c.owned_shards(),
        }
    }

    /// Applies validated events, part of trace `trace` if any, and
    /// returns their verdicts, in order.
    pub async fn apply_all(
        &self,
        events: Vec<(UserKey, Event, v1::DeviceEvent)>,
        trace: Option<TraceParent>,
    ) -> Vec<v1::PublishResult> {
        match self {
            Shards::Cluster(c) => {
                c.submit_and_wait(events.into_iter().map(|(k, _, e)| (k, e)).collect(), trace)
                    .await
            }
            Shards::Local(handles) => {
                let mut out = Vec::with_capacity(events.len());
                for ((d, u), ev, _) in events {
                    let h = &handles[shard::shard_index(&d, &u, handles.len())];
                    out.push(match h.apply_traced((d, u), ev, trace).await {
                        Ok(Ok(changed)) => applied(changed),
                        Ok(Err(r)) => rejected(reject_reason(r.reason), r.detail),
                        Err(e) => rejected(RejectReason::Unspecified, e.to_string()),
                    });
                }
                out
            }
        }
    }

    /// Returns the full (unredacted) current states of `targets`
    /// (offline at version 0 for users without state).
    pub async fn states(
        &self,
        d: &DomainId,
        targets: &[String],
    ) -> ApiResult<Vec<v1::PresenceState>> {
        match self {
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
}

impl StateSource for Arc<Shards> {
    async fn states(
        &self,
        d: &DomainId,
        targets: Vec<String>,
    ) -> ApiResult<Vec<v1::PresenceState>> {
        Shards::states(self, d, &targets).await
    }
}
