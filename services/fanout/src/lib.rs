//! The presence service of the presence broker: phones, gateways and the
//! PBX report device events; shard actors keep each user's state and
//! publish every change; queries are filtered by the policy.
//!
//! Modules:
//! - [`convert`]: wire ↔ state-machine conversions, caller-id redaction;
//! - [`shard`]: shard actors owning per-user state, exact expiry,
//!   publishing changes on `presence.v1.out.<domain>.<user>`;
//! - [`service`]: [`Fanout`]: `Publish`, `GetPresence`, NATS ingest;
//! - [`watch`]: the node's hub, per-stream coalescing mailboxes and the
//!   stream task (snapshot, updates, denied / revoked / granted,
//!   heartbeats, resume);
//! - [`cluster`]: shards owned across nodes (leases, ingest log,
//!   snapshots);
//! - [`lease`]: compare-and-set on KV that holds on replicated buckets of
//!   every server version (the leases' writes);
//! - [`grpc`]: the tonic adapter.

pub mod cluster;
pub mod convert;
pub mod grpc;
pub mod lease;
pub mod service;
pub mod shard;
pub mod watch;

pub use grpc::FanoutGrpc;
pub use service::{Fanout, FanoutConfig};
