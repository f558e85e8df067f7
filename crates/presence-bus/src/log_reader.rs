//! Reading a JetStream stream in order, in a way that survives a NATS
//! server's death.
//!
//! async-nats' ordered consumers are always single-replica, and with one
//! server of a three-server cluster down about half of them were placed on
//! the dead peer and never answered (their creation timed out). A consumer
//! with the stream's replica count has a raft group of its own and moves
//! with the leadership. [`LogReader`] uses such ephemeral pull consumers
//! (no acks, deleted by the server when idle) and recreates one after the
//! last sequence it returned whenever the current one fails — or skips a
//! sequence, which a consumer without acks does when a delivery is lost
//! with a dying server — so messages come out in stream order, never
//! twice, and a gap is returned only when the stream really has one.

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use presence_core::{ApiError, ApiResult};
use std::time::Duration;

fn unavailable(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::Unavailable(format!("{what}: {e}"))
}

/// How long an unused consumer lives on the server.
const INACTIVE: Duration = Duration::from_secs(30);

/// Reads a stream in order from a starting point.
pub struct LogReader {
    stream: stream::Stream,
    replicas: usize,
    /// Last stream sequence returned (`None`: none yet, start at new
    /// messages).
    last: Option<u64>,
    messages: Option<consumer::pull::Stream>,
    /// Whether the current consumer was opened because the previous one
    /// skipped a sequence: a gap seen again is real (a purge).
    regap: bool,
}

impl LogReader {
    /// Returns a reader of `stream` after sequence `after` (`None`: only
    /// messages stored from now on), on consumers of `replicas` replicas
    /// (the stream's own count). The consumer is created on first read.
    pub fn new(stream: stream::Stream, replicas: usize, after: Option<u64>) -> Self {
        Self {
            stream,
            replicas: replicas.max(1),
            last: after,
            messages: None,
            regap: false,
        }
    }

    async fn open(&self) -> ApiResult<consumer::pull::Stream> {
        let deliver_policy = match self.last {
            None => consumer::DeliverPolicy::New,
            Some(a) => consumer::DeliverPolicy::ByStartSequence {
                start_sequence: a + 1,
            },
        };
        let c = self
            .stream
            .create_consumer(consumer::pull::Config {
                deliver_policy,
                ack_policy: consumer::AckPolicy::None,
                num_replicas: self.replicas,
                inactive_threshold: INACTIVE,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable("log consumer", e))?;
        c.messages()
            .await
            .map_err(|e| unavailable("log consumer messages", e))
    }

    /// Returns the next message in stream order. An error means the
    /// consumer failed (it is recreated on the next call); `None` never
    /// comes back while the stream exists.
    pub async fn next(&mut self) -> ApiResult<jetstream::Message> {
        loop {
            if self.messages.is_none() {
                self.messages = Some(self.open().await?);
            }
            let Some(messages) = self.messages.as_mut() else {
                continue;
            };
            match messages.next().await {
                Some(Ok(m)) => {
                    let seq = m
                        .info()
                        .map(|i| i.stream_sequence)
                        .map_err(|e| unavailable("log message", e))?;
                    // A recreated consumer may repeat what came before.
                    if self.last.is_some_and(|l| seq <= l) {
                        continue;
                    }
                    // A consumer without acks moves on when a delivery is
                    // lost with a dying server: it skips a message. Read
                    // again from a new consumer; a gap that comes back is
                    // real (the stream was purged) and is the caller's to
                    // judge.
                    if self.last.is_some_and(|l| seq > l + 1) && !self.regap {
                        tracing::debug!(seq, last = ?self.last, "log consumer skipped; reopening");
                        self.messages = None;
                        self.regap = true;
                        continue;
                    }
                    self.regap = false;
                    self.last = Some(seq);
                    return Ok(m);
                }
                Some(Err(e)) => {
                    self.messages = None;
                    return Err(unavailable("log read", e));
                }
                None => {
                    self.messages = None;
                    return Err(unavailable("log read", "consumer ended"));
                }
            }
        }
    }

    /// Drops the current consumer: the next read starts a new one after
    /// the last message returned (after a reconnection, say).
    pub fn reopen(&mut self) {
        self.messages = None;
    }
}
