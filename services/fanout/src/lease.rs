//! Compare-and-set on a KV bucket that holds on replicated buckets of
//! every nats-server version, for shard leases.
//!
//! KV `update(key, value, revision)` and `delete_expect_revision` check
//! the key's last revision with `Nats-Expected-Last-Subject-Sequence`,
//! which nats-server before 2.9.21 does not enforce on replicated streams:
//! on a 3-server 2.9.10 cluster several racing nodes "won" one lease
//! (nats-server#4320). The stream-wide `Nats-Expected-Last-Sequence` does
//! hold there. So a write here reads the bucket stream's last sequence
//! `L`, then the key's latest entry (both from the stream leader), checks
//! the entry is the one expected, and publishes with `expected last
//! sequence = L`: if anything at all was written to the bucket since `L`,
//! the publish is refused and the whole check runs again. Writes to other
//! keys only cost a retry.

use async_nats::jetstream::{self, context::PublishErrorKind};
use bytes::Bytes;

/// Attempts before a contended write gives up (as unavailable).
const ATTEMPTS: usize = 32;

/// Why a compare-and-set did not write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasError {
    /// The key's latest entry is not the one expected: someone else
    /// holds or took it.
    Lost,
    /// NATS could not be asked or kept refusing (contention, outage).
    Unavailable(String),
}

impl std::fmt::Display for CasError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CasError::Lost => f.write_str("the key changed"),
            CasError::Unavailable(e) => write!(f, "unavailable: {e}"),
        }
    }
}

/// The latest entry of a key: its revision and value, `None` when the key
/// is absent, deleted, purged or expired.
pub type Latest = Option<(u64, Bytes)>;

/// Safe compare-and-set writes to one KV bucket.
#[derive(Clone)]
pub struct CasBucket {
    js: jetstream::Context,
    stream: String,
    prefix: String,
}

impl CasBucket {
    /// Returns writes to KV bucket `bucket` (its stream is `KV_<bucket>`).
    pub fn new(js: jetstream::Context, bucket: &str) -> Self {
        Self {
            js,
            stream: format!("KV_{bucket}"),
            prefix: format!("$KV.{bucket}."),
        }
    }

    /// Reads the stream's last sequence and `key`'s latest entry, both
    /// answered by the stream leader.
    async fn read(&self, key: &str) -> Result<(u64, Latest), CasError> {
        let unavailable = |e: &dyn std::fmt::Display| CasError::Unavailable(e.to_string());
        let stream = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| unavailable(&e))?;
        let last = stream.cached_info().state.last_sequence;
        let subject = format!("{}{key}", self.prefix);
        let latest = match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => {
                let op = m
                    .headers
                    .get("KV-Operation")
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default();
                if op == "DEL" || op == "PURGE" {
                    None
                } else {
                    Some((m.sequence, m.payload))
                }
            }
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                None
            }
            Err(e) => return Err(unavailable(&e)),
        };
        Ok((last, latest))
    }

    /// Returns `key`'s latest entry.
    pub async fn latest(&self, key: &str) -> Result<Latest, CasError> {
        Ok(self.read(key).await?.1)
    }

    /// Writes `value` to `key` (`None`: a delete marker) if its latest
    /// entry has revision `expected` (`None`: absent, deleted or expired),
    /// and returns the new revision.
    pub async fn cas(
        &self,
        key: &str,
        value: Option<Bytes>,
        expected: Option<u64>,
    ) -> Result<u64, CasError> {
        let subject = format!("{}{key}", self.prefix);
        for _ in 0..ATTEMPTS {
            let (last, latest) = self.read(key).await?;
            if latest.as_ref().map(|(rev, _)| *rev) != expected {
                return Err(CasError::Lost);
            }
            let mut msg = jetstream::message::PublishMessage::build().expected_last_sequence(last);
            msg = match &value {
                Some(v) => msg.payload(v.clone()),
                None => msg.header("KV-Operation", "DEL"),
            };
            let ack = match self.js.send_publish(subject.clone(), msg).await {
                Ok(f) => f.await,
                Err(e) => Err(e),
            };
            match ack {
                Ok(a) => return Ok(a.sequence),
                // Something was written to the bucket since `last`: check
                // again from the top.
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => continue,
                Err(e) => return Err(CasError::Unavailable(e.to_string())),
            }
        }
        Err(CasError::Unavailable(format!(
            "{key}: still contended after {ATTEMPTS} attempts"
        )))
    }
}
