//! The message bus of the presence broker.
//!
//! Services talk to each other through a [`Bus`]: publish a payload on a
//! subject, subscribe to a subject pattern (NATS syntax: `*` matches one
//! token, `>` the rest). Two implementations:
//! - [`InProcessBus`]: the embedded default, one process, no network;
//! - [`NatsBus`]: a real NATS connection (async-nats), selected with
//!   `--nats-url`.
//!
//! Modules:
//! - [`subjects`]: every subject name the broker uses (the only place they
//!   are spelled out; documented in docs/subjects.md);
//! - [`inprocess`], [`nats`]: the two implementations;
//! - [`pattern`]: NATS subject matching, used by the in-process bus;
//! - [`buckets`]: JetStream KV buckets opened alike everywhere;
//! - [`log_reader`]: reading a JetStream stream in order across server
//!   deaths (the shard logs and the replicated directory log);
//! - [`trace`]: W3C trace context carried across the bus (NATS headers),
//!   so a change is one trace from its cause to its watchers.

pub mod buckets;
pub mod inprocess;
pub mod log_reader;
pub mod nats;
pub mod pattern;
pub mod subjects;
pub mod trace;

pub use inprocess::InProcessBus;
pub use nats::NatsBus;

use bytes::Bytes;
use futures_util::Stream;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Result alias of bus operations.
pub type BusResult<T> = Result<T, BusError>;

/// What can go wrong on the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The subject or pattern is not valid NATS syntax.
    #[error("invalid subject {0:?}")]
    InvalidSubject(String),
    /// The connection is closed or the server cannot be reached.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

impl From<BusError> for presence_core::ApiError {
    fn from(e: BusError) -> Self {
        match e {
            BusError::InvalidSubject(s) => {
                presence_core::ApiError::Internal(format!("invalid subject {s:?}"))
            }
            BusError::Unavailable(m) => presence_core::ApiError::Unavailable(m),
        }
    }
}

/// One message delivered to a subscriber.
#[derive(Debug, Clone)]
pub struct BusMessage {
    /// The subject it was published on.
    pub subject: String,
    /// The payload, usually an encoded protobuf message.
    pub payload: Bytes,
    /// Where to send a reply, for requests.
    pub reply: Option<String>,
    /// The trace it belongs to (NATS header `traceparent`), read only
    /// while propagation is on ([`trace::enabled`]).
    pub trace: Option<trace::TraceParent>,
}

/// A boxed future returned by [`Bus`] methods.
pub type BusFuture<'a, T> = Pin<Box<dyn Future<Output = BusResult<T>> + Send + 'a>>;

/// A stream of messages for one subscription; dropping it unsubscribes.
pub type BusSubscription = Pin<Box<dyn Stream<Item = BusMessage> + Send>>;

/// A publish/subscribe message bus with NATS semantics: at most once,
/// ordered per publisher and subject, slow subscribers lose messages
/// rather than slow publishers down.
pub trait Bus: Send + Sync + 'static {
    /// Publishes `payload` on `subject` (no wildcards).
    fn publish(&self, subject: String, payload: Bytes) -> BusFuture<'_, ()>;

    /// Publishes like [`Bus::publish`], with the trace the message
    /// belongs to (on NATS in the header `traceparent`).
    fn publish_traced(
        &self,
        subject: String,
        payload: Bytes,
        trace: Option<trace::TraceParent>,
    ) -> BusFuture<'_, ()> {
        let _ = trace;
        self.publish(subject, payload)
    }

    /// Subscribes to every subject matching `pattern`.
    fn subscribe(&self, pattern: String) -> BusFuture<'_, BusSubscription>;

    /// Subscribes to `pattern` where lost messages need no
    /// resynchronization (device event ingest): on NATS through a
    /// connection of its own, so that a flood overflowing it neither
    /// delays the other subscriptions nor changes [`Bus::reconnects`].
    fn subscribe_ingest(&self, pattern: String) -> BusFuture<'_, BusSubscription> {
        self.subscribe(pattern)
    }

    /// Subscribes as a member of queue group `group`: each message goes
    /// to one member of the group.
    fn queue_subscribe(&self, pattern: String, group: String) -> BusFuture<'_, BusSubscription>;

    /// Sends a request and waits for the first reply, at most `timeout`.
    /// `Unavailable` when nobody answers in time (or nobody listens).
    fn request(
        &self,
        subject: String,
        payload: Bytes,
        timeout: std::time::Duration,
    ) -> BusFuture<'_, Bytes>;

    /// Returns a receiver that changes each time the connection was
    /// re-established or messages were dropped for a slow consumer:
    /// subscribers that keep state derived from messages resynchronize
    /// then. The in-process bus never changes it.
    fn reconnects(&self) -> tokio::sync::watch::Receiver<u64>;

    /// Waits until everything published so far has left this process.
    fn flush(&self) -> BusFuture<'_, ()>;

    /// Returns a short name of the implementation, for logs and health.
    fn kind(&self) -> &'static str;
}

/// A shared handle to a bus.
pub type SharedBus = Arc<dyn Bus>;

/// Returns the next item of `s`, or `None` once `shutdown` is cancelled
/// or `s` has ended: the head of every consumer loop.
pub async fn next_or_shutdown<S: Stream + Unpin>(
    s: &mut S,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Option<S::Item> {
    tokio::select! {
        _ = shutdown.cancelled() => None,
        m = futures_util::StreamExt::next(s) => m,
    }
}
