//! The input log: the node's one reader of `PRESENCE_INGEST`, which
//! hands each event to the task of its shard if this node owns it, and
//! the owner's application of a logged event (quota, validation, state
//! machine, verdict) with the event's log time as "now".

use crate::convert::reject_reason;
use crate::ingest::{applied, check_event, ingest_target, rejected};
use crate::quota::{IngestQuota, over_ingest_quota};
use crate::shard::{Shard, shard_index};
use presence_core::{DomainId, UserId};
use presence_proto::v1::{self, RejectReason};
use prost::Message;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use super::routing::{REPLY_HEADER, TOKEN_HEADER};
use super::*;
use async_nats::jetstream::{self};
use presence_bus::log_reader::LogReader;

impl Cluster {
    /// Returns the shard of an ingest subject (None if malformed).
    pub(super) fn shard_of(&self, subject: &str) -> Option<usize> {
        let mut parts = subject.split('.').skip(3);
        let d = DomainId::parse(parts.next()?).ok()?;
        let u = UserId::parse(parts.next()?).ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(shard_index(&d, &u, self.shards))
    }

    /// The node's log reader: reads `PRESENCE_INGEST` once and hands each
    /// event to the task of its shard if this node owns it. Starts at the
    /// log's end (a shard catches up on its own when acquired) and, after
    /// a reconnection, resumes after the last event it handed out.
    pub(super) async fn read_log(self: Arc<Self>, shutdown: CancellationToken) {
        let mut reconnects = self.params.bus.reconnects();
        let from = match self.position.load(Ordering::Acquire) {
            0 => None,
            p => Some(p),
        };
        let mut log = LogReader::new(self.ingest.clone(), self.cfg.replicas, from);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = reconnects.changed() => {
                    if r.is_err() {
                        return;
                    }
                    // The server may have lost the consumer.
                    log.reopen();
                }
                m = log.next() => match m {
                    Ok(m) => self.hand_out(m).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "ingest log not readable; retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        }
                    }
                },
            }
        }
    }

    pub(super) async fn hand_out(&self, m: jetstream::Message) {
        let Ok(seq) = m.info().map(|i| i.stream_sequence) else {
            return;
        };
        match self.shard_of(&m.subject) {
            Some(n) => {
                let inbox = lock(&self.owned).get(&n).map(|o| o.inbox.clone());
                if let Some(inbox) = inbox {
                    // Waits while the shard catches up (bounded inbox).
                    let _ = inbox.send(m).await;
                }
            }
            // Counted once, by the owner of shard 0.
            None if lock(&self.owned).contains_key(&0) => {
                rejected(
                    RejectReason::Malformed,
                    format!("bad subject {}", m.subject),
                );
            }
            None => {}
        }
        self.position.fetch_max(seq, Ordering::Release);
    }

    /// Applies one event of the log (validated here: the log holds raw
    /// ingest) with its arrival time in the log as "now", and sends the
    /// verdict where the headers ask.
    pub(super) async fn apply_logged(
        &self,
        shard: &mut Shard,
        quota: &mut IngestQuota,
        m: &jetstream::Message,
        replay: bool,
    ) {
        let now = m
            .info()
            .map(|i| (i.published.unix_timestamp_nanos() / 1_000_000) as i64)
            .unwrap_or_else(|_| shard.clock.now_ms());
        let header = |name: &str| {
            m.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        let reply = header(REPLY_HEADER);
        let token = header(TOKEN_HEADER).and_then(|t| t.parse::<u64>().ok());
        if reply.is_none() {
            // Events published on NATS directly enter here.
            metrics::counter!("presence_fanout_events_in_total").increment(1);
        }
        if replay {
            // Expire what was due before this event, as the previous
            // owner did.
            shard.expire_until(now).await;
        } else {
            // How long the event waited between its append to the log and
            // its owner applying it.
            let lag_ms = shard.clock.now_ms().saturating_sub(now).max(0);
            metrics::histogram!("presence_fanout_ingest_lag_seconds").record(lag_ms as f64 / 1e3);
        }
        let result = match v1::DeviceEvent::decode(m.payload.clone()) {
            Err(e) => rejected(RejectReason::Malformed, format!("undecodable payload: {e}")),
            Ok(mut e) => match ingest_target(&m.subject, &mut e) {
                Err(r) => r,
                // The domain's quota before any other work, on the log's
                // clock (a replay admits what the first owner admitted).
                Ok((d, _)) if !quota.admit(&d, now) => {
                    rejected(RejectReason::RateLimited, over_ingest_quota(&d))
                }
                Ok((d, u)) => match check_event(&self.params.acl, &d, &u, &e).await {
                    Err(r) => r,
                    Ok(ev) => match shard.apply((d, u), &ev, now).await {
                        Ok(changed) => applied(changed),
                        Err(r) => rejected(reject_reason(r), format!("{r:?}")),
                    },
                },
            },
        };
        if let (Some(reply), Some(token)) = (reply, token) {
            let r = v1::ShardResult {
                token,
                result: Some(result),
            };
            if let Err(e) = self.client.publish(reply, r.encode_to_vec().into()).await {
                tracing::debug!(error = %e, "verdict not sent");
            }
        }
    }
}
