//! Requests from any node to shard owners: gRPC `Publish` appends its
//! events to the input log as one entry, each with where to send its
//! verdict, and waits for the owners' verdicts; reads ask the owner on `presence.v1.shard.<n>.get` (retried
//! while a shard has no owner), and the owner answers them.

use crate::convert::state_to_proto;
use crate::ingest::rejected;
use crate::shard::{Shard, UserKey, shard_index};
use bytes::Bytes;
use presence_bus::subjects;
use presence_core::{ApiError, ApiResult, DomainId, UserId};
use presence_proto::v1::{self, RejectReason};
use prost::Message;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::*;

impl Cluster {
    pub(super) async fn route_verdicts(
        self: Arc<Self>,
        mut sub: async_nats::Subscriber,
        shutdown: CancellationToken,
    ) {
        loop {
            let Some(m) = presence_bus::next_or_shutdown(&mut sub, &shutdown).await else {
                return;
            };
            let Ok(r) = v1::ShardResult::decode(m.payload) else {
                tracing::warn!("undecodable shard verdict");
                continue;
            };
            let waiter = lock(&self.pending).remove(&r.token);
            tracing::debug!(token = r.token, found = waiter.is_some(), "verdict");
            if let (Some(tx), Some(result)) = (waiter, r.result) {
                let _ = tx.send(result);
            }
        }
    }

    /// Appends validated events (part of trace `trace`, if any) to the
    /// input log as one entry and waits for the owners' verdicts.
    pub(crate) async fn submit_and_wait(
        &self,
        events: Vec<(UserKey, v1::DeviceEvent)>,
        trace: Option<presence_bus::trace::TraceParent>,
    ) -> Vec<v1::PublishResult> {
        let traceparent = trace.map(|t| t.header()).unwrap_or_default();
        let mut waits = Vec::with_capacity(events.len());
        let mut batch = v1::IngestBatch::default();
        for ((d, u), e) in events {
            let token = self.next_token.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            lock(&self.pending).insert(token, tx);
            batch.items.push(v1::IngestItem {
                domain: d.to_string(),
                user: u.to_string(),
                event: e.encode_to_vec(),
                reply: self.results.clone(),
                token,
                takeover: false,
                traceparent: traceparent.clone(),
            });
            waits.push((token, rx));
        }
        let stored = self.append(&batch).await;
        let mut out = Vec::with_capacity(waits.len());
        for (token, rx) in waits {
            let result = match &stored {
                Err(e) => {
                    lock(&self.pending).remove(&token);
                    rejected(
                        RejectReason::Unspecified,
                        format!("not stored in the ingest log: {e}"),
                    )
                }
                Ok(_) => match tokio::time::timeout(self.cfg.request_timeout, rx).await {
                    Ok(Ok(r)) => r,
                    _ => {
                        lock(&self.pending).remove(&token);
                        v1::PublishResult {
                            accepted: false,
                            reason: RejectReason::Unspecified as i32,
                            detail: "stored in the ingest log; the shard's owner has not \
                                     confirmed yet (it applies the event once it runs)"
                                .into(),
                        }
                    }
                },
            };
            out.push(result);
        }
        out
    }

    /// Reads the full (unredacted) states of `targets` from their owners,
    /// retrying while a shard has no owner (for up to twice the lease
    /// TTL).
    pub(crate) async fn states(
        &self,
        d: &DomainId,
        targets: &[String],
    ) -> ApiResult<Vec<v1::PresenceState>> {
        let mut by_shard: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, t) in targets.iter().enumerate() {
            let u = UserId::parse(t)?;
            by_shard
                .entry(shard_index(d, &u, self.shards))
                .or_default()
                .push(i);
        }
        let reads = by_shard.into_iter().map(|(n, idx)| async move {
            let req = v1::GetPresenceRequest {
                domain: d.to_string(),
                targets: idx.iter().map(|i| targets[*i].clone()).collect(),
            };
            let resp = self.read_shard(n, req).await?;
            if resp.states.len() != idx.len() {
                return Err(ApiError::Internal(format!(
                    "shard {n} answered {} states for {} targets",
                    resp.states.len(),
                    idx.len()
                )));
            }
            Ok::<_, ApiError>(idx.into_iter().zip(resp.states).collect::<Vec<_>>())
        });
        let mut out: Vec<Option<v1::PresenceState>> = vec![None; targets.len()];
        // One shard after the other: reading them all at once (join_all)
        // cost every watch stream ~10 KiB of resident memory for its
        // life (heaptrack: the joined futures' block, fragmenting the
        // heap under the stream's long-lived allocations), for a
        // snapshot a few round trips faster.
        for read in reads {
            for (i, s) in read.await? {
                out[i] = Some(s);
            }
        }
        out.into_iter()
            .map(|s| s.ok_or_else(|| ApiError::Internal("missing state".into())))
            .collect()
    }

    pub(super) async fn read_shard(
        &self,
        n: usize,
        req: v1::GetPresenceRequest,
    ) -> ApiResult<v1::GetPresenceResponse> {
        let payload: Bytes = req.encode_to_vec().into();
        let deadline = tokio::time::Instant::now() + self.cfg.lease_ttl * 2;
        let mut backoff = Duration::from_millis(20);
        loop {
            let r = tokio::time::timeout(
                self.cfg.request_timeout,
                self.client.request(subjects::shard_get(n), payload.clone()),
            )
            .await;
            match r {
                Ok(Ok(m)) => {
                    return v1::GetPresenceResponse::decode(m.payload)
                        .map_err(|e| ApiError::Internal(format!("malformed shard read: {e}")));
                }
                Ok(Err(e)) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(shard = n, error = %e, "shard has no owner yet; retrying");
                }
                Ok(Err(e)) => return Err(unavailable(&format!("shard {n} has no owner"), e)),
                Err(_) => return Err(ApiError::Unavailable(format!("shard {n} read timed out"))),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    pub(super) async fn answer_read(&self, shard: &Shard, m: async_nats::Message) {
        let Some(reply) = m.reply else { return };
        let resp = match v1::GetPresenceRequest::decode(m.payload) {
            Ok(req) => {
                let keys: Vec<(UserKey, String)> = req
                    .targets
                    .iter()
                    .filter_map(|t| {
                        Some((
                            (DomainId::parse(&req.domain).ok()?, UserId::parse(t).ok()?),
                            t.clone(),
                        ))
                    })
                    .collect();
                let ks: Vec<UserKey> = keys.iter().map(|(k, _)| k.clone()).collect();
                let states = shard
                    .get(&ks)
                    .iter()
                    .zip(&keys)
                    .map(|(a, (_, t))| state_to_proto(&req.domain, t, a, true))
                    .collect();
                v1::GetPresenceResponse {
                    states,
                    denied: Vec::new(),
                }
            }
            Err(_) => v1::GetPresenceResponse::default(),
        };
        if let Err(e) = self
            .client
            .publish(reply, resp.encode_to_vec().into())
            .await
        {
            tracing::debug!(error = %e, "shard read not answered");
        }
    }
}
