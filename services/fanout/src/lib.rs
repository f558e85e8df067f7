//! The presence service of the presence broker: phones, gateways and the
//! PBX report device events; shard actors keep each user's state and
//! publish every change; watch streams deliver them, filtered by the
//! policy.
//!
//! Modules, in the order a change travels:
//! - [`fair`]: the ingest backlog, queued by domain and taken
//!   round-robin, so a flooding tenant waits behind its own events;
//! - [`ingest`]: validation of device events and their verdicts (used by
//!   local and clustered shards alike);
//! - [`quota`]: per-domain ingest and stream quotas, token buckets,
//!   stream slots;
//! - [`convert`]: wire ↔ state-machine conversions, caller-id redaction;
//! - [`shard`]: the state of one shard (per-user state, exact expiry,
//!   publishing changes on `presence.v1.out.<domain>.<user>`) and its
//!   local actor;
//! - [`shards`]: where states live — local actors or [`cluster`];
//! - [`cluster`]: shards owned across nodes (placement and leases, the
//!   ingest log, snapshots), with [`lease`]: compare-and-set on KV that
//!   holds on replicated buckets of every server version;
//! - [`edge`]: per-target subscriptions, states encoded once per
//!   visibility class, per-stream coalescing mailboxes;
//! - [`stream`]: one watch stream (snapshot, updates, batches, access
//!   changes, heartbeats, resume), pulled by its transport;
//! - [`many`]: many watchers on one stream (`WatchMany`), each a
//!   [`stream`] of its own, a state shared by several sent once;
//! - [`service`]: [`Fanout`]: `Publish`, `GetPresence`, `Watch`,
//!   `WatchMany`, NATS ingest;
//! - [`grpc`]: the tonic adapter.

pub mod cluster;
pub mod convert;
pub mod edge;
pub mod fair;
pub mod grpc;
pub mod ingest;
pub mod lease;
pub mod many;
pub mod quota;
pub mod service;
pub mod shard;
pub mod shards;
pub mod stream;
#[cfg(test)]
mod untrusted;

pub use grpc::FanoutGrpc;
pub use service::{Fanout, FanoutConfig};
